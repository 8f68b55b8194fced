//! Wire facts from `shared/spec/components-v1-wire.md` and
//! `shared/spec/runtime-api-wire.md`, checked against the generated code and
//! the checked-in descriptor set.

use std::collections::{BTreeSet, HashMap};

use prost::Message;
use prost_types::field_descriptor_proto::Type;
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};

use crate::{common, components, runtime};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn one(key: &str, value: &str) -> HashMap<String, String> {
    HashMap::from([(key.to_owned(), value.to_owned())])
}

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).expect("FILE_DESCRIPTOR_SET decodes")
}

fn file<'a>(fds: &'a FileDescriptorSet, name: &str) -> &'a FileDescriptorProto {
    fds.file
        .iter()
        .find(|f| f.name() == name)
        .unwrap_or_else(|| panic!("descriptor set has no file {name}"))
}

/// Finds a top-level message by its full name (`.package.Name`).
fn message<'a>(fds: &'a FileDescriptorSet, full_name: &str) -> &'a DescriptorProto {
    fds.file
        .iter()
        .flat_map(|f| {
            f.message_type
                .iter()
                .map(move |m| (format!(".{}.{}", f.package(), m.name()), m))
        })
        .find(|(n, _)| n == full_name)
        .map(|(_, m)| m)
        .unwrap_or_else(|| panic!("descriptor set has no message {full_name}"))
}

/// (number, name, json_name) of every field of a message, in declaration order.
fn fields(m: &DescriptorProto) -> Vec<(i32, &str, &str)> {
    m.field
        .iter()
        .map(|f| (f.number(), f.name(), f.json_name()))
        .collect()
}

// ---------------------------------------------------------------------------
// Golden request bytes observed from the Python SDK (runtime-api-wire.md 1.1).
// ---------------------------------------------------------------------------

#[test]
fn get_state_request_bytes() {
    let req = runtime::GetStateRequest {
        store_name: "statestore".into(),
        key: "k1".into(),
        metadata: one("x", "y"),
        ..Default::default()
    };
    assert_eq!(
        hex(&req.encode_to_vec()),
        "0a0a737461746573746f726512026b3122060a0178120179"
    );
}

#[test]
fn save_state_request_bytes() {
    let req = runtime::SaveStateRequest {
        store_name: "statestore".into(),
        states: vec![common::StateItem {
            key: "k1".into(),
            value: b"v1".to_vec(),
            etag: Some(common::Etag { value: "2".into() }),
            metadata: one("ttlInSeconds", "5"),
            options: Some(common::StateOptions {
                concurrency: common::state_options::StateConcurrency::ConcurrencyFirstWrite.into(),
                consistency: common::state_options::StateConsistency::ConsistencyStrong.into(),
            }),
        }],
    };
    let expected = "0a0a737461746573746f726512260a026b31120276311a030a013222110a0c74746c496e5365636f6e64731201352a0408011002";
    assert_eq!(hex(&req.encode_to_vec()), expected);

    let decoded =
        runtime::SaveStateRequest::decode(req.encode_to_vec().as_slice()).expect("round trip");
    assert_eq!(decoded, req);
}

#[test]
fn delete_state_request_bytes() {
    let req = runtime::DeleteStateRequest {
        store_name: "statestore".into(),
        key: "k1".into(),
        etag: Some(common::Etag { value: "3".into() }),
        ..Default::default()
    };
    assert_eq!(
        hex(&req.encode_to_vec()),
        "0a0a737461746573746f726512026b311a030a0133"
    );
}

#[test]
fn empty_requests_encode_to_zero_bytes() {
    assert!(runtime::GetMetadataRequest {}.encode_to_vec().is_empty());
    assert!(runtime::ShutdownRequest {}.encode_to_vec().is_empty());
    // Python sends google.protobuf.Empty; it must decode as our request types.
    runtime::GetMetadataRequest::decode(&[][..]).expect("empty GetMetadataRequest");
    runtime::ShutdownRequest::decode(&[][..]).expect("empty ShutdownRequest");
    // An all-default TopicEventResponse means SUCCESS.
    let resp = runtime::TopicEventResponse::decode(&[][..]).expect("empty TopicEventResponse");
    assert_eq!(
        resp.status(),
        runtime::topic_event_response::TopicEventResponseStatus::Success
    );
}

