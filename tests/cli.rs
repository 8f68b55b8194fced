//! The `plugd` binary: exit codes and what it prints when it cannot start.

mod support;

use std::{path::Path, process::Command};

use support::TestDirs;

fn plugd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_plugd"))
}

#[test]
fn bad_flags_exit_with_64() {
    let out = plugd().arg("--no-such-flag").output().expect("run plugd");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
    let out = plugd().arg("--help").output().expect("run plugd");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--resources-path"));
}

#[test]
fn invalid_resources_stop_start_up_and_are_all_listed() {
    let dirs = TestDirs::new();
    dirs.write_resource(
        "bad.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: one\nspec:\n  type: cache.x\n  initTimeout: soon\n",
    );
    let out = plugd()
        .args([
            "--dapr-grpc-port",
            "0",
            "--dapr-http-port",
            "0",
            "--log-level",
            "error",
        ])
        .arg("--resources-path")
        .arg(&dirs.resources)
        .arg("--sockets-folder")
        .arg(&dirs.sockets)
        .output()
        .expect("run plugd");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("component one"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.type") && stderr.contains("spec.initTimeout"),
        "{stderr}"
    );
}

/// Starts the binary with no components and waits until its HTTP API answers.
async fn start_binary(dirs: &TestDirs) -> (support::ChildGuard, String) {
    let plugd =
        support::PlugdProcess::spawn(Path::new(env!("CARGO_BIN_EXE_plugd")), dirs, "cli", "warn");
    plugd.wait_healthy(std::time::Duration::from_secs(20)).await;
    let base = plugd.base();
    (plugd.guard, base)
}

fn wait_exit(guard: &mut support::ChildGuard) -> Option<i32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = guard.child.try_wait() {
            return status.code();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    None
}

#[tokio::test]
async fn shutdown_through_the_api_or_sigterm_exits_cleanly() {
    let dirs = TestDirs::new();
    for _ in 0..3 {
        let (mut guard, base) = start_binary(&dirs).await;
        let r = reqwest::Client::new()
            .post(format!("{base}/shutdown"))
            .send()
            .await
            .expect("shutdown");
        assert_eq!(r.status(), 204);
        assert_eq!(
            wait_exit(&mut guard),
            Some(0),
            "exit after POST /v1.0/shutdown"
        );
    }
    let (mut guard, _) = start_binary(&dirs).await;
    assert_eq!(
        guard.terminate().and_then(|s| s.code()),
        Some(0),
        "exit after SIGTERM"
    );
}
