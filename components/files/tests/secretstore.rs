//! The secret store over gRPC, on a real server and socket.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{Server, map, text, to};
use plugd_component_sdk::proto::secret_store_client::SecretStoreClient;
use plugd_component_sdk::proto::{self as pb};
use plugd_component_sdk::secretstore::{SecretStore, feature};
use plugd_files::FilesSecretStore;
use tonic::Code;
use tonic::transport::Channel;

const SECRETS: &str = r#"{
    "api-key": "token",
    "db": {"user": "admin", "password": "hunter2", "port": 5432, "tls": true,
           "replica": {"host": "r1"}},
    "hosts": ["h0", "h1"],
    "nothing": null
}"#;

fn write_atomically(path: &Path, contents: &str) {
    let temp = path.with_extension("new");
    std::fs::write(&temp, contents).expect("write");
    std::fs::rename(&temp, path).expect("rename");
}

async fn init(
    client: &mut SecretStoreClient<Channel>,
    instance: &str,
    properties: &[(&str, &str)],
) -> Result<(), tonic::Status> {
    client
        .init(to(
            instance,
            pb::SecretStoreInitRequest {
                metadata: Some(pb::MetadataRequest {
                    properties: map(properties),
                }),
            },
        ))
        .await
        .map(drop)
}

async fn get(
    client: &mut SecretStoreClient<Channel>,
    instance: &str,
    key: &str,
) -> Result<HashMap<String, String>, tonic::Status> {
    client
        .get(to(
            instance,
            pb::GetSecretRequest {
                key: key.to_owned(),
                metadata: HashMap::new(),
            },
        ))
        .await
        .map(|response| response.into_inner().data)
}

async fn bulk(
    client: &mut SecretStoreClient<Channel>,
    instance: &str,
) -> Result<HashMap<String, HashMap<String, String>>, tonic::Status> {
    client
        .bulk_get(to(instance, pb::BulkGetSecretRequest::default()))
        .await
        .map(|response| {
            response
                .into_inner()
                .data
                .into_iter()
                .map(|(name, secret)| (name, secret.secrets))
                .collect()
        })
}

async fn features(client: &mut SecretStoreClient<Channel>, instance: &str) -> Vec<String> {
    client
        .features(to(instance, pb::FeaturesRequest {}))
        .await
        .expect("features")
        .into_inner()
        .features
}

#[tokio::test]
async fn flattened_secrets_one_value_each() {
    let server = Server::start();
    let file = server.path("secrets.json");
    std::fs::write(&file, SECRETS).expect("write");
    let mut client = server.secrets().await;
    init(&mut client, "store", &[("secretsFile", text(&file))])
        .await
        .expect("init");

    assert_eq!(
        get(&mut client, "store", "db:password").await.expect("get"),
        map(&[("db:password", "hunter2")])
    );
    assert_eq!(
        get(&mut client, "store", "db:port").await.expect("number"),
        map(&[("db:port", "5432")])
    );
    assert_eq!(
        get(&mut client, "store", "db:tls").await.expect("bool"),
        map(&[("db:tls", "true")])
    );
    assert_eq!(
        get(&mut client, "store", "db:replica:host")
            .await
            .expect("deeper"),
        map(&[("db:replica:host", "r1")])
    );
    assert_eq!(
        get(&mut client, "store", "hosts:1").await.expect("array"),
        map(&[("hosts:1", "h1")])
    );

    let all = bulk(&mut client, "store").await.expect("bulk");
    let mut names: Vec<&str> = all.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "api-key",
            "db:password",
            "db:port",
            "db:replica:host",
            "db:tls",
            "db:user",
            "hosts:0",
            "hosts:1"
        ]
    );
    for (name, secret) in &all {
        assert_eq!(secret.len(), 1, "{name}");
        assert!(secret.contains_key(name), "{name}");
    }

    for missing in ["db", "nothing", "db:nope"] {
        let status = get(&mut client, "store", missing)
            .await
            .expect_err("missing");
        assert_eq!(status.code(), Code::NotFound, "{missing}");
        assert!(status.message().contains(missing), "{}", status.message());
    }
    assert!(features(&mut client, "store").await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn multi_valued_secrets_and_separator() {
    let server = Server::start();
    let file = server.path("secrets.json");
    std::fs::write(&file, SECRETS).expect("write");
    let mut client = server.secrets().await;
    init(
        &mut client,
        "multi",
        &[
            ("secretsFile", text(&file)),
            ("multiValued", "true"),
            ("nestedSeparator", "."),
        ],
    )
    .await
    .expect("init");

    let db = map(&[
        ("user", "admin"),
        ("password", "hunter2"),
        ("port", "5432"),
        ("tls", "true"),
        ("replica.host", "r1"),
    ]);
    assert_eq!(get(&mut client, "multi", "db").await.expect("get"), db);
    assert_eq!(
        get(&mut client, "multi", "api-key").await.expect("scalar"),
        map(&[("api-key", "token")])
    );
    let status = get(&mut client, "multi", "db.user")
        .await
        .expect_err("not a top-level key");
    assert_eq!(status.code(), Code::NotFound);

    let all = bulk(&mut client, "multi").await.expect("bulk");
    assert_eq!(all.len(), 3, "{:?}", all.keys());
    assert_eq!(all["db"], db);
    assert_eq!(all["hosts"], map(&[("0", "h0"), ("1", "h1")]));
    assert_eq!(all["api-key"], map(&[("api-key", "token")]));

    // Reported per instance: only where `multiValued` is true.
    assert_eq!(
        features(&mut client, "multi").await,
        [feature::MULTIPLE_KEY_VALUES_PER_SECRET]
    );
    server.stop().await;
}

#[tokio::test]
async fn features_follow_multi_valued_per_instance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("s.json");
    std::fs::write(&file, SECRETS).expect("write");
    let store = FilesSecretStore::new("x");
    assert!(store.features().is_empty(), "before Init");
    store
        .init(map(&[("secretsFile", text(&file)), ("multiValued", "yes")]))
        .await
        .expect("init");
    assert_eq!(store.features(), [feature::MULTIPLE_KEY_VALUES_PER_SECRET]);
    store
        .init(map(&[("secretsFile", text(&file))]))
        .await
        .expect("re-init");
    assert!(store.features().is_empty());
}