#[test]
fn component_field_number_traps() {
    // ReadRequest: message_id = 2, response_error = 3.
    let read = components::ReadRequest {
        response_data: Vec::new(),
        message_id: "m".into(),
        response_error: Some(components::AckResponseError {
            message: "e".into(),
        }),
    };
    assert_eq!(hex(&read.encode_to_vec()), "12016d1a030a0165");
    // ReadResponse: message_id = 4.
    let resp = components::ReadResponse {
        message_id: "m".into(),
        ..Default::default()
    };
    assert_eq!(hex(&resp.encode_to_vec()), "22016d");
    // GetRequest.consistency is a bare enum in field 3.
    let get = components::GetRequest {
        key: "k".into(),
        consistency: components::state_options::StateConsistency::ConsistencyStrong.into(),
        ..Default::default()
    };
    assert_eq!(hex(&get.encode_to_vec()), "0a016b1802");
}

#[test]
fn topic_event_request_numbers() {
    let ev = runtime::TopicEventRequest {
        data: b"d".to_vec(),
        topic: "t".into(),
        ..Default::default()
    };
    // topic is field 6 (tag 0x32), data is field 7 (tag 0x3a); prost writes
    // them in field-number order.
    assert_eq!(hex(&ev.encode_to_vec()), "3201743a0164");
    let fds = descriptor_set();
    let m = message(&fds, ".dapr.proto.runtime.v1.TopicEventRequest");
    let f: Vec<_> = fields(m).iter().map(|(n, name, _)| (*n, *name)).collect();
    assert_eq!(
        f,
        [
            (1, "id"),
            (2, "source"),
            (3, "type"),
            (4, "spec_version"),
            (5, "data_content_type"),
            (7, "data"),
            (6, "topic"),
            (8, "pubsub_name"),
            (9, "path"),
            (10, "extensions"),
        ]
    );
    let ce = runtime::TopicEventCeRequest {
        data: b"d".to_vec(),
        ..Default::default()
    };
    assert_eq!(hex(&ce.encode_to_vec()), "320164");
}

// ---------------------------------------------------------------------------
// Descriptor set facts (components-v1-wire.md).
// ---------------------------------------------------------------------------

const COMPONENT_FILES: [&str; 5] = [
    "dapr/proto/components/v1/common.proto",
    "dapr/proto/components/v1/state.proto",
    "dapr/proto/components/v1/pubsub.proto",
    "dapr/proto/components/v1/bindings.proto",
    "dapr/proto/components/v1/secretstore.proto",
];

/// The 32 method paths listed at the end of components-v1-wire.md.
fn expected_component_paths() -> BTreeSet<String> {
    let groups: [(&str, &[&str]); 8] = [
        (
            "StateStore",
            &[
                "Init",
                "Features",
                "Delete",
                "Get",
                "Set",
                "Ping",
                "BulkDelete",
                "BulkGet",
                "BulkSet",
            ],
        ),
        ("TransactionalStateStore", &["Transact"]),
        ("QueriableStateStore", &["Query"]),
        ("TransactionalStoreMultiMaxSize", &["MultiMaxSize"]),
        (
            "PubSub",
            &[
                "Init",
                "Features",
                "Publish",
                "BulkPublish",
                "PullMessages",
                "Pause",
                "Resume",
                "Ping",
            ],
        ),
        ("InputBinding", &["Init", "Read", "Ping"]),
        (
            "OutputBinding",
            &["Init", "Invoke", "ListOperations", "Ping"],
        ),
        (
            "SecretStore",
            &["Init", "Features", "Get", "BulkGet", "Ping"],
        ),
    ];
    groups
        .iter()
        .flat_map(|(svc, methods)| {
            methods
                .iter()
                .map(move |m| format!("/dapr.proto.components.v1.{svc}/{m}"))
        })
        .collect()
}

