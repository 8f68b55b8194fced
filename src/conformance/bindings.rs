//! Output and input binding checks.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tonic::{Code, transport::Channel};

use super::{
    Ctx, Outcome, Recorder, Verdict, describe, init_check, ping_check, request, show, verdict,
};
use crate::{component::ComponentKind, proto::components as pb};

type OutputClient = pb::output_binding_client::OutputBindingClient<Channel>;
type InputClient = pb::input_binding_client::InputBindingClient<Channel>;

/// The operation the `unknown-operation` check invokes.
const UNKNOWN_OPERATION: &str = "conformance-no-such-operation";

pub(super) async fn check_output(ctx: &Ctx, rec: &mut Recorder) {
    let instance = ctx.instance(ComponentKind::OutputBinding);
    let mut client = OutputClient::new(ctx.channel.clone());
    let fixed = &[
        "init",
        "ping",
        "operations",
        "round-trip",
        "unknown-operation",
    ];

    let init = pb::OutputBindingInitRequest {
        metadata: ctx.init_metadata(),
    };
    if !init_check(
        rec,
        &instance,
        fixed,
        ctx.call(client.init(request(&instance, init))),
    )
    .await
    {
        return;
    }

    ping_check(
        ctx,
        rec,
        client.ping(request(&instance, pb::PingRequest {})),
    )
    .await;

    let started = Instant::now();
    let operations = match ctx
        .call(client.list_operations(request(&instance, pb::ListOperationsRequest {})))
        .await
    {
        Ok(r) => {
            let ops = r.into_inner().operations;
            rec.add(
                "operations",
                started,
                Verdict::pass(if ops.is_empty() {
                    "none listed".to_string()
                } else {
                    ops.join(", ")
                }),
            );
            ops
        }
        Err(s) => {
            rec.add(
                "operations",
                started,
                Verdict::fail(format!("ListOperations answered {}", describe(&s))),
            );
            rec.skip_rest(fixed, "ListOperations failed");
            return;
        }
    };

    let binding = Binding {
        ctx,
        client: client.clone(),
        instance: instance.clone(),
    };
    // The round trip, when the file-like operations are there; it covers their invocations.
    let has = |op: &str| operations.iter().any(|o| o == op);
    let mut covered: HashMap<String, Verdict> = HashMap::new();
    let started = Instant::now();
    if has("create") && has("get") && has("delete") {
        let (trip, steps) = round_trip(&binding, has("list")).await;
        rec.add("round-trip", started, trip);
        covered = steps;
    } else {
        rec.add(
            "round-trip",
            started,
            Verdict::skip("needs the operations create, get and delete"),
        );
    }

    for op in &operations {
        let check = format!("invoke.{op}");
        let started = Instant::now();
        if let Some(v) = covered.remove(op) {
            rec.add(&check, started, v);
            continue;
        }
        if !ctx.settings.invoke_all {
            rec.add(
                &check,
                started,
                Verdict::skip(
                    "not invoked: side effects unknown (the round trip did not cover it; conformance.invokeAll=true invokes every listed operation with empty data)",
                ),
            );
            continue;
        }
        let verdict = match binding.invoke(op, Vec::new(), HashMap::new()).await {
            Ok(r) => Verdict::pass(format!(
                "answered OK with no data or metadata ({})",
                if r.data.is_empty() {
                    "no data".to_string()
                } else {
                    format!("{} bytes", r.data.len())
                }
            )),
            Err(s) if s.code() == Code::Unimplemented => Verdict::fail(format!(
                "listed by ListOperations, but answered {}",
                describe(&s)
            )),
            Err(s) if s.code() == Code::DeadlineExceeded || s.code() == Code::Unavailable => {
                Verdict::fail(format!("no usable answer: {}", describe(&s)))
            }
            Err(s) => Verdict::pass(format!(
                "answered (without data or metadata it refused: {})",
                describe(&s)
            )),
        };
        rec.add(&check, started, verdict);
    }

    let started = Instant::now();
    let verdict = if has(UNKNOWN_OPERATION) {
        Verdict::skip(format!("{UNKNOWN_OPERATION} is listed"))
    } else {
        match binding
            .invoke(UNKNOWN_OPERATION, Vec::new(), HashMap::new())
            .await
        {
            Ok(_) => Verdict::skip(format!(
                "the operation {UNKNOWN_OPERATION:?}, not listed by ListOperations, answered OK: legitimate, as daprd refuses unlisted operations itself before calling the component"
            )),
            Err(s) if s.code() == Code::DeadlineExceeded || s.code() == Code::Unavailable => {
                Verdict::fail(format!("no usable answer: {}", describe(&s)))
            }
            Err(s) => Verdict::pass(format!("refused: {}", describe(&s))),
        }
    };
    rec.add("unknown-operation", started, verdict);
}

struct Binding<'a> {
    ctx: &'a Ctx,
    client: OutputClient,
    instance: String,
}

