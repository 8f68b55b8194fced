//! Input bindings: the [`InputBinding`] trait, the [`EventSink`] it sends
//! events through, and the adapter that runs `Read` streams (see the
//! [module docs](super) for the stream's life).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use pb::input_binding_server::InputBindingServer;
use plugd_proto::components as pb;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{BindingError, Metadata, Properties};
use crate::common::{self, Closeable, Waiters, properties};
use crate::multiplex::Multiplexer;
use crate::server::ComponentServer;

/// How many events may wait in one stream's outbound buffer; further sends
/// wait for room.
const OUTBOUND_BUFFER: usize = 32;

/// How long [`InputBinding::read`] may run on after its stream has closed
/// before it is dropped.
const READ_GRACE: Duration = Duration::from_secs(5);

/// One event for the host to hand to the app.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The payload.
    pub data: Vec<u8>,
    /// Event metadata.
    pub metadata: Metadata,
    /// Content type of the payload; `None` is sent as an empty string.
    pub content_type: Option<String>,
}

/// Why [`EventSink::send`] got no reply data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The host replied with an error (the text of its `response_error`): the
    /// app did not handle the event.
    #[error("the host failed to handle the event: {0}")]
    Failed(String),
    /// The stream ended before the host replied (or had ended already). The
    /// event may or may not have reached the app.
    #[error("the read stream is closed")]
    Closed,
}

/// The host's reply to one event: the app's response body, or an error text.
type Reply = Result<Vec<u8>, String>;

/// The state one `Read` stream shares between its [`EventSink`]s, its
/// outbound stream and its supervising task.
struct Shared {
    instance: String,
    outbound: mpsc::Sender<pb::ReadResponse>,
    /// Events waiting for the host's reply.
    waiters: Waiters<Reply>,
    /// Set when a newer `Read` stream of the same instance took over.
    replaced: AtomicBool,
}

impl Shared {
    fn new(instance: String, outbound: mpsc::Sender<pb::ReadResponse>) -> Self {
        Self {
            instance,
            outbound,
            waiters: Waiters::new(),
            replaced: AtomicBool::new(false),
        }
    }

    fn is_closed(&self) -> bool {
        self.waiters.is_closed()
    }

    /// Closes the stream because a newer one of the same instance took over.
    fn replace(&self) {
        // Set before closing, so whoever sees the stream closed sees why.
        self.replaced.store(true, Ordering::SeqCst);
        self.close();
    }

    fn was_replaced(&self) -> bool {
        self.replaced.load(Ordering::SeqCst)
    }

    /// Ends the stream for the component: every waiting send resolves to
    /// `Closed`, later ones fail at once, and `closed()` completes. Idempotent.
    fn close(&self) {
        self.waiters.close(|unanswered| {
            if unanswered > 0 {
                tracing::debug!(unanswered, "read stream closed with events unanswered");
            }
        });
    }

    /// Routes one reply from the host to the send waiting for its id.
    fn reply(&self, request: pb::ReadRequest) {
        if request.message_id.is_empty() {
            tracing::debug!("ignoring a reply without message_id");
            return;
        }
        let reply = match request.response_error {
            Some(error) => Err(error.message),
            None => Ok(request.response_data),
        };
        if !self.waiters.answer(&request.message_id, reply) {
            tracing::warn!(
                id = %request.message_id,
                "reply to an event that is not waiting (unknown id, or its send was cancelled)"
            );
        }
    }
}

impl Closeable for Shared {
    fn close(&self) {
        Shared::close(self);
    }
}

/// The component's handle on one `Read` stream: send events through it. Cheap
/// to clone; every clone is the same stream.
#[derive(Clone)]
pub struct EventSink {
    inner: Arc<Shared>,
}