#[test]
fn component_files_and_package() {
    let fds = descriptor_set();
    for name in COMPONENT_FILES {
        let f = file(&fds, name);
        assert_eq!(f.package(), "dapr.proto.components.v1", "{name}");
        assert_eq!(f.syntax(), "proto3", "{name}");
        for m in &f.message_type {
            for field in &m.field {
                assert!(
                    !field.proto3_optional(),
                    "{name}: {}.{} must not be `optional`",
                    m.name(),
                    field.name()
                );
            }
        }
    }
    let state = file(&fds, "dapr/proto/components/v1/state.proto");
    assert_eq!(
        state.dependency,
        [
            "google/protobuf/any.proto",
            "dapr/proto/components/v1/common.proto"
        ]
    );
}

#[test]
fn component_services_and_methods() {
    let fds = descriptor_set();
    let mut services = BTreeSet::new();
    let mut paths = BTreeSet::new();
    let mut streaming = BTreeSet::new();
    for f in fds
        .file
        .iter()
        .filter(|f| f.package() == "dapr.proto.components.v1")
    {
        for s in &f.service {
            services.insert(format!("{}.{}", f.package(), s.name()));
            for m in &s.method {
                let path = format!("/{}.{}/{}", f.package(), s.name(), m.name());
                assert!(paths.insert(path.clone()), "duplicate method {path}");
                if m.client_streaming() || m.server_streaming() {
                    assert!(
                        m.client_streaming() && m.server_streaming(),
                        "{path} must be bidirectional"
                    );
                    streaming.insert(path);
                }
            }
        }
    }

    // The five services daprd discovers through reflection.
    for discovered in [
        "StateStore",
        "PubSub",
        "InputBinding",
        "OutputBinding",
        "SecretStore",
    ] {
        assert!(
            services.contains(&format!("dapr.proto.components.v1.{discovered}")),
            "missing service {discovered}"
        );
    }
    assert_eq!(services.len(), 8, "services: {services:?}");

    let expected = expected_component_paths();
    assert_eq!(expected.len(), 32);
    assert_eq!(paths, expected);
    assert_eq!(
        streaming,
        BTreeSet::from([
            "/dapr.proto.components.v1.InputBinding/Read".to_owned(),
            "/dapr.proto.components.v1.PubSub/PullMessages".to_owned(),
        ])
    );

    // The generated server constants agree.
    assert_eq!(
        components::state_store_server::SERVICE_NAME,
        "dapr.proto.components.v1.StateStore"
    );
    assert_eq!(
        components::pub_sub_server::SERVICE_NAME,
        "dapr.proto.components.v1.PubSub"
    );
    assert_eq!(
        components::input_binding_server::SERVICE_NAME,
        "dapr.proto.components.v1.InputBinding"
    );
    assert_eq!(
        components::output_binding_server::SERVICE_NAME,
        "dapr.proto.components.v1.OutputBinding"
    );
    assert_eq!(
        components::secret_store_server::SERVICE_NAME,
        "dapr.proto.components.v1.SecretStore"
    );
}

