//! `plugd conformance` (the real binary) against every reference component, each a real process
//! on a real socket: each must pass with only explained skips. And against the deliberately
//! broken fixture (`plugd-broken-fixture`), whose lies about ETAG and TRANSACTIONAL must fail.

mod support;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{ChildGuard, TestDirs, spawn_component};

/// Runs `plugd conformance --socket <socket> --json <args>`: exit code and the parsed report.
fn conformance(socket: &Path, args: &[&str]) -> (Option<i32>, Value) {
    let started = Instant::now();
    let out = Command::new(support::binary("plugd"))
        .arg("conformance")
        .arg("--socket")
        .arg(socket)
        .arg("--json")
        .args(args)
        .output()
        .expect("run plugd conformance");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // The suite bounds itself; a run this long means a wait is not bounded as it should be.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the suite took {:?}",
        started.elapsed()
    );
    (out.status.code(), report)
}

fn results(report: &Value) -> &Vec<Value> {
    report["results"].as_array().expect("results array")
}

/// The result of `kind`/`check`, panicking with the whole report when it is missing.
fn result<'a>(report: &'a Value, kind: &str, check: &str) -> &'a Value {
    results(report)
        .iter()
        .find(|r| r["kind"] == kind && r["check"] == check)
        .unwrap_or_else(|| panic!("no {kind}/{check} in {report:#}"))
}

/// Exit 0, no failure, every skip explained, and each of `passes` passed.
fn assert_green(code: Option<i32>, report: &Value, passes: &[(&str, &str)]) {
    let failed: Vec<&Value> = results(report)
        .iter()
        .filter(|r| r["outcome"] == "fail")
        .collect();
    assert!(failed.is_empty(), "failed checks: {failed:#?}");
    assert_eq!(code, Some(0), "exit code with no failures: {report:#}");
    assert_eq!(report["passed"], true);
    for r in results(report) {
        let reason = r["reason"].as_str().unwrap_or_default();
        assert!(!reason.is_empty(), "a result without a reason: {r}");
    }
    for (kind, check) in passes {
        let r = result(report, kind, check);
        assert_eq!(r["outcome"], "pass", "{kind}/{check}: {r}");
    }
}

const SOCKET_PASSES: &[(&str, &str)] = &[
    ("socket", "reachable"),
    ("socket", "reflection-v1alpha"),
    ("socket", "reflection-v1"),
    ("socket", "services"),
    ("socket", "kinds"),
];

const STATE_PASSES: &[(&str, &str)] = &[
    ("state", "init"),
    ("state", "features"),
    ("state", "ping"),
    ("state", "get-missing"),
    ("state", "set-get"),
    ("state", "delete-missing"),
    ("state", "delete"),
    ("state", "bulk-set"),
    ("state", "bulk-get"),
    ("state", "bulk-delete"),
    ("state", "etag.changes"),
    ("state", "etag.set-current"),
    ("state", "etag.set-stale"),
    ("state", "etag.delete-stale"),
    ("state", "etag.bulk-set-stale"),
    ("state", "etag.bulk-delete-stale"),
    ("state", "etag.delete-current"),
    ("state", "etag.error-shape"),
    ("state", "first-write"),
    ("state", "transaction.commit"),
    ("state", "transaction.atomic"),
    ("state", "ttl.expiry"),
    ("state", "isolation"),
];

const PUBSUB_PASSES: &[(&str, &str)] = &[
    ("pubsub", "init"),
    ("pubsub", "features"),
    ("pubsub", "ping"),
    ("pubsub", "publish"),
    ("pubsub", "deliver"),
    ("pubsub", "nack-redelivery"),
    ("pubsub", "ack-no-redelivery"),
    ("pubsub", "order"),
    ("pubsub", "bulk-publish"),
];

/// Every skip is the `features.unchecked` row (claimed features no check verifies).
fn assert_only_unchecked_features_skipped(report: &Value) {
    for r in results(report).iter().filter(|r| r["outcome"] == "skip") {
        assert_eq!(r["check"], "features.unchecked", "an unexpected skip: {r}");
    }
}

