//! A minimal gRPC forwarder: a Dapr `GetState` served by hyper's HTTP/2 server and tonic's
//! codec, forwarded with a tonic client over the component's Unix socket — the same stack as
//! plugd with none of plugd's own work (no routing, registry, limits, metrics, logs, trace
//! context). It runs as a child process of the benchmark (`hop --forwarder SOCKET INSTANCE`)
//! on a one-thread runtime, like plugd by default, so its CPU time per call is the floor that
//! plugd's hop is compared with.

use std::{convert::Infallible, path::Path, sync::Arc};

use futures::future::BoxFuture;
use hyper_util::rt::{TokioExecutor, TokioIo};
use plugd::proto::{
    components::{self as pb, state_store_client::StateStoreClient},
    runtime as rt,
};
use tonic::{Request, Response, Status, metadata::AsciiMetadataValue, transport::Channel};

/// Serves on a free loopback port (printed on stdout) until killed.
pub fn run(socket: &Path, instance: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let instance: AsciiMetadataValue = instance.parse()?;
    runtime.block_on(async move {
        let client = StateStoreClient::new(super::uds_channel(socket).await?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?.port());
        loop {
            let (tcp, _) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            let get = GetState {
                client: client.clone(),
                instance: Arc::new(instance.clone()),
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let get = get.clone();
                    async move {
                        let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                            rt::GetStateResponse,
                            rt::GetStateRequest,
                        >::default(
                        ));
                        Ok::<_, Infallible>(grpc.unary(get, req).await)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    })
}

#[derive(Clone)]
struct GetState {
    client: StateStoreClient<Channel>,
    instance: Arc<AsciiMetadataValue>,
}

impl tonic::server::UnaryService<rt::GetStateRequest> for GetState {
    type Response = rt::GetStateResponse;
    type Future = BoxFuture<'static, Result<Response<rt::GetStateResponse>, Status>>;

    fn call(&mut self, request: Request<rt::GetStateRequest>) -> Self::Future {
        let (mut client, instance) = (self.client.clone(), self.instance.clone());
        Box::pin(async move {
            let key = request.into_inner().key;
            let mut call = Request::new(pb::GetRequest {
                key: format!("{}||{key}", super::APP_ID),
                ..Default::default()
            });
            call.metadata_mut()
                .insert("x-component-instance", (*instance).clone());
            let got = client.get(call).await?.into_inner();
            Ok(Response::new(rt::GetStateResponse {
                data: got.data,
                etag: got.etag.map(|e| e.value).unwrap_or_default(),
                metadata: got.metadata,
            }))
        })
    }
}
