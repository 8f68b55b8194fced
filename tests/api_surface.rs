//! The edges of the runtime API: the API token (`DAPR_API_TOKEN`) on both transports, the app
//! token (`APP_API_TOKEN`) on calls to the app, APIs plugd does not serve answered at once with
//! UNIMPLEMENTED / 501 naming them, and reflection on plugd's gRPC port.

mod support;

use std::{collections::HashMap, time::Duration};

use plugd::{
    config::{AppConfig, AppProtocol, Config},
    proto::runtime as rt,
};
use support::{RunningPlugd, TestDirs, apps, spawn_component, start_plugd};
use tonic::{Code, codegen::http::uri::PathAndQuery, metadata::MetadataValue};
use tonic_types::StatusExt;

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "s3cret-api-token";

async fn plugd_with_token(dirs: &TestDirs) -> RunningPlugd {
    let mut config = Config::for_tests(dirs.sockets.clone(), vec![dirs.resources.clone()]);
    config.api_token = Some(TOKEN.into());
    start_plugd(config).await.expect("plugd")
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(
        "dapr-api-token",
        MetadataValue::try_from(token).expect("ascii token"),
    );
    req
}

#[tokio::test]
async fn the_api_token_guards_every_call_but_health() {
    let dirs = TestDirs::new();
    let plugd = plugd_with_token(&dirs).await;
    let http = reqwest::Client::new();

    // Health answers without the token.
    // (Repeated and trailing slashes are tolerated, as in daprd.)
    for path in [
        "/v1.0/healthz",
        "/v1.0/healthz/outbound",
        "/v1.0//healthz",
        "/v1.0/healthz/outbound/",
    ] {
        let resp = http.get(plugd.http_url(path)).send().await.expect("health");
        assert_eq!(resp.status(), 204, "{path}");
    }
    // Everything else needs it: missing or wrong → 401 with Dapr's plain-text body.
    for token in [None, Some("wrong")] {
        for (method, path) in [
            (reqwest::Method::GET, "/v1.0/metadata"),
            (reqwest::Method::GET, "/v1.0/state/store/key"),
            (reqwest::Method::POST, "/v1.0/publish/p/t"),
            (reqwest::Method::GET, "/v1.0/does-not-exist"),
            (reqwest::Method::GET, "/v1.0//metadata"),
        ] {
            let mut req = http.request(method.clone(), plugd.http_url(path));
            if let Some(t) = token {
                req = req.header("dapr-api-token", t);
            }
            let resp = req.send().await.expect("request");
            assert_eq!(resp.status(), 401, "{method} {path} with {token:?}");
            assert_eq!(resp.text().await.expect("body"), "invalid api token");
        }
    }
    let resp = http
        .get(plugd.http_url("/v1.0/metadata"))
        .header("dapr-api-token", TOKEN)
        .send()
        .await
        .expect("metadata");
    assert_eq!(resp.status(), 200);

    // gRPC: UNAUTHENTICATED with Dapr's ErrorInfo, or served with the token.
    let mut client = plugd.grpc_client().await;
    for (req, why) in [
        (
            tonic::Request::new(rt::GetMetadataRequest {}),
            "missing api token in request metadata",
        ),
        (
            with_token(rt::GetMetadataRequest {}, "wrong"),
            "authentication error: api token mismatch",
        ),
    ] {
        let status = client.get_metadata(req).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), "Unauthorized");
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "Unauthorized");
        assert_eq!(info.domain, "dapr.io");
        assert_eq!(info.metadata["http.code"], "401");
        assert_eq!(info.metadata["http.error_message"], why);
    }
    let meta = client
        .get_metadata(with_token(rt::GetMetadataRequest {}, TOKEN))
        .await
        .expect("with the token")
        .into_inner();
    assert_eq!(meta.id, "testapp");

    // Reflection stays open (grpcurl can list the API without the token).
    let services = reflection_services(&plugd).await;
    assert!(
        services.contains(&"dapr.proto.runtime.v1.Dapr".to_string()),
        "{services:?}"
    );
    plugd.stop().await;
}

/// The services plugd's gRPC port lists through reflection v1 (and v1alpha answers too).
async fn reflection_services(plugd: &RunningPlugd) -> Vec<String> {
    use tonic_reflection::pb::{
        v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        },
        v1alpha,
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", plugd.grpc))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = ServerReflectionClient::new(channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::once(req))
        .await
        .expect("reflection v1")
        .into_inner();
    let resp = stream.message().await.expect("answer").expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("not a service list: {resp:?}");
    };
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = alpha
        .server_reflection_info(tokio_stream::once(req))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    assert!(stream.message().await.expect("answer").is_some());
    list.service.into_iter().map(|s| s.name).collect()
}

/// Calls a `Dapr` method plugd's generated client does not have.
async fn call_raw(plugd: &RunningPlugd, method: &str) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", plugd.grpc))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path =
        PathAndQuery::try_from(format!("/dapr.proto.runtime.v1.Dapr/{method}")).expect("path");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let call = grpc.unary(tonic::Request::new(()), path, codec);
    tokio::time::timeout(WAIT, call)
        .await
        .expect("answered at once")
        .expect_err("not served")
}