#[tokio::test]
async fn changes_to_the_file_are_picked_up() {
    let server = Server::start();
    let file = server.path("secrets.json");
    std::fs::write(&file, r#"{"a": "1"}"#).expect("write");
    let mut client = server.secrets().await;
    init(&mut client, "store", &[("secretsFile", text(&file))])
        .await
        .expect("init");
    assert_eq!(
        get(&mut client, "store", "a").await.expect("a"),
        map(&[("a", "1")])
    );
    assert_eq!(
        get(&mut client, "store", "b")
            .await
            .expect_err("not yet")
            .code(),
        Code::NotFound
    );

    write_atomically(&file, r#"{"a": "2", "b": "3"}"#);
    assert_eq!(
        get(&mut client, "store", "a").await.expect("a"),
        map(&[("a", "2")])
    );
    assert_eq!(bulk(&mut client, "store").await.expect("bulk").len(), 2);

    // In place, with a different length.
    std::fs::write(&file, r#"{"c": "4"}"#).expect("rewrite");
    assert_eq!(
        get(&mut client, "store", "c").await.expect("c"),
        map(&[("c", "4")])
    );

    // Broken now: the call fails (nothing stale is served), then recovers.
    write_atomically(&file, r#"{"c": "#);
    let status = get(&mut client, "store", "c").await.expect_err("broken");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains(text(&file)),
        "{}",
        status.message()
    );
    std::fs::remove_file(&file).expect("remove");
    let status = bulk(&mut client, "store").await.expect_err("gone");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("does not exist"),
        "{}",
        status.message()
    );
    write_atomically(&file, r#"{"d": "5"}"#);
    assert_eq!(
        get(&mut client, "store", "d").await.expect("d"),
        map(&[("d", "5")])
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_files_and_metadata_fail_init() {
    let server = Server::start();
    let mut client = server.secrets().await;
    let missing = server.path("missing.json");
    let not_json = server.path("not.json");
    std::fs::write(&not_json, "password = hunter2").expect("write");
    let array = server.path("array.json");
    std::fs::write(&array, r#"["hunter2"]"#).expect("write");
    let folder = server.path("folder");
    std::fs::create_dir(&folder).expect("mkdir");

    for (path, expected) in [
        (&missing, "does not exist"),
        (&not_json, "is not valid JSON"),
        (&array, "must hold a JSON object, not an array"),
        (&folder, "folder"),
    ] {
        let status = init(&mut client, "bad", &[("secretsFile", text(path))])
            .await
            .expect_err("bad file");
        assert_eq!(status.code(), Code::InvalidArgument, "{path:?}");
        assert!(
            status.message().contains(text(path)),
            "{}",
            status.message()
        );
        assert!(status.message().contains(expected), "{}", status.message());
        assert!(
            !status.message().contains("hunter2"),
            "{}",
            status.message()
        );
    }
    let status = init(&mut client, "bad", &[("multiValued", "true")])
        .await
        .expect_err("no file");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("secretsFile is required"));
    let status = init(
        &mut client,
        "bad",
        &[("secretsFile", text(&array)), ("multiValued", "often")],
    )
    .await
    .expect_err("bad flag");
    assert!(
        status.message().contains("multiValued"),
        "{}",
        status.message()
    );

    // A failed Init leaves the instance unusable until a good one.
    let status = get(&mut client, "bad", "a")
        .await
        .expect_err("not initialised");
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = get(&mut client, "never", "a")
        .await
        .expect_err("not initialised");
    assert_eq!(status.code(), Code::FailedPrecondition);
    server.stop().await;
}

#[tokio::test]
async fn instances_are_independent() {
    let server = Server::start();
    let one = server.path("one.json");
    let two = server.path("two.json");
    std::fs::write(&one, r#"{"k": "one"}"#).expect("write");
    std::fs::write(&two, r#"{"k": {"v": "two"}}"#).expect("write");
    let mut client = server.secrets().await;
    init(&mut client, "one", &[("secretsFile", text(&one))])
        .await
        .expect("init one");
    init(
        &mut client,
        "two",
        &[("secretsFile", text(&two)), ("multiValued", "true")],
    )
    .await
    .expect("init two");
    assert_eq!(
        get(&mut client, "one", "k").await.expect("one"),
        map(&[("k", "one")])
    );
    assert_eq!(
        get(&mut client, "two", "k").await.expect("two"),
        map(&[("v", "two")])
    );
    client
        .ping(to("two", pb::PingRequest {}))
        .await
        .expect("ping");
    server.stop().await;
}
