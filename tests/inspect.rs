//! `plugd inspect` against real component processes, a stale socket, a socket that is not a
//! gRPC server, and a file that is not a socket.

mod support;

use std::{os::unix::net::UnixListener, process::Command};

use serde_json::Value;
use support::{TestDirs, spawn_component};

fn inspect(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(support::binary("plugd"))
        .arg("inspect")
        .args(args)
        .output()
        .expect("run plugd inspect");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn inspect_reports_every_socket_in_a_folder() {
    let dirs = TestDirs::new();
    let _memory = spawn_component("plugd-memory", &dirs.sockets, "in-memory", &[]);
    let _files = spawn_component("plugd-files", &dirs.sockets, "localstorage", &[]);
    // A stale socket: bound, then its listener closed.
    drop(UnixListener::bind(dirs.sockets.join("stale.sock")).expect("bind"));
    // Listening but never speaking HTTP/2: accepted connections are dropped.
    let quiet = UnixListener::bind(dirs.sockets.join("quiet.sock")).expect("bind");
    std::thread::spawn(move || {
        for conn in quiet.incoming() {
            drop(conn);
        }
    });
    std::fs::write(dirs.sockets.join("notes.txt"), "not a socket").expect("write");
    support::wait_for_socket(
        &dirs.sockets.join("in-memory.sock"),
        std::time::Duration::from_secs(10),
    );
    support::wait_for_socket(
        &dirs.sockets.join("localstorage.sock"),
        std::time::Duration::from_secs(10),
    );

    let folder = dirs.sockets.to_string_lossy().into_owned();
    let (code, out) = inspect(&["--sockets-folder", &folder, "--json", "--timeout", "1s"]);
    assert_eq!(code, Some(1), "unusable sockets make the exit 1:\n{out}");
    let reports: Vec<Value> = serde_json::from_str(&out).expect("JSON");
    let by_stem = |stem: &str| {
        reports
            .iter()
            .find(|r| r["stem"] == stem)
            .unwrap_or_else(|| panic!("{stem} missing from {out}"))
    };
    assert_eq!(reports.len(), 4, "the text file is no socket: {out}");

    let memory = by_stem("in-memory");
    assert_eq!(memory["reachable"], true);
    assert_eq!(memory["reflection"], "v1alpha");
    let kinds: Vec<&str> = memory["kinds"]
        .as_array()
        .expect("kinds")
        .iter()
        .filter_map(|k| k["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["state", "pubsub"]);
    let state = &memory["kinds"][0];
    let features: Vec<&str> = state["features"]
        .as_array()
        .expect("features")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for f in ["ETAG", "TTL", "TRANSACTIONAL"] {
        assert!(features.contains(&f), "{f} missing from {features:?}");
    }
    // Not initialised: Ping is answered (a round trip is measured, to the microsecond) with
    // the refusal, its code spelled as plugd conformance spells it.
    assert!(
        state["ping_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0 && ((ms * 1000.0).round() - ms * 1000.0).abs() < 1e-6),
        "{state}"
    );
    assert!(
        state["ping_error"]
            .as_str()
            .is_some_and(|e| e.contains("FAILED_PRECONDITION: ")),
        "{state}"
    );

    let files = by_stem("localstorage");
    let output = files["kinds"]
        .as_array()
        .expect("kinds")
        .iter()
        .find(|k| k["kind"] == "output-binding")
        .expect("output-binding");
    assert_eq!(
        output["operations"],
        serde_json::json!(["create", "get", "list", "delete"])
    );
    assert_eq!(output["features"], serde_json::json!([]));
    assert!(output["ping_error"].is_null(), "{output}");

    let stale = by_stem("stale");
    assert_eq!(stale["reachable"], false);
    assert!(
        stale["error"]
            .as_str()
            .is_some_and(|e| e.contains("no process listens")),
        "{stale}"
    );
    let quiet = by_stem("quiet");
    assert_eq!(quiet["reachable"], false);
    assert!(quiet["error"].as_str().is_some_and(|e| !e.is_empty()));

    // The table names each socket and kind on its own line.
    let (code, table) = inspect(&["--sockets-folder", &folder, "--timeout", "1s"]);
    assert_eq!(code, Some(1));
    assert!(table.starts_with("SOCKET"), "{table}");
    for needle in [
        "in-memory.sock",
        "ETAG,TTL,TRANSACTIONAL",
        "operations: create get list delete",
        "output-binding",
        "FAILED_PRECONDITION: ",
        "unreachable",
    ] {
        assert!(table.contains(needle), "{needle} missing:\n{table}");
    }
}

#[test]
fn inspect_one_socket_exits_zero_when_it_is_usable() {
    let dirs = TestDirs::new();
    let _memory = spawn_component("plugd-memory", &dirs.sockets, "in-memory", &[]);
    let socket = dirs.sockets.join("in-memory.sock");
    support::wait_for_socket(&socket, std::time::Duration::from_secs(10));
    let (code, out) = inspect(&[&socket.to_string_lossy()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("pubsub") && out.contains("BULK_PUBSUB"),
        "{out}"
    );

    let (code, out) = inspect(&[&dirs.sockets.join("absent.sock").to_string_lossy()]);
    assert_eq!(code, Some(1), "{out}");
    let (code, _) = inspect(&["--sockets-folder", "/nonexistent/plugd/folder"]);
    assert_eq!(code, Some(2));
}