fn passes(groups: &[&[(&'static str, &'static str)]]) -> Vec<(&'static str, &'static str)> {
    groups.iter().flat_map(|g| g.iter().copied()).collect()
}

#[test]
fn memory_state_and_pubsub_conform() {
    let dirs = TestDirs::new();
    let _memory = spawn_component("plugd-memory", &dirs.sockets, "in-memory", &[]);
    let (code, report) = conformance(&dirs.sockets.join("in-memory.sock"), &[]);
    assert_green(
        code,
        &report,
        &passes(&[SOCKET_PASSES, STATE_PASSES, PUBSUB_PASSES]),
    );
    // Nothing else is skipped: every other feature the store claims is checked.
    assert_only_unchecked_features_skipped(&report);
}

#[test]
fn sqlite_state_conforms() {
    let dirs = TestDirs::new();
    let _sqlite = spawn_component("plugd-sqlite", &dirs.sockets, "sqlite", &[]);
    let db = dirs.root.path().join("conformance.db");
    let other = dirs.root.path().join("other.db");
    let (code, report) = conformance(
        &dirs.sockets.join("sqlite.sock"),
        &[
            "--metadata",
            &format!("connectionString={}", db.display()),
            "--metadata",
            &format!("conformance.isolation.connectionString={}", other.display()),
        ],
    );
    assert_green(code, &report, &passes(&[SOCKET_PASSES, STATE_PASSES]));
    assert_eq!(result(&report, "socket", "options")["outcome"], "pass");
    assert_only_unchecked_features_skipped(&report);
}

#[test]
fn sqlite_sharing_one_database_skips_isolation_with_a_reason() {
    let dirs = TestDirs::new();
    let _sqlite = spawn_component("plugd-sqlite", &dirs.sockets, "sqlite", &[]);
    let db = dirs.root.path().join("shared.db");
    let (code, report) = conformance(
        &dirs.sockets.join("sqlite.sock"),
        &["--metadata", &format!("connectionString={}", db.display())],
    );
    // Every state check but isolation (the last).
    assert_green(code, &report, &STATE_PASSES[..STATE_PASSES.len() - 1]);
    let isolation = result(&report, "state", "isolation");
    assert_eq!(isolation["outcome"], "skip", "{isolation}");
    assert!(
        isolation["reason"]
            .as_str()
            .is_some_and(|r| r.contains("conformance.isolation")),
        "{isolation}"
    );
}

#[test]
fn redis_state_and_pubsub_conform() {
    let redis = support::RedisServer::start();
    let dirs = TestDirs::new();
    let _component = spawn_component("plugd-redis", &dirs.sockets, "redis", &[]);
    let (code, report) = conformance(
        &dirs.sockets.join("redis.sock"),
        &[
            "--metadata",
            &format!("redisHost={}", redis.address()),
            "--metadata",
            "conformance.isolation.redisDB=1",
        ],
    );
    assert_green(
        code,
        &report,
        &passes(&[SOCKET_PASSES, STATE_PASSES, PUBSUB_PASSES]),
    );
}

#[test]
fn localstorage_output_binding_conforms() {
    let dirs = TestDirs::new();
    let _files = spawn_component("plugd-files", &dirs.sockets, "localstorage", &[]);
    let root = dirs.root.path().join("files");
    let (code, report) = conformance(
        &dirs.sockets.join("localstorage.sock"),
        &[
            "--kind",
            "output-binding",
            "--metadata",
            &format!("rootPath={}", root.display()),
        ],
    );
    assert_green(
        code,
        &report,
        &[
            ("output-binding", "init"),
            ("output-binding", "ping"),
            ("output-binding", "operations"),
            ("output-binding", "round-trip"),
            ("output-binding", "invoke.create"),
            ("output-binding", "invoke.get"),
            ("output-binding", "invoke.list"),
            ("output-binding", "invoke.delete"),
            ("output-binding", "unknown-operation"),
        ],
    );
    // Only the kind asked for.
    assert!(
        results(&report).iter().all(|r| r["kind"] != "secretstore"),
        "{report:#}"
    );
}

