//! `plugd conformance`: a black-box check of a component socket against the pluggable-component
//! contract (`dapr.proto.components.v1`, as daprd uses it).
//!
//! ```sh
//! plugd conformance --socket /tmp/dapr-components-sockets/sqlite.sock \
//!     --metadata connectionString=/tmp/c.db [--kind state] [--json] [--timeout 5s]
//! ```
//!
//! Every check ends as `pass`, `fail` or `skip`, always with a reason. A check that cannot apply
//! (a feature that is not claimed, a precondition that failed, a behaviour a black box cannot
//! tell apart from a legitimate one) is a `skip` that says why, never a `pass`. The exit code is
//! 0 when nothing failed, 1 otherwise; 64 (nothing run) for an unusable `--timeout` (it must be
//! greater than 0, at most 1h) or `conformance.*` option, each problem printed on stderr.
//!
//! Each run uses fresh names: instances `conformance-<run id>-<kind>` (sent as
//! `x-component-instance`; `…-b` for the second instance of the isolation check), keys and
//! topics starting `conformance-<run id>-`. The state keys written and the output binding's
//! round-trip file are deleted at the end (best effort); what the component keeps per instance,
//! topic or consumer group (pub/sub topics and consumer groups, e.g. Redis streams, and the
//! instances themselves) stays. Streams (PullMessages, Read) are closed by ending the sending
//! side after the queued acks and replies, then awaiting the component's end of the stream
//! (bounded by `--timeout`).
//!
//! Calls are bounded by `--timeout`; waits for asynchronous behaviour (deliveries, expiry, input
//! events) by the `conformance.wait` option, polled, never slept through. After a call of a kind
//! gets no answer in time, that kind's remaining checks are skipped ("the component stopped
//! answering") and make no calls. The whole run has a budget of 20 × `--timeout` + 8 ×
//! `conformance.wait` + `conformance.ttl`; once it is used up, the remaining checks are skipped.
//!
//! Reasons quote component text (status messages, features, data) with control characters
//! (ANSI escapes included) replaced by spaces and at most 300 characters of a status message.
//!
//! # Checks
//!
//! | kind | check | passes when |
//! |---|---|---|
//! | `socket` | `reachable` | the socket connects (whether it speaks gRPC shows in `reflection-v1alpha`); a failure says why, with `plugd inspect`'s hints (no such file, no process listens, not gRPC) |
//! | `socket` | `reflection-v1alpha` | `grpc.reflection.v1alpha` lists services (what daprd asks; absent = fail) |
//! | `socket` | `reflection-v1` | `grpc.reflection.v1` lists the same services (absent = skip: daprd does not ask it) |
//! | `socket` | `services` | at least one of the five component services is listed |
//! | `socket` | `kinds` | every `--kind` asked for is served (default: every kind listed) |
//! | `socket` | `options` | (only with `conformance.*` metadata) every suite option is known and valid (the CLI refuses to run otherwise) |
//! | every kind | `init` | Init with the `--metadata` properties answers OK |
//! | state, pubsub, secretstore | `features` | Features answers (the list is the reason) |
//! | state, pubsub, secretstore | `features.unchecked` | (only when some are) always a skip naming the claimed features no check verifies (e.g. `QUERY_API`, `MESSAGE_TTL`, `MULTIPLE_KEY_VALUES_PER_SECRET`) |
//! | every kind | `ping` | Ping after Init answers OK (`UNIMPLEMENTED` = skip) |
//! | `state` | `get-missing` | Get of a key never written: no error, empty data |
//! | `state` | `set-get` | a Set value is read back (with an etag when ETAG is claimed) |
//! | `state` | `delete-missing` | Delete of a key never written: OK |
//! | `state` | `delete` | a deleted key reads back empty |
//! | `state` | `bulk-set`, `bulk-get`, `bulk-delete` | BulkSet writes three keys, BulkGet reads them (and a missing one as empty), BulkDelete removes them |
//! | `state` | `etag.changes` | (ETAG) every write gives the key a new etag |
//! | `state` | `etag.set-current`, `etag.delete-current` | (ETAG) a Set / Delete with the current etag succeeds |
//! | `state` | `etag.set-stale`, `etag.delete-stale` | (ETAG) a Set / Delete with a stale etag is refused and changes nothing |
//! | `state` | `etag.bulk-set-stale`, `etag.bulk-delete-stale` | (ETAG) a BulkSet / BulkDelete of two keys, one with a stale etag, is refused and leaves that key unchanged. Bulk writes need not be atomic (the contract has no per-item write error; daprd's own stores apply them item by item), so whether the other key was applied is only reported |
//! | `state` | `etag.error-shape` | (ETAG) those four refusals are `FAILED_PRECONDITION` with exactly one `google.rpc.BadRequest` violation on field `etag`, which daprd turns into `ABORTED` / HTTP 409 |
//! | `state` | `first-write` | (ETAG) first-write concurrency without an etag creates a key but does not overwrite one |
//! | `state` | `transaction.commit` | (TRANSACTIONAL) a Transact of two sets and a delete applies all three |
//! | `state` | `transaction.atomic` | (TRANSACTIONAL) a Transact whose second operation fails (stale etag with ETAG, else an invalid `ttlInSeconds` with TTL) is refused and leaves the first undone |
//! | `state` | `ttl.expiry` | (TTL) a key set with `ttlInSeconds: N` (`conformance.ttl`, default 2) is read back, is not gone before N − 1 s (whole-second clocks), and is gone by N s + `conformance.wait` |
//! | `state` | `isolation` | a key written under one instance is invisible under a second one (see `conformance.isolation.*`) |
//! | `pubsub` | `publish` | Publish answers OK |
//! | `pubsub` | `deliver` | a message published to a fresh topic arrives on a PullMessages stream with its data and topic |
//! | `pubsub` | `nack-redelivery` | a message acked with an error is delivered again |
//! | `pubsub` | `ack-no-redelivery` | a message acked without error is not delivered again: watched until a later message arrived and for at least max(`conformance.quiet`, 2 × the nack → redelivery delay `nack-redelivery` measured), at most `conformance.wait` |
//! | `pubsub` | `order` | five messages published one after another arrive on the stream in that order |
//! | `pubsub` | `bulk-publish` | (BULK_PUBSUB) BulkPublish of three entries reports no failed entry and all three arrive |
//! | `output-binding` | `operations` | ListOperations answers |
//! | `output-binding` | `round-trip` | (with `create`, `get` and `delete`) create a file by `fileName`, get it back, find it in `list` (if listed), delete it, and get it no more |
//! | `output-binding` | `invoke.<op>` | operations the round trip used report its outcome; the others are a skip ("side effects unknown") unless `conformance.invokeAll=true`, which invokes each with empty data: it passes when it answers (an error status counts, `UNIMPLEMENTED` and no answer do not) |
//! | `output-binding` | `unknown-operation` | an operation that is not listed, invoked without data, is refused (an OK answer is a skip: daprd refuses unlisted operations itself) |
//! | `input-binding` | `read.event` | a Read stream delivers an event with a `message_id` |
//! | `input-binding` | `read.reply` | after a success reply to it, the stream stays open and delivers again |
//! | `input-binding` | `read.reply-error` | after an error reply, the stream stays open and delivers again |
//! | `secretstore` | `get-missing` | Get of a name that does not exist: an error other than `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `UNIMPLEMENTED` (`NOT_FOUND` is preferred), or an answer whose values are all empty |
//! | `secretstore` | `bulk-get` | BulkGet answers a map (its size is the reason) |
//! | `secretstore` | `get-known` | Get of `conformance.secretKey`, else of the first name BulkGet returned, answers the same values as BulkGet |
//!
//! # Suite options
//!
//! `--metadata` keys starting with `conformance.` configure the suite and are **not** sent to
//! Init; all other keys are Init properties. An unknown `conformance.` key or an unusable value
//! stops `plugd conformance` before it runs (exit 64; [`run`] itself reports it as a failed
//! `options` check).
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `conformance.wait` | how long to wait for asynchronous behaviour: deliveries, redeliveries, TTL expiry (after the TTL), input events (a Go or humantime duration) | `10s` |
//! | `conformance.quiet` | the least time to watch for an unwanted redelivery after an ack (see `ack-no-redelivery`) | `500ms` |
//! | `conformance.ttl` | `ttlInSeconds` of the `ttl.expiry` key, whole seconds from 2 to 3600 | `2` |
//! | `conformance.invokeAll` | `true`: invoke every listed output-binding operation with empty data, not only those the round trip covers (they may have side effects on a real backend) | `false` |
//! | `conformance.isolation.KEY` | Init property `KEY` of the second instance of the isolation check (e.g. another database). Without any, the second instance gets the same properties, and a key visible under both is a skip (a shared backend is legitimate); with them, a fail | none |
//! | `conformance.secretKey` | a secret name that exists, for `get-known` | the first name BulkGet returns |
//! | `conformance.fileNameKey` | the request metadata key naming the file in the output-binding round trip | `fileName` |
//! | `conformance.expectEvents` | `false`: the input binding fires only on outside events, so the `read.*` checks are skipped | `true` |
//!
//! Pub/sub Init gets `consumerID=conformance-<run id>` unless `--metadata consumerID=…` is given.
//!
//! # JSON (`--json`)
//!
//! ```json
//! {
//!   "socket": "/tmp/sockets/in-memory.sock",
//!   "run": "1a2b3c4d",
//!   "passed": true,
//!   "summary": {"pass": 30, "fail": 0, "skip": 1},
//!   "results": [
//!     {"kind": "socket", "check": "reachable", "outcome": "pass", "reason": "…", "duration_ms": 1.2},
//!     {"kind": "state", "check": "etag.set-stale", "outcome": "pass", "reason": "…", "duration_ms": 3.4}
//!   ]
//! }
//! ```
//!
//! `kind` is `socket`, `state`, `pubsub`, `input-binding`, `output-binding` or `secretstore` (the
//! `--kind` spellings); `check` is a name from the table above; `outcome` is `pass`, `fail` or
//! `skip`; `passed` is true when no outcome is `fail`. Fields may be added, never renamed.