impl fmt::Debug for EventSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSink")
            .field("instance", &self.inner.instance)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl EventSink {
    /// The component instance this stream belongs to (the
    /// `x-component-instance` header, or
    /// [`DEFAULT_INSTANCE`](crate::DEFAULT_INSTANCE)).
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Sends `event` to the host under a fresh message id (a UUID) and waits
    /// for the host's reply to it.
    ///
    /// - `Ok(data)`: the app handled the event and answered `data` (often
    ///   empty).
    /// - `Err(Failed(text))`: the host replied with the error `text`.
    /// - `Err(Closed)`: the stream ended before a reply came (or had ended
    ///   already).
    ///
    /// Sends may run concurrently; each waits for room in the stream's
    /// outbound buffer first. If the future is dropped before it completes,
    /// a later reply to its id is ignored.
    pub async fn send(&self, event: Event) -> Result<Vec<u8>, EventError> {
        let shared = &*self.inner;
        let reply = shared
            .waiters
            .send(&shared.outbound, |message_id| pb::ReadResponse {
                data: event.data,
                metadata: event.metadata,
                content_type: event.content_type.unwrap_or_default(),
                message_id,
            })
            .await;
        match reply {
            Some(Ok(data)) => Ok(data),
            Some(Err(text)) => Err(EventError::Failed(text)),
            None => Err(EventError::Closed),
        }
    }

    /// Whether the stream has ended (no send can succeed any more).
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Completes when the stream ends: the host closed it, it broke, a newer
    /// `Read` stream replaced it, the server is shutting down, or
    /// [`InputBinding::read`] returned.
    pub async fn closed(&self) {
        self.inner.waiters.closed().await;
    }
}

/// An input binding component. Implement it, then serve it with
/// [`ComponentServer::input_binding`].
///
/// One value is created per component instance (per `x-component-instance`),
/// so the methods take `&self`: use interior mutability for what `init` sets
/// up. daprd may call `init` again on the same instance after a hot reload.
///
/// Methods are written as `async fn` in the implementation; their futures must
/// be `Send`.
pub trait InputBinding: Send + Sync + 'static {
    /// Sets the instance up from the Component's metadata.
    fn init(&self, properties: Properties)
    -> impl Future<Output = Result<(), BindingError>> + Send;

    /// Runs for the life of one `Read` stream: send events through `events`
    /// until [`EventSink::closed`] completes (or a send fails with
    /// [`EventError::Closed`]), then return. Returning `Ok` earlier ends the
    /// stream cleanly; `Err` ends it with that status.
    ///
    /// At most one `read` runs per instance at a time: a newer stream for the
    /// instance closes this one, and its `read` starts after this one has
    /// returned (see the [module docs](super)).
    fn read(&self, events: EventSink) -> impl Future<Output = Result<(), BindingError>> + Send;

    /// The Ping hook. The host calls `Ping` after Init and then periodically
    /// (plugd: every `--component-health-interval`); an `Err` answers the
    /// Ping with that error, and a component that fails
    /// `--component-health-failures` Pings in a row is marked unhealthy until
    /// a Ping succeeds again. Check cheaply what the binding needs to serve (a
    /// connection, a file); the default is always `Ok`.
    fn ping(&self) -> impl Future<Output = Result<(), BindingError>> + Send {
        async { Ok(()) }
    }
}

impl ComponentServer {
    /// Serves an input binding. `factory` makes one value per component
    /// instance, given the instance name (the `x-component-instance` header,
    /// or [`DEFAULT_INSTANCE`](crate::DEFAULT_INSTANCE)).
    pub fn input_binding<B, F>(mut self, factory: F) -> Self
    where
        B: InputBinding,
        F: Fn(&str) -> B + Send + Sync + 'static,
    {
        let service = InputService {
            mux: Arc::new(Multiplexer::new(move |name: &str| Instance {
                binding: factory(name),
                reading: Mutex::new(None),
            })),
            stopping: self.stopping(),
        };
        self.routes_mut().add_service(
            InputBindingServer::new(service)
                .max_decoding_message_size(crate::server::MAX_MESSAGE_SIZE),
        );
        self.advertise(<InputBindingServer<InputService<B>> as NamedService>::NAME);
        self
    }
}