#[test]
fn local_file_secret_store_conforms() {
    let dirs = TestDirs::new();
    let _files = spawn_component("plugd-files", &dirs.sockets, "local.file", &[]);
    let secrets = dirs.root.path().join("secrets.json");
    std::fs::write(
        &secrets,
        r#"{"api-key": "token", "db": {"user": "admin", "password": "hunter2"}}"#,
    )
    .expect("write secrets");
    let socket = dirs.sockets.join("local.file.sock");
    let file = format!("secretsFile={}", secrets.display());
    let secret_passes = [
        ("secretstore", "init"),
        ("secretstore", "features"),
        ("secretstore", "ping"),
        ("secretstore", "get-missing"),
        ("secretstore", "bulk-get"),
        ("secretstore", "get-known"),
    ];
    // The first secret BulkGet names, then a named one, then multi-valued secrets.
    for extra in [
        vec![],
        vec!["--metadata", "conformance.secretKey=db:password"],
        vec!["--metadata", "multiValued=true"],
    ] {
        let mut args = vec!["--kind", "secretstore", "--metadata", &file];
        args.extend(extra);
        let (code, report) = conformance(&socket, &args);
        assert_green(code, &report, &secret_passes);
    }
}

#[test]
fn local_env_secret_store_conforms() {
    let dirs = TestDirs::new();
    let _env = ChildGuard::spawn(
        "plugd-env",
        Command::new(support::binary("plugd-env"))
            .arg("--socket-folder")
            .arg(&dirs.sockets)
            .env("PLUGD_CONFORMANCE_TOKEN", "s3cret")
            .env("RUST_LOG", "warn"),
    );
    let socket = dirs.sockets.join("local.env.sock");
    support::wait_for_socket(&socket, Duration::from_secs(20));
    let (code, report) = conformance(
        &socket,
        &[
            "--metadata",
            "prefix=PLUGD_CONFORMANCE_",
            "--metadata",
            "conformance.secretKey=TOKEN",
        ],
    );
    assert_green(
        code,
        &report,
        &[
            ("secretstore", "init"),
            ("secretstore", "get-missing"),
            ("secretstore", "bulk-get"),
            ("secretstore", "get-known"),
        ],
    );
    // local.env answers an empty value for a variable that is not set, as Dapr's does.
    let missing = result(&report, "secretstore", "get-missing");
    assert!(
        missing["reason"]
            .as_str()
            .is_some_and(|r| r.contains("empty")),
        "{missing}"
    );
}

#[test]
fn cron_input_binding_conforms() {
    let dirs = TestDirs::new();
    let _cron = spawn_component("plugd-cron", &dirs.sockets, "cron", &[]);
    let (code, report) = conformance(
        &dirs.sockets.join("cron.sock"),
        &["--metadata", "schedule=@every 100ms"],
    );
    assert_green(
        code,
        &report,
        &[
            ("socket", "kinds"),
            ("input-binding", "init"),
            ("input-binding", "ping"),
            ("input-binding", "read.event"),
            ("input-binding", "read.reply"),
            ("input-binding", "read.reply-error"),
        ],
    );
}

#[test]
fn the_broken_fixture_fails_on_its_lies() {
    let dirs = TestDirs::new();
    let _broken = spawn_component("plugd-broken-fixture", &dirs.sockets, "broken", &[]);
    let (code, report) = conformance(&dirs.sockets.join("broken.sock"), &[]);
    assert_eq!(code, Some(1), "a failing suite exits 1: {report:#}");
    assert_eq!(report["passed"], false);
    let failed = |check: &str, words: &[&str]| {
        let r = result(&report, "state", check);
        assert_eq!(r["outcome"], "fail", "{check}: {r}");
        let reason = r["reason"].as_str().unwrap_or_default();
        for word in words {
            assert!(reason.contains(word), "{check}: {word:?} not in {reason:?}");
        }
    };
    failed("etag.set-stale", &["stale etag", "accepted", "overwritten"]);
    failed("etag.delete-stale", &["stale etag", "accepted", "deleted"]);
    failed(
        "etag.bulk-set-stale",
        &["BulkSet", "stale etag", "accepted"],
    );
    failed(
        "etag.bulk-delete-stale",
        &["BulkDelete", "stale etag", "accepted"],
    );
    failed("first-write", &["overwrote"]);
    failed(
        "transaction.atomic",
        &["refused", "first operation was applied", "all or nothing"],
    );
    // Its honest parts pass, and what it does not claim is skipped, not passed.
    for check in [
        "get-missing",
        "set-get",
        "bulk-get",
        "etag.changes",
        "etag.set-current",
        "etag.delete-current",
        "transaction.commit",
        "isolation",
    ] {
        assert_eq!(
            result(&report, "state", check)["outcome"],
            "pass",
            "{check}"
        );
    }
    assert_eq!(result(&report, "state", "ttl.expiry")["outcome"], "skip");
    assert_eq!(
        result(&report, "state", "etag.error-shape")["outcome"],
        "skip"
    );
    assert_eq!(report["summary"]["fail"], 6, "{report:#}");
}

