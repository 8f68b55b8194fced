//! Component kinds, the connection to one component instance, and the per-kind traits.
//!
//! Every kind has one async trait (`state::StateStore`, …) stored as `Arc<dyn Trait>` in the
//! registry, and one gRPC adapter behind it. All adapters share [`Connection`]: one tonic
//! `Channel` per component instance over the component's Unix socket, the
//! `x-component-instance` header on every call, and a deadline on every call.

pub mod bindings;
pub mod pubsub;
pub mod secretstore;
pub mod state;

use std::{
    fmt,
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;
use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataValue},
    transport::{Channel, Endpoint, Uri},
};
use tracing::Instrument as _;

const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The `grpc-timeout` header tonic would send for `timeout`.
fn timeout_header(timeout: Duration) -> Option<AsciiMetadataValue> {
    let mut req = Request::new(());
    req.set_timeout(timeout);
    req.metadata().get(GRPC_TIMEOUT).cloned()
}

/// The header that tells a component which instance a call is for.
pub const INSTANCE_HEADER: &str = "x-component-instance";

/// The closed set of component kinds, each tied to the gRPC service that serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ComponentKind {
    State,
    PubSub,
    InputBinding,
    OutputBinding,
    SecretStore,
}

impl ComponentKind {
    pub const ALL: [Self; 5] = [
        Self::State,
        Self::PubSub,
        Self::InputBinding,
        Self::OutputBinding,
        Self::SecretStore,
    ];

    /// The fully-qualified gRPC service a component serves for this kind.
    pub fn service_name(self) -> &'static str {
        match self {
            Self::State => "dapr.proto.components.v1.StateStore",
            Self::PubSub => "dapr.proto.components.v1.PubSub",
            Self::InputBinding => "dapr.proto.components.v1.InputBinding",
            Self::OutputBinding => "dapr.proto.components.v1.OutputBinding",
            Self::SecretStore => "dapr.proto.components.v1.SecretStore",
        }
    }

    pub fn from_service_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.service_name() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::State => "state",
            Self::PubSub => "pubsub",
            Self::InputBinding => "input binding",
            Self::OutputBinding => "output binding",
            Self::SecretStore => "secret store",
        }
    }
}

impl fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure talking to a component. The upstream `Status` is kept intact.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("component {component}: {method} failed: {}", status_text(.status))]
    Status {
        component: String,
        method: &'static str,
        status: Status,
    },
    #[error("component {component}: {method} timed out after {timeout:?}")]
    Timeout {
        component: String,
        method: &'static str,
        timeout: Duration,
    },
    #[error("cannot connect to socket {}: {reason}", .socket.display())]
    Connect {
        socket: PathBuf,
        /// What the operating system said, when it said something (`ConnectionRefused` for a
        /// socket file nobody listens on, `TimedOut` when the handshake got no answer).
        kind: Option<std::io::ErrorKind>,
        reason: String,
    },
}

impl ComponentError {
    /// The component's own status, if it answered with one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Self::Status { status, .. } => Some(status),
            _ => None,
        }
    }

    /// Whether the component could not be reached (rather than answering with an error).
    pub fn is_connection_failure(&self) -> bool {
        match self {
            Self::Status { status, .. } => is_transport_failure(status),
            Self::Connect { .. } => true,
            Self::Timeout { .. } => false,
        }
    }

    /// The short text of the failure, without the component prefix.
    pub fn detail(&self) -> String {
        match self {
            Self::Status { status, .. } => status_text(status),
            Self::Timeout { timeout, .. } => format!("timed out after {timeout:?}"),
            Self::Connect { reason, .. } => reason.clone(),
        }
    }
}

/// What a call on a channel whose connection broke fails with.
pub const CONNECTION_LOST: &str =
    "the connection to the component was lost; plugd re-initialises it before using it again";

/// Opens a gRPC channel over a Unix socket, bounded by `timeout` (connect + HTTP/2 handshake).
///
/// Any process may serve the socket: this is for tools (`plugd inspect`, `plugd conformance`)
/// and probes that send nothing secret. Components are dialled with [`dial_watched`], which
/// checks `--allowed-component-uids`.
pub async fn dial(socket: &Path, timeout: Duration) -> Result<Channel, ComponentError> {
    dial_watched(socket, timeout, &[])
        .await
        .map(|(channel, _)| channel)
}

