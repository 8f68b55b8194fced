//! Runs the real `plugd-cron` binary on a temporary socket folder: flags,
//! the default socket name, one event, and a clean exit on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use plugd_component_sdk::INSTANCE_HEADER;
use plugd_component_sdk::proto::input_binding_client::InputBindingClient;
use plugd_component_sdk::proto::{self as pb};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;

/// Bound on every wait in these tests.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<F: std::future::IntoFuture>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_plugd-cron"));
    command
        .env_remove("PLUGD_CRON_SOCKET_NAME")
        .env_remove("PLUGD_CRON_SOCKET_FOLDER")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command
}

async fn exit_code(mut command: Command) -> Option<i32> {
    within("the process to exit", command.status())
        .await
        .expect("run plugd-cron")
        .code()
}

#[tokio::test]
async fn help_and_bad_flags() {
    let mut help = command();
    help.arg("--help");
    assert_eq!(exit_code(help).await, Some(0));
    let mut bad = command();
    bad.arg("--no-such-flag");
    assert_eq!(exit_code(bad).await, Some(64));
    let mut bad_grace = command();
    bad_grace.args(["--shutdown-grace", "soon"]);
    assert_eq!(exit_code(bad_grace).await, Some(64));
}

/// Waits until the child logs that it serves, then keeps draining its stderr.
async fn wait_until_serving(child: &mut Child) {
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = within("plugd-cron to start serving", lines.next_line())
            .await
            .expect("read stderr")
            .expect("plugd-cron exited before serving");
        if line.contains("serving pluggable component") {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
}

#[tokio::test]
async fn serves_cron_sock_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = command();
    command
        .arg("--socket-folder")
        .arg(dir.path())
        .args(["--log-level", "info"])
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn plugd-cron");
    wait_until_serving(&mut child).await;
    let socket = dir.path().join("cron.sock");
    assert!(socket.exists(), "no {}", socket.display());

    let channel = within(
        "the connection",
        plugd_component_sdk::client::connect(&socket),
    )
    .await
    .expect("connect");
    let mut client = InputBindingClient::new(channel);
    let mut init = Request::new(pb::InputBindingInitRequest {
        metadata: Some(pb::MetadataRequest {
            properties: [("schedule".to_owned(), "@every 20ms".to_owned())].into(),
        }),
    });
    init.metadata_mut()
        .insert(INSTANCE_HEADER, "cron".parse().expect("ascii"));
    within("Init", client.init(init)).await.expect("Init");

    let (requests, receiver) = mpsc::channel(4);
    let mut read = Request::new(ReceiverStream::new(receiver));
    read.metadata_mut()
        .insert(INSTANCE_HEADER, "cron".parse().expect("ascii"));
    let mut events = within("the stream to open", client.read(read))
        .await
        .expect("Read")
        .into_inner();
    let event = within("an event", events.message())
        .await
        .expect("stream healthy")
        .expect("an event");
    assert_eq!(event.content_type, "application/json");
    requests
        .send(pb::ReadRequest {
            response_data: Vec::new(),
            message_id: event.message_id,
            response_error: None,
        })
        .await
        .expect("reply");

    // SIGTERM with the stream still open: a clean, prompt exit.
    let pid = child.id().expect("running").to_string();
    let kill = within("kill", Command::new("kill").args(["-TERM", &pid]).status())
        .await
        .expect("run kill");
    assert!(kill.success());
    let status = within("plugd-cron to exit", child.wait())
        .await
        .expect("wait");
    assert!(status.success(), "exit status {status}");
    assert!(!socket.exists(), "socket left behind");
}
