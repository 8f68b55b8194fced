//! A `plugd-files` server in the test process on a temporary socket, and
//! gRPC clients for it.

#![allow(dead_code)] // Each test file uses part of this.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plugd_component_sdk::INSTANCE_HEADER;
use plugd_component_sdk::ServeError;
use plugd_component_sdk::proto::output_binding_client::OutputBindingClient;
use plugd_component_sdk::proto::secret_store_client::SecretStoreClient;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Request;
use tonic::transport::Channel;

/// Bound on every wait in these tests.
pub const LIMIT: Duration = Duration::from_secs(10);

pub async fn within<F: std::future::IntoFuture>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The server, serving from a temporary folder that also holds the test's
/// files.
pub struct Server {
    pub dir: TempDir,
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl Server {
    /// Binds (the socket accepts connections from then on) and serves in a
    /// task.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bound = plugd_files::server(plugd_files::DEFAULT_SOCKET_NAME)
            .socket_folder(dir.path().join("sockets"))
            .bind()
            .expect("bind");
        let socket = bound.socket_path().to_path_buf();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve_with_shutdown(async move {
            let _ = stopped.await;
        }));
        Self {
            dir,
            socket,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub async fn channel(&self) -> Channel {
        within(
            "connecting",
            plugd_component_sdk::client::connect(&self.socket),
        )
        .await
        .expect("connect")
    }

    pub async fn secrets(&self) -> SecretStoreClient<Channel> {
        SecretStoreClient::new(self.channel().await)
    }

    pub async fn binding(&self) -> OutputBindingClient<Channel> {
        OutputBindingClient::new(self.channel().await)
    }

    /// Stops the server and waits (bounded) for it to end cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            within("the server to stop", task)
                .await
                .expect("server task")
                .expect("server result");
        }
        assert!(!self.socket.exists(), "socket left behind");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// `message` for component instance `instance`.
pub fn to<T>(instance: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(INSTANCE_HEADER, instance.parse().expect("ascii instance"));
    request
}

pub fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub fn text(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}
