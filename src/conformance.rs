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
//! 0 when nothing failed, 1 otherwise.
//!
//! Each run uses fresh names: instances `conformance-<run id>-<kind>` (sent as
//! `x-component-instance`; `…-b` for the second instance of the isolation check), keys and
//! topics starting `conformance-<run id>-`. The keys written are deleted at the end (best
//! effort). Calls are bounded by `--timeout`; waits for asynchronous behaviour (deliveries,
//! expiry, input events) by the `conformance.wait` option, polled, never slept through.
//!
//! # Checks
//!
//! | kind | check | passes when |
//! |---|---|---|
//! | `socket` | `reachable` | the socket accepts an HTTP/2 (gRPC) connection |
//! | `socket` | `reflection-v1alpha` | `grpc.reflection.v1alpha` lists services (what daprd asks; absent = fail) |
//! | `socket` | `reflection-v1` | `grpc.reflection.v1` lists the same services (absent = skip: daprd does not ask it) |
//! | `socket` | `services` | at least one of the five component services is listed |
//! | `socket` | `kinds` | every `--kind` asked for is served (default: every kind listed) |
//! | `socket` | `options` | (only with `conformance.*` metadata) every suite option is known and valid |
//! | every kind | `init` | Init with the `--metadata` properties answers OK |
//! | state, pubsub, secretstore | `features` | Features answers (the list is the reason) |
//! | every kind | `ping` | Ping after Init answers OK (`UNIMPLEMENTED` = skip) |
//! | `state` | `get-missing` | Get of a key never written: no error, empty data |
//! | `state` | `set-get` | a Set value is read back (with an etag when ETAG is claimed) |
//! | `state` | `delete-missing` | Delete of a key never written: OK |
//! | `state` | `delete` | a deleted key reads back empty |
//! | `state` | `bulk-set`, `bulk-get`, `bulk-delete` | BulkSet writes three keys, BulkGet reads them (and a missing one as empty), BulkDelete removes them |
//! | `state` | `etag.changes` | (ETAG) every write gives the key a new etag |
//! | `state` | `etag.set-current`, `etag.delete-current` | (ETAG) a Set / Delete with the current etag succeeds |
//! | `state` | `etag.set-stale`, `etag.delete-stale` | (ETAG) a Set / Delete with a stale etag is refused and changes nothing |
//! | `state` | `etag.error-shape` | (ETAG) those refusals are `FAILED_PRECONDITION` with exactly one `google.rpc.BadRequest` violation on field `etag`, which daprd turns into `ABORTED` / HTTP 409 |
//! | `state` | `first-write` | (ETAG) first-write concurrency without an etag creates a key but does not overwrite one |
//! | `state` | `transaction.commit` | (TRANSACTIONAL) a Transact of two sets and a delete applies all three |
//! | `state` | `transaction.atomic` | (TRANSACTIONAL) a Transact whose second operation fails (stale etag with ETAG, else an invalid `ttlInSeconds` with TTL) is refused and leaves the first undone |
//! | `state` | `ttl.expiry` | (TTL) a key set with `ttlInSeconds: 1` is there at once and gone after expiry |
//! | `state` | `isolation` | a key written under one instance is invisible under a second one (see `conformance.isolation.*`) |
//! | `pubsub` | `publish` | Publish answers OK |
//! | `pubsub` | `deliver` | a message published to a fresh topic arrives on a PullMessages stream with its data and topic |
//! | `pubsub` | `nack-redelivery` | a message acked with an error is delivered again |
//! | `pubsub` | `ack-no-redelivery` | a message acked without error is not delivered again (up to a later message, then `conformance.quiet`) |
//! | `pubsub` | `order` | five messages published one after another arrive on the stream in that order |
//! | `pubsub` | `bulk-publish` | (BULK_PUBSUB) BulkPublish of three entries reports no failed entry and all three arrive |
//! | `output-binding` | `operations` | ListOperations answers |
//! | `output-binding` | `round-trip` | (with `create`, `get` and `delete`) create a file by `fileName`, get it back, find it in `list` (if listed), delete it, and get it no more |
//! | `output-binding` | `invoke.<op>` | every listed operation answers (an error status counts, `UNIMPLEMENTED` and no answer do not); operations the round trip used report its outcome |
//! | `output-binding` | `unknown-operation` | an operation that is not listed is refused |
//! | `input-binding` | `read.event` | a Read stream delivers an event with a `message_id` |
//! | `input-binding` | `read.reply` | after a success reply to it, the stream stays open and delivers again |
//! | `input-binding` | `read.reply-error` | after an error reply, the stream stays open and delivers again |
//! | `secretstore` | `get-missing` | Get of a name that does not exist: `NOT_FOUND`, or an answer whose values are all empty |
//! | `secretstore` | `bulk-get` | BulkGet answers a map (its size is the reason) |
//! | `secretstore` | `get-known` | Get of `conformance.secretKey`, else of the first name BulkGet returned, answers the same values as BulkGet |
//!
//! # Suite options
//!
//! `--metadata` keys starting with `conformance.` configure the suite and are **not** sent to
//! Init; all other keys are Init properties. An unknown `conformance.` key fails `options`.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `conformance.wait` | how long to wait for asynchronous behaviour: deliveries, redeliveries, TTL expiry (after the TTL), input events (a Go or humantime duration) | `10s` |
//! | `conformance.quiet` | how long to watch for an unwanted redelivery after the acked message's successor arrived | `500ms` |
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