/// Like [`dial`], and also returns a token that is cancelled when the channel's connection
/// closes (the component exited or dropped it).
///
/// The channel uses exactly one connection: once it closes, tonic's attempts to reconnect fail
/// at once (UNAVAILABLE). The process behind the socket may have restarted and would not know
/// the instance, so plugd dials a new channel and runs Init again instead.
///
/// With `allowed_uids` (`--allowed-component-uids`; empty: any uid), the peer credentials of
/// that very connection are checked before anything is sent on it: a process running as
/// another uid is refused with a `Connect` error of kind `PermissionDenied` naming its uid.
/// Checking here rather than only at discovery leaves no window to swap the socket for an
/// impostor between the check and the Init request (which carries resolved secrets).
pub async fn dial_watched(
    socket: &Path,
    timeout: Duration,
    allowed_uids: &[u32],
) -> Result<(Channel, CancellationToken), ComponentError> {
    let path = socket.to_path_buf();
    let allowed: Arc<[u32]> = Arc::from(allowed_uids);
    let used = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let closed = CancellationToken::new();
    let on_close = closed.clone();
    // The URI is only used for the :authority header; the connector ignores it.
    let endpoint = Endpoint::from_static("http://localhost");
    let connect = endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
        let path = path.clone();
        let first = !used.swap(true, std::sync::atomic::Ordering::SeqCst);
        let on_close = on_close.clone();
        let allowed = allowed.clone();
        async move {
            if !first {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    CONNECTION_LOST,
                ));
            }
            let stream = UnixStream::connect(path).await?;
            check_peer_uid(&stream, &allowed)?;
            Ok::<_, std::io::Error>(WatchedIo {
                io: TokioIo::new(stream),
                _on_close: on_close.drop_guard(),
            })
        }
    }));
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(channel)) => Ok((channel, closed)),
        Ok(Err(e)) => Err(ComponentError::Connect {
            socket: socket.to_path_buf(),
            kind: io_error_kind(&e),
            reason: match peer_refusal(&e) {
                Some(refused) => format!("refused: {refused}"),
                None => error_chain(&e),
            },
        }),
        Err(_) => Err(ComponentError::Connect {
            socket: socket.to_path_buf(),
            kind: Some(std::io::ErrorKind::TimedOut),
            reason: format!("no answer within {timeout:?}"),
        }),
    }
}

/// Checks that the process serving `stream` (its peer credentials) runs as one of `allowed`;
/// empty `allowed`: any uid, and nothing is checked. The error has kind `PermissionDenied`
/// and names the uid and `--allowed-component-uids`.
pub fn check_peer_uid(stream: &UnixStream, allowed: &[u32]) -> std::io::Result<()> {
    if allowed.is_empty() {
        return Ok(());
    }
    let uid = stream
        .peer_cred()
        .map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "cannot read the peer credentials of the socket ({e}), needed for \
                     --allowed-component-uids"
                ),
            )
        })?
        .uid();
    if allowed.contains(&uid) {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            PeerRefused {
                uid,
                allowed: allowed.into(),
            },
        ))
    }
}

/// A socket served by a uid that `--allowed-component-uids` does not list.
#[derive(Debug)]
struct PeerRefused {
    uid: u32,
    allowed: Box<[u32]>,
}

impl fmt::Display for PeerRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the socket is served by uid {}, which is not in --allowed-component-uids ",
            self.uid
        )?;
        for (i, uid) in self.allowed.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{uid}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PeerRefused {}

/// The [`PeerRefused`] in `e`'s chain, if the dial failed because of it.
fn peer_refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a PeerRefused> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(refused) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<PeerRefused>())
        {
            return Some(refused);
        }
        cur = err.source();
    }
    None
}

/// The connection's IO: when hyper drops it (the connection ended), the token is cancelled.
struct WatchedIo {
    io: TokioIo<UnixStream>,
    _on_close: tokio_util::sync::DropGuard,
}

impl hyper::rt::Read for WatchedIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for WatchedIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The kind of the first `io::Error` in `e`'s chain.
fn io_error_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = err.source();
    }
    None
}

/// A status's message, or its code when the message is empty.
fn status_text(status: &Status) -> String {
    if status.message().is_empty() {
        format!("{:?} (no message)", status.code())
    } else {
        status.message().to_string()
    }
}

/// Whether `status` was made by the transport (the connection failed), not sent by the
/// component: such statuses carry the transport error as their source.
pub fn is_transport_failure(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Internal
            // A request queued while the connection closes is cancelled by the transport.
            | tonic::Code::Cancelled
    ) && std::error::Error::source(status).is_some()
}

/// `e` and its sources, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}

/// The connection to one component instance: a channel, the instance name and a deadline.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<ConnInner>,
}

