//! Socket-folder discovery: find every Unix socket, dial it, and ask its gRPC reflection
//! service (v1alpha first, as every Dapr component serves it, then v1) what it implements.
//!
//! Each socket is probed concurrently and bounded in time, so a stale socket, a listener that
//! does not speak gRPC or a server without reflection is reported with its path and reason and
//! never delays or breaks the others.

use std::{
    collections::{BTreeMap, HashMap},
    io::ErrorKind,
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
    sync::Arc,
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
    pub identity: Identity,
}

/// A socket that could not be used, and why.
#[derive(Debug, Clone)]
pub struct SocketFailure {
    pub path: PathBuf,
    pub name: String,
    pub reason: String,
    pub identity: Identity,
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
        self.sockets
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
    }

    /// Why the socket for `name` is unusable, if one was found but failed.
    pub fn failure(&self, name: &str) -> Option<&SocketFailure> {
        self.failures
            .iter()
            .rev()
            .find(|s| s.name.eq_ignore_ascii_case(name))
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

/// A socket file's identity: device, inode and change time. A recreated socket is a new file
/// even when the file system hands out the same inode number again (ext4 does, at once).
pub type Identity = (u64, u64, i64, i64);

/// What one read of the socket folder found.
#[derive(Debug, Default)]
pub struct Listing {
    /// Socket files (symlinks to sockets count), sorted by name, with their identity.
    pub sockets: Vec<(PathBuf, Identity)>,
    /// Everything else (files, sub-folders, unreadable entries), with why it is skipped.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Reads `folder` once. A missing folder holds nothing.
pub fn list_sockets(folder: &Path) -> Listing {
    use std::os::unix::fs::MetadataExt;
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(folder = %folder.display(), "socket folder does not exist (yet)");
            return Listing::default();
        }
        Err(e) => {
            tracing::warn!(folder = %folder.display(), error = %e, "cannot read socket folder");
            return Listing::default();
        }
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    let mut listing = Listing::default();
    for path in paths {
        match std::fs::metadata(&path) {
            Ok(m) if m.file_type().is_socket() => listing
                .sockets
                .push((path, (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))),
            Ok(m) if m.is_dir() => listing.skipped.push((path, "a sub-folder".into())),
            Ok(_) => listing.skipped.push((path, "not a Unix socket".into())),
            Err(e) => listing.skipped.push((path, format!("unreadable: {e}"))),
        }
    }
    listing
}

/// Scans `folder` once and probes every socket concurrently, each bounded by `timeout` for the
/// dial and again for the reflection call.
pub async fn scan(folder: &Path, timeout: Duration) -> Discovery {
    Scanner::new(folder.to_path_buf(), timeout).scan().await
}

/// Repeated scans of one folder: sockets whose file has not changed since they last answered
/// are not probed again; new, recreated and previously failing sockets are.
pub struct Scanner {
    folder: PathBuf,
    timeout: Duration,
    /// Uids allowed to serve sockets (`--allowed-component-uids`); empty: any.
    allowed_uids: Arc<[u32]>,
    /// The folder (device, inode, mode, owner) last checked: checked again when it is
    /// recreated or its permissions or owner change.
    checked_folder: Option<(u64, u64, u32, u32)>,
    known: HashMap<PathBuf, (Identity, DiscoveredSocket)>,
    failed: HashMap<PathBuf, (Identity, String)>,
    warned: std::collections::HashSet<PathBuf>,
}

impl Scanner {
    pub fn new(folder: PathBuf, timeout: Duration) -> Self {
        Self {
            folder,
            timeout,
            allowed_uids: Arc::from([]),
            checked_folder: None,
            known: HashMap::new(),
            failed: HashMap::new(),
            warned: Default::default(),
        }
    }

    /// Refuses sockets whose server runs as a uid not in `uids` (empty: any uid).
    pub fn with_allowed_uids(mut self, uids: &[u32]) -> Self {
        self.allowed_uids = Arc::from(uids);
        self
    }

    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// Warns once per folder (and again when it is recreated, or its mode or owner change)
    /// about permissions that let other users replace component sockets.
    pub fn check_folder(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(&self.folder) else {
            return;
        };
        let id = (meta.dev(), meta.ino(), meta.mode(), meta.uid());
        if self.checked_folder == Some(id) {
            return;
        }
        self.checked_folder = Some(id);
        for problem in folder_problems(meta.mode(), meta.uid(), own_uid()) {
            tracing::warn!(folder = %self.folder.display(), "insecure socket folder: {problem}");
        }
    }

    pub async fn scan(&mut self) -> Discovery {
        self.check_folder();
        let Listing {
            sockets: listed,
            skipped,
        } = list_sockets(&self.folder);
        // Say each skipped entry once, while it stays.
        self.warned.retain(|p| skipped.iter().any(|(s, _)| s == p));
        for (path, why) in skipped {
            if self.warned.insert(path.clone()) {
                tracing::warn!(path = %path.display(), "skipping entry in socket folder: {why}");
            }
        }
        let timeout = self.timeout;
        let allowed = &self.allowed_uids;
        let probes = listed.into_iter().map(|(path, identity)| {
            let cached = self
                .known
                .get(&path)
                .filter(|(id, _)| *id == identity)
                .map(|(_, s)| s.clone());
            async move {
                if let Some(socket) = cached {
                    return (identity, Ok(socket));
                }
                let name = type_name(&path);
                if let Err(reason) = check_peer_uid(&path, allowed, timeout).await {
                    return (
                        identity,
                        Err(SocketFailure {
                            path,
                            name,
                            reason,
                            identity,
                        }),
                    );
                }
                let result = match probe(&path, timeout).await {
                    Ok((services, reflection)) => {
                        let kinds: Vec<ComponentKind> = services
                            .iter()
                            .filter_map(|s| ComponentKind::from_service_name(s))
                            .collect();
                        if kinds.is_empty() {
                            Err(SocketFailure {
                                reason: format!("serves no component service (found {services:?})"),
                                path,
                                name,
                                identity,
                            })
                        } else {
                            tracing::info!(socket = %path.display(), component_type = %name,
                                kinds = ?kinds, reflection, "pluggable component discovered");
                            Ok(DiscoveredSocket {
                                path,
                                name,
                                services,
                                kinds,
                                reflection,
                                identity,
                            })
                        }
                    }
                    Err(reason) => Err(SocketFailure {
                        path,
                        name,
                        reason,
                        identity,
                    }),
                };
                (identity, result)
            }
        });
        let mut discovery = Discovery {
            folder: self.folder.clone(),
            ..Default::default()
        };
        let mut known = HashMap::new();
        let mut failed = HashMap::new();
        // Later files win on a name clash (as in Dapr), but plugd says so.
        let mut by_name: BTreeMap<String, DiscoveredSocket> = BTreeMap::new();
        for (identity, result) in futures::future::join_all(probes).await {
            match result {
                Ok(socket) => {
                    known.insert(socket.path.clone(), (identity, socket.clone()));
                    if let Some(prev) = by_name.insert(socket.name.clone(), socket.clone()) {
                        tracing::warn!(name = %socket.name, ignored = %prev.path.display(), used = %socket.path.display(),
                            "two sockets have the same component type name; the later file wins");
                    }
                }
                Err(failure) => {
                    // Say it once per socket file and reason, not on every rescan.
                    let said = (failure.identity, failure.reason.clone());
                    if self.failed.get(&failure.path) != Some(&said) {
                        tracing::warn!(socket = %failure.path.display(), reason = %failure.reason, "socket skipped");
                    }
                    failed.insert(failure.path.clone(), said);
                    discovery.failures.push(failure);
                }
            }
        }
        self.failed = failed;
        self.known = known;
        discovery.sockets = by_name.into_values().collect();
        discovery
    }
}

/// Watches the socket folder (inotify, debounced) and rescans on every change, and every
/// `rescan_every` in any case (to retry sockets that failed and cover missed events). Each
/// scan that differs from the last is published.
pub fn watch_folder(
    mut scanner: Scanner,
    first: Discovery,
    rescan_every: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::sync::watch::Receiver<Arc<Discovery>> {
    use notify::Watcher;
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(first));
    let (events_tx, mut events) = tokio::sync::mpsc::channel::<()>(16);
    let folder = scanner.folder().to_path_buf();
    if let Err(e) = std::fs::create_dir_all(&folder) {
        tracing::warn!(folder = %folder.display(), error = %e, "cannot create the socket folder");
    }
    scanner.check_folder();
    // Only changes count: scans open the folder themselves, and opens must not trigger scans.
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|e| !e.kind.is_access()) {
            let _ = events_tx.try_send(());
        }
    })
    .and_then(|mut w| {
        w.watch(&folder, notify::RecursiveMode::NonRecursive)
            .map(|()| w)
    });
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(folder = %folder.display(), error = %e,
                "cannot watch the socket folder; rescanning every {rescan_every:?} only");
            None
        }
    };
    tokio::spawn(async move {
        let _watcher = watcher;
        let mut last = fingerprint(&tx.borrow());
        // Sockets that fail (e.g. bound but not serving yet) are retried soon, then less often.
        let mut retry = FIRST_RETRY;
        loop {
            let failing = !tx.borrow().failures.is_empty();
            let wait = if failing {
                retry.min(rescan_every)
            } else {
                rescan_every
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(()) = events.recv() => {
                    // Debounce: let a burst of events settle.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    while events.try_recv().is_ok() {}
                    retry = FIRST_RETRY;
                }
                _ = tokio::time::sleep(wait) => retry = (retry * 2).min(rescan_every),
            }
            let discovery = scanner.scan().await;
            let now = fingerprint(&discovery);
            if now != last {
                tracing::debug!(
                    sockets = discovery.sockets.len(),
                    failed = discovery.failures.len(),
                    "socket folder changed"
                );
                last = now;
                retry = FIRST_RETRY;
                if tx.send(Arc::new(discovery)).is_err() {
                    break;
                }
            }
        }
    });
    rx
}