/// The broken fixture started with `--lie <lie>`: the state checks that failed.
fn failures_of_lie(lie: &str, args: &[&str]) -> (Vec<String>, Value) {
    let dirs = TestDirs::new();
    let _broken = spawn_component(
        "plugd-broken-fixture",
        &dirs.sockets,
        "broken",
        &["--lie", lie],
    );
    let (code, report) = conformance(&dirs.sockets.join("broken.sock"), args);
    assert_eq!(code, Some(1), "{lie}: a failing suite exits 1: {report:#}");
    let failed = results(&report)
        .iter()
        .filter(|r| r["outcome"] == "fail")
        .map(|r| {
            format!(
                "{}/{}",
                r["kind"].as_str().unwrap_or("?"),
                r["check"].as_str().unwrap_or("?")
            )
        })
        .collect();
    (failed, report)
}

#[test]
fn the_broken_fixture_fails_exactly_each_lie() {
    // Claims TTL, never expires.
    let (failed, report) = failures_of_lie("ttl", &[]);
    assert_eq!(failed, ["state/ttl.expiry"], "{report:#}");
    let ttl = result(&report, "state", "ttl.expiry");
    assert!(
        ttl["reason"]
            .as_str()
            .is_some_and(|r| r.contains("still there")),
        "{ttl}"
    );
    // Refuses stale etags, but not as daprd recognises an etag mismatch.
    let (failed, report) = failures_of_lie("error-shape", &[]);
    assert_eq!(failed, ["state/etag.error-shape"], "{report:#}");
    let shape = result(&report, "state", "etag.error-shape");
    for what in [
        "Set:",
        "Delete:",
        "BulkSet:",
        "BulkDelete:",
        "not FAILED_PRECONDITION",
    ] {
        assert!(
            shape["reason"].as_str().is_some_and(|r| r.contains(what)),
            "{what}: {shape}"
        );
    }
    // Honours etags on Set and Delete, ignores them in the bulk calls.
    let (failed, report) = failures_of_lie("bulk-etag", &[]);
    assert_eq!(
        failed,
        ["state/etag.bulk-set-stale", "state/etag.bulk-delete-stale"],
        "{report:#}"
    );
    // The single-key refusals still have daprd's shape.
    assert_eq!(
        result(&report, "state", "etag.error-shape")["outcome"],
        "pass"
    );
}

#[test]
fn a_component_that_stops_answering_costs_one_timeout_per_kind() {
    // Get never answers: the first Get fails, every later state check is skipped at once.
    let (failed, report) = failures_of_lie("hang", &["--timeout", "3s"]);
    assert_eq!(failed, ["state/get-missing"], "{report:#}");
    let missing = result(&report, "state", "get-missing");
    assert!(
        missing["reason"]
            .as_str()
            .is_some_and(|r| r.contains("DEADLINE_EXCEEDED")),
        "{missing}"
    );
    for check in [
        "set-get",
        "bulk-set",
        "etag.set-stale",
        "transaction.atomic",
        "isolation",
    ] {
        let r = result(&report, "state", check);
        assert_eq!(r["outcome"], "skip", "{r}");
        assert!(
            r["reason"]
                .as_str()
                .is_some_and(|r| r.contains("stopped answering")),
            "{r}"
        );
    }
}

