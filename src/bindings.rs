//! Delivering input-binding events to the app: one `Read` stream per input binding the app
//! handles, re-opened whenever it breaks (a component restart, a new instance after a hot
//! reload), every event handed to the app and the app's answer sent back by `message_id`.
//!
//! Whether the app handles a binding is decided once per binding and route: yes when the
//! `direction` metadata names `input`; otherwise a gRPC app must list the binding in
//! `ListInputBindings` and an HTTP app must answer `OPTIONS /<route>` with 2xx or 405.
//!
//! When a binding closes (plugd stops, or a hot reload removes it or drops its input side),
//! the events it still sends are answered with [`CLOSED`] while the events already with the
//! app finish, then the stream is closed.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures::future::join_all;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    api::bindings::BindingsApi,
    appchannel::{AppChannel, BindingDelivery, BindingReply},
    component::bindings::{EventStream, InputBinding, Replier},
    proto::components as pb,
    registry::{BindingEntry, ComponentStatus, Registry},
};

/// The error a closed binding answers late events with (daprd's words).
pub const CLOSED: &str = "input binding is closed";

/// How long a closing binding that had events in flight keeps answering late events after the
/// last of them.
const LINGER: Duration = Duration::from_millis(500);
/// Bound on closing a binding: in-flight events plus the linger.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// Events of one binding with the app at once, unless `--app-max-concurrency` is lower.
pub const DEFAULT_CONCURRENCY: usize = 64;

/// What the reader tasks share.
pub struct InputDelivery {
    pub registry: Arc<Registry>,
    pub app: Arc<dyn AppChannel>,
    /// For the output bindings a gRPC app names in `to`.
    pub outputs: BindingsApi,
    /// Bounds calls to the app across all bindings and subscriptions (`--app-max-concurrency`).
    pub app_limit: Option<Arc<Semaphore>>,
    /// Events of one binding handled at once.
    pub concurrency: usize,
    pub stop: CancellationToken,
}

/// Watches the registry (after the app listens) and starts a reader for every input binding
/// the app handles, as bindings come and go. Runs on `tasks` (so shutdown can wait for the
/// bindings to close); returns at once.
pub fn start(d: Arc<InputDelivery>, app_address: std::net::SocketAddr, tasks: &TaskTracker) {
    tasks.spawn(async move {
        if !crate::appchannel::wait_for_app(app_address, &d.stop).await {
            return;
        }
        let mut changes = d.registry.changes();
        // Whether the app wants a binding, asked once per binding and route while it exists.
        let mut decided: HashMap<(String, String), bool> = HashMap::new();
        let mut readers: JoinSet<String> = JoinSet::new();
        let mut reading: HashSet<String> = HashSet::new();
        loop {
            changes.borrow_and_update();
            let snapshot = d.registry.snapshot();
            decided.retain(|(name, _), _| snapshot.component(name).is_some());
            for (name, entry) in &snapshot.bindings {
                if entry.binding.input.is_none()
                    || reading.contains(name)
                    || entry.info.status != ComponentStatus::Ready
                {
                    continue;
                }
                let wanted = entry.binding.input_declared || {
                    let key = (name.clone(), entry.binding.route.clone());
                    match decided.get(&key) {
                        Some(w) => *w,
                        None => {
                            let w = d.app.wants_binding(name, &entry.binding.route).await;
                            if !w {
                                tracing::info!(binding = %name, route = %entry.binding.route,
                                    "the app does not handle this input binding; its events are not read (set direction: input to deliver them anyway)");
                            }
                            decided.insert(key, w);
                            w
                        }
                    }
                };
                if wanted {
                    let span = tracing::info_span!("input_binding", binding = %name);
                    let (d, name) = (d.clone(), name.clone());
                    reading.insert(name.clone());
                    readers.spawn(
                        async move {
                            read(d, &name).await;
                            name
                        }
                        .instrument(span),
                    );
                }
            }
            tokio::select! {
                _ = d.stop.cancelled() => break,
                r = changes.changed() => if r.is_err() { break },
                // A reader that ended (its binding closed) frees the name: a binding added
                // again meanwhile is read by a new one.
                Some(done) = readers.join_next() => {
                    if let Ok(name) = done {
                        reading.remove(&name);
                    }
                }
            }
        }
        // Let every reader close its binding (bounded by its own grace).
        while readers.join_next().await.is_some() {}
    });
}

