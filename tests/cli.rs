//! The `plugd` binary: exit codes and what it prints when it cannot start.

mod support;

use std::process::Command;

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