use crate::component::{ComponentKind, dial};

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
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs the suite.
pub async fn run(opts: &Options) -> Report {
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut report = Report {
        socket: opts.socket.clone(),
        run: run.clone(),
        results: Vec::new(),
    };
    let mut rec = Recorder::new("socket");
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
    let ctx = Ctx {
        channel,
        timeout: opts.timeout,
        run,
        init,
        settings,
    };
    for kind in kinds {
        let mut rec = Recorder::new(kind_label(kind));
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

/// The `--kind` spelling of a kind.
fn kind_label(kind: ComponentKind) -> &'static str {
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
                Verdict::pass("accepts gRPC (HTTP/2) connections"),
            );
            channel
        }
        Err(e) => {
            rec.add("reachable", started, Verdict::fail(e.detail()));
            return None;
        }
    };

    let started = Instant::now();
    let v1alpha = bounded(opts.timeout, reflection::list_v1alpha(channel.clone())).await;
    match &v1alpha {
        Ok(services) => rec.add(
            "reflection-v1alpha",
            started,
            Verdict::pass(format!("lists {}", count(services.len(), "service"))),
        ),
        Err(status) => rec.add(
            "reflection-v1alpha",
            started,
            Verdict::fail(format!(
                "grpc.reflection.v1alpha.ServerReflection is what daprd asks, and it answered {}",
                describe(status)
            )),
        ),
    }
    let started = Instant::now();
    let v1 = bounded(opts.timeout, reflection::list_v1(channel.clone())).await;
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
                        "{key}: {value:?} is not a duration between 0 and 1h (e.g. 10s)"
                    )),
                },
                "secretKey" => settings.secret_key = Some(value.clone()),
                "fileNameKey" if !value.is_empty() => settings.file_name_key = value.clone(),
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
                        "{key}: unknown suite option (known: conformance.wait, conformance.quiet, conformance.isolation.KEY, conformance.secretKey, conformance.fileNameKey, conformance.expectEvents)"
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
}

impl Ctx {
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
}

impl Recorder {
    fn new(kind: &'static str) -> Self {
        Self {
            kind,
            results: Vec::new(),
        }
    }

    fn add(&mut self, check: &str, started: Instant, verdict: Verdict) {
        self.results.push(CheckResult {
            kind: self.kind.to_string(),
            check: check.to_string(),
            outcome: verdict.outcome,
            reason: verdict.reason,
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

/// A status as `CODE: message`.
fn describe(status: &tonic::Status) -> String {
    let code = format!("{:?}", status.code());
    let mut upper = String::new();
    for (i, c) in code.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            upper.push('_');
        }
        upper.push(c.to_ascii_uppercase());
    }
    if status.message().is_empty() {
        upper
    } else {
        format!("{upper}: {}", status.message())
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

/// Ping for any kind, reported as the `ping` check.
async fn ping_check(
    rec: &mut Recorder,
    fut: impl std::future::Future<Output = Result<(), tonic::Status>>,
    timeout: Duration,
) {
    let started = Instant::now();
    let verdict = match bounded(timeout, fut).await {
        Ok(()) => Verdict::pass(format!(
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

/// Reflection clients (v1alpha and v1), listing services.
mod reflection {
    use tonic::{Code, transport::Channel};

    macro_rules! list_services_with {
        ($fn_name:ident, $module:path) => {
            pub(super) async fn $fn_name(channel: Channel) -> Result<Vec<String>, tonic::Status> {
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