#[tokio::test]
async fn apis_plugd_does_not_serve_answer_at_once_naming_the_api() {
    let dirs = TestDirs::new();
    let plugd = start_plugd(Config::for_tests(
        dirs.sockets.clone(),
        vec![dirs.resources.clone()],
    ))
    .await
    .expect("plugd");
    for (method, api) in [
        ("GetActorState", "actors"),
        ("GetConfiguration", "configuration"),
        ("TryLockAlpha1", "distributed lock"),
        ("EncryptAlpha1", "cryptography"),
        ("ScheduleJobAlpha1", "jobs"),
        ("StartWorkflowBeta1", "workflows"),
        ("ConverseAlpha1", "conversation"),
        ("InvokeService", "service invocation"),
    ] {
        let status = call_raw(&plugd, method).await;
        assert_eq!(status.code(), Code::Unimplemented, "{method}");
        assert_eq!(
            status.message(),
            format!("the {api} API is not served by plugd (dapr.proto.runtime.v1.Dapr/{method})")
        );
    }

    let http = reqwest::Client::new();
    for (method, path, api) in [
        (reqwest::Method::PUT, "/v1.0/actors/cart/1/state", "actors"),
        (
            reqwest::Method::POST,
            "/v1.0/invoke/other-app/method/orders",
            "service invocation",
        ),
        (
            reqwest::Method::GET,
            "/v1.0/configuration/store",
            "configuration",
        ),
        (
            reqwest::Method::POST,
            "/v1.0-alpha1/lock/store",
            "distributed lock",
        ),
        (reqwest::Method::POST, "/v1.0-alpha1/jobs/nightly", "jobs"),
        (
            reqwest::Method::POST,
            "/v1.0-beta1/workflows/dapr/wf/start",
            "workflows",
        ),
        (
            reqwest::Method::POST,
            "/v1.0-alpha2/conversation/llm/converse",
            "conversation",
        ),
    ] {
        let resp = http
            .request(method.clone(), plugd.http_url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 501, "{method} {path}");
        let body: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(body["errorCode"], "ERR_NOT_IMPLEMENTED");
        assert_eq!(
            body["message"],
            format!("the {api} API is not served by plugd ({path})")
        );
    }
    // A path that is no Dapr API at all stays 404.
    let resp = http
        .get(plugd.http_url("/v1.0/nothing-here"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 404);
    plugd.stop().await;
}

#[tokio::test]
async fn the_app_token_goes_with_every_call_to_the_app_and_subscriptions_are_listed() {
    for protocol in [AppProtocol::Grpc, AppProtocol::Http] {
        let dirs = TestDirs::new();
        let _memory = spawn_component("plugd-memory", &dirs.sockets, "memory", &[]);
        dirs.write_resource(
            "pubsub.yaml",
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.memory\n  version: v1\n  metadata: []\n",
        );
        let app = match protocol {
            AppProtocol::Grpc => {
                apps::grpc_app(
                    vec![apps::grpc_subscription("pubsub", "orders")],
                    apps::always(apps::Answer::Success),
                )
                .await
            }
            AppProtocol::Http => {
                apps::http_app(
                    serde_json::json!([{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}]),
                    apps::always(apps::Answer::Success),
                )
                .await
            }
        };
        let mut config = Config::for_tests(dirs.sockets.clone(), vec![dirs.resources.clone()]);
        config.app = Some(AppConfig {
            address: ([127, 0, 0, 1], app.port).into(),
            protocol,
            token: Some("app-token-1".into()),
            max_concurrency: None,
            call_timeout: Duration::from_secs(10),
        });
        let plugd = start_plugd(config).await.expect("plugd");
        let mut client = plugd.grpc_client().await;
        client
            .publish_event(rt::PublishEventRequest {
                pubsub_name: "pubsub".into(),
                topic: "orders".into(),
                data: b"{}".to_vec(),
                data_content_type: "application/json".into(),
                metadata: HashMap::new(),
            })
            .await
            .expect("publish");
        let events = app
            .recorder
            .wait_for(WAIT, "the event at the app", |e| !e.is_empty())
            .await;
        assert_eq!(
            events[0].headers.get("dapr-api-token").map(String::as_str),
            Some("app-token-1"),
            "{protocol:?}: {:?}",
            events[0].headers
        );
        // The app's subscription is listed by the metadata API, over both transports.
        let meta: serde_json::Value = reqwest::get(plugd.http_url("/v1.0/metadata"))
            .await
            .expect("metadata")
            .json()
            .await
            .expect("json");
        let subs = meta["subscriptions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(subs.len(), 1, "{meta}");
        assert_eq!(subs[0]["pubsubname"], "pubsub");
        assert_eq!(subs[0]["topic"], "orders");
        assert_eq!(subs[0]["type"], "PROGRAMMATIC");
        let grpc_meta = client
            .get_metadata(rt::GetMetadataRequest {})
            .await
            .expect("GetMetadata")
            .into_inner();
        assert_eq!(grpc_meta.subscriptions.len(), 1);
        assert_eq!(grpc_meta.subscriptions[0].topic, "orders");
        assert_eq!(
            grpc_meta.subscriptions[0].r#type,
            rt::PubsubSubscriptionType::Programmatic as i32
        );
        plugd.stop().await;
    }
}
