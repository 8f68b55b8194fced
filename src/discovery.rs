//! Socket-folder discovery: find every Unix socket, dial it, and ask its gRPC reflection
//! service (v1alpha first, as every Dapr component serves it, then v1) what it implements.
//!
//! Each socket is probed concurrently and bounded in time, so a stale socket, a listener that
//! does not speak gRPC or a server without reflection is reported with its path and reason and
//! never delays or breaks the others.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
    time::Duration,
};

use tonic::{Code, transport::Channel};

use crate::component::{ComponentError, ComponentKind, dial, error_chain};

/// A socket that answered reflection.
#[derive(Debug, Clone)]
pub struct DiscoveredSocket {
    pub path: PathBuf,
    /// The component type name: the file name minus its last extension, lower-cased.
    pub name: String,
    pub services: Vec<String>,
    pub kinds: Vec<ComponentKind>,
    /// Which reflection API answered: `v1alpha` or `v1`.
    pub reflection: &'static str,
}

/// A socket that could not be used, and why.
#[derive(Debug, Clone)]
pub struct SocketFailure {
    pub path: PathBuf,
    pub name: String,
    pub reason: String,
}

/// The result of one scan.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    pub folder: PathBuf,
    pub sockets: Vec<DiscoveredSocket>,
    pub failures: Vec<SocketFailure>,
}

impl Discovery {
    /// The socket serving type `name` (already lower-cased), if one answered.
    pub fn socket(&self, name: &str) -> Option<&DiscoveredSocket> {
        self.sockets.iter().find(|s| s.name == name)
    }

    /// Why the socket for `name` is unusable, if one was found but failed.
    pub fn failure(&self, name: &str) -> Option<&SocketFailure> {
        self.failures.iter().rev().find(|s| s.name == name)
    }
}

/// The component type name for a socket file: its name minus the last extension, lower-cased.
pub fn type_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = match file.rfind('.') {
        Some(i) => &file[..i],
        None => file.as_str(),
    };
    stem.to_ascii_lowercase()
}

/// Lists the socket files of `folder` (sorted by name). A missing folder holds none.
/// Symlinks to sockets count; other files and sub-folders are skipped with a warning.
pub fn list_sockets(folder: &Path) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(folder = %folder.display(), "socket folder does not exist; no pluggable components");
            return Vec::new();
        }
        Err(e) => {
            tracing::warn!(folder = %folder.display(), error = %e, "cannot read socket folder");
            return Vec::new();
        }
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    paths
        .into_iter()
        .filter(|path| match std::fs::metadata(path) {
            Ok(m) if m.file_type().is_socket() => true,
            Ok(m) if m.is_dir() => {
                tracing::warn!(path = %path.display(), "skipping sub-folder in socket folder");
                false
            }
            Ok(_) => {
                tracing::warn!(path = %path.display(), "skipping file that is not a Unix socket");
                false
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "skipping unreadable entry in socket folder");
                false
            }
        })
        .collect()
}

/// Scans `folder` and probes every socket concurrently, each bounded by `timeout` for the dial
/// and again for the reflection call.
pub async fn scan(folder: &Path, timeout: Duration) -> Discovery {
    let paths = list_sockets(folder);
    let probes = paths.into_iter().map(|path| async move {
        let name = type_name(&path);
        match probe(&path, timeout).await {
            Ok((services, reflection)) => {
                let kinds: Vec<ComponentKind> = services
                    .iter()
                    .filter_map(|s| ComponentKind::from_service_name(s))
                    .collect();
                Ok(DiscoveredSocket {
                    path,
                    name,
                    services,
                    kinds,
                    reflection,
                })
            }
            Err(reason) => Err(SocketFailure { path, name, reason }),
        }
    });
    let mut discovery = Discovery {
        folder: folder.to_path_buf(),
        ..Default::default()
    };
    // Later files win on a name clash (as in Dapr), but plugd says so.
    let mut by_name: BTreeMap<String, DiscoveredSocket> = BTreeMap::new();
    for result in futures::future::join_all(probes).await {
        match result {
            Ok(socket) => {
                if socket.kinds.is_empty() {
                    tracing::warn!(socket = %socket.path.display(), services = ?socket.services,
                        "socket serves no component service; ignored");
                    discovery.failures.push(SocketFailure {
                        path: socket.path.clone(),
                        name: socket.name.clone(),
                        reason: format!(
                            "serves no component service (found {:?})",
                            socket.services
                        ),
                    });
                    continue;
                }
                tracing::info!(socket = %socket.path.display(), component_type = %socket.name,
                    kinds = ?socket.kinds, reflection = socket.reflection, "pluggable component discovered");
                if let Some(prev) = by_name.insert(socket.name.clone(), socket.clone()) {
                    tracing::warn!(name = %socket.name, ignored = %prev.path.display(), used = %socket.path.display(),
                        "two sockets have the same component type name; the later file wins");
                }
            }
            Err(failure) => {
                tracing::warn!(socket = %failure.path.display(), reason = %failure.reason, "socket skipped");
                discovery.failures.push(failure);
            }
        }
    }
    discovery.sockets = by_name.into_values().collect();
    discovery
}

