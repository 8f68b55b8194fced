//! Helpers shared by the SDK's integration tests: a server bound on a
//! temporary socket folder and reflection listings.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use plugd_component_sdk::{BoundServer, ComponentServer, ServeError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A served component and the folder its socket lives in.
pub struct Running {
    pub socket: PathBuf,
    pub stop: CancellationToken,
    pub task: JoinHandle<Result<(), ServeError>>,
    pub _dir: tempfile::TempDir,
}

impl Running {
    pub async fn channel(&self) -> Channel {
        plugd_component_sdk::client::connect(&self.socket)
            .await
            .expect("connect over UDS")
    }

    /// Stops the server and waits for a clean end; the socket's path is returned.
    pub async fn shutdown(self) -> PathBuf {
        self.stop.cancel();
        self.task
            .await
            .expect("server task")
            .expect("server stopped cleanly");
        self.socket
    }
}

/// Binds first (so the socket exists), then spawns the server.
pub fn start(server: impl FnOnce(&Path) -> ComponentServer) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let bound: BoundServer = server(dir.path()).bind().expect("bind");
    let socket = bound.socket_path().to_owned();
    let stop = CancellationToken::new();
    let task = tokio::spawn(bound.serve_with_shutdown(stop.clone().cancelled_owned()));
    Running {
        socket,
        stop,
        task,
        _dir: dir,
    }
}

macro_rules! list_services_with {
    ($fn_name:ident, $module:path, $what:literal) => {
        /// The services reflection lists (unsorted), asking with `list`.
        pub async fn $fn_name(channel: Channel, list: &str) -> Vec<String> {
            use r::{
                ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse,
            };
            use $module as r;

            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(list.to_owned())),
            };
            let mut stream = ServerReflectionClient::new(channel)
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .expect(concat!($what, " reflection"))
                .into_inner();
            match stream
                .message()
                .await
                .expect(concat!($what, " response"))
                .and_then(|r| r.message_response)
            {
                Some(MessageResponse::ListServicesResponse(list)) => {
                    list.service.into_iter().map(|s| s.name).collect()
                }
                other => panic!(concat!("unexpected ", $what, " response {:?}"), other),
            }
        }
    };
}

list_services_with!(list_v1alpha, tonic_reflection::pb::v1alpha, "v1alpha");
list_services_with!(list_v1, tonic_reflection::pb::v1, "v1");

/// `list` sorted.
pub fn sorted(mut list: Vec<String>) -> Vec<String> {
    list.sort();
    list
}
