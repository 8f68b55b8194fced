//! The `plugd-env` binary (`secretstores.local.env`): flags, the socket
//! folder from `DAPR_COMPONENT_SOCKETS_FOLDER`, Dapr's `prefix` semantics on
//! the process's own environment, and a clean exit on SIGTERM.

mod child;
mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};

use child::{Running, socket};
use common::{map, to, within};
use plugd_component_sdk::proto::secret_store_client::SecretStoreClient;
use plugd_component_sdk::proto::{self as pb};
use tonic::Code;
use tonic::transport::Channel;

fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_plugd-env"));
    command.stdin(Stdio::null());
    command
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
        "PLUGD_ENV_SOCKET_NAME",
        "local.env",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    let output = command().arg("--no-such-flag").output().expect("run");
    assert_eq!(output.status.code(), Some(64));
}

async fn get(
    client: &mut SecretStoreClient<Channel>,
    key: &str,
) -> Result<HashMap<String, String>, tonic::Status> {
    client
        .get(to(
            "env",
            pb::GetSecretRequest {
                key: key.to_owned(),
                metadata: HashMap::new(),
            },
        ))
        .await
        .map(|response| response.into_inner().data)
}

async fn bulk(client: &mut SecretStoreClient<Channel>) -> HashMap<String, HashMap<String, String>> {
    client
        .bulk_get(to(
            "env",
            pb::BulkGetSecretRequest {
                metadata: HashMap::new(),
            },
        ))
        .await
        .expect("bulk get")
        .into_inner()
        .data
        .into_iter()
        .map(|(name, secret)| (name, secret.secrets))
        .collect()
}

async fn init(client: &mut SecretStoreClient<Channel>, properties: &[(&str, &str)]) {
    client
        .init(to(
            "env",
            pb::SecretStoreInitRequest {
                metadata: Some(pb::MetadataRequest {
                    properties: map(properties),
                }),
            },
        ))
        .await
        .expect("init");
}

#[tokio::test]
async fn serves_the_environment_with_a_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sockets = dir.path().join("sockets");
    let mut command = command();
    command
        .args(["--log-level", "info"])
        .env("PLUGDTEST_DB_PASSWORD", "s3cret")
        .env("PLUGDTEST_API", "k-1")
        .env("PLUGDTEST_DAPR_OK", "allowed")
        .env("PLUGDTEST_", "the bare prefix")
        .env("DAPR_PLUGDTEST_TOKEN", "never")
        .env("APP_API_TOKEN", "never either");
    let mut running = Running::start(command, &sockets);
    // The default socket name: local.env.sock, type secretstores.local.env.
    let path = socket(&sockets, "local.env");
    assert!(path.exists());
    let channel = within("connect", plugd_component_sdk::client::connect(&path))
        .await
        .expect("connect");
    let mut client = SecretStoreClient::new(channel);

    // Before Init: FAILED_PRECONDITION.
    let status = get(&mut client, "API").await.expect_err("not initialised");
    assert_eq!(status.code(), Code::FailedPrecondition);

    init(
        &mut client,
        &[("PREFIX", "PLUGDTEST_"), ("vaultName", "value-not-logged")],
    )
    .await;
    let warned = running.wait_for_line("ignoring metadata keys");
    assert!(
        warned.contains("vaultName") && warned.contains("secretstores.local.env"),
        "{warned}"
    );
    assert!(
        !warned.contains("value-not-logged") && !warned.contains("PREFIX"),
        "{warned}"
    );

    assert_eq!(
        get(&mut client, "DB_PASSWORD").await.expect("get"),
        map(&[("DB_PASSWORD", "s3cret")])
    );
    assert_eq!(
        get(&mut client, "DAPR_OK").await.expect("get"),
        map(&[("DAPR_OK", "allowed")])
    );
    // Outside the prefix, unset, or forbidden: an empty value, as in Dapr.
    assert_eq!(
        get(&mut client, "HOME").await.expect("get"),
        map(&[("HOME", "")])
    );
    assert_eq!(
        get(&mut client, "UNSET").await.expect("get"),
        map(&[("UNSET", "")])
    );
    let expected: HashMap<String, HashMap<String, String>> = [
        ("DB_PASSWORD".to_owned(), map(&[("DB_PASSWORD", "s3cret")])),
        ("API".to_owned(), map(&[("API", "k-1")])),
        ("DAPR_OK".to_owned(), map(&[("DAPR_OK", "allowed")])),
    ]
    .into();
    assert_eq!(bulk(&mut client).await, expected);

    // Re-Init without a prefix: every variable but the forbidden ones.
    init(&mut client, &[]).await;
    assert_eq!(
        get(&mut client, "PLUGDTEST_API").await.expect("get"),
        map(&[("PLUGDTEST_API", "k-1")])
    );
    assert_eq!(
        get(&mut client, "APP_API_TOKEN").await.expect("get"),
        map(&[("APP_API_TOKEN", "")])
    );
    let all = bulk(&mut client).await;
    assert_eq!(all["PLUGDTEST_"], map(&[("PLUGDTEST_", "the bare prefix")]));
    assert!(all.contains_key("PLUGDTEST_DB_PASSWORD"));
    assert!(!all.contains_key("DAPR_PLUGDTEST_TOKEN") && !all.contains_key("APP_API_TOKEN"));
    assert!(
        all.keys()
            .all(|name| !name.to_ascii_uppercase().starts_with("DAPR_"))
    );

    let (status, running) = tokio::task::spawn_blocking(move || {
        let status = running.stop();
        (status, running)
    })
    .await
    .expect("stop task");
    assert!(status.success(), "exit status {status}");
    assert!(!path.exists(), "socket left behind");
    // One warning, for the first Init only; values never logged.
    assert_eq!(
        running.lines_with("ignoring metadata keys").len(),
        1,
        "{:?}",
        running.seen
    );
    assert!(running.lines_with("s3cret").is_empty());
}