/// One instance's binding and its current `Read` stream.
struct Instance<B> {
    binding: B,
    reading: Mutex<Option<Reading>>,
}

/// The `Read` stream an instance is serving.
struct Reading {
    shared: Arc<Shared>,
    /// Cancelled when the stream's task has ended (its `read` has returned or
    /// been dropped).
    finished: CancellationToken,
}

impl<B> Instance<B> {
    fn reading(&self) -> MutexGuard<'_, Option<Reading>> {
        // Only replaced or taken under the lock.
        self.reading.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `reading` the current stream; returns the one it replaces.
    fn start_reading(&self, reading: Reading) -> Option<Reading> {
        self.reading().replace(reading)
    }

    /// Forgets `shared` if it is still the current stream.
    fn stop_reading(&self, shared: &Arc<Shared>) {
        let mut reading = self.reading();
        if reading
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(&current.shared, shared))
        {
            *reading = None;
        }
    }
}

/// The gRPC side of an [`InputBinding`]: finds the instance, maps the errors,
/// runs the `Read` streams.
struct InputService<B> {
    mux: Arc<Multiplexer<Instance<B>>>,
    stopping: CancellationToken,
}

impl<B> Clone for InputService<B> {
    fn clone(&self) -> Self {
        Self {
            mux: Arc::clone(&self.mux),
            stopping: self.stopping.clone(),
        }
    }
}

impl<B> fmt::Debug for InputService<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InputService")
            .field("mux", &self.mux)
            .finish_non_exhaustive()
    }
}

impl<B: InputBinding> InputService<B> {
    /// Runs `call` on the request's instance inside a span, mapping errors.
    async fn call<T, R, Fut>(
        &self,
        method: &'static str,
        request: Request<T>,
        call: impl FnOnce(Arc<Instance<B>>, T) -> Fut,
    ) -> Result<Response<R>, Status>
    where
        Fut: Future<Output = Result<R, BindingError>>,
    {
        common::call(
            &self.mux,
            request,
            |instance| tracing::debug_span!("input_binding", %instance, method),
            call,
        )
        .await
    }
}

#[tonic::async_trait]
impl<B: InputBinding> pb::input_binding_server::InputBinding for InputService<B> {
    async fn init(
        &self,
        request: Request<pb::InputBindingInitRequest>,
    ) -> Result<Response<pb::InputBindingInitResponse>, Status> {
        self.call("Init", request, |instance, req| async move {
            instance.binding.init(properties(req.metadata)).await?;
            Ok(pb::InputBindingInitResponse {})
        })
        .await
    }

    type ReadStream = Outbound;

    async fn read(
        &self,
        request: Request<Streaming<pb::ReadRequest>>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let (name, instance) = self.mux.for_request(request.metadata())?;
        let inbound = request.into_inner();
        let (outbound, events) = mpsc::channel(OUTBOUND_BUFFER);
        let (end_sender, end) = oneshot::channel();
        let shared = Arc::new(Shared::new(name.clone(), outbound));
        let finished = CancellationToken::new();
        let previous = instance.start_reading(Reading {
            shared: Arc::clone(&shared),
            finished: finished.clone(),
        });
        let span = tracing::debug_span!("read", instance = %name);
        let previous = previous.map(|previous| {
            span.in_scope(|| tracing::info!("a new Read stream replaces the open one"));
            previous.shared.replace();
            previous.finished
        });
        let task = ReadTask {
            instance,
            shared: Arc::clone(&shared),
            inbound,
            end: end_sender,
            stopping: self.stopping.clone(),
            previous,
            finished,
        };
        tokio::spawn(task.run().instrument(span));
        Ok(Response::new(Outbound::new(events, end, shared)))
    }

    async fn ping(
        &self,
        request: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        self.call("Ping", request, |instance, _| async move {
            instance.binding.ping().await?;
            Ok(pb::PingResponse {})
        })
        .await
    }
}

