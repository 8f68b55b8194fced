//! The `plugd-files` binary: flags, serving both kinds on `files.sock`, and
//! a clean exit on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;

use common::{LIMIT, map, text, to, within};
use plugd_component_sdk::proto::output_binding_client::OutputBindingClient;
use plugd_component_sdk::proto::secret_store_client::SecretStoreClient;
use plugd_component_sdk::proto::{self as pb};

fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_plugd-files"));
    command.stdin(Stdio::null());
    command
}

/// Waits (bounded, without polling) for `child` to exit.
fn wait(child: Child) -> ExitStatus {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut child = child;
        let _ = tx.send(child.wait());
    });
    rx.recv_timeout(LIMIT)
        .expect("the process did not exit in time")
        .expect("wait")
}

#[test]
fn help_and_bad_flags() {
    let output = command().arg("--help").output().expect("run --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--socket-name",
        "--socket-folder",
        "--shutdown-grace",
        "--log-as-json",
        "--log-level",
        "PLUGD_FILES_SOCKET_NAME",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    let output = command().arg("--no-such-flag").output().expect("run");
    assert_eq!(output.status.code(), Some(64));
    let output = command()
        .args(["--shutdown-grace", "soon"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
}

#[tokio::test]
async fn serves_both_kinds_until_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sockets = dir.path().join("sockets");
    let mut child = command()
        .arg("--socket-folder")
        .arg(&sockets)
        .arg("--log-as-json")
        .args(["--shutdown-grace", "60s"])
        .env("PLUGD_FILES_LOG_LEVEL", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugd-files");

    // The server logs once it is listening; stderr keeps being drained after.
    let stderr = child.stderr.take().expect("piped stderr");
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("serving pluggable component") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(LIMIT)
        .expect("the server never said it was serving");
    let socket = sockets.join("files.sock");
    assert!(socket.exists());

    let secrets_file = dir.path().join("secrets.json");
    std::fs::write(&secrets_file, r#"{"db": {"password": "x"}}"#).expect("write");
    let channel = within("connect", plugd_component_sdk::client::connect(&socket))
        .await
        .expect("connect");
    let mut secrets = SecretStoreClient::new(channel.clone());
    secrets
        .init(to(
            "secrets",
            pb::SecretStoreInitRequest {
                metadata: Some(pb::MetadataRequest {
                    properties: map(&[("secretsFile", text(&secrets_file))]),
                }),
            },
        ))
        .await
        .expect("secret store init");
    let secret = secrets
        .get(to(
            "secrets",
            pb::GetSecretRequest {
                key: "db:password".to_owned(),
                metadata: Default::default(),
            },
        ))
        .await
        .expect("get")
        .into_inner()
        .data;
    assert_eq!(secret, map(&[("db:password", "x")]));

    let root = dir.path().join("root");
    let mut binding = OutputBindingClient::new(channel);
    binding
        .init(to(
            "files",
            pb::OutputBindingInitRequest {
                metadata: Some(pb::MetadataRequest {
                    properties: map(&[("rootPath", text(&root))]),
                }),
            },
        ))
        .await
        .expect("binding init");
    binding
        .invoke(to(
            "files",
            pb::InvokeRequest {
                data: b"hi".to_vec(),
                metadata: map(&[("fileName", "hi.txt")]),
                operation: "create".to_owned(),
            },
        ))
        .await
        .expect("create");
    assert_eq!(std::fs::read(root.join("hi.txt")).expect("on disk"), b"hi");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    // Waited for off the runtime, so that the open client connection can
    // answer the server's GOAWAY meanwhile: the exit is then prompt, well
    // before the 60s grace (and `wait` gives up after LIMIT).
    let status = tokio::task::spawn_blocking(move || wait(child))
        .await
        .expect("wait task");
    assert!(status.success(), "exit status {status}");
    assert!(!socket.exists(), "socket left behind");
}