mod bindings;
mod pubsub;
mod secrets;
mod state;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::{Serialize, Serializer, ser::SerializeStruct};
use tonic::{Code, metadata::MetadataValue, transport::Channel};

use crate::{
    component::{ComponentKind, dial},
    discovery,
};

/// What to check.
#[derive(Debug, Clone)]
pub struct Options {
    pub socket: PathBuf,
    /// Kinds to check; empty: every kind the socket serves.
    pub kinds: Vec<ComponentKind>,
    /// Init metadata for the component under test (and `conformance.*` suite options).
    pub metadata: BTreeMap<String, String>,
    /// Deadline on each call.
    pub timeout: Duration,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "SKIP",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// The kind checked (`state`, …), or `socket` for the checks that come first.
    pub kind: String,
    pub check: String,
    pub outcome: Outcome,
    pub reason: String,
    /// How long the check took, in milliseconds.
    pub duration_ms: f64,
}

/// Every check's result.
#[derive(Debug, Clone)]
pub struct Report {
    pub socket: PathBuf,
    /// The run id in this run's instance, key and topic names.
    pub run: String,
    pub results: Vec<CheckResult>,
}

/// How many checks ended each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub pass: usize,
    pub fail: usize,
    pub skip: usize,
}

impl Serialize for Report {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Report", 5)?;
        s.serialize_field("socket", &self.socket)?;
        s.serialize_field("run", &self.run)?;
        s.serialize_field("passed", &self.passed())?;
        s.serialize_field("summary", &self.summary())?;
        s.serialize_field("results", &self.results)?;
        s.end()
    }
}