const FIRST_RETRY: Duration = Duration::from_millis(100);

fn fingerprint(d: &Discovery) -> Vec<(PathBuf, Identity, bool)> {
    let mut out: Vec<_> = d
        .sockets
        .iter()
        .map(|s| (s.path.clone(), s.identity, true))
        .chain(
            d.failures
                .iter()
                .map(|f| (f.path.clone(), f.identity, false)),
        )
        .collect();
    out.sort();
    out
}

/// plugd's effective uid.
pub fn own_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// What is wrong with a socket folder of `mode` owned by `owner`, for a plugd running as
/// `me`: world-writable without the sticky bit (anyone may replace sockets), or owned by
/// another user (not root), who may change it.
pub fn folder_problems(mode: u32, owner: u32, me: u32) -> Vec<String> {
    let mut problems = Vec::new();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        problems.push(format!(
            "it is world-writable (mode {:o}) without the sticky bit: any local user can replace \
             component sockets (chmod o-w or chmod +t)",
            mode & 0o7777
        ));
    }
    if owner != me && owner != 0 {
        problems.push(format!(
            "it is owned by uid {owner}, not by plugd's uid {me} or root: that user can replace \
             component sockets"
        ));
    }
    problems
}

/// With allowed uids, connects to the socket and checks the uid of the process serving it
/// (its peer credentials). `Err` says why the socket is refused.
///
/// This reports a refusal early, at discovery; the connection used for Init is checked again
/// by [`crate::component::dial_watched`], so a socket swapped after this check gains nothing.
async fn check_peer_uid(path: &Path, allowed: &[u32], timeout: Duration) -> Result<(), String> {
    if allowed.is_empty() {
        return Ok(());
    }
    let stream = match tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path)).await {
        Ok(Ok(stream)) => stream,
        // Not connectable: the probe says why.
        Ok(Err(_)) | Err(_) => return Ok(()),
    };
    crate::component::check_peer_uid(&stream, allowed).map_err(|e| format!("refused: {e}"))
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