/// Supervises one `Read` stream.
struct ReadTask<B> {
    instance: Arc<Instance<B>>,
    shared: Arc<Shared>,
    inbound: Streaming<pb::ReadRequest>,
    /// How the outbound stream ends: `Ok` cleanly, `Err` with a status.
    /// Dropping it ends the stream cleanly too.
    end: oneshot::Sender<Result<(), Status>>,
    stopping: CancellationToken,
    /// The replaced stream's `finished`, if this stream replaced one.
    previous: Option<CancellationToken>,
    finished: CancellationToken,
}

impl<B: InputBinding> ReadTask<B> {
    /// Waits for the replaced stream's `read` to end, runs `read`, routes the
    /// host's replies, and ends everything when either side is done.
    async fn run(self) {
        let ReadTask {
            instance,
            shared,
            mut inbound,
            end,
            stopping,
            previous,
            finished,
        } = self;
        let _finished = finished.drop_guard();
        if let Some(previous) = previous {
            tracing::debug!("waiting for the replaced stream's read to end");
            previous.cancelled().await;
        }
        if shared.is_closed() || stopping.is_cancelled() {
            // Closed, replaced in turn, or shut down before `read` began.
            shared.close();
            end_closed(&shared, end);
            instance.stop_reading(&shared);
            return;
        }

        let sink = EventSink {
            inner: Arc::clone(&shared),
        };
        let reader = Arc::clone(&instance);
        let read = async move { reader.binding.read(sink).await };
        let mut read = std::pin::pin!(read);
        let returned = tokio::select! {
            result = &mut read => Some(result),
            () = read_replies(&shared, &mut inbound) => None,
            // The server is shutting down: unanswered events stay unanswered.
            () = stopping.cancelled() => None,
        };
        shared.close();
        drop(inbound);
        match returned {
            Some(result) => {
                let result = match result {
                    Err(err) => {
                        tracing::debug!(error = %err, "read failed");
                        Err(Status::from(err))
                    }
                    // `read` saw the stream close because a newer one took over.
                    Ok(()) if shared.was_replaced() => Err(replaced_status()),
                    Ok(()) => {
                        tracing::debug!("read returned; ending the stream");
                        Ok(())
                    }
                };
                // The outbound stream may be gone already; then there is no one to tell.
                let _ = end.send(result);
            }
            None => {
                // End the outbound side first, then let `read` wind down.
                end_closed(&shared, end);
                match tokio::time::timeout(READ_GRACE, read).await {
                    Ok(Ok(())) => tracing::debug!("read ended"),
                    Ok(Err(err)) => {
                        tracing::debug!(error = %err, "read failed after the stream closed");
                    }
                    Err(_) => tracing::warn!(
                        grace = ?READ_GRACE,
                        "read did not return after its stream closed; dropping it"
                    ),
                }
            }
        }
        instance.stop_reading(&shared);
    }
}

/// Ends the outbound side of a stream that closed without `read` returning:
/// with `ABORTED` when a newer stream replaced it, cleanly otherwise.
fn end_closed(shared: &Shared, end: oneshot::Sender<Result<(), Status>>) {
    if shared.was_replaced() {
        let _ = end.send(Err(replaced_status()));
    }
}

/// How a stream replaced by a newer one ends for the host.
fn replaced_status() -> Status {
    Status::aborted("replaced by a newer Read stream for this component instance")
}

/// Routes the host's replies until the host ends its side of the stream, the
/// stream breaks, or the stream is closed.
async fn read_replies(shared: &Shared, inbound: &mut Streaming<pb::ReadRequest>) {
    loop {
        tokio::select! {
            () = shared.waiters.closed() => return,
            next = inbound.message() => match next {
                Ok(Some(request)) => shared.reply(request),
                Ok(None) => {
                    tracing::debug!("the host closed the stream");
                    return;
                }
                Err(status) => {
                    tracing::debug!(%status, "the stream broke");
                    return;
                }
            }
        }
    }
}