#[derive(Clone)]
struct ConnInner {
    channel: Channel,
    instance: String,
    header: AsciiMetadataValue,
    socket: PathBuf,
    call_timeout: Duration,
    closed: CancellationToken,
    message_limit: usize,
    metrics: Arc<crate::metrics::ComponentCalls>,
    /// The `grpc-timeout` header for `call_timeout`, formatted once.
    default_timeout: Option<AsciiMetadataValue>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("instance", &self.inner.instance)
            .field("socket", &self.inner.socket)
            .finish()
    }
}

impl Connection {
    /// `instance` must be a valid header value (component names are validated as such).
    pub fn new(
        channel: Channel,
        instance: &str,
        socket: PathBuf,
        call_timeout: Duration,
    ) -> Result<Self, ComponentError> {
        Self::watched(
            channel,
            CancellationToken::new(),
            instance,
            socket,
            call_timeout,
        )
    }

    /// A connection whose `closed` token (from [`dial_watched`]) says when it has ended.
    pub fn watched(
        channel: Channel,
        closed: CancellationToken,
        instance: &str,
        socket: PathBuf,
        call_timeout: Duration,
    ) -> Result<Self, ComponentError> {
        let header = MetadataValue::try_from(instance).map_err(|_| ComponentError::Connect {
            socket: socket.clone(),
            kind: None,
            reason: format!("component name {instance:?} is not a valid header value"),
        })?;
        Ok(Self {
            inner: Arc::new(ConnInner {
                channel,
                instance: instance.to_string(),
                header,
                socket,
                call_timeout,
                closed,
                message_limit: crate::limits::component_message_limit(
                    crate::limits::DEFAULT_MAX_BODY_SIZE,
                ),
                metrics: Arc::new(crate::metrics::ComponentCalls::new(instance)),
                default_timeout: timeout_header(call_timeout),
            }),
        })
    }

    /// Sets the largest message sent to or accepted from the component (see
    /// [`crate::limits::component_message_limit`]).
    pub fn with_message_limit(mut self, limit: usize) -> Self {
        Arc::make_mut(&mut self.inner).message_limit = limit;
        self
    }

    /// Whether the connection has closed.
    pub fn is_lost(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// Resolves once the connection has closed.
    pub async fn lost(&self) {
        self.inner.closed.cancelled().await
    }

    pub fn channel(&self) -> Channel {
        self.inner.channel.clone()
    }

    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    pub fn socket(&self) -> &Path {
        &self.inner.socket
    }

    pub fn call_timeout(&self) -> Duration {
        self.inner.call_timeout
    }

    /// Wraps a message with the instance header and the deadline.
    pub fn request<T>(&self, message: T, timeout: Duration) -> Request<T> {
        let mut req = Request::new(message);
        req.metadata_mut()
            .insert(INSTANCE_HEADER, self.inner.header.clone());
        match &self.inner.default_timeout {
            Some(value) if timeout == self.inner.call_timeout => {
                req.metadata_mut().insert(GRPC_TIMEOUT, value.clone());
            }
            _ => req.set_timeout(timeout),
        }
        req.extensions_mut()
            .insert(MessageLimit(self.inner.message_limit));
        req
    }

    /// Wraps the request of a long-lived stream: the instance header, the trace context of a
    /// span for the stream's opening, no deadline.
    pub fn stream_request<T>(&self, method: &'static str, message: T) -> Request<T> {
        let mut req = Request::new(message);
        req.metadata_mut()
            .insert(INSTANCE_HEADER, self.inner.header.clone());
        req.extensions_mut()
            .insert(MessageLimit(self.inner.message_limit));
        // The span only marks the opening; the stream outlives it.
        let _span =
            crate::telemetry::trace::for_call(req.metadata_mut(), || self.call_span(method));
        req
    }

    /// The span of one call to the component; its context travels in the call's metadata.
    fn call_span(&self, method: &'static str) -> tracing::Span {
        let span = tracing::error_span!(
            "component_call",
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            component = %self.inner.instance,
            socket = %self.inner.socket.display(),
            method,
            trace_id = tracing::field::Empty,
        );
        crate::telemetry::trace::start(&span, opentelemetry::Context::new(), method, "client");
        span
    }

    /// Runs one unary call with the default deadline.
    pub async fn call<M, T, F, Fut>(
        &self,
        method: &'static str,
        message: M,
        f: F,
    ) -> Result<T, ComponentError>
    where
        F: FnOnce(Channel, Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_with_timeout(method, self.inner.call_timeout, message, f)
            .await
    }

    /// Runs one unary call bounded by `timeout`.
    pub async fn call_with_timeout<M, T, F, Fut>(
        &self,
        method: &'static str,
        timeout: Duration,
        message: M,
        f: F,
    ) -> Result<T, ComponentError>
    where
        F: FnOnce(Channel, Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut req = self.request(message, timeout);
        // Inside an API request whose context is in the task-local, the call needs no span.
        let span = crate::telemetry::trace::for_call(req.metadata_mut(), || self.call_span(method));
        let started = tokio::time::Instant::now();
        let call = self.bounded_call(method, timeout, started, f(self.channel(), req));
        let result = match span {
            Some(span) => call.instrument(span).await,
            None => call.await,
        };
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(ComponentError::Status { status, .. }) if is_transport_failure(status) => {
                tonic::Code::Unavailable
            }
            Err(ComponentError::Status { status, .. }) => status.code(),
            Err(ComponentError::Timeout { .. }) => tonic::Code::DeadlineExceeded,
            Err(ComponentError::Connect { .. }) => tonic::Code::Unavailable,
        };
        self.inner.metrics.record(method, started.elapsed(), code);
        result
    }