impl Report {
    /// No check failed.
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.outcome != Outcome::Fail)
    }

    /// Counts per outcome.
    pub fn summary(&self) -> Summary {
        let mut summary = Summary::default();
        for r in &self.results {
            match r.outcome {
                Outcome::Pass => summary.pass += 1,
                Outcome::Fail => summary.fail += 1,
                Outcome::Skip => summary.skip += 1,
            }
        }
        summary
    }

    /// The results as an aligned text table (KIND, CHECK, RESULT, REASON) and a summary line.
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 4]> = vec![[
            "KIND".into(),
            "CHECK".into(),
            "RESULT".into(),
            "REASON".into(),
        ]];
        for r in &self.results {
            rows.push([
                r.kind.clone(),
                r.check.clone(),
                r.outcome.label().into(),
                one_line(&r.reason),
            ]);
        }
        let widths: Vec<usize> = (0..3)
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &rows {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(&widths) {
                line.push_str(&format!("{cell:<width$}  "));
            }
            line.push_str(&row[3]);
            out.push_str(line.trim_end());
            out.push('\n');
        }
        let s = self.summary();
        out.push_str(&format!(
            "{} checks: {} passed, {} failed, {} skipped ({}, run {})\n",
            self.results.len(),
            s.pass,
            s.fail,
            s.skip,
            self.socket.display(),
            self.run
        ));
        out
    }
}

/// `1 service`, `2 services`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn one_line(text: &str) -> String {
    sanitize(text, 2000)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs the suite.
