//! Small helpers shared by the kind modules.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::multiplex::Multiplexer;

/// The error type of one kind's trait ([`StateError`](crate::state::StateError),
/// [`PubSubError`](crate::pubsub::PubSubError), …) as the adapters handle it.
pub(crate) trait KindError: std::fmt::Display + Into<Status> {
    /// Whether this is the component's own failure (its `Internal` variant),
    /// rather than the caller's mistake or an expected condition.
    fn is_internal(&self) -> bool;
}

/// Logs a failed call in `span` at a level that fits the error: internal
/// errors are warnings, the rest debug.
pub(crate) fn log_failure<E: KindError>(span: &tracing::Span, err: &E) {
    span.in_scope(|| {
        if err.is_internal() {
            tracing::warn!(error = %err, "call failed");
        } else {
            tracing::debug!(error = %err, "call failed");
        }
    });
}

/// Runs one unary call of an adapter: finds the request's instance in `mux`
/// (refusing a bad instance header), runs `call` on it and the request's
/// message inside the span `span` makes from the instance name, and turns the
/// result into a response, logging a failure (see [`log_failure`]) and
/// mapping it to its status.
pub(crate) async fn call<I, T, R, E, Fut>(
    mux: &Multiplexer<I>,
    request: Request<T>,
    span: impl FnOnce(&str) -> tracing::Span,
    call: impl FnOnce(Arc<I>, T) -> Fut,
) -> Result<Response<R>, Status>
where
    Fut: Future<Output = Result<R, E>>,
    E: KindError,
{
    let (instance, value) = mux.for_request(request.metadata())?;
    let span = span(&instance);
    let result = call(value, request.into_inner())
        .instrument(span.clone())
        .await;
    result.map(Response::new).map_err(|err| {
        log_failure(&span, &err);
        err.into()
    })
}

/// The messages a component has sent down one stream (pub/sub deliveries,
/// input-binding events) that wait for the host's answer, by message id; `A`
/// is the answer to one message. Closing resolves every waiting send.
pub(crate) struct Waiters<A> {
    pending: Mutex<Pending<A>>,
    closed: CancellationToken,
}

struct Pending<A> {
    open: bool,
    waiting: HashMap<String, oneshot::Sender<A>>,
}

impl<A> Waiters<A> {
    /// Open, with nothing waiting.
    pub(crate) fn new() -> Self {
        Self {
            pending: Mutex::new(Pending {
                open: true,
                waiting: HashMap::new(),
            }),
            closed: CancellationToken::new(),
        }
    }

    fn pending(&self) -> MutexGuard<'_, Pending<A>> {
        // Only inserts and removals happen under the lock: a poisoned map is
        // still consistent.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many sends are waiting for an answer.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.pending().waiting.len()
    }

    /// Whether the stream has been closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Completes when the stream is closed.
    pub(crate) fn closed(&self) -> WaitForCancellationFuture<'_> {
        self.closed.cancelled()
    }

    /// Closes the stream: every waiting send resolves to closed, later ones
    /// fail at once, and [`closed`](Self::closed) completes. `unanswered` is
    /// told how many sends were still waiting, before they resolve.
    /// Idempotent.
    pub(crate) fn close(&self, unanswered: impl FnOnce(usize)) {
        let waiting = {
            let mut pending = self.pending();
            pending.open = false;
            self.closed.cancel();
            std::mem::take(&mut pending.waiting)
        };
        unanswered(waiting.len());
        // Dropping the senders resolves the waiting sends to closed.
        drop(waiting);
    }

    /// Hands `answer` to the send waiting for message `id`. False when none
    /// is waiting (an unknown id, or its send was cancelled).
    pub(crate) fn answer(&self, id: &str, answer: A) -> bool {
        let waiting = self.pending().waiting.remove(id);
        match waiting {
            Some(sender) => {
                // The send may have been cancelled meanwhile; nothing to do then.
                let _ = sender.send(answer);
                true
            }
            None => false,
        }
    }

    /// Sends `message(id)` on `outbound` under a fresh message id (a UUID),
    /// once there is room, and waits for the host's answer to it. `None` when
    /// the stream is closed before the answer comes (or was closed already).
    /// If the future is dropped, the id stops waiting and a later answer to
    /// it is ignored.
    pub(crate) async fn send<M>(
        &self,
        outbound: &mpsc::Sender<M>,
        message: impl FnOnce(String) -> M,
    ) -> Option<A> {
        let id = uuid::Uuid::new_v4().to_string();
        let (sender, answer) = oneshot::channel();
        {
            let mut pending = self.pending();
            if !pending.open {
                return None;
            }
            // Registered before sending, so a fast answer always finds it.
            pending.waiting.insert(id.clone(), sender);
        }
        let _guard = WaitingGuard {
            waiters: self,
            id: &id,
        };
        let message = message(id.clone());
        tokio::select! {
            biased;
            () = self.closed.cancelled() => return None,
            sent = outbound.send(message) => {
                if sent.is_err() {
                    return None;
                }
            }
        }
        // An error: the sender was dropped by `close`.
        answer.await.ok()
    }
}

/// Removes a message from the waiting list when its send ends, however it
/// ends (answered, closed, or its future dropped).
struct WaitingGuard<'a, A> {
    waiters: &'a Waiters<A>,
    id: &'a str,
}

impl<A> Drop for WaitingGuard<'_, A> {
    fn drop(&mut self) {
        self.waiters.pending().waiting.remove(self.id);
    }
}

/// The state of one stream that its [`Outbound`] side closes when dropped.
pub(crate) trait Closeable {
    /// Closes the stream for the component (idempotent).
    fn close(&self);
}

/// The component → host side of one stream: the messages sent, then how the
/// stream ends. Dropping it (the host reset the stream, or the connection went
/// away) closes the stream for the component.
pub(crate) struct Outbound<M, S: Closeable> {
    messages: mpsc::Receiver<M>,
    end: oneshot::Receiver<Result<(), Status>>,
    ended: bool,
    shared: Arc<S>,
}

impl<M, S: Closeable> Outbound<M, S> {
    /// The stream of `messages`, ended by what `end` sends (`Err`: with that
    /// status; `Ok` or dropped: cleanly), closing `shared` when dropped.
    pub(crate) fn new(
        messages: mpsc::Receiver<M>,
        end: oneshot::Receiver<Result<(), Status>>,
        shared: Arc<S>,
    ) -> Self {
        Self {
            messages,
            end,
            ended: false,
            shared,
        }
    }
}

impl<M, S: Closeable> std::fmt::Debug for Outbound<M, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<M, S: Closeable> Stream for Outbound<M, S> {
    type Item = Result<M, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        // The end comes first: messages still buffered then belong to sends
        // that have already resolved to closed.
        if let Poll::Ready(end) = Pin::new(&mut this.end).poll(cx) {
            this.ended = true;
            return Poll::Ready(match end {
                Ok(Err(status)) => Some(Err(status)),
                Ok(Ok(())) | Err(_) => None,
            });
        }
        this.messages.poll_recv(cx).map(|message| message.map(Ok))
    }
}

impl<M, S: Closeable> Drop for Outbound<M, S> {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// `err`'s message followed by the messages of its sources, joined by `": "`.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The init properties of a `MetadataRequest`, empty when it is absent.
pub(crate) fn properties(
    metadata: Option<plugd_proto::components::MetadataRequest>,
) -> std::collections::HashMap<String, String> {
    metadata.map(|m| m.properties).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let err = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&err), "outer: inner");
    }
}