    async fn bounded_call<T, Fut>(
        &self,
        method: &'static str,
        timeout: Duration,
        started: tokio::time::Instant,
        call: Fut,
    ) -> Result<T, ComponentError>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            // tonic enforces the request's grpc-timeout itself and answers CANCELLED.
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                ) && started.elapsed() >= timeout =>
            {
                Err(ComponentError::Timeout {
                    component: self.inner.instance.clone(),
                    method,
                    timeout,
                })
            }
            Ok(Err(status)) => Err(ComponentError::Status {
                component: self.inner.instance.clone(),
                method,
                status,
            }),
            Err(_) => Err(ComponentError::Timeout {
                component: self.inner.instance.clone(),
                method,
                timeout,
            }),
        }
    }
}

/// The largest message plugd sends to or accepts from a component, carried by each request
/// so that the client built for it applies it ([`Limited`]).
#[derive(Debug, Clone, Copy)]
pub struct MessageLimit(pub usize);

use crate::proto::components as pb;

/// A generated component client, with the message limit of the request it will send applied
/// (tonic's default would refuse replies over 4 MiB whatever `--max-body-size` allows).
pub trait Limited: Sized {
    fn limited<M>(self, request: &Request<M>) -> Self;
}

macro_rules! limited_clients {
    ($($client:ty),* $(,)?) => {$(
        impl Limited for $client {
            fn limited<M>(self, request: &Request<M>) -> Self {
                match request.extensions().get::<MessageLimit>() {
                    Some(MessageLimit(n)) => {
                        self.max_decoding_message_size(*n).max_encoding_message_size(*n)
                    }
                    None => self,
                }
            }
        }
    )*};
}

limited_clients!(
    pb::state_store_client::StateStoreClient<Channel>,
    pb::transactional_state_store_client::TransactionalStateStoreClient<Channel>,
    pb::transactional_store_multi_max_size_client::TransactionalStoreMultiMaxSizeClient<Channel>,
    pb::queriable_state_store_client::QueriableStateStoreClient<Channel>,
    pb::pub_sub_client::PubSubClient<Channel>,
    pb::input_binding_client::InputBindingClient<Channel>,
    pb::output_binding_client::OutputBindingClient<Channel>,
    pb::secret_store_client::SecretStoreClient<Channel>,
);

