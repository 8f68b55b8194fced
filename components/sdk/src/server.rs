//! The Unix-socket gRPC server: socket file, reflection, serving and shutdown.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::Server;
use tracing::Instrument;

/// Environment variables naming the socket folder, in the order they are read.
///
/// daprd reads the first; Kubernetes sidecar injection sets the second; the
/// third is an older spelling still read by other component SDKs.
pub const SOCKET_FOLDER_ENV_VARS: [&str; 3] = [
    "DAPR_COMPONENTS_SOCKETS_FOLDER",
    "DAPR_COMPONENT_SOCKETS_FOLDER",
    "DAPR_COMPONENT_SOCKET_FOLDER",
];

/// The socket folder used when none of [`SOCKET_FOLDER_ENV_VARS`] is set.
pub const DEFAULT_SOCKET_FOLDER: &str = "/tmp/dapr-components-sockets";

/// The largest message a component built with this crate accepts. Its only client is the
/// host, over the component's own socket, and the host already bounds what apps may send
/// (`--max-body-size` in plugd); tonic's 4 MiB default would refuse values the host accepted.
pub const MAX_MESSAGE_SIZE: usize = usize::MAX;

/// File name extension of the socket: `<name>.sock`.
pub const SOCKET_EXTENSION: &str = "sock";

/// Default mode of the socket file: read/write for owner and group.
pub const DEFAULT_SOCKET_PERMISSIONS: u32 = 0o660;

/// Default bound on draining in-flight calls after the shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Longest socket path the platform accepts (`sun_path` less its NUL byte).
#[cfg(target_os = "linux")]
const MAX_SOCKET_PATH: usize = 107;
#[cfg(not(target_os = "linux"))]
const MAX_SOCKET_PATH: usize = 103;