#[test]
fn component_message_details() {
    let fds = descriptor_set();
    let bulk_get = message(&fds, ".dapr.proto.components.v1.BulkGetResponse");
    assert_eq!(fields(bulk_get), [(1, "items", "items")]);
    assert!(
        bulk_get
            .reserved_range
            .iter()
            .any(|r| r.start() == 2 && r.end() == 3),
        "BulkGetResponse must reserve field 2"
    );

    let set = message(&fds, ".dapr.proto.components.v1.SetRequest");
    let numbers: Vec<_> = fields(set).iter().map(|(n, name, _)| (*n, *name)).collect();
    assert_eq!(
        numbers,
        [
            (1, "key"),
            (2, "value"),
            (3, "etag"),
            (4, "metadata"),
            (5, "options"),
            (6, "content_type")
        ]
    );

    let query = message(&fds, ".dapr.proto.components.v1.Query");
    let filter = &query.field[0];
    assert_eq!(filter.r#type(), Type::Message);
    let entry = &query.nested_type[0];
    assert_eq!(entry.field[1].type_name(), ".google.protobuf.Any");
}

// ---------------------------------------------------------------------------
// Runtime and app callback facts (runtime-api-wire.md section 2).
// ---------------------------------------------------------------------------

#[test]
fn runtime_services() {
    let fds = descriptor_set();
    let mut methods: HashMap<String, (String, String, bool, bool)> = HashMap::new();
    for f in fds
        .file
        .iter()
        .filter(|f| f.package() == "dapr.proto.runtime.v1")
    {
        for s in &f.service {
            for m in &s.method {
                methods.insert(
                    format!("{}/{}", s.name(), m.name()),
                    (
                        m.input_type().to_owned(),
                        m.output_type().to_owned(),
                        m.client_streaming(),
                        m.server_streaming(),
                    ),
                );
            }
        }
    }
    let rt = |n: &str| format!(".dapr.proto.runtime.v1.{n}");
    let empty = ".google.protobuf.Empty".to_owned();
    let expect = |method: &str, input: String, output: String| {
        let got = methods
            .get(method)
            .unwrap_or_else(|| panic!("missing rpc {method}"));
        assert_eq!((&got.0, &got.1), (&input, &output), "{method}");
    };

    expect(
        "Dapr/InvokeService",
        rt("InvokeServiceRequest"),
        ".dapr.proto.common.v1.InvokeResponse".into(),
    );
    expect(
        "Dapr/GetState",
        rt("GetStateRequest"),
        rt("GetStateResponse"),
    );
    expect(
        "Dapr/GetBulkState",
        rt("GetBulkStateRequest"),
        rt("GetBulkStateResponse"),
    );
    expect("Dapr/SaveState", rt("SaveStateRequest"), empty.clone());
    expect(
        "Dapr/QueryStateAlpha1",
        rt("QueryStateRequest"),
        rt("QueryStateResponse"),
    );
    expect("Dapr/DeleteState", rt("DeleteStateRequest"), empty.clone());
    expect(
        "Dapr/DeleteBulkState",
        rt("DeleteBulkStateRequest"),
        empty.clone(),
    );
    expect(
        "Dapr/ExecuteStateTransaction",
        rt("ExecuteStateTransactionRequest"),
        empty.clone(),
    );
    expect(
        "Dapr/PublishEvent",
        rt("PublishEventRequest"),
        empty.clone(),
    );
    expect(
        "Dapr/BulkPublishEvent",
        rt("BulkPublishRequest"),
        rt("BulkPublishResponse"),
    );
    expect(
        "Dapr/BulkPublishEventAlpha1",
        rt("BulkPublishRequest"),
        rt("BulkPublishResponse"),
    );
    expect(
        "Dapr/SubscribeTopicEventsAlpha1",
        rt("SubscribeTopicEventsRequestAlpha1"),
        rt("SubscribeTopicEventsResponseAlpha1"),
    );
    expect(
        "Dapr/InvokeBinding",
        rt("InvokeBindingRequest"),
        rt("InvokeBindingResponse"),
    );
    expect(
        "Dapr/GetSecret",
        rt("GetSecretRequest"),
        rt("GetSecretResponse"),
    );
    expect(
        "Dapr/GetBulkSecret",
        rt("GetBulkSecretRequest"),
        rt("GetBulkSecretResponse"),
    );
    expect(
        "Dapr/GetMetadata",
        rt("GetMetadataRequest"),
        rt("GetMetadataResponse"),
    );
    expect("Dapr/SetMetadata", rt("SetMetadataRequest"), empty.clone());
    expect("Dapr/Shutdown", rt("ShutdownRequest"), empty.clone());

    let sub = &methods["Dapr/SubscribeTopicEventsAlpha1"];
    assert!(
        sub.2 && sub.3,
        "SubscribeTopicEventsAlpha1 must be bidirectional"
    );

    let c = |n: &str| format!(".dapr.proto.common.v1.{n}");
    expect(
        "AppCallback/OnInvoke",
        c("InvokeRequest"),
        c("InvokeResponse"),
    );
    expect(
        "AppCallback/ListTopicSubscriptions",
        empty.clone(),
        rt("ListTopicSubscriptionsResponse"),
    );
    expect(
        "AppCallback/OnTopicEvent",
        rt("TopicEventRequest"),
        rt("TopicEventResponse"),
    );
    expect(
        "AppCallback/ListInputBindings",
        empty.clone(),
        rt("ListInputBindingsResponse"),
    );
    expect(
        "AppCallback/OnBindingEvent",
        rt("BindingEventRequest"),
        rt("BindingEventResponse"),
    );
    expect(
        "AppCallback/OnBulkTopicEvent",
        rt("TopicEventBulkRequest"),
        rt("TopicEventBulkResponse"),
    );
    expect(
        "AppCallback/OnJobEvent",
        rt("JobEventRequest"),
        rt("JobEventResponse"),
    );
    expect(
        "AppCallbackHealthCheck/HealthCheck",
        empty,
        rt("HealthCheckResponse"),
    );
    expect(
        "AppCallbackAlpha/OnBulkTopicEventAlpha1",
        rt("TopicEventBulkRequest"),
        rt("TopicEventBulkResponse"),
    );
    expect(
        "AppCallbackAlpha/OnJobEventAlpha1",
        rt("JobEventRequest"),
        rt("JobEventResponse"),
    );

    assert_eq!(
        runtime::dapr_server::SERVICE_NAME,
        "dapr.proto.runtime.v1.Dapr"
    );
    assert_eq!(
        runtime::app_callback_server::SERVICE_NAME,
        "dapr.proto.runtime.v1.AppCallback"
    );
}

#[test]
fn runtime_message_details() {
    let fds = descriptor_set();

    let meta = message(&fds, ".dapr.proto.runtime.v1.GetMetadataResponse");
    let numbers: Vec<i32> = meta.field.iter().map(|f| f.number()).collect();
    assert_eq!(numbers, (1..=15).collect::<Vec<_>>());
    let f = fields(meta);
    assert_eq!(f[1], (2, "active_actors_count", "actors"));
    assert_eq!(f[2], (3, "registered_components", "components"));
    assert_eq!(f[3], (4, "extended_metadata", "extended"));
    assert_eq!(f[12], (13, "mcp_servers", "mcpServers"));

    let tx = message(
        &fds,
        ".dapr.proto.runtime.v1.ExecuteStateTransactionRequest",
    );
    assert_eq!(fields(tx)[0], (1, "storeName", "storeName"));
    let op = message(&fds, ".dapr.proto.runtime.v1.TransactionalStateOperation");
    assert_eq!(fields(op)[0], (1, "operationType", "operationType"));
    let bulk = message(&fds, ".dapr.proto.runtime.v1.BulkPublishResponse");
    assert_eq!(fields(bulk), [(1, "failedEntries", "failedEntries")]);

    let initial = message(
        &fds,
        ".dapr.proto.runtime.v1.SubscribeTopicEventsRequestInitialAlpha1",
    );
    assert!(
        initial.field[3].proto3_optional(),
        "dead_letter_topic has presence"
    );

    let invoke = message(&fds, ".dapr.proto.runtime.v1.InvokeServiceRequest");
    assert_eq!(
        fields(invoke)
            .iter()
            .map(|(n, name, _)| (*n, *name))
            .collect::<Vec<_>>(),
        [(1, "id"), (3, "message")]
    );

    let sub = message(&fds, ".dapr.proto.runtime.v1.TopicSubscription");
    assert_eq!(
        sub.field.iter().map(|f| f.number()).collect::<Vec<_>>(),
        [1, 2, 3, 5, 6, 7]
    );

    // Generated names other crates rely on.
    let _ = components::state_options::StateConcurrency::ConcurrencyLastWrite;
    let _ = runtime::PubsubSubscriptionType::Streaming;
    let _ = runtime::actor_runtime::ActorRuntimeStatus::Running;
    let _ = runtime::binding_event_response::BindingEventConcurrency::Parallel;
    let _ = common::http_extension::Verb::Patch;
}