pub async fn run(opts: &Options) -> Report {
    let started = Instant::now();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut report = Report {
        socket: opts.socket.clone(),
        run: run.clone(),
        results: Vec::new(),
    };
    let mut rec = Recorder::new("socket", Hang::default());
    let (settings, problems) = Settings::parse(&opts.metadata);
    if !problems.is_empty() {
        rec.add(
            "options",
            Instant::now(),
            Verdict::fail(problems.join("; ")),
        );
    } else if !settings.given.is_empty() {
        rec.add(
            "options",
            Instant::now(),
            Verdict::pass(format!("suite options: {}", settings.given.join(", "))),
        );
    }
    let Some((channel, kinds)) = socket_checks(opts, &mut rec).await else {
        report.results = rec.results;
        return report;
    };
    report.results.append(&mut rec.results);
    let init: BTreeMap<String, String> = opts
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with(OPTION_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let budget = opts.timeout * 20 + settings.wait * 8 + settings.ttl;
    let mut ctx = Ctx {
        channel,
        timeout: opts.timeout,
        run,
        init,
        settings,
        deadline: started + budget,
        budget,
        hang: Hang::default(),
    };
    for kind in kinds {
        // A hang in one kind does not skip the next kind's checks (the run's budget still
        // applies).
        ctx.hang = Hang::default();
        let mut rec = Recorder::new(kind_label(kind), ctx.hang.clone());
        match kind {
            ComponentKind::State => state::check(&ctx, &mut rec).await,
            ComponentKind::PubSub => pubsub::check(&ctx, &mut rec).await,
            ComponentKind::InputBinding => bindings::check_input(&ctx, &mut rec).await,
            ComponentKind::OutputBinding => bindings::check_output(&ctx, &mut rec).await,
            ComponentKind::SecretStore => secrets::check(&ctx, &mut rec).await,
        }
        report.results.append(&mut rec.results);
    }
    report
}

/// The `--kind` spelling of a kind (also what `plugd inspect` reports).
pub fn kind_label(kind: ComponentKind) -> &'static str {
    match kind {
        ComponentKind::State => "state",
        ComponentKind::PubSub => "pubsub",
        ComponentKind::InputBinding => "input-binding",
        ComponentKind::OutputBinding => "output-binding",
        ComponentKind::SecretStore => "secretstore",
    }
}

/// Reachability, reflection and the kinds to check; `None` when nothing more can be checked.
async fn socket_checks(
    opts: &Options,
    rec: &mut Recorder,
) -> Option<(Channel, Vec<ComponentKind>)> {
    let started = Instant::now();
    let channel = match dial(&opts.socket, opts.timeout).await {
        Ok(channel) => {
            rec.add(
                "reachable",
                started,
                Verdict::pass(
                    "connects (whether the listener speaks gRPC shows in reflection-v1alpha)",
                ),
            );
            channel
        }
        Err(e) => {
            // The same hints as `plugd inspect` (no process listens, not gRPC, …).
            let reason = if std::fs::symlink_metadata(&opts.socket).is_err() {
                format!("{}: no such socket file", e.detail())
            } else {
                match discovery::probe(&opts.socket, opts.timeout).await {
                    Err(hinted) => hinted,
                    Ok(_) => e.detail(),
                }
            };
            rec.add("reachable", started, Verdict::fail(sanitize(&reason, 300)));
            return None;
        }
    };

    let started = Instant::now();
    let v1alpha = bounded(opts.timeout, discovery::list_v1alpha(channel.clone())).await;
    match &v1alpha {
        Ok(services) => rec.add(
            "reflection-v1alpha",
            started,
            Verdict::pass(format!("lists {}", count(services.len(), "service"))),
        ),
        Err(status) => {
            let hint = match status.code() {
                Code::DeadlineExceeded => {
                    " (no answer: the listener does not answer as a gRPC server)"
                }
                Code::Unimplemented => "",
                _ if crate::component::is_transport_failure(status) => {
                    " (the connection failed: the listener does not speak gRPC over HTTP/2)"
                }
                _ => "",
            };
            rec.add(
                "reflection-v1alpha",
                started,
                Verdict::fail(format!(
                    "grpc.reflection.v1alpha.ServerReflection is what daprd asks, and it answered {}{hint}",
                    describe(status)
                )),
            )
        }
    }
    let started = Instant::now();
    let v1 = bounded(opts.timeout, discovery::list_v1(channel.clone())).await;
    match (&v1, &v1alpha) {
        (Ok(v1), Ok(alpha)) => {
            let (mut a, mut b) = (v1.clone(), alpha.clone());
            a.sort();
            b.sort();
            if a == b {
                rec.add(
                    "reflection-v1",
                    started,
                    Verdict::pass("lists the same services as v1alpha"),
                );
            } else {
                rec.add(
                    "reflection-v1",
                    started,
                    Verdict::fail(format!(
                        "v1 lists [{}] but v1alpha lists [{}]",
                        a.join(", "),
                        b.join(", ")
                    )),
                );
            }
        }
        (Ok(v1), Err(_)) => rec.add(
            "reflection-v1",
            started,
            Verdict::pass(format!("lists {}", count(v1.len(), "service"))),
        ),
        (Err(status), _) if status.code() == Code::Unimplemented => rec.add(
            "reflection-v1",
            started,
            Verdict::skip("not served (daprd asks v1alpha only; newer gRPC tools ask v1)"),
        ),
        (Err(status), _) => rec.add(
            "reflection-v1",
            started,
            Verdict::fail(format!("answered {}", describe(status))),
        ),
    }

    let started = Instant::now();
    let Some(services) = v1alpha.ok().or(v1.ok()) else {
        rec.add(
            "services",
            started,
            Verdict::fail("no reflection service answered, so no component service is found"),
        );
        return None;
    };
    let served: Vec<ComponentKind> = ComponentKind::ALL
        .into_iter()
        .filter(|k| services.iter().any(|s| s == k.service_name()))
        .collect();
    let listed: Vec<&str> = services
        .iter()
        .map(String::as_str)
        .filter(|s| s.starts_with("dapr.proto.components.v1."))
        .collect();
    if served.is_empty() {
        rec.add(
            "services",
            started,
            Verdict::fail(format!(
                "none of StateStore, PubSub, InputBinding, OutputBinding, SecretStore is listed (listed: {})",
                services.join(", ")
            )),
        );
        return None;
    }
    rec.add("services", started, Verdict::pass(listed.join(", ")));

    let started = Instant::now();
    let kinds: Vec<ComponentKind> = if opts.kinds.is_empty() {
        served.clone()
    } else {
        let mut kinds = Vec::new();
        for kind in &opts.kinds {
            if !kinds.contains(kind) {
                kinds.push(*kind);
            }
        }
        kinds
    };
    let missing: Vec<ComponentKind> = kinds
        .iter()
        .copied()
        .filter(|k| !served.contains(k))
        .collect();
    let kinds: Vec<ComponentKind> = kinds.into_iter().filter(|k| served.contains(k)).collect();
    let names: Vec<&str> = kinds.iter().map(|k| kind_label(*k)).collect();
    if missing.is_empty() {
        let how = if opts.kinds.is_empty() {
            "every kind served"
        } else {
            "as asked"
        };
        rec.add(
            "kinds",
            started,
            Verdict::pass(format!("checking {} ({how})", names.join(", "))),
        );
    } else {
        let missing: Vec<String> = missing
            .iter()
            .map(|k| {
                format!(
                    "--kind {} ({} is not listed)",
                    kind_label(*k),
                    k.service_name()
                )
            })
            .collect();
        rec.add(
            "kinds",
            started,
            Verdict::fail(format!("not served: {}", missing.join(", "))),
        );
    }
    Some((channel, kinds))
}

