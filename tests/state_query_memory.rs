//! Dapr's state query API end to end on a real store: an in-process plugd over a `plugd-memory`
//! child process (whose state store implements `QueriableStateStore` with the SDK's query
//! support), queried through the HTTP `/v1.0-alpha1/state/<store>/query` and the gRPC
//! `QueryStateAlpha1` APIs: filters on dotted paths, sorting, pagination with tokens, etags,
//! and malformed queries refused by the component.

mod support;

use std::collections::HashMap;

use plugd::proto::common::StateItem;
use plugd::proto::runtime::{GetStateRequest, QueryStateRequest, SaveStateRequest};
use serde_json::{Value, json};
use support::TestDirs;

const STORE: &str = "orders";

/// Dapr's query how-to data set (trimmed): employees with a nested person object.
fn employees() -> Value {
    json!([
        {"key": "1", "value": {"person": {"org": "Dev Ops", "id": 1036}, "city": "Seattle", "state": "WA"}},
        {"key": "2", "value": {"person": {"org": "Hardware", "id": 1028}, "city": "Portland", "state": "OR"}},
        {"key": "3", "value": {"person": {"org": "Finance", "id": 1071}, "city": "Sacramento", "state": "CA"}},
        {"key": "4", "value": {"person": {"org": "Dev Ops", "id": 1042}, "city": "Spokane", "state": "WA"}},
        {"key": "5", "value": {"person": {"org": "Hardware", "id": 1007}, "city": "Los Angeles", "state": "CA"}},
        {"key": "6", "value": {"person": {"org": "Dev Ops", "id": 1054}, "city": "San Diego", "state": "CA"}}
    ])
}

fn keys(body: &Value) -> Vec<&str> {
    body["results"]
        .as_array()
        .map(|results| results.iter().filter_map(|r| r["key"].as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_reach_plugd_memory_over_http_and_grpc() {
    let dirs = TestDirs::new();
    let _memory = support::spawn_component("plugd-memory", &dirs.sockets, "memory", &[]);
    dirs.write_resource(
        "orders.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: orders\nspec:\n  type: state.memory\n  version: v1\n",
    );
    let config =
        plugd::config::Config::for_tests(dirs.sockets.clone(), vec![dirs.resources.clone()]);
    let plugd = support::start_plugd(config).await.expect("plugd starts");
    let http = reqwest::Client::new();
    let query_url = plugd.http_url(&format!("/v1.0-alpha1/state/{STORE}/query"));

    let saved = http
        .post(plugd.http_url(&format!("/v1.0/state/{STORE}")))
        .json(&employees())
        .send()
        .await
        .expect("save");
    assert_eq!(saved.status(), 204, "{:?}", saved.text().await);
    // A value that is not JSON matches no filter.
    let mut grpc = plugd.grpc_client().await;
    grpc.save_state(SaveStateRequest {
        store_name: STORE.into(),
        states: vec![StateItem {
            key: "raw".into(),
            value: b"plain bytes".to_vec(),
            ..StateItem::default()
        }],
    })
    .await
    .expect("save raw");

    // HTTP: EQ on a nested key, sorted descending on another.
    let response = http
        .post(&query_url)
        .body(r#"{"filter":{"EQ":{"person.org":"Dev Ops"}},"sort":[{"key":"person.id","order":"DESC"}]}"#)
        .send()
        .await
        .expect("query");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(keys(&body), ["6", "4", "1"], "{body}");
    assert_eq!(
        body["results"][0]["data"],
        json!({"person": {"org": "Dev Ops", "id": 1054}, "city": "San Diego", "state": "CA"}),
        "the app's own JSON comes back, under its own key"
    );
    assert!(body.get("token").is_none(), "no limit, no token: {body}");
    let etag = grpc
        .get_state(GetStateRequest {
            store_name: STORE.into(),
            key: "6".into(),
            ..GetStateRequest::default()
        })
        .await
        .expect("get")
        .into_inner()
        .etag;
    assert_eq!(body["results"][0]["etag"], etag.as_str());

    // HTTP: OR / AND / IN, two sort keys, pages of two followed by their tokens.
    let mut query = json!({
        "filter": {"OR": [
            {"IN": {"state": ["CA", "OR"]}},
            {"AND": [{"EQ": {"state": "WA"}}, {"GT": {"person.id": 1040}}]}
        ]},
        "sort": [{"key": "state"}, {"key": "person.id", "order": "DESC"}],
        "page": {"limit": 2}
    });
    let mut pages = Vec::new();
    loop {
        let body: Value = http
            .post(&query_url)
            .json(&query)
            .send()
            .await
            .expect("query")
            .json()
            .await
            .expect("JSON");
        pages.push(
            keys(&body)
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        );
        match body["token"].as_str() {
            Some(token) => query["page"]["token"] = json!(token),
            None => break,
        }
        assert!(pages.len() < 10, "the tokens never end: {pages:?}");
    }
    assert_eq!(pages, [vec!["3", "6"], vec!["5", "2"], vec!["4"]]);

    // gRPC: the same API, with request metadata passed through.
    let response = grpc
        .query_state_alpha1(QueryStateRequest {
            store_name: STORE.into(),
            query: r#"{"filter":{"LTE":{"person.id":1036}},"sort":[{"key":"person.id"}]}"#.into(),
            metadata: HashMap::from([("contentType".to_owned(), "application/json".to_owned())]),
        })
        .await
        .expect("query")
        .into_inner();
    let found: Vec<&str> = response.results.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(found, ["5", "2", "1"]);
    assert!(response.results.iter().all(|r| !r.etag.is_empty()));
    assert_eq!(response.token, "");
    assert_eq!(
        serde_json::from_slice::<Value>(&response.results[0].data).expect("JSON"),
        json!({"person": {"org": "Hardware", "id": 1007}, "city": "Los Angeles", "state": "CA"})
    );

    // No filter: everything, the non-JSON value too.
    let everything = grpc
        .query_state_alpha1(QueryStateRequest {
            store_name: STORE.into(),
            query: "{}".into(),
            ..QueryStateRequest::default()
        })
        .await
        .expect("query")
        .into_inner();
    assert_eq!(everything.results.len(), 7);

    // Malformed filters are refused by the component, as Dapr's components refuse them.
    for bad in [
        r#"{"filter":{"AND":[{"EQ":{"state":"CA"}}]}}"#,
        r#"{"filter":{"LIKE":{"state":"C%"}}}"#,
        r#"{"filter":{"EQ":{"state":"CA","city":"x"}}}"#,
        r#"{"page":{"limit":1,"token":"not-a-token"}}"#,
    ] {
        let response = http.post(&query_url).body(bad).send().await.expect("query");
        assert_eq!(response.status(), 500, "{bad}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["errorCode"], "ERR_STATE_QUERY", "{bad}: {body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("invalid query")),
            "{bad}: {body}"
        );
    }
    let err = grpc
        .query_state_alpha1(QueryStateRequest {
            store_name: STORE.into(),
            query: r#"{"filter":{"OR":{"EQ":{"state":"CA"}}}}"#.into(),
            ..QueryStateRequest::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::Internal);
    assert!(
        err.message().contains("OR filter must be an array"),
        "{err:?}"
    );

    plugd.stop().await;
}
