//! The state query capability on a real server over a temporary Unix socket:
//! `QueriableStateStore` and `QUERY_API` only for stores that implement it,
//! the filter parsed before the store sees it, malformed queries refused.

mod common;

use common::{list_v1alpha, start};
use std::sync::{Mutex, PoisonError};

use plugd_component_sdk::ComponentServer;
use plugd_component_sdk::proto::queriable_state_store_client::QueriableStateStoreClient;
use plugd_component_sdk::proto::state_store_client::StateStoreClient;
use plugd_component_sdk::proto::{self as pb};
use plugd_component_sdk::state::query::{Filter, Pagination, Sorting, json, wire_request};
use plugd_component_sdk::state::{
    DeleteRequest, GetRequest, GetResponse, Metadata, Properties, QueryItem, QueryRequest,
    QueryResponse, SetRequest, StateError, StateStore, feature,
};
use tonic::Code;
use tonic::transport::Channel;

const QUERIABLE: &str = "dapr.proto.components.v1.QueriableStateStore";

/// A store that records the queries it receives; `QUERY` says whether it
/// implements them.
#[derive(Default)]
struct Recording<const QUERY: bool> {
    seen: Mutex<Vec<QueryRequest>>,
}

impl<const QUERY: bool> StateStore for Recording<QUERY> {
    const QUERY_API: bool = QUERY;

    async fn init(&self, _properties: Properties) -> Result<(), StateError> {
        Ok(())
    }

    fn features(&self) -> Vec<String> {
        // QUERY_API here is overridden by the SDK from `Self::QUERY_API`.
        vec![feature::ETAG.to_owned(), feature::QUERY_API.to_owned()]
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

    async fn query(&self, request: QueryRequest) -> Result<QueryResponse, StateError> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request);
        Ok(QueryResponse {
            items: vec![QueryItem {
                key: "app||k".into(),
                data: br#"{"a":1}"#.to_vec(),
                etag: Some("e1".into()),
                ..QueryItem::default()
            }],
            token: Some("1".into()),
            metadata: Metadata::from([("m".to_owned(), "v".to_owned())]),
        })
    }
}

async fn features(channel: Channel) -> Vec<String> {
    StateStoreClient::new(channel)
        .features(pb::FeaturesRequest {})
        .await
        .expect("features")
        .into_inner()
        .features
}

#[tokio::test]
async fn only_stores_that_implement_query_serve_and_report_it() {
    let plain = start(|dir| {
        ComponentServer::new("plain")
            .socket_folder(dir)
            .state_store(|_| Recording::<false>::default())
    });
    assert_eq!(features(plain.channel().await).await, [feature::ETAG]);
    assert!(
        !list_v1alpha(plain.channel().await, "*")
            .await
            .contains(&QUERIABLE.to_owned())
    );
    let err = QueriableStateStoreClient::new(plain.channel().await)
        .query(pb::QueryRequest::default())
        .await
        .expect_err("not served");
    assert_eq!(err.code(), Code::Unimplemented);
    plain.shutdown().await;

    let queriable = start(|dir| {
        ComponentServer::new("queriable")
            .socket_folder(dir)
            .state_store(|_| Recording::<true>::default())
    });
    assert_eq!(
        features(queriable.channel().await).await,
        [feature::ETAG, feature::QUERY_API]
    );
    assert!(
        list_v1alpha(queriable.channel().await, "*")
            .await
            .contains(&QUERIABLE.to_owned())
    );
    queriable.shutdown().await;
}

#[tokio::test]
async fn queries_reach_the_store_parsed_and_answers_go_back() {
    let store = std::sync::Arc::new(Recording::<true>::default());
    let running = start(|dir| {
        let store = std::sync::Arc::clone(&store);
        ComponentServer::new("queriable")
            .socket_folder(dir)
            .state_store(move |_| ArcStore(std::sync::Arc::clone(&store)))
    });
    let mut client = QueriableStateStoreClient::new(running.channel().await);
    let document = json!({
        "filter": {"OR": [{"EQ": {"person.org": "Dev Ops"}}, {"IN": {"state": ["CA", "WA"]}}]},
        "sort": [{"key": "person.id", "order": "DESC"}],
        "page": {"limit": 3, "token": "6"}
    });
    let request =
        wire_request(&document, Metadata::from([("k".into(), "v".into())])).expect("wire form");
    let answer = client.query(request).await.expect("query").into_inner();
    assert_eq!(answer.items.len(), 1);
    assert_eq!(answer.items[0].key, "app||k");
    assert_eq!(
        answer.items[0].etag.as_ref().map(|e| e.value.as_str()),
        Some("e1")
    );
    assert_eq!(answer.token, "1");
    assert_eq!(answer.metadata["m"], "v");

    let seen = store.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    let query = &seen[0];
    assert_eq!(
        query.filter,
        Some(Filter::Or(vec![
            Filter::Eq {
                key: "person.org".into(),
                value: json!("Dev Ops")
            },
            Filter::In {
                key: "state".into(),
                values: vec![json!("CA"), json!("WA")]
            },
        ]))
    );
    assert_eq!(query.sort, [Sorting::desc("person.id")]);
    assert_eq!(
        query.page,
        Pagination {
            limit: Some(3),
            token: Some("6".into())
        }
    );
    assert_eq!(query.metadata["k"], "v");

    // A malformed filter never reaches the store.
    let bad = wire_request(
        &json!({"filter": {"AND": [{"EQ": {"a": 1}}]}}),
        Metadata::new(),
    )
    .expect("wire form");
    let err = client.query(bad).await.expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("at least two"), "{}", err.message());
    assert_eq!(store.seen.lock().expect("lock").len(), 1);
    running.shutdown().await;
}

/// Shares one recording store between the test and the server's instances.
struct ArcStore(std::sync::Arc<Recording<true>>);

impl StateStore for ArcStore {
    const QUERY_API: bool = true;

    async fn init(&self, properties: Properties) -> Result<(), StateError> {
        self.0.init(properties).await
    }

    async fn get(&self, request: GetRequest) -> Result<GetResponse, StateError> {
        self.0.get(request).await
    }

    async fn set(&self, request: SetRequest) -> Result<(), StateError> {
        self.0.set(request).await
    }

    async fn delete(&self, request: DeleteRequest) -> Result<(), StateError> {
        self.0.delete(request).await
    }

    async fn query(&self, request: QueryRequest) -> Result<QueryResponse, StateError> {
        self.0.query(request).await
    }
}