/// Lists a component's gRPC services through server reflection, one fn per
/// reflection version (`list_v1alpha`, `list_v1`); shared with `plugd conformance`.
macro_rules! list_services_with {
    ($fn_name:ident, $module:path) => {
        pub(crate) async fn $fn_name(channel: Channel) -> Result<Vec<String>, tonic::Status> {
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
    fn folder_problems_name_mode_and_owner() {
        assert!(folder_problems(0o40755, 1000, 1000).is_empty());
        assert!(folder_problems(0o41777, 0, 1000).is_empty(), "/tmp style");
        let p = folder_problems(0o40777, 1000, 1000);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("world-writable") && p[0].contains("777"));
        let p = folder_problems(0o40755, 1234, 1000);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("uid 1234") && p[0].contains("1000"));
        assert_eq!(folder_problems(0o40777, 1234, 1000).len(), 2);
    }

    #[test]
    fn type_names_drop_the_last_extension_and_lower_case() {
        assert_eq!(type_name(Path::new("/s/my-comp.sock")), "my-comp");
        assert_eq!(type_name(Path::new("/s/my.comp.sock")), "my.comp");
        assert_eq!(type_name(Path::new("/s/mycomp")), "mycomp");
        assert_eq!(type_name(Path::new("/s/MyStore.SOCK")), "mystore");
        assert_eq!(type_name(Path::new("/s/.sock")), "");
    }
}