/// The socket folder from the environment (see [`SOCKET_FOLDER_ENV_VARS`]),
/// else [`DEFAULT_SOCKET_FOLDER`]. Variables set to an empty string are skipped.
pub fn socket_folder_from_env() -> PathBuf {
    SOCKET_FOLDER_ENV_VARS
        .iter()
        .filter_map(std::env::var_os)
        .find(|value| !value.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET_FOLDER), PathBuf::from)
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The socket name is empty or would not give a single file name.
    #[error("invalid socket name {name:?}: {reason}")]
    InvalidSocketName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No component kind was added to the server.
    #[error("no component service was added to the server")]
    NoServices,
    /// The socket path does not fit in a Unix socket address.
    #[error("socket path {} is {len} bytes long; the limit is {max}", path.display())]
    PathTooLong {
        /// The socket path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The platform limit.
        max: usize,
    },
    /// Something other than a socket is in the way.
    #[error("{} exists and is not a socket; refusing to remove it", path.display())]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// Another process is serving on the socket.
    #[error("another server is listening on {}", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// A file-system or socket operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The reflection service could not be built from the descriptors.
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ServeError {
    move |source| ServeError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A pluggable component server: one Unix socket serving one or more kinds.
///
/// Add kinds with the kind modules' methods (for example
/// [`ComponentServer::state_store`]), then call [`serve`](Self::serve),
/// [`serve_with_shutdown`](Self::serve_with_shutdown) or [`bind`](Self::bind).
#[must_use = "a ComponentServer does nothing until served"]
pub struct ComponentServer {
    name: String,
    folder: Option<PathBuf>,
    permissions: u32,
    shutdown_grace: Duration,
    routes: RoutesBuilder,
    services: Vec<&'static str>,
    /// Cancelled when the shutdown signal fires, before the grace period: long-lived streams
    /// (pub/sub subscriptions) end on it so the server can stop promptly.
    stopping: CancellationToken,
}

impl std::fmt::Debug for ComponentServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentServer")
            .field("socket_path", &self.socket_path())
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

impl ComponentServer {
    /// A server whose socket is `<folder>/<socket_name>.sock`. daprd derives the
    /// component type from the file name: socket name `sqlite` serving a state
    /// store is `type: state.sqlite` in a Component YAML.
    pub fn new(socket_name: impl Into<String>) -> Self {
        Self {
            name: socket_name.into(),
            folder: None,
            permissions: DEFAULT_SOCKET_PERMISSIONS,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            routes: RoutesBuilder::default(),
            services: Vec::new(),
            stopping: CancellationToken::new(),
        }
    }

    /// Use `folder` for the socket instead of [`socket_folder_from_env`].
    pub fn socket_folder(mut self, folder: impl Into<PathBuf>) -> Self {
        self.folder = Some(folder.into());
        self
    }

    /// Mode of the socket file (default [`DEFAULT_SOCKET_PERMISSIONS`]).
    pub fn socket_permissions(mut self, mode: u32) -> Self {
        self.permissions = mode;
        self
    }

    /// How long in-flight calls may run after the shutdown signal before the
    /// server stops anyway (default [`DEFAULT_SHUTDOWN_GRACE`]).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// The socket path this server binds.
    pub fn socket_path(&self) -> PathBuf {
        let folder = self.folder.clone().unwrap_or_else(socket_folder_from_env);
        folder.join(format!("{}.{SOCKET_EXTENSION}", self.name))
    }

    /// The fully qualified component services added so far; these, and only
    /// these, are listed by reflection.
    pub fn service_names(&self) -> &[&'static str] {
        &self.services
    }

    /// Used by the kind modules: route a service and list it in reflection.
    pub(crate) fn routes_mut(&mut self) -> &mut RoutesBuilder {
        &mut self.routes
    }

    /// Cancelled when the server starts shutting down.
    pub(crate) fn stopping(&self) -> CancellationToken {
        self.stopping.clone()
    }

    pub(crate) fn advertise(&mut self, service: &'static str) {
        if !self.services.contains(&service) {
            self.services.push(service);
        }
    }

    /// Creates the folder, clears a stale socket, binds and sets permissions.
    ///
    /// The socket accepts connections from here on (they queue until
    /// served), so a test can bind, then spawn [`BoundServer::serve_with_shutdown`]
    /// and dial at once. Needs no runtime.
    pub fn bind(self) -> Result<BoundServer, ServeError> {
        validate_socket_name(&self.name)?;
        if self.services.is_empty() {
            return Err(ServeError::NoServices);
        }
        let path = self.socket_path();
        let routes = self.build_routes()?;

        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(ServeError::PathTooLong {
                path,
                len,
                max: MAX_SOCKET_PATH,
            });
        }
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).map_err(io_error("creating socket folder", folder))?;
        }
        remove_stale_socket(&path)?;

        let listener = std::os::unix::net::UnixListener::bind(&path)
            .map_err(io_error("binding socket", &path))?;
        // The guard owns the file from here on, so every early return removes it.
        let socket = SocketFile::new(path)?;
        std::fs::set_permissions(
            &socket.path,
            std::fs::Permissions::from_mode(self.permissions),
        )
        .map_err(io_error("setting permissions on", &socket.path))?;
        listener
            .set_nonblocking(true)
            .map_err(io_error("configuring socket", &socket.path))?;

        Ok(BoundServer {
            listener,
            socket,
            routes,
            services: self.services,
            shutdown_grace: self.shutdown_grace,
            stopping: self.stopping,
        })
    }

    /// Binds and serves until SIGTERM or SIGINT, then removes the socket.
    pub async fn serve(self) -> Result<(), ServeError> {
        self.bind()?.serve().await
    }

    /// Binds and serves until `signal` completes, then removes the socket.
    ///
    /// With a [`CancellationToken`], pass `token.cancelled_owned()`.
    pub async fn serve_with_shutdown<F>(self, signal: F) -> Result<(), ServeError>
    where
        F: Future<Output = ()> + Send,
    {
        self.bind()?.serve_with_shutdown(signal).await
    }

    fn build_routes(&self) -> Result<Routes, ServeError> {
        let reflection = || {
            self.services.iter().fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(plugd_proto::FILE_DESCRIPTOR_SET),
                |builder, name| builder.with_service_name(*name),
            )
        };
        let mut routes = self.routes.clone();
        routes
            .add_service(reflection().build_v1alpha()?)
            .add_service(reflection().build_v1()?);
        Ok(routes.routes())
    }
}

fn validate_socket_name(name: &str) -> Result<(), ServeError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.contains('/') {
        "it contains '/'"
    } else if name.contains('\0') {
        "it contains a NUL byte"
    } else if name == "." || name == ".." {
        "it is a relative path"
    } else {
        return Ok(());
    };
    Err(ServeError::InvalidSocketName {
        name: name.to_owned(),
        reason,
    })
}