impl Binding<'_> {
    async fn invoke(
        &self,
        operation: &str,
        data: Vec<u8>,
        metadata: HashMap<String, String>,
    ) -> Result<pb::InvokeResponse, tonic::Status> {
        let req = pb::InvokeRequest {
            data,
            metadata,
            operation: operation.to_string(),
        };
        let mut client = self.client.clone();
        self.ctx
            .call(client.invoke(request(&self.instance, req)))
            .await
            .map(tonic::Response::into_inner)
    }
}

/// create → get → (list) → delete → get: the round trip's verdict and one per operation used.
async fn round_trip(binding: &Binding<'_>, list: bool) -> (Verdict, HashMap<String, Verdict>) {
    let ctx = binding.ctx;
    let key = &ctx.settings.file_name_key;
    let name = format!("{}.txt", ctx.name("file"));
    // Not valid base64 and not a JSON string, so no contract decodes it.
    let content = format!("plugd conformance {} !", ctx.run).into_bytes();
    let md = || HashMap::from([(key.clone(), name.clone())]);
    let mut steps: HashMap<String, Verdict> = HashMap::new();
    let step = |steps: &mut HashMap<String, Verdict>, op: &str, v: Verdict| {
        steps.insert(op.to_string(), v);
    };
    let mut created = false;
    let mut deleted = false;
    let result = async {
        binding
            .invoke("create", content.clone(), md())
            .await
            .map_err(|s| format!("create with {key}={name} answered {}", describe(&s)))?;
        created = true;
        step(
            &mut steps,
            "create",
            Verdict::pass("answered OK (round trip)"),
        );
        let got = binding
            .invoke("get", Vec::new(), md())
            .await
            .map_err(|s| format!("get of the created {name} answered {}", describe(&s)))?;
        if got.data != content {
            return Err(format!(
                "create wrote {} but get returned {}",
                show(&content),
                show(&got.data)
            ));
        }
        step(
            &mut steps,
            "get",
            Verdict::pass("returned what create wrote (round trip)"),
        );
        if list {
            let listed = binding
                .invoke("list", Vec::new(), HashMap::new())
                .await
                .map_err(|s| format!("list answered {}", describe(&s)))?;
            if !String::from_utf8_lossy(&listed.data).contains(&name) {
                return Err(format!(
                    "list does not name the created {name}: {}",
                    show(&listed.data)
                ));
            }
            step(
                &mut steps,
                "list",
                Verdict::pass("named the created file (round trip)"),
            );
        }
        binding
            .invoke("delete", Vec::new(), md())
            .await
            .map_err(|s| format!("delete of {name} answered {}", describe(&s)))?;
        deleted = true;
        match binding.invoke("get", Vec::new(), md()).await {
            Ok(r) if !r.data.is_empty() => {
                return Err(format!(
                    "after delete, get of {name} still returned {}",
                    show(&r.data)
                ));
            }
            _ => {}
        }
        step(
            &mut steps,
            "delete",
            Verdict::pass("the file was gone afterwards (round trip)"),
        );
        Ok(format!(
            "create, get{}, delete of {key}={name}",
            if list { ", list" } else { "" }
        ))
    }
    .await;
    if created && !deleted {
        // Best effort: the trip stopped between create and delete.
        let _ = binding.invoke("delete", Vec::new(), md()).await;
    }
    let trip = verdict(result);
    if trip.outcome == Outcome::Fail {
        // Operations the failing trip did not vouch for are invoked on their own.
        steps.retain(|_, v| v.outcome == Outcome::Pass);
    }
    (trip, steps)
}