/// The component → host side of one `Read` stream; dropping it closes the
/// stream for the component.
type Outbound = common::Outbound<pb::ReadResponse, Shared>;

#[cfg(test)]
mod tests {
    use super::*;

    fn sink() -> (EventSink, mpsc::Receiver<pb::ReadResponse>) {
        let (outbound, events) = mpsc::channel(4);
        let shared = Arc::new(Shared::new("test".into(), outbound));
        (EventSink { inner: shared }, events)
    }

    fn reply(id: &str, data: &[u8], error: Option<&str>) -> pb::ReadRequest {
        pb::ReadRequest {
            response_data: data.to_vec(),
            message_id: id.to_owned(),
            response_error: error.map(|message| pb::AckResponseError {
                message: message.to_owned(),
            }),
        }
    }

    fn send(sink: &EventSink, data: &[u8]) -> tokio::task::JoinHandle<Result<Vec<u8>, EventError>> {
        let sink = sink.clone();
        let event = Event {
            data: data.to_vec(),
            metadata: Metadata::from([("k".to_owned(), "v".to_owned())]),
            content_type: Some("text/plain".to_owned()),
        };
        tokio::spawn(async move { sink.send(event).await })
    }

    #[tokio::test]
    async fn replies_resolve_the_matching_send() {
        let (sink, mut events) = sink();
        let first = send(&sink, b"a");
        let a = events.recv().await.expect("first event");
        let second = send(&sink, b"b");
        let b = events.recv().await.expect("second event");
        assert_eq!(a.data, b"a");
        assert_eq!(a.metadata["k"], "v");
        assert_eq!(a.content_type, "text/plain");
        assert_ne!(a.message_id, b.message_id);
        assert!(uuid::Uuid::try_parse(&a.message_id).is_ok());

        // Unknown and empty ids are ignored; replies come out of order.
        sink.inner.reply(reply("unknown", b"", None));
        sink.inner.reply(reply("", b"", None));
        sink.inner
            .reply(reply(&b.message_id, b"ignored", Some("app said no")));
        sink.inner.reply(reply(&a.message_id, b"thanks", None));
        assert_eq!(first.await.expect("task"), Ok(b"thanks".to_vec()));
        assert_eq!(
            second.await.expect("task"),
            Err(EventError::Failed("app said no".into()))
        );
        assert_eq!(sink.inner.waiters.waiting(), 0);
    }

    #[tokio::test]
    async fn close_resolves_waiting_and_later_sends() {
        let (sink, mut events) = sink();
        let waiting = send(&sink, b"x");
        let sent = events.recv().await.expect("event");
        sink.inner.close();
        assert_eq!(waiting.await.expect("task"), Err(EventError::Closed));
        assert!(sink.is_closed());
        sink.closed().await;
        assert_eq!(sink.send(Event::default()).await, Err(EventError::Closed));
        // A late reply is ignored.
        sink.inner.reply(reply(&sent.message_id, b"", None));
    }

    #[tokio::test]
    async fn a_dropped_send_leaves_nothing_waiting() {
        let (sink, mut events) = sink();
        let pending = send(&sink, b"x");
        let _sent = events.recv().await.expect("event");
        pending.abort();
        assert!(pending.await.is_err_and(|err| err.is_cancelled()));
        assert_eq!(sink.inner.waiters.waiting(), 0);
    }

    #[tokio::test]
    async fn a_send_waiting_for_room_ends_on_close() {
        let (outbound, _events) = mpsc::channel(1);
        let sink = EventSink {
            inner: Arc::new(Shared::new("test".into(), outbound)),
        };
        // The first fills the buffer; the second waits for room.
        let _first = send(&sink, b"1");
        let second = send(&sink, b"2");
        while sink.inner.waiters.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        sink.inner.close();
        assert_eq!(second.await.expect("task"), Err(EventError::Closed));
    }
}
