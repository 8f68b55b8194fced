//! `plugd-files --socket-name localstorage`: the binding follows Dapr's
//! `bindings.localstorage` contract (a real process, socket folder from
//! `DAPR_COMPONENT_SOCKETS_FOLDER`), and unknown metadata is warned about.

mod child;
mod common;

use std::process::Command;

use base64::Engine as _;
use child::{Running, socket};
use common::{map, text, to, within};
use plugd_component_sdk::proto::output_binding_client::OutputBindingClient;
use plugd_component_sdk::proto::{self as pb};
use tonic::Code;
use tonic::transport::Channel;

async fn invoke(
    client: &mut OutputBindingClient<Channel>,
    operation: &str,
    data: &[u8],
    metadata: &[(&str, &str)],
) -> Result<pb::InvokeResponse, tonic::Status> {
    client
        .invoke(to(
            "store",
            pb::InvokeRequest {
                data: data.to_vec(),
                metadata: map(metadata),
                operation: operation.to_owned(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn init(
    client: &mut OutputBindingClient<Channel>,
    properties: &[(&str, &str)],
) -> Result<(), tonic::Status> {
    client
        .init(to(
            "store",
            pb::OutputBindingInitRequest {
                metadata: Some(pb::MetadataRequest {
                    properties: map(properties),
                }),
            },
        ))
        .await
        .map(drop)
}

fn names(response: &pb::InvokeResponse) -> Vec<String> {
    serde_json::from_slice(&response.data).expect("a JSON array of names")
}

#[tokio::test]
async fn dapr_localstorage_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sockets = dir.path().join("sockets");
    let mut command = Command::new(env!("CARGO_BIN_EXE_plugd-files"));
    command.args(["--socket-name", "localstorage", "--log-level", "info"]);
    let mut running = Running::start(command, &sockets);

    let channel = within(
        "connect",
        plugd_component_sdk::client::connect(&socket(&sockets, "localstorage")),
    )
    .await
    .expect("connect");
    let mut client = OutputBindingClient::new(channel);

    // Dapr refuses some roots outright.
    let status = init(&mut client, &[("rootPath", "/proc/plugd")])
        .await
        .expect_err("a disallowed root");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("disallowed"), "{status:?}");

    let root_dir = dir.path().join("files");
    init(
        &mut client,
        &[
            ("ROOTPATH", text(&root_dir)),
            ("direction", "output"),
            ("route", "/ignored"),
            ("compression", "gzip"),
            ("mysteryOption", "do-not-log-this-value"),
        ],
    )
    .await
    .expect("init");
    let warned = running.wait_for_line("ignoring metadata keys");
    assert!(warned.contains("WARN"), "{warned}");
    assert!(warned.contains("compression, mysteryOption"), "{warned}");
    assert!(warned.contains("bindings.localstorage"), "{warned}");
    for absent in [
        "do-not-log-this-value",
        "direction",
        "route",
        "rootPath",
        "ROOTPATH",
    ] {
        assert!(!warned.contains(absent), "{absent} in {warned}");
    }
    let root = std::fs::canonicalize(&root_dir).expect("root created");

    // create: a JSON string (as the HTTP API hands `data` over) is unquoted;
    // the answer is {"fileName": <name relative to the root>}.
    let created = invoke(
        &mut client,
        "create",
        br#""Hello World""#,
        &[("fileName", "a/hello.txt")],
    )
    .await
    .expect("create");
    let body: serde_json::Value = serde_json::from_slice(&created.data).expect("JSON answer");
    assert_eq!(body, serde_json::json!({"fileName": "a/hello.txt"}));
    assert_eq!(
        std::fs::read(root.join("a/hello.txt")).expect("written"),
        b"Hello World"
    );

    // Base64 is detected and decoded, unless decodeBase64 says otherwise.
    let raw: Vec<u8> = (0..=255).collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(&raw);
    invoke(
        &mut client,
        "create",
        encoded.as_bytes(),
        &[("fileName", "bin/all.bin")],
    )
    .await
    .expect("create base64");
    assert_eq!(
        std::fs::read(root.join("bin/all.bin")).expect("written"),
        raw
    );
    let quoted = format!("\"{encoded}\"");
    invoke(
        &mut client,
        "create",
        quoted.as_bytes(),
        &[("fileName", "bin/quoted.bin")],
    )
    .await
    .expect("create quoted base64");
    assert_eq!(
        std::fs::read(root.join("bin/quoted.bin")).expect("written"),
        raw
    );
    invoke(
        &mut client,
        "create",
        b"dGVzdA==",
        &[("fileName", "kept.txt"), ("decodeBase64", "false")],
    )
    .await
    .expect("create kept as is");
    assert_eq!(
        std::fs::read(root.join("kept.txt")).expect("written"),
        b"dGVzdA=="
    );
    // Plain bytes that are not base64 are written as they are.
    invoke(
        &mut client,
        "create",
        b"{\"order\":1}",
        &[("fileName", "a.json")],
    )
    .await
    .expect("create JSON");
    assert_eq!(
        std::fs::read(root.join("a.json")).expect("written"),
        b"{\"order\":1}"
    );

    // A generated name is a UUID relative to the root.
    let generated = invoke(&mut client, "create", b"x y", &[])
        .await
        .expect("create");
    let body: serde_json::Value = serde_json::from_slice(&generated.data).expect("JSON");
    let name = body["fileName"].as_str().expect("a fileName");
    assert!(uuid::Uuid::parse_str(name).is_ok(), "{name}");
    assert_eq!(std::fs::read(root.join(name)).expect("written"), b"x y");

    // get answers the contents; a missing file is an error.
    let got = invoke(&mut client, "get", b"", &[("fileName", "a/hello.txt")])
        .await
        .expect("get");
    assert_eq!(got.data, b"Hello World");
    let status = invoke(&mut client, "get", b"", &[("fileName", "a/missing.txt")])
        .await
        .expect_err("missing");
    assert_eq!(status.code(), Code::NotFound);

    // list: absolute paths, in walk order (a folder's files before a later
    // sibling such as `a.json`); `fileName` narrows it to a folder.
    let root_text = root.to_str().expect("utf-8 root");
    let at = |name: &str| format!("{root_text}/{name}");
    let listed = invoke(&mut client, "list", b"", &[]).await.expect("list");
    // The generated name sorts anywhere among the top-level entries.
    let mut expected = [
        "a/hello.txt",
        "a.json",
        "bin/all.bin",
        "bin/quoted.bin",
        "kept.txt",
        name,
    ];
    expected.sort_by(|a, b| a.split('/').cmp(b.split('/')));
    let position = |wanted: &str| expected.iter().position(|n| *n == wanted);
    assert!(
        position("a/hello.txt") < position("a.json"),
        "walk order: a/ before a.json"
    );
    assert_eq!(
        names(&listed),
        expected.iter().map(|n| at(n)).collect::<Vec<_>>()
    );
    let listed = invoke(&mut client, "list", b"", &[("fileName", "bin/")])
        .await
        .expect("list bin");
    assert_eq!(names(&listed), [at("bin/all.bin"), at("bin/quoted.bin")]);
    let status = invoke(&mut client, "list", b"", &[("fileName", "nope")])
        .await
        .expect_err("no such folder");
    assert_eq!(status.code(), Code::NotFound);
    let status = invoke(&mut client, "list", b"", &[("fileName", "../")])
        .await
        .expect_err("outside the root");
    assert_eq!(status.code(), Code::InvalidArgument);

    // delete, then the file is gone.
    invoke(&mut client, "delete", b"", &[("fileName", "a/hello.txt")])
        .await
        .expect("delete");
    assert!(!root.join("a/hello.txt").exists());
    let status = invoke(&mut client, "delete", b"", &[("fileName", "a/hello.txt")])
        .await
        .expect_err("deleted already");
    assert_eq!(status.code(), Code::NotFound);

    // Stopped off the runtime, so that the client connection can answer the
    // server's GOAWAY meanwhile and the exit is prompt.
    let (status, running) = tokio::task::spawn_blocking(move || {
        let status = running.stop();
        (status, running)
    })
    .await
    .expect("stop task");
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        running.lines_with("ignoring metadata keys").len(),
        1,
        "{:?}",
        running.seen
    );
    assert!(
        !socket(&sockets, "localstorage").exists(),
        "socket left behind"
    );
}

/// Under its own name (`bindings.files`) the binding keeps plugd's contract:
/// data as received, names relative to the root.
#[tokio::test]
async fn files_contract_is_unchanged() {
    let server = common::Server::start();
    let mut client = server.binding().await;
    let root = server.path("root");
    client
        .init(to(
            "store",
            pb::OutputBindingInitRequest {
                metadata: Some(pb::MetadataRequest {
                    properties: map(&[("rootPath", text(&root))]),
                }),
            },
        ))
        .await
        .expect("init");
    invoke(
        &mut client,
        "create",
        br#""dGVzdA==""#,
        &[("fileName", "d/q.txt")],
    )
    .await
    .expect("create");
    assert_eq!(
        std::fs::read(root.join("d/q.txt")).expect("written"),
        br#""dGVzdA==""#
    );
    invoke(&mut client, "create", b"x", &[("fileName", "d.txt")])
        .await
        .expect("create");
    let listed = invoke(&mut client, "list", b"", &[]).await.expect("list");
    assert_eq!(names(&listed), ["d.txt", "d/q.txt"]);
    let listed = invoke(&mut client, "list", b"", &[("fileName", "d")])
        .await
        .expect("list d");
    assert_eq!(names(&listed), ["d/q.txt"]);
    server.stop().await;
}