/// Why one stream ended.
enum Ended {
    /// The binding closed (plugd stops, or the binding is gone): do not read again.
    Closed,
    /// The stream broke or the instance was replaced: read again.
    Broken(String),
}

/// Where binding `name`'s input side stands.
enum Current {
    /// Ready to read.
    Ready(Arc<BindingEntry>, Arc<dyn InputBinding>),
    /// Not ready yet (initialising, restarting, unhealthy).
    NotReady,
    /// Gone, or without an input side any more: close it.
    Gone,
}

fn current(registry: &Registry, name: &str) -> Current {
    let snapshot = registry.snapshot();
    if snapshot.component(name).is_none() {
        return Current::Gone;
    }
    match snapshot.bindings.get(name) {
        Some(e) => match &e.binding.input {
            None => Current::Gone,
            Some(input)
                if e.info.status == ComponentStatus::Ready && !input.connection().is_lost() =>
            {
                Current::Ready(e.clone(), input.clone())
            }
            Some(_) => Current::NotReady,
        },
        None => Current::NotReady,
    }
}

/// Keeps binding `name`'s `Read` stream open until the binding closes.
async fn read(d: Arc<InputDelivery>, name: &str) {
    let mut changes = d.registry.changes();
    let mut backoff = Duration::from_millis(50);
    loop {
        let (entry, input) = loop {
            changes.borrow_and_update();
            match current(&d.registry, name) {
                Current::Gone => {
                    tracing::info!("input binding closed");
                    return;
                }
                Current::Ready(entry, input) => break (entry, input),
                Current::NotReady => {}
            }
            tokio::select! {
                _ = d.stop.cancelled() => return,
                r = changes.changed() => if r.is_err() { return },
            }
        };
        let ended = match input.read().await {
            Ok(stream) => {
                tracing::info!(socket = %input.connection().socket().display(), route = %entry.binding.route, "reading input binding events");
                consume(&d, name, &entry, &input, stream, &mut changes, &mut backoff).await
            }
            Err(e) => Ended::Broken(e.to_string()),
        };
        match ended {
            Ended::Closed => return,
            Ended::Broken(reason) => {
                let delay = backoff.mul_f64(rand::random_range(0.5..1.5));
                tracing::warn!(%reason, retry_in = ?delay, "input binding stream ended; reading again");
                backoff = (backoff * 2).min(Duration::from_secs(2));
                tokio::select! {
                    _ = d.stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Reads events until the stream ends, the instance is replaced, or the binding closes.
async fn consume(
    d: &Arc<InputDelivery>,
    name: &str,
    entry: &Arc<BindingEntry>,
    input: &Arc<dyn InputBinding>,
    mut stream: EventStream,
    changes: &mut watch::Receiver<u64>,
    backoff: &mut Duration,
) -> Ended {
    let slots = Arc::new(Semaphore::new(d.concurrency.max(1)));
    let in_flight = TaskTracker::new();
    let mut registry_open = true;
    loop {
        let next = tokio::select! {
            biased;
            _ = d.stop.cancelled() => break,
            r = changes.changed(), if registry_open => {
                if r.is_err() {
                    registry_open = false;
                    continue;
                }
                match current(&d.registry, name) {
                    Current::Gone => break,
                    Current::Ready(_, now) if !Arc::ptr_eq(&now, input) => {
                        // The old instance's stream still answers its late events while its
                        // in-flight ones finish.
                        tokio::spawn(close(stream, in_flight).in_current_span());
                        return Ended::Broken("the component instance was replaced".into());
                    }
                    _ => continue,
                }
            }
            m = stream.events.recv() => m,
        };
        let event = match next {
            Some(Ok(e)) => e,
            Some(Err(status)) => {
                return Ended::Broken(format!("{:?}: {}", status.code(), status.message()));
            }
            None => return Ended::Broken("the component closed the stream".into()),
        };
        *backoff = Duration::from_millis(50);
        let permit = tokio::select! {
            biased;
            _ = d.stop.cancelled() => {
                closed_reply(&stream.replies, event.message_id).await;
                break;
            }
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (d, name, route, replies) = (
            d.clone(),
            name.to_string(),
            entry.binding.route.clone(),
            stream.replies.clone(),
        );
        in_flight.spawn(
            async move {
                handle(&d, &name, &route, &replies, event).await;
                drop(permit);
            }
            .in_current_span(),
        );
    }
    close(stream, in_flight).await;
    Ended::Closed
}

async fn closed_reply(replies: &Replier, message_id: String) {
    let _ = replies.reply(message_id, Err(CLOSED.to_string())).await;
}

/// Answers late events with [`CLOSED`] while in-flight events finish (bounded), then drops the
/// stream.
async fn close(mut stream: EventStream, in_flight: TaskTracker) {
    in_flight.close();
    let pending = in_flight.len();
    let drained = async {
        in_flight.wait().await;
        // As daprd: linger only when events were in flight (their senders may have more).
        if pending > 0 {
            tokio::time::sleep(LINGER).await;
        }
    };
    let bounded = tokio::time::timeout(CLOSE_GRACE, drained);
    tokio::pin!(bounded);
    loop {
        tokio::select! {
            r = &mut bounded => {
                if r.is_err() {
                    tracing::warn!(still_in_flight = in_flight.len(), "closing the input binding before the app answered every event");
                }
                break;
            }
            m = stream.events.recv() => match m {
                Some(Ok(event)) => {
                    tracing::debug!(message_id = %event.message_id, "event after close refused");
                    closed_reply(&stream.replies, event.message_id).await;
                }
                _ => {
                    // The stream is gone: wait for the in-flight events only.
                    let _ = (&mut bounded).await;
                    break;
                }
            },
        }
    }
    tracing::info!(in_flight_at_close = pending, "input binding stream closed");
}

/// Hands one event to the app and sends its answer back to the component, all in the event's
/// delivery (its trace context): the app and the output bindings it names get the event's trace.
async fn handle(
    d: &InputDelivery,
    name: &str,
    route: &str,
    replies: &Replier,
    event: pb::ReadResponse,
) {
    let delivery = event_trace(&event.metadata);
    delivery
        .run(async {
            tracing::debug!(message_id = %event.message_id, "delivering an input-binding event");
            settle(d, name, route, replies, event, &delivery).await;
        })
        .await;
}

/// The delivery trace context of an input-binding event: child of the `traceparent` (and `tracestate`)
/// its metadata carries (any case) when valid, else the root of a new trace.
fn event_trace(metadata: &HashMap<String, String>) -> crate::telemetry::trace::Delivery {
    let get = |key: &str| {
        metadata
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    };
    crate::telemetry::trace::Delivery::new(
        "binding_event",
        get(crate::telemetry::trace::TRACEPARENT),
        get(crate::telemetry::trace::TRACESTATE),
    )
}

/// The body of [`handle`], inside the delivery.
async fn settle(
    d: &InputDelivery,
    name: &str,
    route: &str,
    replies: &Replier,
    event: pb::ReadResponse,
    trace: &crate::telemetry::trace::Delivery,
) {
    let metadata = event.metadata;
    let started = std::time::Instant::now();
    let answer = {
        let _global = match &d.app_limit {
            Some(limit) => limit.clone().acquire_owned().await.ok(),
            None => None,
        };
        d.app
            .binding_event(BindingDelivery {
                name,
                route,
                data: &event.data,
                metadata: &metadata,
                trace,
            })
            .await
    };
    crate::metrics::binding_event(name, answer.is_ok(), started.elapsed());
    let reply = match answer {
        Ok(reply) => {
            if !reply.to.is_empty() {
                send_to_outputs(d, &reply).await;
            }
            Ok(reply.data)
        }
        Err(why) => {
            tracing::warn!(message_id = %event.message_id, "the app did not take the event: {why}");
            Err(why)
        }
    };
    if !replies.reply(event.message_id, reply).await {
        tracing::debug!("the stream ended before the reply could be sent");
    }
}

/// A gRPC app's `to`: its `data` goes to those output bindings with operation `create` (as
/// JSON: data that is not JSON goes as `null`, as in daprd).
async fn send_to_outputs(d: &InputDelivery, reply: &BindingReply) {
    let data = serde_json::from_slice::<serde_json::Value>(&reply.data)
        .map(|v| v.to_string().into_bytes())
        .unwrap_or_else(|_| b"null".to_vec());
    let send = |target: &String| {
        let data = data.clone();
        let outputs = d.outputs.clone();
        let target = target.clone();
        async move {
            if let Err(e) = outputs
                .invoke(&target, "create", data, HashMap::new())
                .await
            {
                tracing::warn!(output = %target, "sending the app's answer to an output binding failed: {e}");
            }
        }
    };
    if reply.parallel {
        join_all(reply.to.iter().map(send)).await;
    } else {
        for target in reply.to.iter() {
            send(target).await;
        }
    }
}