const OPTION_PREFIX: &str = "conformance.";

/// The suite options (`conformance.*` metadata).
#[derive(Debug, Clone)]
struct Settings {
    wait: Duration,
    quiet: Duration,
    isolation: BTreeMap<String, String>,
    secret_key: Option<String>,
    file_name_key: String,
    expect_events: bool,
    /// The TTL of the `ttl.expiry` key (whole seconds, at least 2).
    ttl: Duration,
    /// Invoke every listed output-binding operation, not only the round trip's.
    invoke_all: bool,
    /// The option keys given, for the report.
    given: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(10),
            quiet: Duration::from_millis(500),
            isolation: BTreeMap::new(),
            secret_key: None,
            file_name_key: "fileName".into(),
            expect_events: true,
            ttl: Duration::from_secs(2),
            invoke_all: false,
            given: Vec::new(),
        }
    }
}

impl Settings {
    /// The options found in `metadata` (the usable ones) and every problem with them.
    fn parse(metadata: &BTreeMap<String, String>) -> (Self, Vec<String>) {
        let mut settings = Self::default();
        let mut problems = Vec::new();
        for (key, value) in metadata {
            let Some(name) = key.strip_prefix(OPTION_PREFIX) else {
                continue;
            };
            settings.given.push(key.clone());
            match name {
                "wait" | "quiet" => match humantime::parse_duration(value.trim()) {
                    Ok(d) if d > Duration::ZERO && d <= Duration::from_secs(3600) => {
                        if name == "wait" {
                            settings.wait = d;
                        } else {
                            settings.quiet = d;
                        }
                    }
                    _ => problems.push(format!(
                        "{key}: {value:?} is not a duration greater than 0 and at most 1h (e.g. 10s)"
                    )),
                },
                "ttl" => match value.trim().parse::<u64>() {
                    Ok(n) if (2..=3600).contains(&n) => settings.ttl = Duration::from_secs(n),
                    _ => problems.push(format!(
                        "{key}: {value:?} is not a whole number of seconds from 2 to 3600"
                    )),
                },
                "invokeAll" => match value.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" => settings.invoke_all = true,
                    "false" | "0" => settings.invoke_all = false,
                    _ => problems.push(format!("{key}: {value:?} is not true or false")),
                },
                "secretKey" => settings.secret_key = Some(value.clone()),
                "fileNameKey" if !value.is_empty() => settings.file_name_key = value.clone(),
                "fileNameKey" => problems.push(format!("{key}: must not be empty")),
                "expectEvents" => match value.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" => settings.expect_events = true,
                    "false" | "0" => settings.expect_events = false,
                    _ => problems.push(format!("{key}: {value:?} is not true or false")),
                },
                _ => match name.strip_prefix("isolation.") {
                    Some(prop) if !prop.is_empty() => {
                        settings.isolation.insert(prop.to_string(), value.clone());
                    }
                    _ => problems.push(format!(
                        "{key}: unknown suite option (known: conformance.wait, conformance.quiet, conformance.ttl, conformance.isolation.KEY, conformance.secretKey, conformance.fileNameKey, conformance.expectEvents, conformance.invokeAll)"
                    )),
                },
            }
        }
        (settings, problems)
    }
}

