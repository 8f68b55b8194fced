//! Trace context end to end, with the plugd binary: W3C `traceparent` / `tracestate` and
//! `grpc-trace-bin` from the caller reach a real component (a recording state store on a Unix
//! socket) as a child context; publishes reach real apps (HTTP and gRPC) with the trace in the
//! headers and the CloudEvent; spans are exported over OTLP to an in-test receiver; and the JSON
//! log lines follow Dapr's schema with the trace id of the request they were written in. The
//! component calls a delivery leads to (stream opens, a dead-letter publish, the output binding
//! a gRPC app names) carry the trace of the event they come from.

mod support;
mod trace_fakes;

use std::{
    collections::HashMap,
    io::BufRead as _,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use plugd::proto::components::{
    self as pb,
    state_store_server::{StateStore, StateStoreServer},
};
use serde_json::Value;
use support::{ChildGuard, Logs, TestDirs, apps, binary, eventually, spawn_component};
use tonic::{Request, Response, Status};

const WAIT: Duration = Duration::from_secs(30);
const APP_ID: &str = "traceapp";

// ---------------------------------------------------------------------------------------------
// The recording state store.

/// A key and the trace metadata of the `Get` that asked for it.
type Seen = (String, HashMap<String, String>);

/// The `traceparent` / `tracestate` metadata of every `Get` the store received, by key.
#[derive(Clone, Default)]
struct RecordingStore {
    gets: Arc<Mutex<Vec<Seen>>>,
}

impl RecordingStore {
    fn seen(&self, key: &str) -> Option<HashMap<String, String>> {
        self.gets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            // plugd prefixes keys with the app id.
            .find(|(k, _)| k.rsplit("||").next() == Some(key))
            .map(|(_, md)| md.clone())
    }

    /// Waits until a `Get` of `key` arrived; its trace metadata.
    async fn wait_for(&self, key: &str) -> HashMap<String, String> {
        eventually(WAIT, &format!("the store to receive Get {key}"), || {
            let seen = self.seen(key);
            async move { seen }
        })
        .await
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl StateStore for RecordingStore {
    async fn init(&self, _: Request<pb::InitRequest>) -> Reply<pb::InitResponse> {
        Ok(Response::new(pb::InitResponse {}))
    }
    async fn features(&self, _: Request<pb::FeaturesRequest>) -> Reply<pb::FeaturesResponse> {
        Ok(Response::new(pb::FeaturesResponse::default()))
    }
    async fn delete(&self, _: Request<pb::DeleteRequest>) -> Reply<pb::DeleteResponse> {
        Ok(Response::new(pb::DeleteResponse {}))
    }
    async fn get(&self, req: Request<pb::GetRequest>) -> Reply<pb::GetResponse> {
        let md = ["traceparent", "tracestate"]
            .into_iter()
            .filter_map(|k| {
                let v = req.metadata().get(k)?.to_str().ok()?;
                Some((k.to_string(), v.to_string()))
            })
            .collect();
        let key = req.into_inner().key;
        self.gets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((key, md));
        Ok(Response::new(pb::GetResponse {
            data: b"\"v\"".to_vec(),
            ..Default::default()
        }))
    }
    async fn set(&self, _: Request<pb::SetRequest>) -> Reply<pb::SetResponse> {
        Ok(Response::new(pb::SetResponse {}))
    }
    async fn ping(&self, _: Request<pb::PingRequest>) -> Reply<pb::PingResponse> {
        Ok(Response::new(pb::PingResponse {}))
    }
    async fn bulk_delete(
        &self,
        _: Request<pb::BulkDeleteRequest>,
    ) -> Reply<pb::BulkDeleteResponse> {
        Err(Status::unimplemented("bulk delete"))
    }
    async fn bulk_get(&self, _: Request<pb::BulkGetRequest>) -> Reply<pb::BulkGetResponse> {
        Err(Status::unimplemented("bulk get"))
    }
    async fn bulk_set(&self, _: Request<pb::BulkSetRequest>) -> Reply<pb::BulkSetResponse> {
        Err(Status::unimplemented("bulk set"))
    }
}

/// Serves `store` (with v1alpha reflection, so plugd discovers it) on `socket`.
fn serve_store(socket: &std::path::Path, store: RecordingStore) {
    let listener = tokio::net::UnixListener::bind(socket).expect("bind the store's socket");
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(plugd::proto::FILE_DESCRIPTOR_SET)
        .with_service_name("dapr.proto.components.v1.StateStore")
        .build_v1alpha()
        .expect("reflection");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(reflection)
            .add_service(StateStoreServer::new(store))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
}

// ---------------------------------------------------------------------------------------------
// plugd as a child process, ports and logs read from its JSON log.

struct Plugd {
    guard: ChildGuard,
    logs: Logs,
    grpc: u16,
    http: u16,
}

impl Plugd {
    /// Starts plugd on `dirs` with JSON logs (plugd's own at debug) and `extra` flags, and
    /// waits until it serves.
    async fn start(dirs: &TestDirs, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(binary("plugd"));
        cmd.args(["--app-id", APP_ID, "--log-as-json", "--log-level"])
            .arg("plugd=debug,info")
            .args(["--managed-components=false", "--enable-metrics=false"])
            .arg("--resources-path")
            .arg(&dirs.resources)
            .arg("--sockets-folder")
            .arg(&dirs.sockets)
            .args(["--dapr-grpc-port", "0", "--dapr-http-port", "0"])
            .args(extra)
            .env_remove("RUST_LOG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut guard = ChildGuard::spawn("plugd", &mut cmd);
        let logs = Logs::default();
        let stderr = guard.child.stderr.take().expect("plugd stderr");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let port = |v: &Value| -> Option<u16> { v.as_str()?.rsplit(':').next()?.parse().ok() };
        let (grpc, http) = eventually(WAIT, "plugd to log the ports it serves on", || {
            let logs = logs.clone();
            async move {
                if logs.lines().iter().any(|l| l.contains("could not start")) {
                    panic!("plugd could not start:\n{}", logs.tail());
                }
                logs.json()
                    .iter()
                    .find(|l| l["msg"] == "plugd is serving the runtime API")
                    .and_then(|l| Some((port(&l["grpc"])?, port(&l["http"])?)))
            }
        })
        .await;
        Self {
            guard,
            logs,
            grpc,
            http,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    async fn grpc_client(
        &self,
    ) -> plugd::proto::runtime::dapr_client::DaprClient<tonic::transport::Channel> {
        plugd::proto::runtime::dapr_client::DaprClient::connect(format!(
            "http://127.0.0.1:{}",
            self.grpc
        ))
        .await
        .expect("connect to plugd's gRPC API")
    }

    /// Waits until the state store `store` is ready (a Get answers 2xx).
    async fn wait_store(&self, store: &str) {
        let http = reqwest::Client::new();
        let url = self.url(&format!("/v1.0/state/{store}/warmup"));
        eventually(WAIT, "the store to be ready", || {
            let req = http.get(&url);
            async move {
                req.send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ())
            }
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Trace context helpers.

/// `(trace id, span id, flags)` of a valid `traceparent`, or a panic naming what is wrong.
fn parse_traceparent(tp: &str) -> (String, String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {tp:?}");
    assert_eq!(parts[0], "00", "traceparent {tp:?}");
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            && s.bytes().any(|b| b != b'0')
    };
    assert!(hex(parts[1], 32), "trace id of {tp:?}");
    assert!(hex(parts[2], 16), "span id of {tp:?}");
    assert_eq!(parts[3].len(), 2, "flags of {tp:?}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

const TRACE_A: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACE_B: &str = "0af7651916cd43dd8448eb211c80319c";
const TRACE_C: &str = "11111111222222223333333344444444";
const TRACE_D: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn hex_bytes<const N: usize>(hex: &str) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

fn setup_store() -> (TestDirs, RecordingStore) {
    let dirs = TestDirs::new();
    let store = RecordingStore::default();
    serve_store(&dirs.sockets.join("recstore.sock"), store.clone());
    dirs.state_component("store", "recstore", "");
    (dirs, store)
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_reaches_the_component_as_a_child() {
    let (dirs, store) = setup_store();
    let plugd = Plugd::start(&dirs, &[], &[]).await;
    plugd.wait_store("store").await;
    let http = reqwest::Client::new();

    // HTTP, W3C headers.
    let resp = http
        .get(plugd.url("/v1.0/state/store/http-w3c"))
        .header("traceparent", format!("00-{TRACE_A}-{CALLER_SPAN}-01"))
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    let md = store.wait_for("http-w3c").await;
    let (trace, span, flags) = parse_traceparent(&md["traceparent"]);
    assert_eq!(trace, TRACE_A);
    assert_ne!(span, CALLER_SPAN, "the component's parent is plugd's span");
    assert_eq!(flags, "01");
    assert_eq!(md.get("tracestate").map(String::as_str), Some("vendor=abc"));

    // gRPC, W3C metadata.
    let mut client = plugd.grpc_client().await;
    let mut req = Request::new(plugd::proto::runtime::GetStateRequest {
        store_name: "store".into(),
        key: "grpc-w3c".into(),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_B}-{CALLER_SPAN}-00")
            .parse()
            .expect("metadata"),
    );
    client.get_state(req).await.expect("GetState");
    let md = store.wait_for("grpc-w3c").await;
    let (trace, span, flags) = parse_traceparent(&md["traceparent"]);
    assert_eq!(trace, TRACE_B);
    assert_ne!(span, CALLER_SPAN);
    assert_eq!(flags, "00", "the caller's sampling decision travels on");
    assert!(!md.contains_key("tracestate"));

    // gRPC, OpenCensus grpc-trace-bin.
    let mut bin = vec![0u8, 0];
    bin.extend_from_slice(&hex_bytes::<16>(TRACE_C));
    bin.push(1);
    bin.extend_from_slice(&hex_bytes::<8>(CALLER_SPAN));
    bin.extend_from_slice(&[2, 1]);
    let mut req = Request::new(plugd::proto::runtime::GetStateRequest {
        store_name: "store".into(),
        key: "grpc-bin".into(),
        ..Default::default()
    });
    req.metadata_mut().insert_bin(
        "grpc-trace-bin",
        tonic::metadata::BinaryMetadataValue::from_bytes(&bin),
    );
    client.get_state(req).await.expect("GetState");
    let md = store.wait_for("grpc-bin").await;
    let (trace, span, _) = parse_traceparent(&md["traceparent"]);
    assert_eq!(trace, TRACE_C);
    assert_ne!(span, CALLER_SPAN);

    // No trace context, or an invalid one: a new trace, and the request still works.
    let resp = http
        .get(plugd.url("/v1.0/state/store/none"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    let resp = http
        .get(plugd.url("/v1.0/state/store/bad"))
        .header("traceparent", "00-not-a-trace-01")
        .header("tracestate", "???")
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    let mut req = Request::new(plugd::proto::runtime::GetStateRequest {
        store_name: "store".into(),
        key: "bad-bin".into(),
        ..Default::default()
    });
    req.metadata_mut().insert_bin(
        "grpc-trace-bin",
        tonic::metadata::BinaryMetadataValue::from_bytes(&[0, 0, 1, 2]),
    );
    client
        .get_state(req)
        .await
        .expect("GetState with a bad grpc-trace-bin");
    let mut fresh = Vec::new();
    for key in ["none", "bad", "bad-bin"] {
        let md = store.wait_for(key).await;
        let (trace, _, _) = parse_traceparent(&md["traceparent"]);
        for known in [TRACE_A, TRACE_B, TRACE_C] {
            assert_ne!(trace, known, "{key}");
        }
        fresh.push(trace);
    }
    fresh.sort();
    fresh.dedup();
    assert_eq!(
        fresh.len(),
        3,
        "each request starts its own trace: {fresh:?}"
    );

    // The log line written inside the first request carries its trace id, in Dapr's schema.
    let lines = plugd.logs.json();
    let line = lines
        .iter()
        .find(|l| l["msg"] == "api request" && l["trace_id"] == TRACE_A)
        .unwrap_or_else(|| panic!("no request line with the trace id:\n{}", plugd.logs.tail()));
    assert_eq!(line["route"], "/v1.0/state/{store}/{key}");
    assert_schema(line, "debug");
}

/// Every Dapr schema field, with the values this plugd has.
fn assert_schema(line: &Value, level: &str) {
    let text = |k: &str| {
        line[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} missing in {line}"))
    };
    text("time")
        .parse::<jiff::Timestamp>()
        .unwrap_or_else(|e| panic!("time is not RFC 3339 ({e}): {line}"));
    assert_eq!(text("level"), level, "{line}");
    assert_eq!(text("type"), "log", "{line}");
    assert!(!text("msg").is_empty(), "{line}");
    assert!(
        text("scope").starts_with("plugd.") && !text("scope").contains("::"),
        "{line}"
    );
    assert_eq!(text("app_id"), APP_ID, "{line}");
    assert_eq!(
        text("instance"),
        gethostname::gethostname().to_string_lossy(),
        "{line}"
    );
    assert_eq!(text("ver"), env!("CARGO_PKG_VERSION"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_follow_daprs_schema_and_name_the_component() {
    let (dirs, _store) = setup_store();
    let plugd = Plugd::start(&dirs, &[], &[]).await;
    plugd.wait_store("store").await;
    let lines = plugd.logs.json();
    assert!(!lines.is_empty());
    // Every line of plugd's own is one JSON object in the schema.
    for raw in plugd.logs.lines() {
        let line: Value =
            serde_json::from_str(&raw).unwrap_or_else(|e| panic!("not a JSON line ({e}): {raw}"));
        let level = line["level"].as_str().unwrap_or_default().to_string();
        assert!(
            ["debug", "info", "warning", "error"].contains(&level.as_str()),
            "{line}"
        );
        if line["scope"]
            .as_str()
            .is_some_and(|s| s.starts_with("plugd"))
        {
            assert_schema(&line, &level);
        }
    }
    let serving = lines
        .iter()
        .find(|l| l["msg"] == "plugd is serving the runtime API")
        .expect("serving line");
    assert_schema(serving, "info");
    assert_eq!(serving["scope"], "plugd.app");
    // A component's lines name the component and its socket.
    let ready = lines
        .iter()
        .find(|l| l["msg"] == "component ready")
        .unwrap_or_else(|| panic!("no ready line:\n{}", plugd.logs.tail()));
    assert_eq!(ready["component"], "store", "{ready}");
    assert!(
        ready["socket"]
            .as_str()
            .is_some_and(|s| s.ends_with("recstore.sock")),
        "{ready}"
    );
    assert_schema(ready, "info");
}

// ---------------------------------------------------------------------------------------------
// Pub/sub: the publish span's context reaches the app.

fn pubsub_yaml() -> &'static str {
    "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.memory\n  version: v1\n"
}

async fn publish_reaches_the_app(protocol: &str) {
    let dirs = TestDirs::new();
    let _component = spawn_component("plugd-memory", &dirs.sockets, "memory", &[]);
    dirs.write_resource("pubsub.yaml", pubsub_yaml());
    let app = match protocol {
        "grpc" => {
            apps::grpc_app(
                vec![apps::grpc_subscription("pubsub", "traced")],
                apps::always(apps::Answer::Success),
            )
            .await
        }
        _ => apps::http_app(
            serde_json::json!([{"pubsubname": "pubsub", "topic": "traced", "route": "/traced"}]),
            apps::always(apps::Answer::Success),
        )
        .await,
    };
    let port = app.port.to_string();
    // Only the start-up lines are logged: the trace spans exist whatever the log filter says.
    let plugd = Plugd::start(
        &dirs,
        &["--app-port", &port, "--app-protocol", protocol],
        &[("RUST_LOG", "plugd::app=info")],
    )
    .await;
    let http = reqwest::Client::new();
    let publish = |body: &'static str, traceparent: Option<String>| {
        let mut req = http
            .post(plugd.url("/v1.0/publish/pubsub/traced"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        req
    };
    // The pub/sub component may still be starting: retry the first publish until accepted.
    eventually(WAIT, "the first publish to be accepted", || {
        let req = publish(r#"{"n":1}"#, Some(format!("00-{TRACE_D}-{CALLER_SPAN}-01")));
        async move {
            req.send()
                .await
                .ok()
                .filter(|r| r.status() == 204)
                .map(|_| ())
        }
    })
    .await;
    let got = app
        .recorder
        .wait_for(WAIT, "the traced event", |r| {
            r.iter().any(|e| e.data == br#"{"n":1}"#)
        })
        .await;
    let event = got
        .iter()
        .find(|e| e.data == br#"{"n":1}"#)
        .expect("the event");
    let header = event
        .headers
        .get("traceparent")
        .unwrap_or_else(|| panic!("no traceparent header: {:?}", event.headers));
    let (trace, span, flags) = parse_traceparent(header);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE_D, "01"));
    assert_ne!(span, CALLER_SPAN);
    let field = event.envelope["traceparent"]
        .as_str()
        .expect("CloudEvent traceparent");
    let (ce_trace, ce_span, _) = parse_traceparent(field);
    assert_eq!(ce_trace, TRACE_D);
    assert_ne!(
        ce_span, CALLER_SPAN,
        "the CloudEvent names plugd's publish span"
    );
    assert_eq!(event.envelope["traceid"], field);

    // Without a trace context the publish span starts one, and it travels the same way.
    let resp = publish(r#"{"n":2}"#, None).send().await.expect("publish");
    assert_eq!(resp.status(), 204);
    let got = app
        .recorder
        .wait_for(WAIT, "the untraced event", |r| {
            r.iter().any(|e| e.data == br#"{"n":2}"#)
        })
        .await;
    let event = got
        .iter()
        .find(|e| e.data == br#"{"n":2}"#)
        .expect("the event");
    let (ce_trace, _, _) = parse_traceparent(
        event.envelope["traceparent"]
            .as_str()
            .expect("CloudEvent traceparent"),
    );
    let (header_trace, _, _) = parse_traceparent(&event.headers["traceparent"]);
    assert_eq!(ce_trace, header_trace);
    assert_ne!(ce_trace, TRACE_D);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_carries_the_trace_to_an_http_app() {
    publish_reaches_the_app("http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_carries_the_trace_to_a_grpc_app() {
    publish_reaches_the_app("grpc").await;
}

// ---------------------------------------------------------------------------------------------
// OTLP export to an in-test receiver.

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
    service_names: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    /// Serves a receiver on a loopback port.
    async fn start() -> (Self, std::net::SocketAddr) {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver.clone()))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (receiver, addr)
    }

    fn spans(&self) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        for rs in req.into_inner().resource_spans {
            for attr in rs.resource.iter().flat_map(|r| r.attributes.iter()) {
                if attr.key == "service.name"
                    && let Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s),
                    ) = attr.value.as_ref().and_then(|v| v.value.clone())
                {
                    self.service_names
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(s);
                }
            }
            for ss in rs.scope_spans {
                self.spans
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(ss.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp() {
    let (receiver, addr) = Receiver::start().await;

    let (dirs, store) = setup_store();
    // `host:port` without a scheme is plain gRPC.
    let endpoint = addr.to_string();
    let plugd = Plugd::start(
        &dirs,
        &["--otlp-endpoint", &endpoint],
        // Export batches soon rather than every 5 s.
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .await;
    plugd.wait_store("store").await;
    let resp = reqwest::Client::new()
        .get(plugd.url("/v1.0/state/store/exported"))
        .header("traceparent", format!("00-{TRACE_A}-{CALLER_SPAN}-01"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    let md = store.wait_for("exported").await;
    let (_, component_parent, _) = parse_traceparent(&md["traceparent"]);

    let trace = hex_bytes::<16>(TRACE_A).to_vec();
    let (server, client) = eventually(WAIT, "the request's spans at the receiver", || {
        let spans = receiver
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let trace = trace.clone();
        async move {
            let of_trace: Vec<_> = spans.into_iter().filter(|s| s.trace_id == trace).collect();
            let server = of_trace
                .iter()
                .find(|s| s.name == "/v1.0/state/{store}/{key}")?
                .clone();
            let client = of_trace
                .iter()
                .find(|s| s.name == "Get" && s.parent_span_id == server.span_id)?
                .clone();
            Some((server, client))
        }
    })
    .await;
    assert_eq!(server.parent_span_id, hex_bytes::<8>(CALLER_SPAN).to_vec());
    assert_eq!(
        server.kind,
        opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32
    );
    assert_eq!(
        client.kind,
        opentelemetry_proto::tonic::trace::v1::span::SpanKind::Client as i32
    );
    // The component saw the component-call span as its parent.
    assert_eq!(hex_bytes::<8>(&component_parent).to_vec(), client.span_id);
    assert!(
        receiver
            .service_names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|s| s == APP_ID)
    );
}

/// The spans still waiting in the exporter's batch are sent when plugd stops (on the default
/// one-thread runtime too: the flush needs the runtime to drive the exporter's connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_spans_are_exported_when_plugd_stops() {
    let (receiver, addr) = Receiver::start().await;
    let (dirs, store) = setup_store();
    let endpoint = addr.to_string();
    let mut plugd = Plugd::start(
        &dirs,
        &["--otlp-endpoint", &endpoint],
        // No scheduled export during the test: only the final flush sends the batch.
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000")],
    )
    .await;
    plugd.wait_store("store").await;
    let resp = reqwest::Client::new()
        .get(plugd.url("/v1.0/state/store/at-exit"))
        .header("traceparent", format!("00-{TRACE_B}-{CALLER_SPAN}-01"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    store.wait_for("at-exit").await;
    let status = plugd.guard.terminate().expect("plugd exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", plugd.logs.tail());
    assert!(
        plugd
            .logs
            .with_message("the last spans could not be exported")
            .is_empty(),
        "{}",
        plugd.logs.tail()
    );
    let trace = hex_bytes::<16>(TRACE_B).to_vec();
    let spans = receiver
        .spans
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert!(
        spans
            .iter()
            .any(|s| s.trace_id == trace && s.name == "/v1.0/state/{store}/{key}"),
        "the request's span was not flushed at exit: {} spans",
        spans.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Input bindings: each event reaches the app with a trace context of its own.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_binding_events_reach_the_app_with_a_traceparent() {
    let dirs = TestDirs::new();
    let _cron = spawn_component("plugd-cron", &dirs.sockets, "cron", &[]);
    dirs.write_resource(
        "cron.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: tick\nspec:\n  type: bindings.cron\n  version: v1\n  metadata:\n  - name: schedule\n    value: \"@every 50ms\"\n  - name: route\n    value: /ticks\n",
    );
    let app = apps::http_app(serde_json::json!([]), apps::always(apps::Answer::Success)).await;
    let port = app.port.to_string();
    let _plugd = Plugd::start(
        &dirs,
        &["--app-port", &port, "--app-protocol", "http"],
        &[("RUST_LOG", "plugd::app=info")],
    )
    .await;
    let ticks = |events: &[apps::Received]| {
        events
            .iter()
            .filter(|e| e.path == "/ticks" && !e.body.is_empty())
            .count()
    };
    let events = app
        .recorder
        .wait_for(WAIT, "two ticks", |e| ticks(e) >= 2)
        .await;
    let traces: Vec<String> = events
        .iter()
        .filter(|e| e.path == "/ticks" && !e.body.is_empty())
        .map(|e| {
            let tp = e
                .headers
                .get("traceparent")
                .unwrap_or_else(|| panic!("no traceparent: {:?}", e.headers));
            parse_traceparent(tp).0
        })
        .collect();
    assert_ne!(traces[0], traces[1], "each event starts its own trace");
}

// ---------------------------------------------------------------------------------------------
// Component calls made while handling a delivery carry the event's trace.

const TRACE_E: &str = "e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0";
const TRACE_F: &str = "f00df00df00df00df00df00df00df00d";

/// A CloudEvent on topic `orders` with `traceparent` in trace `trace`.
fn traced_message(id: &str, trace: &str) -> pb::PullMessagesResponse {
    let event = serde_json::json!({
        "specversion": "1.0",
        "id": format!("ce-{id}"),
        "source": "test",
        "type": "com.dapr.event.sent",
        "datacontenttype": "application/json",
        "topic": "orders",
        "pubsubname": "pubsub",
        "data": {"n": 1},
        "traceparent": format!("00-{trace}-{CALLER_SPAN}-01"),
    });
    pb::PullMessagesResponse {
        data: event.to_string().into_bytes(),
        topic_name: "orders".into(),
        metadata: HashMap::new(),
        content_type: "application/cloudevents+json".into(),
        id: id.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_event_keeps_its_trace_and_the_stream_open_carries_one() {
    dead_letter_keeps_the_trace(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_events_spans_are_exported_as_one_trace() {
    let (receiver, addr) = Receiver::start().await;
    dead_letter_keeps_the_trace(Some((&receiver, addr))).await;
}

/// The app answers DROP to an event in trace `TRACE_E`; the dead-letter publish continues that
/// trace. With `export`, the spans plugd exports to that receiver are checked too.
async fn dead_letter_keeps_the_trace(export: Option<(&Receiver, std::net::SocketAddr)>) {
    let dirs = TestDirs::new();
    let pubsub = trace_fakes::RecordingPubSub::with_messages(vec![traced_message("m1", TRACE_E)]);
    pubsub.serve(&dirs.sockets.join("recpubsub.sock"));
    dirs.write_resource(
        "pubsub.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.recpubsub\n  version: v1\n",
    );
    let app = apps::grpc_app(
        vec![plugd::proto::runtime::TopicSubscription {
            dead_letter_topic: "orders-dlq".into(),
            ..apps::grpc_subscription("pubsub", "orders")
        }],
        apps::always(apps::Answer::Drop),
    )
    .await;
    let port = app.port.to_string();
    let endpoint = export.map(|(_, addr)| addr.to_string());
    let mut flags = vec!["--app-port", &port, "--app-protocol", "grpc"];
    if let Some(endpoint) = &endpoint {
        flags.extend(["--otlp-endpoint", endpoint]);
    }
    let plugd = Plugd::start(&dirs, &flags, &[("OTEL_BSP_SCHEDULE_DELAY", "100")]).await;

    // The app answers DROP; the event goes to the dead-letter topic, then is acknowledged.
    let publishes = eventually(WAIT, "the dead-letter publish", || {
        let found: Vec<_> = pubsub
            .publishes()
            .into_iter()
            .filter(|(topic, _)| topic == "orders-dlq")
            .collect();
        async move { (!found.is_empty()).then_some(found) }
    })
    .await;
    let (dlq_trace, dlq_parent, _) = parse_traceparent(&publishes[0].1["traceparent"]);
    assert_eq!(
        dlq_trace, TRACE_E,
        "the dead-letter publish continues the event's trace"
    );
    assert_ne!(dlq_parent, CALLER_SPAN);
    eventually(WAIT, "the ack of the dead-lettered message", || {
        let acked = pubsub.acks().contains(&("m1".to_string(), None));
        async move { acked.then_some(()) }
    })
    .await;

    // The app got the same trace, with the delivery span as its parent (the publish has its
    // own component-call span, a child of that one).
    let delivered = app.recorder.snapshot();
    let event = delivered
        .iter()
        .find(|e| e.id == "ce-m1")
        .unwrap_or_else(|| panic!("the app never got the event: {delivered:?}"));
    let (app_trace, app_parent, _) = parse_traceparent(&event.headers["traceparent"]);
    assert_eq!(app_trace, TRACE_E);
    assert_ne!(app_parent, dlq_parent);
    assert_ne!(app_parent, CALLER_SPAN);

    // Opening the subscription stream is a component call of its own: a valid traceparent.
    let pulls = pubsub.pulls();
    let (_, md) = pulls
        .iter()
        .find(|(topic, _)| topic == "orders")
        .unwrap_or_else(|| panic!("no PullMessages for orders: {pulls:?}"));
    let tp = md
        .get("traceparent")
        .unwrap_or_else(|| panic!("PullMessages without a traceparent: {md:?}"));
    parse_traceparent(tp);

    // The warning about the drop is logged at Dapr's `warning` level, in the event's trace.
    let lines = plugd.logs.json();
    let line = lines
        .iter()
        .find(|l| {
            l["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("event dropped to the dead-letter topic"))
        })
        .unwrap_or_else(|| panic!("no dead-letter warning:\n{}", plugd.logs.tail()));
    assert_schema(line, "warning");
    assert_eq!(line["trace_id"], TRACE_E, "{line}");
    assert_eq!(line["dead_letter_topic"], "orders-dlq", "{line}");

    // Exported: the delivery span (a consumer, child of the event's context) is the parent of
    // the app's call and of the Publish span, whose id the component got.
    let Some((receiver, _)) = export else { return };
    let trace = hex_bytes::<16>(TRACE_E).to_vec();
    let (delivery, publish) = eventually(WAIT, "the delivery's spans at the receiver", || {
        let spans = receiver.spans();
        let trace = trace.clone();
        async move {
            let of_trace: Vec<_> = spans.into_iter().filter(|s| s.trace_id == trace).collect();
            let delivery = of_trace
                .iter()
                .find(|s| s.name == "pubsub_delivery")?
                .clone();
            let publish = of_trace
                .iter()
                .find(|s| s.name == "Publish" && s.parent_span_id == delivery.span_id)?
                .clone();
            Some((delivery, publish))
        }
    })
    .await;
    assert_eq!(
        delivery.parent_span_id,
        hex_bytes::<8>(CALLER_SPAN).to_vec()
    );
    assert_eq!(
        delivery.kind,
        opentelemetry_proto::tonic::trace::v1::span::SpanKind::Consumer as i32
    );
    assert_eq!(delivery.span_id, hex_bytes::<8>(&app_parent).to_vec());
    assert_eq!(publish.span_id, hex_bytes::<8>(&dlq_parent).to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_binding_named_in_a_grpc_reply_gets_the_events_trace() {
    let dirs = TestDirs::new();
    let binding = trace_fakes::RecordingBinding::with_events(vec![pb::ReadResponse {
        data: b"{}".to_vec(),
        metadata: HashMap::from([(
            "traceparent".to_string(),
            format!("00-{TRACE_F}-{CALLER_SPAN}-01"),
        )]),
        content_type: "application/json".into(),
        message_id: "e1".into(),
    }]);
    binding.serve(&dirs.sockets.join("recbind.sock"));
    dirs.write_resource(
        "rb.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: rb\nspec:\n  type: bindings.recbind\n  version: v1\n",
    );
    let (port, app, _app_guard) = trace_fakes::forwarding_app("rb", "rb").await;
    let port = port.to_string();
    let _plugd = Plugd::start(&dirs, &["--app-port", &port, "--app-protocol", "grpc"], &[]).await;

    // The app's reply names `rb` in `to`: plugd invokes it with operation create.
    let invokes = eventually(WAIT, "the output binding invoke", || {
        let invokes = binding.invokes();
        async move { (!invokes.is_empty()).then_some(invokes) }
    })
    .await;
    assert_eq!(invokes[0].0, "create");
    let (invoke_trace, invoke_parent, _) = parse_traceparent(&invokes[0].1["traceparent"]);
    assert_eq!(
        invoke_trace, TRACE_F,
        "the output binding continues the event's trace"
    );
    assert_ne!(invoke_parent, CALLER_SPAN);

    // The reply went back to the component after the invoke.
    eventually(WAIT, "the reply to the event", || {
        let replied = binding.replies().iter().any(|(id, data, error)| {
            id == "e1" && data == br#"{"forwarded":true}"# && error.is_none()
        });
        async move { replied.then_some(()) }
    })
    .await;

    // The app got the event in the same trace.
    let events = app.events();
    assert_eq!(events.len(), 1, "{events:?}");
    let (app_trace, app_parent, _) = parse_traceparent(&events[0]["traceparent"]);
    assert_eq!(app_trace, TRACE_F);
    assert_ne!(app_parent, invoke_parent);

    // Opening the Read stream carries a trace context of its own.
    let reads = binding.reads();
    let tp = reads
        .first()
        .and_then(|md| md.get("traceparent"))
        .unwrap_or_else(|| panic!("Read without a traceparent: {reads:?}"));
    parse_traceparent(tp);
}

#[test]
fn a_bad_otlp_endpoint_or_log_level_stops_start_up_with_64() {
    for (flag, value) in [("--otlp-endpoint", "not a uri"), ("--log-level", "plugd=[")] {
        let out = Command::new(binary("plugd"))
            .args([
                flag,
                value,
                "--dapr-grpc-port",
                "0",
                "--dapr-http-port",
                "0",
            ])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run plugd");
        assert_eq!(out.status.code(), Some(64), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag) && stderr.contains(value), "{stderr}");
    }
}
