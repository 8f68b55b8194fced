//! All five kinds on one socket: reflection (v1alpha and v1) lists exactly
//! their services, each kind's Ping hook answers per instance, and the
//! server's shutdown removes the socket.

mod common;

use common::{Running, list_v1, list_v1alpha, sorted, start};

use plugd_component_sdk::ComponentServer;
use plugd_component_sdk::bindings::{
    BindingError, EventSink, InputBinding, InvokeRequest, InvokeResponse, OutputBinding,
};
use plugd_component_sdk::proto::input_binding_client::InputBindingClient;
use plugd_component_sdk::proto::output_binding_client::OutputBindingClient;
use plugd_component_sdk::proto::pub_sub_client::PubSubClient;
use plugd_component_sdk::proto::secret_store_client::SecretStoreClient;
use plugd_component_sdk::proto::state_store_client::StateStoreClient;
use plugd_component_sdk::proto::{self as pb};
use plugd_component_sdk::pubsub::{PubSub, PubSubError, PublishRequest, Subscriber};
use plugd_component_sdk::secretstore::{Secret, SecretStore, SecretStoreError};
use plugd_component_sdk::state::{
    DeleteRequest, GetRequest, GetResponse, Properties, SetRequest, StateError, StateStore,
};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// One value for every kind; its Ping fails for the instance named `down`.
struct Probe {
    down: bool,
}

impl Probe {
    fn new(instance: &str) -> Self {
        Self {
            down: instance == "down",
        }
    }

    fn health(&self) -> Result<(), Status> {
        if self.down {
            Err(Status::unavailable("backend unreachable"))
        } else {
            Ok(())
        }
    }
}

impl StateStore for Probe {
    async fn init(&self, _properties: Properties) -> Result<(), StateError> {
        Ok(())
    }
    async fn get(&self, _request: GetRequest) -> Result<GetResponse, StateError> {
        Ok(GetResponse::default())
    }
    async fn set(&self, _request: SetRequest) -> Result<(), StateError> {
        Ok(())
    }
    async fn delete(&self, _request: DeleteRequest) -> Result<(), StateError> {
        Ok(())
    }
    async fn ping(&self) -> Result<(), StateError> {
        Ok(self.health()?)
    }
}

impl PubSub for Probe {
    async fn init(&self, _properties: Properties) -> Result<(), PubSubError> {
        Ok(())
    }
    async fn publish(&self, _request: PublishRequest) -> Result<(), PubSubError> {
        Ok(())
    }
    async fn subscribe(&self, subscriber: Subscriber) -> Result<(), PubSubError> {
        subscriber.closed().await;
        Ok(())
    }
    async fn ping(&self) -> Result<(), PubSubError> {
        Ok(self.health()?)
    }
}

impl SecretStore for Probe {
    async fn init(&self, _properties: Properties) -> Result<(), SecretStoreError> {
        Ok(())
    }
    async fn get(
        &self,
        key: String,
        _metadata: plugd_component_sdk::secretstore::Metadata,
    ) -> Result<Secret, SecretStoreError> {
        Err(SecretStoreError::NotFound(key))
    }
    async fn ping(&self) -> Result<(), SecretStoreError> {
        Ok(self.health()?)
    }
}

impl OutputBinding for Probe {
    async fn init(&self, _properties: Properties) -> Result<(), BindingError> {
        Ok(())
    }
    fn operations(&self) -> Vec<String> {
        vec!["noop".to_owned()]
    }
    async fn invoke(&self, _request: InvokeRequest) -> Result<InvokeResponse, BindingError> {
        Ok(InvokeResponse::default())
    }
    async fn ping(&self) -> Result<(), BindingError> {
        Ok(self.health()?)
    }
}

impl InputBinding for Probe {
    async fn init(&self, _properties: Properties) -> Result<(), BindingError> {
        Ok(())
    }
    async fn read(&self, events: EventSink) -> Result<(), BindingError> {
        events.closed().await;
        Ok(())
    }
    async fn ping(&self) -> Result<(), BindingError> {
        Ok(self.health()?)
    }
}

fn start_all() -> Running {
    start(|dir| {
        ComponentServer::new("everything")
            .socket_folder(dir)
            .state_store(Probe::new)
            .pubsub(Probe::new)
            .secret_store(Probe::new)
            .output_binding(Probe::new)
            .input_binding(Probe::new)
    })
}

fn ping(instance: &str) -> Request<pb::PingRequest> {
    plugd_component_sdk::client::for_instance(instance, pb::PingRequest {}).expect("ascii")
}

/// The Ping of every kind for `instance`: `None` when it succeeded, else the code.
async fn pings(channel: &Channel, instance: &str) -> Vec<Option<Code>> {
    let code = |result: Result<_, Status>| result.err().map(|status| status.code());
    vec![
        code(
            StateStoreClient::new(channel.clone())
                .ping(ping(instance))
                .await,
        ),
        code(
            PubSubClient::new(channel.clone())
                .ping(ping(instance))
                .await,
        ),
        code(
            SecretStoreClient::new(channel.clone())
                .ping(ping(instance))
                .await,
        ),
        code(
            OutputBindingClient::new(channel.clone())
                .ping(ping(instance))
                .await,
        ),
        code(
            InputBindingClient::new(channel.clone())
                .ping(ping(instance))
                .await,
        ),
    ]
}

#[tokio::test]
async fn five_kinds_on_one_socket_with_reflection_and_ping_hooks() {
    let running = start_all();
    let channel = plugd_component_sdk::client::connect(&running.socket)
        .await
        .expect("connect");

    let expected = [
        "dapr.proto.components.v1.InputBinding",
        "dapr.proto.components.v1.OutputBinding",
        "dapr.proto.components.v1.PubSub",
        "dapr.proto.components.v1.SecretStore",
        "dapr.proto.components.v1.StateStore",
    ];
    // Only the component services: no reflection or health services listed.
    assert_eq!(sorted(list_v1alpha(channel.clone(), "").await), expected);
    assert_eq!(sorted(list_v1(channel.clone(), "").await), expected);

    assert_eq!(pings(&channel, "up").await, [None; 5]);
    assert_eq!(pings(&channel, "down").await, [Some(Code::Unavailable); 5]);
    // Instances are separate: the failing one does not affect the others.
    assert_eq!(pings(&channel, "other").await, [None; 5]);

    let socket = running.shutdown().await;
    assert!(!socket.exists(), "socket removed on shutdown");
}