pub(super) async fn check_input(ctx: &Ctx, rec: &mut Recorder) {
    let instance = ctx.instance(ComponentKind::InputBinding);
    let mut client = InputClient::new(ctx.channel.clone());
    let all = &[
        "init",
        "ping",
        "read.event",
        "read.reply",
        "read.reply-error",
    ];

    let init = pb::InputBindingInitRequest {
        metadata: ctx.init_metadata(),
    };
    if !init_check(
        rec,
        &instance,
        all,
        ctx.call(client.init(request(&instance, init))),
    )
    .await
    {
        return;
    }

    ping_check(
        ctx,
        rec,
        client.ping(request(&instance, pb::PingRequest {})),
    )
    .await;

    if !ctx.settings.expect_events {
        rec.skip_rest(
            all,
            "conformance.expectEvents=false: the binding fires only on outside events",
        );
        return;
    }

    let mut read = Read::open(client, &instance, ctx.timeout);
    let wait = ctx.settings.wait;

    let started = Instant::now();
    let first = match read.next(ctx.wait_deadline()).await {
        Ok(Some(e)) if e.message_id.is_empty() => {
            rec.add(
                "read.event",
                started,
                Verdict::fail("an event arrived without a message_id, so it cannot be answered"),
            );
            rec.skip_rest(all, "read.event failed");
            return;
        }
        Ok(Some(e)) => {
            rec.add(
                "read.event",
                started,
                Verdict::pass(format!(
                    "an event arrived in {} ms ({}, message_id {:?})",
                    started.elapsed().as_millis(),
                    show(&e.data),
                    e.message_id
                )),
            );
            e
        }
        Ok(None) => {
            rec.add(
                "read.event",
                started,
                Verdict::fail(format!(
                    "no event on the Read stream within {wait:?} (if the binding fires only on outside events, give conformance.expectEvents=false)"
                )),
            );
            rec.skip_rest(all, "read.event failed");
            return;
        }
        Err(e) => {
            rec.add("read.event", started, Verdict::fail(e));
            rec.skip_rest(all, "read.event failed");
            return;
        }
    };

    let mut last = first;
    for (check, error) in [
        ("read.reply", None),
        ("read.reply-error", Some("conformance: failed on purpose")),
    ] {
        let started = Instant::now();
        let result = async {
            read.reply(&last.message_id, error).await?;
            // Events already on their way before the reply may arrive first; the stream must
            // keep delivering, with a new message id.
            let deadline = ctx.wait_deadline();
            loop {
                match read.next(deadline).await? {
                    None => {
                        return Err(format!(
                            "after {} reply to {:?}, no further event within {wait:?}",
                            if error.is_some() { "an error" } else { "a success" },
                            last.message_id
                        ));
                    }
                    Some(e) if e.message_id != last.message_id => {
                        let id = last.message_id.clone();
                        last = e;
                        return Ok(format!(
                            "the {} reply to {id:?} was accepted; the next event arrived {} ms later",
                            if error.is_some() { "error" } else { "success" },
                            started.elapsed().as_millis()
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        .await;
        let v = verdict(result);
        let failed = v.outcome == Outcome::Fail;
        rec.add(check, started, v);
        if failed {
            break;
        }
    }
    rec.skip_rest(all, "an earlier read check failed");
    let _ = read.reply(&last.message_id, None).await;
    read.close().await;
}

/// One Read stream; a task owns the call (see the pub/sub `Subscription`).
struct Read {
    replies: mpsc::Sender<pb::ReadRequest>,
    events: mpsc::Receiver<Result<pb::ReadResponse, String>>,
    task: tokio::task::JoinHandle<()>,
    ended: Option<String>,
    /// Bound on sending one reply and on closing.
    timeout: Duration,
}

impl Drop for Read {
    /// A fallback: [`close`](Read::close) ends the stream properly.
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Read {
    fn open(client: InputClient, instance: &str, timeout: Duration) -> Self {
        let (replies, outgoing) = mpsc::channel::<pb::ReadRequest>(16);
        let (deliver, events) = mpsc::channel(64);
        let req = request(
            instance,
            tokio_stream::wrappers::ReceiverStream::new(outgoing),
        );
        let task = tokio::spawn(async move {
            let mut client = client;
            let mut stream = match client.read(req).await {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    let _ = deliver
                        .send(Err(format!("Read answered {}", describe(&s))))
                        .await;
                    return;
                }
            };
            loop {
                let next = match stream.message().await {
                    Ok(Some(m)) => Ok(m),
                    Ok(None) => Err("the component ended the Read stream".to_string()),
                    Err(s) => Err(format!("the Read stream failed: {}", describe(&s))),
                };
                let end = next.is_err();
                if deliver.send(next).await.is_err() || end {
                    return;
                }
            }
        });
        Self {
            replies,
            events,
            task,
            ended: None,
            timeout,
        }
    }

    /// Ends the stream after the replies already queued (see the pub/sub `Subscription`).
    async fn close(mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.replies, closed));
        let deadline = Instant::now() + self.timeout;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline.into(), self.events.recv()).await {
        }
    }

    async fn next(&mut self, deadline: Instant) -> Result<Option<pb::ReadResponse>, String> {
        if let Some(e) = &self.ended {
            return Err(e.clone());
        }
        match tokio::time::timeout_at(deadline.into(), self.events.recv()).await {
            Err(_) => Ok(None),
            Ok(Some(Ok(e))) => Ok(Some(e)),
            Ok(Some(Err(e))) => {
                self.ended = Some(e.clone());
                Err(e)
            }
            Ok(None) => {
                let e = "the Read stream ended".to_string();
                self.ended = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn reply(&self, message_id: &str, error: Option<&str>) -> Result<(), String> {
        let req = pb::ReadRequest {
            response_data: if error.is_none() {
                b"{}".to_vec()
            } else {
                Vec::new()
            },
            message_id: message_id.to_string(),
            response_error: error.map(|m| pb::AckResponseError {
                message: m.to_string(),
            }),
        };
        tokio::time::timeout(self.timeout, self.replies.send(req))
            .await
            .map_err(|_| format!("the reply could not be sent within {:?}", self.timeout))?
            .map_err(|_| "the Read stream is closed, the reply cannot be sent".to_string())
    }
}
