//! Pub/sub checks: publish, delivery on a PullMessages stream, ack / nack, order, bulk publish.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::{
    Ctx, Recorder, Verdict, describe, features_check, init_check, ping_check, request, show,
    verdict,
};
use crate::{component::ComponentKind, proto::components as pb};

type Client = pb::pub_sub_client::PubSubClient<Channel>;

const CHECKS: &[&str] = &[
    "init",
    "features",
    "ping",
    "publish",
    "deliver",
    "nack-redelivery",
    "ack-no-redelivery",
    "order",
    "bulk-publish",
];

const BULK_PUBSUB: &str = "BULK_PUBSUB";

/// One PullMessages stream: acks go out through `acks`, messages come in through `messages`
/// (a task owns the call, so a server that sends its headers only with the first message does
/// not block the publishes that would produce it).
struct Subscription {
    acks: mpsc::Sender<pb::PullMessagesRequest>,
    messages: mpsc::Receiver<Result<pb::PullMessagesResponse, String>>,
    task: tokio::task::JoinHandle<()>,
    /// Why the stream ended, once it has.
    ended: Option<String>,
    /// Data of every message received, in order (redeliveries included).
    received: Vec<Vec<u8>>,
    /// Bound on sending one ack and on closing.
    timeout: Duration,
}

impl Drop for Subscription {
    /// A fallback: [`close`](Subscription::close) ends the stream properly.
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscription {
    fn open(client: Client, instance: &str, topic: &str, timeout: Duration) -> Self {
        let (acks, outgoing) = mpsc::channel::<pb::PullMessagesRequest>(64);
        let (deliver, messages) = mpsc::channel(256);
        let first = pb::PullMessagesRequest {
            topic: Some(pb::Topic {
                name: topic.to_string(),
                metadata: HashMap::new(),
            }),
            ack_message_id: String::new(),
            ack_error: None,
        };
        // The first message (the topic) is queued before the call starts.
        let _ = acks.try_send(first);
        let req = request(
            instance,
            tokio_stream::wrappers::ReceiverStream::new(outgoing),
        );
        let task = tokio::spawn(async move {
            let mut client = client;
            let mut stream = match client.pull_messages(req).await {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    let _ = deliver
                        .send(Err(format!("PullMessages answered {}", describe(&s))))
                        .await;
                    return;
                }
            };
            loop {
                let next = match stream.message().await {
                    Ok(Some(m)) => Ok(m),
                    Ok(None) => Err("the component ended the PullMessages stream".to_string()),
                    Err(s) => Err(format!("the PullMessages stream failed: {}", describe(&s))),
                };
                let end = next.is_err();
                if deliver.send(next).await.is_err() || end {
                    return;
                }
            }
        });
        Self {
            acks,
            messages,
            task,
            ended: None,
            received: Vec::new(),
            timeout,
        }
    }