/// Runs a server-streaming (or bidi) call in the background and forwards what it yields to the
/// returned channel: its messages in order, then its error status if it ends with one. The call
/// is awaited in the background because some servers (grpcio) send response headers only with
/// their first message. Dropping the receiver cancels the call.
pub fn forward_stream<T, F>(open: F) -> tokio::sync::mpsc::Receiver<Result<T, Status>>
where
    T: Send + 'static,
    F: Future<Output = Result<tonic::Response<tonic::Streaming<T>>, Status>> + Send + 'static,
{
    let (out, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let opened = tokio::select! {
            _ = out.closed() => return,
            r = open => r,
        };
        let mut inbound = match opened {
            Ok(resp) => resp.into_inner(),
            Err(status) => {
                let _ = out.send(Err(status)).await;
                return;
            }
        };
        loop {
            let next = tokio::select! {
                _ = out.closed() => return,
                m = inbound.message() => m,
            };
            match next {
                Ok(Some(m)) => {
                    if out.send(Ok(m)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(status) => {
                    let _ = out.send(Err(status)).await;
                    return;
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    const BOUND: Duration = Duration::from_secs(10);

    /// The `grpc-timeout` header formatted once per connection is the one tonic sends, and any
    /// other deadline still gets its own.
    #[tokio::test]
    async fn requests_carry_the_deadline_tonic_would_send() {
        let channel = Endpoint::from_static("http://component").connect_lazy();
        let conn =
            Connection::new(channel, "store", PathBuf::from("x.sock"), BOUND).expect("connection");
        for timeout in [BOUND, Duration::from_millis(1500), Duration::from_micros(7)] {
            let mut expected = Request::new(());
            expected.set_timeout(timeout);
            let req = conn.request((), timeout);
            assert_eq!(
                req.metadata().get(GRPC_TIMEOUT),
                expected.metadata().get(GRPC_TIMEOUT),
                "{timeout:?}"
            );
            assert!(req.metadata().get(GRPC_TIMEOUT).is_some());
            assert_eq!(
                req.metadata()
                    .get(INSTANCE_HEADER)
                    .and_then(|v| v.to_str().ok()),
                Some("store")
            );
        }
    }

    /// A real gRPC server (reflection v1alpha) on a Unix socket in `dir`, served until the
    /// returned token is dropped.
    fn reflection_server(dir: &Path) -> (PathBuf, tokio_util::sync::DropGuard) {
        let path = dir.join("peer.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind the test socket");
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .expect("reflection service");
        let stop = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(reflection)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            );
        tokio::spawn(server);
        (path, stop.drop_guard())
    }

    fn not_me() -> (u32, u32) {
        let me = crate::discovery::own_uid();
        (me, if me == 4242 { 4243 } else { 4242 })
    }

    #[tokio::test]
    async fn the_dial_refuses_a_peer_whose_uid_is_not_allowed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (socket, _server) = reflection_server(dir.path());
        let (me, other) = not_me();

        let err = dial_watched(&socket, BOUND, &[other, 0xdead])
            .await
            .map(|_| ())
            .expect_err("a server running as our uid is not in the list");
        let ComponentError::Connect {
            socket: named,
            kind,
            reason,
        } = &err
        else {
            panic!("expected a Connect error, got {err:?}");
        };
        assert_eq!(named, &socket);
        assert_eq!(*kind, Some(ErrorKind::PermissionDenied), "{err}");
        assert_eq!(
            reason,
            &format!(
                "refused: the socket is served by uid {me}, which is not in \
                 --allowed-component-uids {other},57005"
            )
        );
        let text = err.to_string();
        assert!(text.contains(&socket.display().to_string()), "{text}");
        assert!(err.is_connection_failure());

        // Listed, alone or among others, or no list at all: the same server is dialled and
        // answers on the channel.
        for allowed in [vec![me], vec![other, me], vec![]] {
            let (channel, closed) = dial_watched(&socket, BOUND, &allowed)
                .await
                .unwrap_or_else(|e| panic!("allowed {allowed:?}: {e}"));
            let services = crate::discovery::list_v1alpha(channel)
                .await
                .expect("reflection answers on the dialled channel");
            assert!(
                services.iter().any(|s| s == "dapr.proto.runtime.v1.Dapr"),
                "{services:?}"
            );
            assert!(!closed.is_cancelled());
        }
    }

    /// Nothing at all (not even the HTTP/2 preface, let alone Init) is written to a refused
    /// peer: the check is made on the connection before it is handed to the client.
    #[tokio::test]
    async fn a_refused_peer_receives_nothing() {
        use tokio::io::AsyncReadExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("impostor.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind the test socket");
        let received = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            // Ends when plugd drops the refused connection.
            stream.read_to_end(&mut got).await.map(|_| got)
        });
        let (_, other) = not_me();
        let err = dial_watched(&path, BOUND, &[other])
            .await
            .map(|_| ())
            .expect_err("refused");
        assert!(
            matches!(
                err,
                ComponentError::Connect {
                    kind: Some(ErrorKind::PermissionDenied),
                    ..
                }
            ),
            "{err:?}"
        );
        let got = tokio::time::timeout(BOUND, received)
            .await
            .expect("the refused connection is closed")
            .expect("the listener task")
            .expect("read from the refused connection");
        assert!(got.is_empty(), "the refused peer received {got:?}");

        // The same listener shape, allowed: the client does write (the test can tell).
        let path = dir.path().join("allowed.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind the test socket");
        let received = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut first = [0u8; 3];
            stream.read_exact(&mut first).await.map(|_| first)
        });
        let (me, _) = not_me();
        // No server answers the handshake, so the dial itself times out; what matters is that
        // the connection was handed over and written to.
        let _ = dial_watched(&path, Duration::from_millis(200), &[me]).await;
        let first = tokio::time::timeout(BOUND, received)
            .await
            .expect("the client wrote")
            .expect("the listener task")
            .expect("read the preface");
        assert_eq!(&first, b"PRI", "the HTTP/2 preface");
    }
}