/// Removes a socket file left behind by a process that is gone. A socket that
/// still accepts connections belongs to a live server and is left alone, and
/// so is anything that is not a socket.
fn remove_stale_socket(path: &Path) -> Result<(), ServeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(io_error("inspecting", path)(err)),
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket {
            path: path.to_owned(),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ServeError::InUse {
            path: path.to_owned(),
        });
    }
    tracing::debug!(path = %path.display(), "removing stale socket");
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            Err(io_error("removing stale socket", path)(err))
        }
        _ => Ok(()),
    }
}

/// The socket file we created; removed on drop unless it has been replaced.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    identity: (u64, u64),
}

impl SocketFile {
    fn new(path: PathBuf) -> Result<Self, ServeError> {
        match std::fs::symlink_metadata(&path) {
            Ok(meta) => Ok(Self {
                identity: (meta.dev(), meta.ino()),
                path,
            }),
            Err(err) => {
                // Bound but not inspectable: still try not to leave it behind.
                let _ = std::fs::remove_file(&path);
                Err(io_error("inspecting", &path)(err))
            }
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Only remove the file we bound: another server may have replaced it.
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|meta| {
            meta.file_type().is_socket() && (meta.dev(), meta.ino()) == self.identity
        });
        if ours {
            match std::fs::remove_file(&self.path) {
                Ok(()) => tracing::debug!(path = %self.path.display(), "removed socket"),
                Err(err) => {
                    tracing::warn!(path = %self.path.display(), error = %err, "could not remove socket");
                }
            }
        }
    }
}

/// A server whose socket is bound; serve it with [`serve`](Self::serve) or
/// [`serve_with_shutdown`](Self::serve_with_shutdown). Dropping it removes the
/// socket file.
#[derive(Debug)]
pub struct BoundServer {
    listener: std::os::unix::net::UnixListener,
    socket: SocketFile,
    routes: Routes,
    services: Vec<&'static str>,
    shutdown_grace: Duration,
    stopping: CancellationToken,
}

impl BoundServer {
    /// The bound socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket.path
    }

    /// Serves until SIGTERM or SIGINT, then removes the socket.
    pub async fn serve(self) -> Result<(), ServeError> {
        self.serve_with_shutdown(shutdown_signal()).await
    }

    /// Serves until `signal` completes, lets in-flight calls finish for at
    /// most the shutdown grace, then removes the socket.
    pub async fn serve_with_shutdown<F>(self, signal: F) -> Result<(), ServeError>
    where
        F: Future<Output = ()> + Send,
    {
        let BoundServer {
            listener,
            socket,
            routes,
            services,
            shutdown_grace,
            stopping,
        } = self;
        let span = tracing::info_span!("component_server", socket = %socket.path.display());
        async move {
            let listener = tokio::net::UnixListener::from_std(listener)
                .map_err(io_error("registering socket", &socket.path))?;
            tracing::info!(?services, "serving pluggable component");

            let stop = CancellationToken::new();
            let server = Server::builder().add_routes(routes).serve_with_incoming_shutdown(
                UnixListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            );
            let mut server = std::pin::pin!(server);
            let result = tokio::select! {
                result = &mut server => result,
                () = signal => {
                    tracing::info!("shutting down");
                    stopping.cancel();
                    stop.cancel();
                    match tokio::time::timeout(shutdown_grace, &mut server).await {
                        Ok(result) => result,
                        Err(_) => {
                            tracing::warn!(grace = ?shutdown_grace, "calls still running after the shutdown grace; stopping anyway");
                            Ok(())
                        }
                    }
                }
            };
            drop(socket);
            result.map_err(ServeError::from)
        }
        .instrument(span)
        .await
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::debug!("SIGINT received"),
        () = term => tracing::debug!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_are_checked() {
        assert!(validate_socket_name("sqlite").is_ok());
        assert!(validate_socket_name("my.comp").is_ok());
        for bad in ["", "a/b", "..", "."] {
            assert!(validate_socket_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_regular_file_is_not_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.sock");
        std::fs::write(&path, b"data").expect("write");
        assert!(matches!(
            remove_stale_socket(&path),
            Err(ServeError::NotASocket { .. })
        ));
        assert!(path.exists());
    }

    #[test]
    fn a_stale_socket_is_removed_and_a_live_one_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.sock");
        let live = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert!(matches!(
            remove_stale_socket(&path),
            Err(ServeError::InUse { .. })
        ));
        drop(live);
        remove_stale_socket(&path).expect("stale socket removed");
        assert!(!path.exists());
        remove_stale_socket(&path).expect("missing socket is fine");
    }
}