/// Dials one socket and lists its services: v1alpha reflection, then v1.
pub async fn probe(path: &Path, timeout: Duration) -> Result<(Vec<String>, &'static str), String> {
    let channel = dial(path, timeout).await.map_err(|e| {
        let hint = match &e {
            ComponentError::Connect {
                kind: Some(ErrorKind::ConnectionRefused),
                ..
            } => "no process listens on this socket (a stale socket file?)",
            ComponentError::Connect {
                kind: Some(ErrorKind::TimedOut),
                ..
            } => "the listener did not complete an HTTP/2 handshake",
            ComponentError::Connect {
                kind: Some(ErrorKind::PermissionDenied),
                ..
            } => "plugd may not open this socket",
            _ => "the listener does not speak gRPC (HTTP/2)",
        };
        format!("{}: {hint}", e.detail())
    })?;
    match bounded(timeout, list_v1alpha(channel.clone())).await {
        Ok(services) => Ok((services, "v1alpha")),
        Err(status) if status.code() == Code::Unimplemented => bounded(timeout, list_v1(channel))
            .await
            .map(|s| (s, "v1"))
            .map_err(|s| match s.code() {
                Code::Unimplemented => {
                    "the server has no gRPC reflection service (v1alpha or v1)".to_string()
                }
                _ => format!("reflection v1 failed: {}", describe(&s)),
            }),
        Err(status) if status.code() == Code::DeadlineExceeded => Err(format!(
            "the reflection call got no answer within {timeout:?}: the listener does not answer as a gRPC server"
        )),
        Err(status) => Err(format!(
            "the reflection call failed, so this does not look like a gRPC server: {}",
            describe(&status)
        )),
    }
}

fn describe(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(source) = std::error::Error::source(status) {
        text.push_str(" (");
        text.push_str(&error_chain(source));
        text.push(')');
    }
    text
}

async fn bounded<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(format!(
                "no answer within {timeout:?}"
            )))
        })
}

macro_rules! list_services_with {
    ($fn_name:ident, $module:path) => {
        async fn $fn_name(channel: Channel) -> Result<Vec<String>, tonic::Status> {
            use r::{
                server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse,
            };
            use $module as r;
            let request = r::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices("*".into())),
            };
            let mut stream = ServerReflectionClient::new(channel)
                .server_reflection_info(tokio_stream::once(request))
                .await?
                .into_inner();
            match stream.message().await?.and_then(|m| m.message_response) {
                Some(MessageResponse::ListServicesResponse(list)) => {
                    Ok(list.service.into_iter().map(|s| s.name).collect())
                }
                Some(MessageResponse::ErrorResponse(e)) => Err(tonic::Status::new(
                    Code::from_i32(e.error_code),
                    e.error_message,
                )),
                _ => Err(tonic::Status::unknown(
                    "reflection answered without a service list",
                )),
            }
        }
    };
}

list_services_with!(list_v1alpha, tonic_reflection::pb::v1alpha);
list_services_with!(list_v1, tonic_reflection::pb::v1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_drop_the_last_extension_and_lower_case() {
        assert_eq!(type_name(Path::new("/s/my-comp.sock")), "my-comp");
        assert_eq!(type_name(Path::new("/s/my.comp.sock")), "my.comp");
        assert_eq!(type_name(Path::new("/s/mycomp")), "mycomp");
        assert_eq!(type_name(Path::new("/s/MyStore.SOCK")), "mystore");
        assert_eq!(type_name(Path::new("/s/.sock")), "");
    }
}