    /// Ends the stream after the acks already queued: the sending side is closed (so they go
    /// out, then the end of the stream), and the component's end of the stream is awaited
    /// (messages still arriving are left un-acked), bounded by the call timeout.
    async fn close(mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.acks, closed));
        // The task ends (and drops its sender) once the component ends the stream.
        let deadline = Instant::now() + self.timeout;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline.into(), self.messages.recv()).await
        {
        }
        // Drop aborts the task if the component kept the stream open.
    }

    /// The next message before `deadline`; `Ok(None)` at the deadline.
    async fn next(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<pb::PullMessagesResponse>, String> {
        if let Some(e) = &self.ended {
            return Err(e.clone());
        }
        match tokio::time::timeout_at(deadline.into(), self.messages.recv()).await {
            Err(_) => Ok(None),
            Ok(Some(Ok(m))) => {
                self.received.push(m.data.clone());
                Ok(Some(m))
            }
            Ok(Some(Err(e))) => {
                self.ended = Some(e.clone());
                Err(e)
            }
            Ok(None) => {
                let e = "the PullMessages stream ended".to_string();
                self.ended = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Acks `id`: success, or a nack with `error`.
    async fn ack(&self, id: &str, error: Option<&str>) -> Result<(), String> {
        let req = pb::PullMessagesRequest {
            topic: None,
            ack_message_id: id.to_string(),
            ack_error: error.map(|e| pb::AckMessageError {
                message: e.to_string(),
            }),
        };
        // A component that never reads acks (while it floods messages) fills the queue: the
        // send is bounded like any call.
        tokio::time::timeout(self.timeout, self.acks.send(req))
            .await
            .map_err(|_| {
                format!(
                    "the ack could not be sent within {:?}: the component does not read the PullMessages stream",
                    self.timeout
                )
            })?
            .map_err(|_| "the PullMessages stream is closed, the ack cannot be sent".to_string())
    }

    /// Waits for a message whose data is `data`, acking (successfully) every other message on
    /// the way; the wanted one is returned un-acked.
    async fn wait_for(
        &mut self,
        data: &[u8],
        deadline: Instant,
    ) -> Result<Option<pb::PullMessagesResponse>, String> {
        loop {
            match self.next(deadline).await? {
                None => return Ok(None),
                Some(m) if m.data == data => return Ok(Some(m)),
                Some(m) => self.ack(&m.id, None).await?,
            }
        }
    }
}

struct PubSub<'a> {
    ctx: &'a Ctx,
    client: Client,
    instance: String,
    topic: String,
}

impl PubSub<'_> {
    fn payload(&self, label: &str) -> Vec<u8> {
        format!(
            "{{\"conformance\":\"{}\",\"message\":\"{label}\"}}",
            self.ctx.run
        )
        .into_bytes()
    }

    async fn publish(&self, data: &[u8]) -> Result<(), String> {
        let req = pb::PublishRequest {
            data: data.to_vec(),
            pubsub_name: self.instance.clone(),
            topic: self.topic.clone(),
            metadata: HashMap::new(),
            content_type: "application/json".into(),
        };
        let mut client = self.client.clone();
        self.ctx
            .call(client.publish(request(&self.instance, req)))
            .await
            .map(|_| ())
            .map_err(|s| format!("Publish answered {}", describe(&s)))
    }

    fn deadline(&self) -> Instant {
        self.ctx.wait_deadline()
    }
}

pub(super) async fn check(ctx: &Ctx, rec: &mut Recorder) {
    let ps = PubSub {
        ctx,
        client: Client::new(ctx.channel.clone()),
        instance: ctx.instance(ComponentKind::PubSub),
        topic: ctx.name("topic"),
    };
    let mut properties = ctx.init_properties();
    if !properties
        .keys()
        .any(|k| k.eq_ignore_ascii_case("consumerID"))
    {
        properties.insert("consumerID".into(), format!("conformance-{}", ctx.run));
    }
    let mut client = ps.client.clone();
    let init = pb::PubSubInitRequest {
        metadata: Some(pb::MetadataRequest { properties }),
    };
    let init = ctx.call(client.init(request(&ps.instance, init)));
    if !init_check(rec, &ps.instance, CHECKS, init).await {
        return;
    }

    let features = request(&ps.instance, pb::FeaturesRequest {});
    let features = features_check(rec, &[BULK_PUBSUB], ctx.call(client.features(features))).await;

    let ping = client.ping(request(&ps.instance, pb::PingRequest {}));
    ping_check(ctx, rec, ping).await;

    let mut sub = Subscription::open(ps.client.clone(), &ps.instance, &ps.topic, ctx.timeout);
    if !deliver(&ps, &mut sub, rec).await {
        rec.skip_rest(CHECKS, "no message was delivered (see deliver)");
        sub.close().await;
        return;
    }
    let redelivery = nack_redelivery(&ps, &mut sub, rec).await;
    ack_no_redelivery(&ps, &mut sub, rec, redelivery).await;
    order(&ps, &mut sub, rec).await;
    match &features {
        Some(f) if f.iter().any(|x| x == BULK_PUBSUB) => bulk_publish(&ps, &mut sub, rec).await,
        Some(_) => rec.skip_rest(&["bulk-publish"], "does not claim BULK_PUBSUB"),
        None => rec.skip_rest(
            &["bulk-publish"],
            "Features failed, so what is claimed is unknown",
        ),
    }
    sub.close().await;
    rec.skip_rest(CHECKS, "not reached");
}

/// publish and deliver: publishes probes (one at first, another every second while none has
/// arrived) until one arrives on the stream. Returns whether one did.
async fn deliver(ps: &PubSub<'_>, sub: &mut Subscription, rec: &mut Recorder) -> bool {
    let started = Instant::now();
    let deadline = ps.deadline();
    let mut published: Vec<Vec<u8>> = Vec::new();
    let mut publish_error = None;
    let mut arrived = None;
    while Instant::now() < deadline && arrived.is_none() {
        let probe = ps.payload(&format!("probe-{}", published.len()));
        match ps.publish(&probe).await {
            Ok(()) => published.push(probe),
            Err(e) => {
                publish_error = Some(e);
                break;
            }
        }
        let round = (Instant::now() + Duration::from_secs(1)).min(deadline);
        loop {
            match sub.next(round).await {
                Ok(None) => break,
                Ok(Some(m)) => {
                    let ours = published.contains(&m.data);
                    if let Err(e) = sub.ack(&m.id, None).await {
                        arrived = Some(Err(e));
                        break;
                    }
                    if ours {
                        arrived = Some(Ok(m));
                        break;
                    }
                }
                Err(e) => {
                    arrived = Some(Err(e));
                    break;
                }
            }
        }
        if matches!(arrived, Some(Err(_))) {
            break;
        }
    }
    match &publish_error {
        Some(e) => rec.add("publish", started, Verdict::fail(e.clone())),
        None => rec.add(
            "publish",
            started,
            Verdict::pass(format!("{} published to {}", published.len(), ps.topic)),
        ),
    }
    let verdict = match arrived {
        Some(Ok(m)) => {
            let mut wrong = Vec::new();
            if m.topic_name != ps.topic {
                wrong.push(format!(
                    "topic_name is {:?}, not {:?}",
                    m.topic_name, ps.topic
                ));
            }
            if m.id.is_empty() {
                wrong.push("the message has no id, so it cannot be acked".to_string());
            }
            if !wrong.is_empty() {
                Verdict::fail(wrong.join("; "))
            } else if published.len() == 1 {
                Verdict::pass(format!(
                    "arrived with its data and topic in {} ms",
                    started.elapsed().as_millis()
                ))
            } else {
                Verdict::pass(format!(
                    "arrived with its data and topic after {} publishes ({} ms; earlier ones may have been published before the subscription was ready)",
                    published.len(),
                    started.elapsed().as_millis()
                ))
            }
        }
        Some(Err(e)) => Verdict::fail(e),
        None if publish_error.is_some() => Verdict::skip("Publish failed"),
        None => Verdict::fail(format!(
            "none of {} messages published to {} arrived on a PullMessages stream within {:?}",
            published.len(),
            ps.topic,
            ps.ctx.settings.wait
        )),
    };
    let ok = verdict.outcome == super::Outcome::Pass;
    rec.add("deliver", started, verdict);
    ok
}

/// nack-redelivery; returns how long the redelivery took after the nack.
async fn nack_redelivery(
    ps: &PubSub<'_>,
    sub: &mut Subscription,
    rec: &mut Recorder,
) -> Option<Duration> {
    let started = Instant::now();
    let mut delay = None;
    let data = ps.payload("nack");
    let result = async {
        ps.publish(&data).await?;
        let Some(first) = sub.wait_for(&data, ps.deadline()).await? else {
            return Err(format!(
                "the message did not arrive within {:?}",
                ps.ctx.settings.wait
            ));
        };
        sub.ack(&first.id, Some("conformance: rejected on purpose"))
            .await?;
        let nacked = Instant::now();
        let Some(again) = sub.wait_for(&data, ps.deadline()).await? else {
            return Err(format!(
                "a message acked with an error was not delivered again within {:?}",
                ps.ctx.settings.wait
            ));
        };
        let took = nacked.elapsed();
        delay = Some(took);
        sub.ack(&again.id, None).await?;
        Ok(format!(
            "delivered again {} ms after the nack",
            took.as_millis()
        ))
    }
    .await;
    rec.add("nack-redelivery", started, verdict(result));
    delay
}

/// ack-no-redelivery: after the ack, watches until a later message arrived and for at least
/// max(`conformance.quiet`, 2 × the nack → redelivery delay measured by nack-redelivery), at
/// most `conformance.wait`: a component that ignores acks and redelivers after that delay is
/// caught.
async fn ack_no_redelivery(
    ps: &PubSub<'_>,
    sub: &mut Subscription,
    rec: &mut Recorder,
    redelivery: Option<Duration>,
) {
    let started = Instant::now();
    let settings = &ps.ctx.settings;
    let window = settings
        .quiet
        .max(redelivery.map_or(Duration::ZERO, |d| d * 2))
        .min(settings.wait);
    let data = ps.payload("ack");
    let next = ps.payload("after-ack");
    let result = async {
        ps.publish(&data).await?;
        let Some(m) = sub.wait_for(&data, ps.deadline()).await? else {
            return Err(format!(
                "the message did not arrive within {:?}",
                ps.ctx.settings.wait
            ));
        };
        let seen_before = sub.received.len();
        sub.ack(&m.id, None).await?;
        let watch_until = (Instant::now() + window).min(ps.ctx.deadline);
        ps.publish(&next).await?;
        let Some(n) = sub.wait_for(&next, ps.deadline()).await? else {
            return Err(format!(
                "the next message did not arrive within {:?}",
                ps.ctx.settings.wait
            ));
        };
        sub.ack(&n.id, None).await?;
        // Watch longer: a redelivery after a delay.
        let quiet_until = watch_until.max((Instant::now() + settings.quiet).min(ps.ctx.deadline));
        while let Some(m) = sub.next(quiet_until).await? {
            sub.ack(&m.id, None).await?;
        }
        let watched = watch_until.max(quiet_until) - started;
        let again = sub.received[seen_before..]
            .iter()
            .filter(|d| **d == data)
            .count();
        if again > 0 {
            Err(format!(
                "a message acked without error was delivered again ({again} time(s))"
            ))
        } else {
            Ok(format!(
                "not delivered again (watched {} ms: until a later message arrived and at least max(conformance.quiet, 2 × the {} redelivery delay))",
                watched.as_millis(),
                redelivery.map_or("unmeasured".to_string(), |d| format!("{} ms", d.as_millis()))
            ))
        }
    }
    .await;
    rec.add("ack-no-redelivery", started, verdict(result));
}

async fn order(ps: &PubSub<'_>, sub: &mut Subscription, rec: &mut Recorder) {
    let started = Instant::now();
    let sent: Vec<Vec<u8>> = (0..5).map(|i| ps.payload(&format!("order-{i}"))).collect();
    let result = async {
        for data in &sent {
            ps.publish(data).await?;
        }
        let mut got: Vec<Vec<u8>> = Vec::new();
        let deadline = ps.deadline();
        while got.len() < sent.len() {
            match sub.next(deadline).await? {
                None => {
                    return Err(format!(
                        "{} of {} messages arrived within {:?}",
                        got.len(),
                        sent.len(),
                        ps.ctx.settings.wait
                    ));
                }
                Some(m) => {
                    sub.ack(&m.id, None).await?;
                    if sent.contains(&m.data) && !got.contains(&m.data) {
                        got.push(m.data);
                    }
                }
            }
        }
        if got == sent {
            Ok("5 messages arrived in publish order".to_string())
        } else {
            let index: Vec<String> = got
                .iter()
                .filter_map(|g| sent.iter().position(|s| s == g))
                .map(|i| i.to_string())
                .collect();
            Err(format!(
                "5 messages published one after another arrived in the order {}",
                index.join(", ")
            ))
        }
    }
    .await;
    rec.add("order", started, verdict(result));
}

async fn bulk_publish(ps: &PubSub<'_>, sub: &mut Subscription, rec: &mut Recorder) {
    let started = Instant::now();
    let entries: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("e{i}"), ps.payload(&format!("bulk-{i}"))))
        .collect();
    let result = async {
        let req = pb::BulkPublishRequest {
            entries: entries
                .iter()
                .map(|(id, data)| pb::BulkMessageEntry {
                    entry_id: id.clone(),
                    event: data.clone(),
                    content_type: "application/json".into(),
                    metadata: HashMap::new(),
                })
                .collect(),
            pubsub_name: ps.instance.clone(),
            topic: ps.topic.clone(),
            metadata: HashMap::new(),
        };
        let mut client = ps.client.clone();
        let answer = ps
            .ctx
            .call(client.bulk_publish(request(&ps.instance, req)))
            .await
            .map_err(|s| format!("BulkPublish answered {}", describe(&s)))?
            .into_inner();
        if !answer.failed_entries.is_empty() {
            let failed: Vec<String> = answer
                .failed_entries
                .iter()
                .map(|f| format!("{}: {}", f.entry_id, f.error))
                .collect();
            return Err(format!(
                "BulkPublish reported failed entries: {}",
                failed.join("; ")
            ));
        }
        let mut missing: Vec<&Vec<u8>> = entries.iter().map(|(_, d)| d).collect();
        let deadline = ps.deadline();
        while !missing.is_empty() {
            match sub.next(deadline).await? {
                None => {
                    let names: Vec<String> = missing.iter().map(|d| show(d)).collect();
                    return Err(format!(
                        "BulkPublish answered OK, but {} did not arrive within {:?}",
                        names.join(", "),
                        ps.ctx.settings.wait
                    ));
                }
                Some(m) => {
                    sub.ack(&m.id, None).await?;
                    missing.retain(|d| **d != m.data);
                }
            }
        }
        Ok("3 entries published, none failed, all arrived".to_string())
    }
    .await;
    rec.add("bulk-publish", started, verdict(result));
}