/// What every kind's checks share.
struct Ctx {
    channel: Channel,
    timeout: Duration,
    run: String,
    /// Init properties (without the suite options).
    init: BTreeMap<String, String>,
    settings: Settings,
    /// The run's overall deadline: no call or wait goes past it.
    deadline: Instant,
    /// `deadline` − the start, for reasons.
    budget: Duration,
    /// The current kind's first hang.
    hang: Hang,
}

/// When and why a kind's checks stopped: the first call that got no answer in time (or the
/// run's budget running out). Checks started after it are skipped.
#[derive(Debug, Clone, Default)]
struct Hang(std::sync::Arc<std::sync::Mutex<Option<(Instant, String)>>>);

impl Hang {
    fn get(&self) -> Option<(Instant, String)> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, why: String) {
        let mut hang = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if hang.is_none() {
            *hang = Some((Instant::now(), why));
        }
    }
}

impl Ctx {
    /// Runs one call, bounded by `--timeout` and the run's deadline. After a call of this kind
    /// got no answer, no further call is made (each answers `DEADLINE_EXCEEDED` at once).
    async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        if let Some((_, why)) = self.hang.get() {
            return Err(tonic::Status::deadline_exceeded(format!(
                "not called: {why}"
            )));
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        let limit = self.timeout.min(left);
        match tokio::time::timeout(limit, fut).await {
            Ok(result) => result,
            Err(_) => {
                if limit < self.timeout {
                    self.hang.set(format!(
                        "the run's time budget ({:?}: 20 × --timeout + 8 × conformance.wait + conformance.ttl) is used up",
                        self.budget
                    ));
                } else {
                    self.hang.set(format!(
                        "the component stopped answering (a call got no answer within {:?})",
                        self.timeout
                    ));
                }
                Err(tonic::Status::deadline_exceeded(format!(
                    "no answer within {limit:?}"
                )))
            }
        }
    }

    /// The end of a wait for asynchronous behaviour starting now: `conformance.wait` from now,
    /// but not past the run's deadline.
    fn wait_deadline(&self) -> Instant {
        (Instant::now() + self.settings.wait).min(self.deadline)
    }

    /// The init properties as an Init request's metadata.
    fn init_metadata(&self) -> Option<crate::proto::components::MetadataRequest> {
        Some(crate::proto::components::MetadataRequest {
            properties: self.init_properties(),
        })
    }

    /// The instance name for `kind` in this run.
    fn instance(&self, kind: ComponentKind) -> String {
        format!("conformance-{}-{}", self.run, kind_label(kind))
    }

    /// A key or topic name unique to this run.
    fn name(&self, what: &str) -> String {
        format!("conformance-{}-{what}", self.run)
    }

    /// Init properties as the proto wants them.
    fn init_properties(&self) -> std::collections::HashMap<String, String> {
        self.init.clone().into_iter().collect()
    }
}

/// A check's outcome and reason.
#[derive(Debug, Clone)]
struct Verdict {
    outcome: Outcome,
    reason: String,
}

impl Verdict {
    fn pass(reason: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Pass,
            reason: reason.into(),
        }
    }
    fn fail(reason: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Fail,
            reason: reason.into(),
        }
    }
    fn skip(reason: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Skip,
            reason: reason.into(),
        }
    }
}

/// `Ok(reason)` passes, `Err(reason)` fails.
fn verdict(result: Result<String, String>) -> Verdict {
    match result {
        Ok(reason) => Verdict::pass(reason),
        Err(reason) => Verdict::fail(reason),
    }
}

/// Collects one kind's results.
struct Recorder {
    kind: &'static str,
    results: Vec<CheckResult>,
    hang: Hang,
}

impl Recorder {
    fn new(kind: &'static str, hang: Hang) -> Self {
        Self {
            kind,
            results: Vec::new(),
            hang,
        }
    }

