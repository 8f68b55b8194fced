//! QueryStateAlpha1 end to end: a component that serves `QueriableStateStore` receives Dapr's
//! component query form and its answer comes back with app keys; a store without it is reported
//! as not supporting queries.

mod support;

use std::sync::{Arc, Mutex};

use plugd::proto::components::{
    self as pb, queriable_state_store_server::QueriableStateStore,
    queriable_state_store_server::QueriableStateStoreServer, state_store_server::StateStore,
    state_store_server::StateStoreServer,
};
use plugd::proto::runtime::QueryStateRequest;
use serde_json::Value;
use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;

type Reply<T> = Result<Response<T>, Status>;

/// A store that only answers queries, and records the last one.
#[derive(Clone, Default)]
struct QueryStore {
    last: Arc<Mutex<Option<pb::QueryRequest>>>,
}

#[tonic::async_trait]
impl StateStore for QueryStore {
    async fn init(&self, _: Request<pb::InitRequest>) -> Reply<pb::InitResponse> {
        Ok(Response::new(pb::InitResponse {}))
    }
    async fn features(&self, _: Request<pb::FeaturesRequest>) -> Reply<pb::FeaturesResponse> {
        Ok(Response::new(pb::FeaturesResponse {
            features: vec!["QUERY_API".into()],
        }))
    }
    async fn delete(&self, _: Request<pb::DeleteRequest>) -> Reply<pb::DeleteResponse> {
        Err(Status::unimplemented("delete"))
    }
    async fn get(&self, _: Request<pb::GetRequest>) -> Reply<pb::GetResponse> {
        Ok(Response::new(pb::GetResponse::default()))
    }
    async fn set(&self, _: Request<pb::SetRequest>) -> Reply<pb::SetResponse> {
        Err(Status::unimplemented("set"))
    }
    async fn ping(&self, _: Request<pb::PingRequest>) -> Reply<pb::PingResponse> {
        Ok(Response::new(pb::PingResponse {}))
    }
    async fn bulk_delete(
        &self,
        _: Request<pb::BulkDeleteRequest>,
    ) -> Reply<pb::BulkDeleteResponse> {
        Err(Status::unimplemented("bulk delete"))
    }
    async fn bulk_get(&self, _: Request<pb::BulkGetRequest>) -> Reply<pb::BulkGetResponse> {
        Err(Status::unimplemented("bulk get"))
    }
    async fn bulk_set(&self, _: Request<pb::BulkSetRequest>) -> Reply<pb::BulkSetResponse> {
        Err(Status::unimplemented("bulk set"))
    }
}

#[tonic::async_trait]
impl QueriableStateStore for QueryStore {
    async fn query(&self, req: Request<pb::QueryRequest>) -> Reply<pb::QueryResponse> {
        *self.last.lock().expect("lock") = Some(req.into_inner());
        Ok(Response::new(pb::QueryResponse {
            items: vec![pb::QueryItem {
                key: "testapp||order-1".into(),
                data: br#"{"state":"CA"}"#.to_vec(),
                etag: Some(pb::Etag { value: "7".into() }),
                ..Default::default()
            }],
            token: "next".into(),
            metadata: Default::default(),
        }))
    }
}

fn serve_query_store(socket: &std::path::Path, store: QueryStore) {
    let listener = tokio::net::UnixListener::bind(socket).expect("bind");
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(plugd::proto::FILE_DESCRIPTOR_SET)
        .with_service_name("dapr.proto.components.v1.StateStore")
        .with_service_name("dapr.proto.components.v1.QueriableStateStore")
        .build_v1alpha()
        .expect("reflection");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(reflection)
            .add_service(StateStoreServer::new(store.clone()))
            .add_service(QueriableStateStoreServer::new(store))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
}

const QUERY: &str = r#"{"filter":{"EQ":{"state":"CA"}},"sort":[{"key":"state","order":"DESC"}],"page":{"limit":10}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_reaches_the_component_in_daprs_form() {
    let dirs = support::TestDirs::new();
    let store = QueryStore::default();
    serve_query_store(&dirs.sockets.join("querystore.sock"), store.clone());
    dirs.state_component("orders", "querystore", "");
    let config =
        plugd::config::Config::for_tests(dirs.sockets.clone(), vec![dirs.resources.clone()]);
    let plugd = support::start_plugd(config).await.expect("plugd starts");

    let mut c = plugd.grpc_client().await;
    let resp = c
        .query_state_alpha1(QueryStateRequest {
            store_name: "orders".into(),
            query: QUERY.into(),
            metadata: [("partitionKey".to_string(), "p1".to_string())].into(),
        })
        .await
        .expect("query")
        .into_inner();
    assert_eq!(resp.results.len(), 1);
    assert_eq!(resp.results[0].key, "order-1", "the app sees its own key");
    assert_eq!(resp.results[0].etag, "7");
    assert_eq!(resp.token, "next");

    let seen = store
        .last
        .lock()
        .expect("lock")
        .clone()
        .expect("component got the query");
    assert_eq!(
        seen.metadata.get("partitionKey").map(String::as_str),
        Some("p1")
    );
    let query = seen.query.expect("query message");
    let eq = &query.filter["EQ"];
    assert_eq!(
        eq.type_url, "",
        "Dapr sends the operand as an Any with an empty type URL"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&eq.value).expect("json"),
        serde_json::json!({"state": "CA"})
    );
    assert_eq!(query.sort[0].key, "state");
    assert_eq!(query.sort[0].order, pb::sorting::Order::Desc as i32);
    assert_eq!(query.pagination.map(|p| p.limit), Some(10));

    let http = reqwest::Client::new();
    let r = http
        .post(plugd.http_url("/v1.0-alpha1/state/orders/query"))
        .body(QUERY)
        .send()
        .await
        .expect("query");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["results"][0]["key"], "order-1");
    assert_eq!(
        body["results"][0]["data"],
        serde_json::json!({"state": "CA"})
    );
    assert_eq!(body["token"], "next");

    let r = http
        .post(plugd.http_url("/v1.0-alpha1/state/orders/query"))
        .body("{nope")
        .send()
        .await
        .expect("query");
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["errorCode"], "ERR_STATE_QUERY");
    plugd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_queries_says_so() {
    let dirs = support::TestDirs::new();
    let _sqlite = support::spawn_sqlite(&dirs.sockets, "sqlite");
    dirs.state_component("statestore", "sqlite", "");
    let config =
        plugd::config::Config::for_tests(dirs.sockets.clone(), vec![dirs.resources.clone()]);
    let plugd = support::start_plugd(config).await.expect("plugd starts");

    let mut c = plugd.grpc_client().await;
    let err = c
        .query_state_alpha1(QueryStateRequest {
            store_name: "statestore".into(),
            query: QUERY.into(),
            ..Default::default()
        })
        .await
        .expect_err("sqlite serves no queries");
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(
        err.get_details_error_info().map(|i| i.reason),
        Some("DAPR_STATE_QUERYING_NOT_SUPPORTED".into())
    );
    let r = reqwest::Client::new()
        .post(plugd.http_url("/v1.0-alpha1/state/statestore/query"))
        .body(QUERY)
        .send()
        .await
        .expect("query");
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["errorCode"], "ERR_STATE_STORE_NOT_SUPPORTED");
    plugd.stop().await;
}
