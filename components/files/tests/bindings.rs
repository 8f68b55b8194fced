//! The output binding over gRPC, on a real server and socket.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{Server, map, text, to};
use plugd_component_sdk::proto::output_binding_client::OutputBindingClient;
use plugd_component_sdk::proto::{self as pb};
use tonic::transport::Channel;
use tonic::{Code, Status};

async fn init(
    client: &mut OutputBindingClient<Channel>,
    instance: &str,
    properties: &[(&str, &str)],
) -> Result<(), Status> {
    client
        .init(to(
            instance,
            pb::OutputBindingInitRequest {
                metadata: Some(pb::MetadataRequest {
                    properties: map(properties),
                }),
            },
        ))
        .await
        .map(drop)
}

async fn invoke(
    client: &mut OutputBindingClient<Channel>,
    instance: &str,
    operation: &str,
    data: &[u8],
    metadata: &[(&str, &str)],
) -> Result<pb::InvokeResponse, Status> {
    client
        .invoke(to(
            instance,
            pb::InvokeRequest {
                data: data.to_vec(),
                metadata: map(metadata),
                operation: operation.to_owned(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn list(client: &mut OutputBindingClient<Channel>, instance: &str) -> Vec<String> {
    let response = invoke(client, instance, "list", b"", &[])
        .await
        .expect("list");
    assert_eq!(response.content_type, "application/json");
    serde_json::from_slice(&response.data).expect("a JSON array of names")
}

/// Every file under `base` except those under `skip`, with its contents.
fn snapshot(base: &Path, skip: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![base.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            if path.starts_with(skip) {
                continue;
            } else if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file() {
                let contents = std::fs::read(&path).expect("read");
                files.insert(path, contents);
            } else {
                files.insert(path, Vec::new());
            }
        }
    }
    files
}

#[tokio::test]
async fn create_get_list_delete() {
    let server = Server::start();
    let root = server.path("data/files");
    let mut client = server.binding().await;
    init(&mut client, "files", &[("rootPath", text(&root))])
        .await
        .expect("init");
    assert!(root.is_dir(), "rootPath created");

    let operations = client
        .list_operations(to("files", pb::ListOperationsRequest {}))
        .await
        .expect("operations")
        .into_inner()
        .operations;
    assert_eq!(operations, ["create", "get", "list", "delete"]);

    let created = invoke(
        &mut client,
        "files",
        "create",
        b"hello",
        &[("fileName", "greeting.txt")],
    )
    .await
    .expect("create");
    assert_eq!(created.metadata, map(&[("fileName", "greeting.txt")]));
    assert_eq!(created.content_type, "application/json");
    let body: serde_json::Value = serde_json::from_slice(&created.data).expect("JSON");
    assert_eq!(body, serde_json::json!({"fileName": "greeting.txt"}));
    assert_eq!(
        std::fs::read(root.join("greeting.txt")).expect("on disk"),
        b"hello"
    );

    // Subfolders are created; the name comes back normalised.
    let created = invoke(
        &mut client,
        "files",
        "create",
        b"deep",
        &[("fileName", "./a//b/c.bin")],
    )
    .await
    .expect("create in subfolders");
    assert_eq!(created.metadata["fileName"], "a/b/c.bin");
    assert_eq!(
        std::fs::read(root.join("a/b/c.bin")).expect("on disk"),
        b"deep"
    );

    let got = invoke(
        &mut client,
        "files",
        "get",
        b"",
        &[("fileName", "a/b/c.bin")],
    )
    .await
    .expect("get");
    assert_eq!(got.data, b"deep");
    assert_eq!(got.content_type, "application/octet-stream");
    assert_eq!(got.metadata, map(&[("fileName", "a/b/c.bin")]));

    // Overwrite.
    invoke(
        &mut client,
        "files",
        "create",
        b"bye",
        &[("fileName", "greeting.txt")],
    )
    .await
    .expect("overwrite");
    let got = invoke(
        &mut client,
        "files",
        "get",
        b"",
        &[("fileName", "greeting.txt")],
    )
    .await
    .expect("get");
    assert_eq!(got.data, b"bye");

    assert_eq!(
        list(&mut client, "files").await,
        ["a/b/c.bin", "greeting.txt"]
    );

    let deleted = invoke(
        &mut client,
        "files",
        "delete",
        b"",
        &[("fileName", "greeting.txt")],
    )
    .await
    .expect("delete");
    assert!(deleted.data.is_empty());
    assert!(!root.join("greeting.txt").exists());
    assert_eq!(list(&mut client, "files").await, ["a/b/c.bin"]);

    for operation in ["get", "delete"] {
        let status = invoke(
            &mut client,
            "files",
            operation,
            b"",
            &[("fileName", "greeting.txt")],
        )
        .await
        .expect_err("gone");
        assert_eq!(status.code(), Code::NotFound, "{operation}");
        assert!(
            status.message().contains("greeting.txt"),
            "{}",
            status.message()
        );
        let status = invoke(&mut client, "files", operation, b"", &[])
            .await
            .expect_err("no name");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("fileName"),
            "{}",
            status.message()
        );
    }
    let status = invoke(&mut client, "files", "get", b"", &[("fileName", "a/b")])
        .await
        .expect_err("a folder");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = invoke(&mut client, "files", "rename", b"", &[])
        .await
        .expect_err("unsupported");
    assert_eq!(status.code(), Code::InvalidArgument);
    // No temporary files are left behind.
    assert_eq!(
        std::fs::read_dir(&root).expect("read_dir").count(),
        1,
        "only the folder a remains"
    );
    server.stop().await;
}

#[tokio::test]
async fn generated_names() {
    let server = Server::start();
    let root = server.path("root");
    let mut client = server.binding().await;
    init(&mut client, "files", &[("rootPath", text(&root))])
        .await
        .expect("init");
    let created = invoke(&mut client, "files", "create", b"anonymous", &[])
        .await
        .expect("create");
    let name = created.metadata["fileName"].clone();
    assert!(uuid::Uuid::parse_str(&name).is_ok(), "{name}");
    let body: serde_json::Value = serde_json::from_slice(&created.data).expect("JSON");
    assert_eq!(body["fileName"], name.as_str());
    let got = invoke(&mut client, "files", "get", b"", &[("fileName", &name)])
        .await
        .expect("get");
    assert_eq!(got.data, b"anonymous");
    let other = invoke(&mut client, "files", "create", b"x", &[])
        .await
        .expect("create");
    assert_ne!(other.metadata["fileName"], name);
    assert_eq!(list(&mut client, "files").await.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn base64_both_ways() {
    let server = Server::start();
    let mut client = server.binding().await;
    let plain_root = server.path("plain");
    init(&mut client, "plain", &[("rootPath", text(&plain_root))])
        .await
        .expect("init");

    // Per request.
    invoke(
        &mut client,
        "plain",
        "create",
        b"aGVsbG8gd29ybGQ=\n",
        &[("fileName", "h.txt"), ("decodeBase64", "true")],
    )
    .await
    .expect("create");
    assert_eq!(
        std::fs::read(plain_root.join("h.txt")).expect("on disk"),
        b"hello world"
    );
    let got = invoke(
        &mut client,
        "plain",
        "get",
        b"",
        &[("fileName", "h.txt"), ("encodeBase64", "true")],
    )
    .await
    .expect("get");
    assert_eq!(got.data, b"aGVsbG8gd29ybGQ=");
    assert_eq!(got.content_type, "text/plain");
    // Without the options the bytes pass through.
    invoke(
        &mut client,
        "plain",
        "create",
        b"aGk=",
        &[("fileName", "raw.txt")],
    )
    .await
    .expect("create");
    assert_eq!(
        std::fs::read(plain_root.join("raw.txt")).expect("on disk"),
        b"aGk="
    );

    // Component defaults, and request metadata overriding them.
    let b64_root = server.path("b64");
    init(
        &mut client,
        "b64",
        &[
            ("rootPath", text(&b64_root)),
            ("decodeBase64", "true"),
            ("encodeBase64", "true"),
        ],
    )
    .await
    .expect("init");
    invoke(
        &mut client,
        "b64",
        "create",
        b"AAEC/w==",
        &[("fileName", "bin")],
    )
    .await
    .expect("create");
    assert_eq!(
        std::fs::read(b64_root.join("bin")).expect("on disk"),
        [0, 1, 2, 255]
    );
    let got = invoke(&mut client, "b64", "get", b"", &[("fileName", "bin")])
        .await
        .expect("get");
    assert_eq!(got.data, b"AAEC/w==");
    let got = invoke(
        &mut client,
        "b64",
        "get",
        b"",
        &[("fileName", "bin"), ("encodeBase64", "false")],
    )
    .await
    .expect("get raw");
    assert_eq!(got.data, [0, 1, 2, 255]);
    invoke(
        &mut client,
        "b64",
        "create",
        b"not base64",
        &[("fileName", "raw"), ("decodeBase64", "false")],
    )
    .await
    .expect("create raw");
    assert_eq!(
        std::fs::read(b64_root.join("raw")).expect("on disk"),
        b"not base64"
    );

    let status = invoke(&mut client, "b64", "create", b"%%%", &[("fileName", "bad")])
        .await
        .expect_err("not base64");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("base64"), "{}", status.message());
    assert!(!b64_root.join("bad").exists());
    let status = invoke(
        &mut client,
        "b64",
        "get",
        b"",
        &[("fileName", "bin"), ("encodeBase64", "sometimes")],
    )
    .await
    .expect_err("bad flag");
    assert_eq!(status.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn names_leaving_the_root_are_refused() {
    let server = Server::start();
    let base = server.dir.path().to_path_buf();
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("secret.txt"), b"outside").expect("write");
    let mut client = server.binding().await;
    init(&mut client, "files", &[("rootPath", text(&root))])
        .await
        .expect("init");
    std::os::unix::fs::symlink(&outside, root.join("link")).expect("symlink");
    std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("leak.txt")).expect("symlink");
    invoke(
        &mut client,
        "files",
        "create",
        b"in",
        &[("fileName", "a/in.txt")],
    )
    .await
    .expect("create");
    let before = snapshot(&base, &root);

    let absolute = outside.join("abs.txt");
    let attempts: Vec<(&str, String)> = vec![
        ("relative parent", "../x".to_owned()),
        ("up and out", "a/../../x".to_owned()),
        ("absolute", text(&absolute).to_owned()),
        ("through a link", "link/new.txt".to_owned()),
        ("a link to a file", "leak.txt".to_owned()),
        ("empty", String::new()),
        ("NUL", "a\0b".to_owned()),
        ("a folder", "a/".to_owned()),
        ("nothing", "./.".to_owned()),
    ];
    for (what, name) in &attempts {
        let status = invoke(
            &mut client,
            "files",
            "create",
            b"evil",
            &[("fileName", name)],
        )
        .await
        .expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        if !name.is_empty() && !name.contains('\0') {
            assert!(
                status.message().contains(name.as_str()),
                "{what}: {}",
                status.message()
            );
        }
    }
    for (what, name) in [
        ("system file", "/etc/passwd"),
        ("through a link", "link/secret.txt"),
        ("a link to a file", "leak.txt"),
        ("relative parent", "../outside/secret.txt"),
        ("up and out", "a/../../outside/secret.txt"),
    ] {
        for operation in ["get", "delete"] {
            let status = invoke(&mut client, "files", operation, b"", &[("fileName", name)])
                .await
                .expect_err(what);
            assert_eq!(status.code(), Code::InvalidArgument, "{operation} {what}");
            assert!(status.message().contains(name), "{}", status.message());
        }
    }
    let status = invoke(
        &mut client,
        "files",
        "delete",
        b"",
        &[("fileName", text(&absolute))],
    )
    .await
    .expect_err("absolute");
    assert_eq!(status.code(), Code::InvalidArgument);

    assert_eq!(
        snapshot(&base, &root),
        before,
        "something changed outside the root"
    );
    assert!(!base.join("x").exists());
    // The link to outside is not listed; the one file inside is.
    assert_eq!(list(&mut client, "files").await, ["a/in.txt"]);
    server.stop().await;
}

#[tokio::test]
async fn init_and_calls_before_it() {
    let server = Server::start();
    let mut client = server.binding().await;
    let status = invoke(&mut client, "files", "list", b"", &[])
        .await
        .expect_err("not initialised");
    assert_eq!(status.code(), Code::FailedPrecondition);

    let status = init(&mut client, "files", &[]).await.expect_err("no root");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("rootPath is required"),
        "{}",
        status.message()
    );

    let file = server.path("a-file");
    std::fs::write(&file, b"x").expect("write");
    let status = init(&mut client, "files", &[("rootPath", text(&file))])
        .await
        .expect_err("root is a file");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains(text(&file)),
        "{}",
        status.message()
    );
    let status = init(
        &mut client,
        "files",
        &[("rootPath", text(&file.join("sub")))],
    )
    .await
    .expect_err("root under a file");
    assert_eq!(status.code(), Code::InvalidArgument);

    let root = server.path("root");
    init(&mut client, "files", &[("rootPath", text(&root))])
        .await
        .expect("init");
    client
        .ping(to("files", pb::PingRequest {}))
        .await
        .expect("ping");
    assert!(list(&mut client, "files").await.is_empty());
    std::fs::remove_dir(&root).expect("remove root");
    let status = client
        .ping(to("files", pb::PingRequest {}))
        .await
        .expect_err("root gone");
    assert_eq!(status.code(), Code::Unavailable);
    server.stop().await;
}

#[test]
fn both_kinds_are_served() {
    let server = plugd_files::server("files");
    assert_eq!(
        server.service_names(),
        [
            "dapr.proto.components.v1.SecretStore",
            "dapr.proto.components.v1.OutputBinding"
        ]
    );
}