#[test]
fn unusable_sockets_and_bad_options_fail() {
    let dirs = TestDirs::new();
    // Nothing listens here.
    let (code, report) = conformance(&dirs.sockets.join("nobody.sock"), &[]);
    assert_eq!(code, Some(1));
    assert_eq!(result(&report, "socket", "reachable")["outcome"], "fail");
    assert_eq!(results(&report).len(), 1, "{report:#}");
    // A stale socket file: plugd inspect's hint.
    drop(std::os::unix::net::UnixListener::bind(dirs.sockets.join("stale.sock")).expect("bind"));
    let (code, report) = conformance(&dirs.sockets.join("stale.sock"), &[]);
    assert_eq!(code, Some(1));
    let reachable = result(&report, "socket", "reachable");
    assert!(
        reachable["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no process listens")),
        "{reachable}"
    );

    let _memory = spawn_component("plugd-memory", &dirs.sockets, "in-memory", &[]);
    let socket = dirs.sockets.join("in-memory.sock");
    // A kind the socket does not serve fails; the kinds it does serve are still checked.
    let (code, report) = conformance(&socket, &["--kind", "secretstore", "--kind", "state"]);
    assert_eq!(code, Some(1));
    let kinds = result(&report, "socket", "kinds");
    assert_eq!(kinds["outcome"], "fail");
    assert!(
        kinds["reason"]
            .as_str()
            .is_some_and(|r| r.contains("--kind secretstore")),
        "{kinds}"
    );
    assert_eq!(result(&report, "state", "set-get")["outcome"], "pass");
    assert!(results(&report).iter().all(|r| r["kind"] != "pubsub"));
}

#[test]
fn bad_options_and_timeouts_are_refused_before_anything_runs() {
    let dirs = TestDirs::new();
    let socket = dirs.sockets.join("never-dialled.sock");
    for args in [
        vec!["--metadata", "conformance.bogus=1"],
        vec!["--metadata", "conformance.wait=0s"],
        vec!["--metadata", "conformance.ttl=1"],
        vec!["--metadata", "conformance.invokeAll=maybe"],
        vec!["--timeout", "0s"],
        vec!["--timeout", "soon"],
    ] {
        let out = Command::new(support::binary("plugd"))
            .arg("conformance")
            .arg("--socket")
            .arg(&socket)
            .arg("--json")
            .args(&args)
            .output()
            .expect("run plugd conformance");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing runs");
        let word = args[1].split('=').next().unwrap_or_default();
        let word = if word.starts_with("conformance.") {
            word
        } else {
            args[1]
        };
        assert!(stderr.contains(word), "{args:?}: {stderr}");
    }
    let out = Command::new(support::binary("plugd"))
        .args(["conformance", "--timeout", "0s", "--socket", "/x.sock"])
        .output()
        .expect("run plugd conformance");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("greater than 0"),
        "{out:?}"
    );
}

#[test]
fn the_table_is_the_default_output() {
    let dirs = TestDirs::new();
    let _cron = spawn_component("plugd-cron", &dirs.sockets, "cron", &[]);
    let out = Command::new(support::binary("plugd"))
        .args(["conformance", "--socket"])
        .arg(dirs.sockets.join("cron.sock"))
        .args(["--metadata", "schedule=@every 50ms"])
        .output()
        .expect("run plugd conformance");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("KIND"), "{text}");
    for header in ["CHECK", "RESULT", "REASON"] {
        assert!(lines[0].contains(header), "{text}");
    }
    // Columns line up: RESULT starts at the same offset on every row.
    let at = lines[0].find("RESULT").expect("RESULT column");
    for line in &lines[1..lines.len() - 1] {
        let cell = &line[at..at + 4];
        assert!(
            ["PASS", "SKIP", "FAIL"].contains(&cell),
            "{line:?} in\n{text}"
        );
    }
    let summary = lines.last().expect("summary");
    assert!(
        summary.contains("passed, 0 failed"),
        "summary line: {summary:?}"
    );
}