    /// Records a check. A check that started after the kind's first hang is a skip whatever it
    /// found (its calls were not made).
    fn add(&mut self, check: &str, started: Instant, verdict: Verdict) {
        let verdict = match self.hang.get() {
            Some((at, why)) if at < started => Verdict::skip(format!("not run: {why}")),
            _ => verdict,
        };
        self.results.push(CheckResult {
            kind: self.kind.to_string(),
            check: check.to_string(),
            outcome: verdict.outcome,
            reason: sanitize(&verdict.reason, 2000),
            duration_ms: (started.elapsed().as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
        });
    }

    /// Whether `check` has a result already.
    fn has(&self, check: &str) -> bool {
        self.results.iter().any(|r| r.check == check)
    }

    /// Adds a skip with `reason` for every check in `checks` that has no result yet.
    fn skip_rest(&mut self, checks: &[&str], reason: &str) {
        for check in checks {
            if !self.has(check) {
                self.add(check, Instant::now(), Verdict::skip(reason));
            }
        }
    }
}

/// A request for `instance`.
fn request<T>(instance: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = MetadataValue::try_from(instance) {
        request.metadata_mut().insert("x-component-instance", value);
    }
    request
}

/// The call's result, or `DEADLINE_EXCEEDED` when it got no answer within `timeout`.
async fn bounded<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {timeout:?}"
        ))),
    }
}

/// A status as `CODE: message` (`FAILED_PRECONDITION: etag mismatch`), the message made safe
/// to print (see [`sanitize`], at most 300 characters). `plugd inspect` uses it too.
pub fn describe_status(status: &tonic::Status) -> String {
    let code = format!("{:?}", status.code());
    let mut upper = String::new();
    for (i, c) in code.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            upper.push('_');
        }
        upper.push(c.to_ascii_uppercase());
    }
    // The transport's text for a lost connection speaks of the sidecar; here nothing
    // re-initialises anything.
    let message = status.message().replace(
        crate::component::CONNECTION_LOST,
        "the connection to the component was lost (it closed the connection or exited)",
    );
    let message = sanitize(&message, 300);
    if message.is_empty() {
        upper
    } else {
        format!("{upper}: {message}")
    }
}

fn describe(status: &tonic::Status) -> String {
    describe_status(status)
}

/// Component text made safe to print: control characters (ANSI escapes included) become
/// spaces, and at most `max` characters are kept (`…` marks a cut).
pub fn sanitize(text: &str, max: usize) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
        .collect();
    if clean.chars().count() <= max {
        clean
    } else {
        let mut cut: String = clean.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// A duration for `--timeout`: greater than 0 and at most 1h (a clap value parser).
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d > Duration::ZERO && d <= Duration::from_secs(3600) => Ok(d),
        Ok(_) => Err(format!(
            "{text:?} must be greater than 0 and at most 1h (e.g. 5s)"
        )),
        Err(e) => Err(format!("{text:?} is not a duration (e.g. 5s): {e}")),
    }
}

/// Every problem with the `conformance.*` suite options in `metadata` (empty: all usable).
/// `plugd conformance` prints them and exits 64 without running.
pub fn option_problems(metadata: &BTreeMap<String, String>) -> Vec<String> {
    Settings::parse(metadata).1
}

/// The `features.unchecked` row: claimed features no check verifies (a skip naming them);
/// nothing when every claimed feature is checked.
fn unchecked_features(rec: &mut Recorder, features: &[String], checked: &[&str]) {
    let unchecked: Vec<&str> = features
        .iter()
        .map(String::as_str)
        .filter(|f| !checked.contains(f))
        .collect();
    if !unchecked.is_empty() {
        rec.add(
            "features.unchecked",
            Instant::now(),
            Verdict::skip(format!(
                "claimed, but not verified by this suite: {}",
                unchecked.join(", ")
            )),
        );
    }
}

/// Bytes for a reason: text when printable, else their length.
fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if text.chars().count() <= 80 && !text.chars().any(char::is_control) => {
            format!("{text:?}")
        }
        Ok(text) if !text.chars().any(char::is_control) => {
            let cut: String = text.chars().take(77).collect();
            format!("{cut:?}…")
        }
        _ => format!("{} bytes", bytes.len()),
    }
}

/// Init for any kind, reported as the `init` check: `init` is the (bounded) Init call
/// for `instance`. When it fails, the checks in `all` are skipped and false is returned.
async fn init_check<T>(
    rec: &mut Recorder,
    instance: &str,
    all: &[&str],
    init: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> bool {
    let started = Instant::now();
    match init.await {
        Ok(_) => {
            rec.add(
                "init",
                started,
                Verdict::pass(format!("instance {instance}")),
            );
            true
        }
        Err(s) => {
            rec.add(
                "init",
                started,
                Verdict::fail(format!("Init answered {}", describe(&s))),
            );
            rec.skip_rest(all, "Init failed");
            false
        }
    }
}

/// Features for any kind, reported as the `features` check, with `features.unchecked` for the
/// claimed ones not in `checked`. None when the call failed.
async fn features_check(
    rec: &mut Recorder,
    checked: &[&str],
    features: impl std::future::Future<
        Output = Result<tonic::Response<crate::proto::components::FeaturesResponse>, tonic::Status>,
    >,
) -> Option<Vec<String>> {
    let started = Instant::now();
    match features.await {
        Ok(r) => {
            let features = r.into_inner().features;
            let text = if features.is_empty() {
                "none claimed".to_string()
            } else {
                features.join(", ")
            };
            rec.add("features", started, Verdict::pass(text));
            unchecked_features(rec, &features, checked);
            Some(features)
        }
        Err(s) => {
            rec.add(
                "features",
                started,
                Verdict::fail(format!("Features answered {}", describe(&s))),
            );
            None
        }
    }
}

/// Ping for any kind, reported as the `ping` check.
async fn ping_check<T>(
    ctx: &Ctx,
    rec: &mut Recorder,
    fut: impl std::future::Future<Output = Result<T, tonic::Status>>,
) {
    let started = Instant::now();
    let verdict = match ctx.call(fut).await {
        Ok(_) => Verdict::pass(format!(
            "OK in {:.1} ms",
            started.elapsed().as_secs_f64() * 1000.0
        )),
        Err(status) if status.code() == Code::Unimplemented => Verdict::skip(format!(
            "Ping is not implemented ({}); plugd counts such a component healthy while its calls succeed",
            describe(&status)
        )),
        Err(status) => Verdict::fail(format!("after Init, Ping answered {}", describe(&status))),
    };
    rec.add("ping", started, verdict);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(kind: &str, check: &str, outcome: Outcome, reason: &str) -> CheckResult {
        CheckResult {
            kind: kind.into(),
            check: check.into(),
            outcome,
            reason: reason.into(),
            duration_ms: 1.0,
        }
    }

    #[test]
    fn table_aligns_columns_and_sums_up() {
        let report = Report {
            socket: PathBuf::from("/tmp/s/x.sock"),
            run: "abcd1234".into(),
            results: vec![
                result("socket", "reachable", Outcome::Pass, "accepts"),
                result(
                    "state",
                    "etag.set-stale",
                    Outcome::Fail,
                    "accepted\nwith  a stale etag",
                ),
                result("state", "ttl.expiry", Outcome::Skip, "does not claim TTL"),
            ],
        };
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert_eq!(lines[0], "KIND    CHECK           RESULT  REASON");
        assert_eq!(lines[1], "socket  reachable       PASS    accepts");
        assert_eq!(
            lines[2],
            "state   etag.set-stale  FAIL    accepted with a stale etag"
        );
        assert_eq!(
            lines[3],
            "state   ttl.expiry      SKIP    does not claim TTL"
        );
        assert_eq!(
            lines[4],
            "3 checks: 1 passed, 1 failed, 1 skipped (/tmp/s/x.sock, run abcd1234)"
        );
        assert!(!report.passed());
    }

    #[test]
    fn json_carries_summary_and_passed() {
        let report = Report {
            socket: PathBuf::from("/s.sock"),
            run: "r".into(),
            results: vec![result("secretstore", "bulk-get", Outcome::Skip, "")],
        };
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["passed"], true);
        assert_eq!(json["summary"]["skip"], 1);
        assert_eq!(json["results"][0]["outcome"], "skip");
        assert_eq!(json["results"][0]["kind"], "secretstore");
    }

    #[test]
    fn options_are_parsed_and_unknown_ones_reported() {
        let mut md = BTreeMap::new();
        md.insert("conformance.wait".to_string(), "2s".to_string());
        md.insert("conformance.isolation.redisDB".to_string(), "1".to_string());
        md.insert("redisHost".to_string(), "x".to_string());
        let (s, problems) = Settings::parse(&md);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.wait, Duration::from_secs(2));
        assert_eq!(s.isolation.get("redisDB").map(String::as_str), Some("1"));
        md.insert("conformance.bogus".to_string(), "1".to_string());
        md.insert("conformance.quiet".to_string(), "soon".to_string());
        let (_, problems) = Settings::parse(&md);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn statuses_are_described_with_grpc_code_names() {
        assert_eq!(
            describe(&tonic::Status::failed_precondition("etag mismatch")),
            "FAILED_PRECONDITION: etag mismatch"
        );
        assert_eq!(describe(&tonic::Status::not_found("")), "NOT_FOUND");
    }
}
