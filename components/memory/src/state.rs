//! The in-memory [`StateStore`]: a map per instance, with etags, TTL,
//! all-or-nothing transactions and the query API.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use plugd_component_sdk::state::query::Value;
use plugd_component_sdk::state::{
    BulkGetItem, DeleteRequest, GetRequest, GetResponse, Operation, Properties, QueryItem,
    QueryRequest, QueryResponse, SetRequest, StateError, StateStore, TTL_EXPIRE_TIME_METADATA_KEY,
    TransactionRequest, feature,
};

/// How often, at most, a write sweeps expired keys out of the map.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// An in-memory state store instance. Created uninitialised; `init` (which
/// takes no metadata) makes it usable. The data lives in this value, so it
/// survives a re-Init but not the process.
#[derive(Debug)]
pub struct MemoryStore {
    instance: String,
    initialised: AtomicBool,
    table: Mutex<Table>,
}

impl MemoryStore {
    /// A store for the component instance `instance` (used in logs).
    pub fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_owned(),
            initialised: AtomicBool::new(false),
            table: Mutex::new(Table::default()),
        }
    }

    /// Runs `work` on the map with the current time, once initialised.
    fn with_table<R>(
        &self,
        work: impl FnOnce(&mut Table, SystemTime) -> Result<R, StateError>,
    ) -> Result<R, StateError> {
        if !self.initialised.load(Ordering::Acquire) {
            return Err(StateError::NotInitialized);
        }
        // Every change is applied whole after its checks, so a poisoned map is
        // still consistent.
        let mut table: MutexGuard<'_, Table> =
            self.table.lock().unwrap_or_else(PoisonError::into_inner);
        work(&mut table, SystemTime::now())
    }
}

impl StateStore for MemoryStore {
    const TRANSACTIONAL: bool = true;
    const QUERY_API: bool = true;

    async fn init(&self, properties: Properties) -> Result<(), StateError> {
        // No metadata of its own (as Dapr's state.in-memory).
        plugd_component_sdk::metadata::warn_unknown(
            "in-memory state store",
            &self.instance,
            &properties,
            &[],
        );
        self.initialised.store(true, Ordering::Release);
        tracing::info!(instance = %self.instance, "in-memory state store initialised");
        Ok(())
    }

    fn features(&self) -> Vec<String> {
        vec![feature::ETAG.to_owned(), feature::TTL.to_owned()]
    }

    async fn get(&self, request: GetRequest) -> Result<GetResponse, StateError> {
        self.with_table(|table, now| Ok(table.get(&request.key, now)))
    }

    async fn set(&self, request: SetRequest) -> Result<(), StateError> {
        self.with_table(|table, now| table.apply(&[Operation::Set(request)], now))
    }

    async fn delete(&self, request: DeleteRequest) -> Result<(), StateError> {
        self.with_table(|table, now| table.apply(&[Operation::Delete(request)], now))
    }

    async fn bulk_get(&self, requests: Vec<GetRequest>) -> Result<Vec<BulkGetItem>, StateError> {
        self.with_table(|table, now| {
            Ok(requests
                .into_iter()
                .map(|request| BulkGetItem {
                    result: Ok(table.get(&request.key, now)),
                    key: request.key,
                })
                .collect())
        })
    }

    async fn bulk_set(&self, requests: Vec<SetRequest>) -> Result<(), StateError> {
        let operations: Vec<Operation> = requests.into_iter().map(Operation::Set).collect();
        self.with_table(|table, now| table.apply(&operations, now))
    }

    async fn bulk_delete(&self, requests: Vec<DeleteRequest>) -> Result<(), StateError> {
        let operations: Vec<Operation> = requests.into_iter().map(Operation::Delete).collect();
        self.with_table(|table, now| table.apply(&operations, now))
    }

    async fn transact(&self, request: TransactionRequest) -> Result<(), StateError> {
        self.with_table(|table, now| table.apply(&request.operations, now))
    }

    async fn query(&self, request: QueryRequest) -> Result<QueryResponse, StateError> {
        self.with_table(|table, now| table.query(&request, now))
    }

    async fn ping(&self) -> Result<(), StateError> {
        self.with_table(|_, _| Ok(()))
    }
}

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    value: Vec<u8>,
    etag: String,
    content_type: Option<String>,
    expires: Option<SystemTime>,
}

impl Entry {
    fn is_live(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

/// The map of one instance. Every method takes the time, so that tests can
/// move it; an entry whose expiry is not after `now` is absent for every read
/// and every etag check.
#[derive(Debug, Default)]
struct Table {
    entries: HashMap<String, Entry>,
    next_sweep: Option<SystemTime>,
}

impl Table {
    fn live(&self, key: &str, now: SystemTime) -> Option<&Entry> {
        self.entries.get(key).filter(|entry| entry.is_live(now))
    }

    fn get(&self, key: &str, now: SystemTime) -> GetResponse {
        let Some(entry) = self.live(key, now) else {
            return GetResponse::default();
        };
        let mut response = GetResponse {
            data: entry.value.clone(),
            etag: Some(entry.etag.clone()),
            content_type: entry.content_type.clone(),
            ..GetResponse::default()
        };
        if let Some(at) = entry.expires {
            let mut formatted = String::new();
            if write!(formatted, "{}", humantime::format_rfc3339_seconds(at)).is_ok() {
                response
                    .metadata
                    .insert(TTL_EXPIRE_TIME_METADATA_KEY.to_owned(), formatted);
            }
        }
        response
    }

    /// Applies `operations` in order, all or none: each is checked against
    /// the state the earlier ones left, on a staged copy of the keys touched,
    /// and the map changes only when every check passed.
    fn apply(&mut self, operations: &[Operation], now: SystemTime) -> Result<(), StateError> {
        let mut staged: HashMap<&str, Option<Entry>> = HashMap::new();
        for operation in operations {
            let key = match operation {
                Operation::Set(request) => request.key.as_str(),
                Operation::Delete(request) => request.key.as_str(),
            };
            let current = match staged.get(key) {
                Some(staged) => staged.as_ref(),
                None => self.live(key, now),
            };
            let next = match operation {
                Operation::Set(request) => Some(planned_set(request, current, now)?),
                Operation::Delete(request) => {
                    check_delete(request, current)?;
                    None
                }
            };
            staged.insert(key, next);
        }
        for (key, next) in staged {
            match next {
                Some(entry) => {
                    self.entries.insert(key.to_owned(), entry);
                }
                None => {
                    self.entries.remove(key);
                }
            }
        }
        self.sweep(now);
        Ok(())
    }

    /// Runs a query over the live entries whose values are JSON: filter,
    /// sort (ties by key, so pages are stable), then the page from the offset
    /// the token names. Without a filter every live entry matches, JSON or
    /// not (a value that is not JSON has no fields, so it sorts last).
    fn query(&self, request: &QueryRequest, now: SystemTime) -> Result<QueryResponse, StateError> {
        let offset = request.page.offset()?;
        let mut rows: Vec<(&String, &Entry, Value)> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.is_live(now))
            .map(|(key, entry)| {
                let document = serde_json::from_slice(&entry.value).ok();
                (key, entry, document)
            })
            .filter(|(_, _, document)| match &request.filter {
                None => true,
                Some(filter) => document.as_ref().is_some_and(|doc| filter.matches(doc)),
            })
            .map(|(key, entry, document)| (key, entry, document.unwrap_or(Value::Null)))
            .collect();
        rows.sort_by(|(key_a, _, a), (key_b, _, b)| {
            request.compare(a, b).then_with(|| key_a.cmp(key_b))
        });
        let total = rows.len();
        let limit = request.page.limit.unwrap_or(usize::MAX);
        let items: Vec<QueryItem> = rows
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(key, entry, _)| QueryItem {
                key: key.clone(),
                data: entry.value.clone(),
                etag: Some(entry.etag.clone()),
                error: None,
                content_type: entry.content_type.clone(),
            })
            .collect();
        Ok(QueryResponse {
            token: request.page.next_token(offset, items.len(), total),
            items,
            metadata: HashMap::new(),
        })
    }

    /// Drops expired entries, at most once per [`SWEEP_INTERVAL`].
    fn sweep(&mut self, now: SystemTime) {
        if self.next_sweep.is_some_and(|at| now < at) {
            return;
        }
        let before = self.entries.len();
        self.entries.retain(|_, entry| entry.is_live(now));
        let swept = before - self.entries.len();
        if swept > 0 {
            tracing::debug!(swept, "dropped expired state");
        }
        self.next_sweep = now.checked_add(SWEEP_INTERVAL);
    }
}

/// A client etag in the stored form (a UUID, hyphenated lower case). Anything
/// else is kept as it is: no entry has it, so the write fails as an etag
/// mismatch, as Dapr's stores answer.
fn normalize_etag(etag: &str) -> String {
    uuid::Uuid::try_parse(etag.trim())
        .map(|uuid| uuid.hyphenated().to_string())
        .unwrap_or_else(|_| etag.to_owned())
}

fn check_etag(key: &str, etag: Option<&str>, current: Option<&Entry>) -> Result<(), StateError> {
    let Some(etag) = etag else {
        return Ok(());
    };
    match current {
        Some(entry) if entry.etag == normalize_etag(etag) => Ok(()),
        _ => Err(StateError::EtagMismatch(format!(
            "the etag does not match the current version of key {key:?}"
        ))),
    }
}

fn planned_set(
    request: &SetRequest,
    current: Option<&Entry>,
    now: SystemTime,
) -> Result<Entry, StateError> {
    let ttl = request.ttl()?;
    check_etag(&request.key, request.etag.as_deref(), current)?;
    if request.is_insert_only() && current.is_some() {
        return Err(StateError::EtagMismatch(format!(
            "key {:?} already exists and first-write concurrency was asked without an etag",
            request.key
        )));
    }
    Ok(Entry {
        value: request.value.clone(),
        etag: uuid::Uuid::new_v4().hyphenated().to_string(),
        content_type: request.content_type.clone(),
        expires: ttl.and_then(|ttl| now.checked_add(ttl)),
    })
}

fn check_delete(request: &DeleteRequest, current: Option<&Entry>) -> Result<(), StateError> {
    check_etag(&request.key, request.etag.as_deref(), current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugd_component_sdk::state::{Concurrency, StateOptions, TTL_METADATA_KEY};

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn set(key: &str, value: &str) -> SetRequest {
        SetRequest {
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
            ..SetRequest::default()
        }
    }

    fn with_etag(mut request: SetRequest, etag: &str) -> SetRequest {
        request.etag = Some(etag.to_owned());
        request
    }

    fn delete(key: &str, etag: Option<&str>) -> DeleteRequest {
        DeleteRequest {
            key: key.to_owned(),
            etag: etag.map(str::to_owned),
            ..DeleteRequest::default()
        }
    }

    fn etag_of(table: &Table, key: &str) -> String {
        table.get(key, t0()).etag.expect("etag")
    }

    #[test]
    fn etags_guard_writes_and_deletes() {
        let mut table = Table::default();
        table
            .apply(&[Operation::Set(set("k", "v1"))], t0())
            .expect("set");
        let etag = etag_of(&table, "k");
        assert!(uuid::Uuid::try_parse(&etag).is_ok());

        // Upper case is the same UUID.
        table
            .apply(
                &[Operation::Set(with_etag(
                    set("k", "v2"),
                    &etag.to_uppercase(),
                ))],
                t0(),
            )
            .expect("matching etag");
        let stale = table.apply(&[Operation::Set(with_etag(set("k", "v3"), &etag))], t0());
        assert!(matches!(stale, Err(StateError::EtagMismatch(_))));
        let foreign = table.apply(&[Operation::Set(with_etag(set("k", "v3"), "7"))], t0());
        assert!(matches!(foreign, Err(StateError::EtagMismatch(_))));
        let missing = table.apply(&[Operation::Set(with_etag(set("new", "v"), &etag))], t0());
        assert!(matches!(missing, Err(StateError::EtagMismatch(_))));
        assert_eq!(table.get("k", t0()).data, b"v2");

        let current = etag_of(&table, "k");
        let stale = table.apply(&[Operation::Delete(delete("k", Some(&etag)))], t0());
        assert!(matches!(stale, Err(StateError::EtagMismatch(_))));
        table
            .apply(&[Operation::Delete(delete("k", Some(&current)))], t0())
            .expect("delete with etag");
        assert_eq!(table.get("k", t0()), GetResponse::default());
        table
            .apply(&[Operation::Delete(delete("k", None))], t0())
            .expect("deleting a missing key is fine");
    }

    #[test]
    fn first_write_only_creates() {
        let mut table = Table::default();
        let mut first = set("k", "v");
        first.options = StateOptions {
            concurrency: Concurrency::FirstWrite,
            ..StateOptions::default()
        };
        table
            .apply(&[Operation::Set(first.clone())], t0())
            .expect("create");
        let again = table.apply(&[Operation::Set(first)], t0());
        assert!(matches!(again, Err(StateError::EtagMismatch(_))));
    }

    #[test]
    fn transactions_are_all_or_nothing_and_see_their_own_writes() {
        let mut table = Table::default();
        table
            .apply(&[Operation::Set(set("a", "0"))], t0())
            .expect("set");
        let etag_a = etag_of(&table, "a");
        let failed = table.apply(
            &[
                Operation::Set(set("b", "1")),
                Operation::Delete(delete("a", None)),
                Operation::Set(with_etag(set("c", "2"), &etag_a)),
            ],
            t0(),
        );
        assert!(matches!(failed, Err(StateError::EtagMismatch(_))));
        assert_eq!(table.get("a", t0()).data, b"0");
        assert_eq!(table.get("b", t0()), GetResponse::default());

        // A later operation sees the earlier one: set b, then delete b.
        table
            .apply(
                &[
                    Operation::Set(set("b", "1")),
                    Operation::Delete(delete("b", None)),
                    Operation::Set(with_etag(set("a", "1"), &etag_a)),
                ],
                t0(),
            )
            .expect("transaction");
        assert_eq!(table.get("b", t0()), GetResponse::default());
        assert_eq!(table.get("a", t0()).data, b"1");
    }

    #[test]
    fn expired_keys_are_absent_and_swept() {
        let mut table = Table::default();
        let mut short = set("k", "v");
        short
            .metadata
            .insert(TTL_METADATA_KEY.to_owned(), "10".to_owned());
        table.apply(&[Operation::Set(short)], t0()).expect("set");
        let got = table.get("k", t0());
        assert_eq!(got.data, b"v");
        assert_eq!(
            got.metadata[TTL_EXPIRE_TIME_METADATA_KEY],
            "2023-11-14T22:13:30Z"
        );
        let etag = got.etag.expect("etag");

        let later = t0() + Duration::from_secs(10);
        assert_eq!(table.get("k", later), GetResponse::default());
        let expired = table.apply(&[Operation::Set(with_etag(set("k", "v2"), &etag))], later);
        assert!(matches!(expired, Err(StateError::EtagMismatch(_))));

        let mut bad = set("k", "v");
        bad.metadata
            .insert(TTL_METADATA_KEY.to_owned(), "0".to_owned());
        assert!(matches!(
            table.apply(&[Operation::Set(bad)], later),
            Err(StateError::InvalidArgument(_))
        ));

        // The next sweep (a minute after the first) drops the expired entry.
        table
            .apply(&[Operation::Set(set("other", "v"))], t0() + SWEEP_INTERVAL)
            .expect("set");
        assert!(!table.entries.contains_key("k"));
    }

    fn query(table: &Table, document: &Value, now: SystemTime) -> QueryResponse {
        let request = QueryRequest::from_document(document).expect("valid query");
        table.query(&request, now).expect("query")
    }

    fn keys(response: &QueryResponse) -> Vec<&str> {
        response
            .items
            .iter()
            .map(|item| item.key.as_str())
            .collect()
    }

    #[test]
    fn queries_filter_sort_and_page_live_json_values() {
        use plugd_component_sdk::state::query::json;
        let mut table = Table::default();
        let rows = [
            (
                "e1",
                r#"{"person":{"org":"Dev Ops","id":1036},"state":"CA"}"#,
            ),
            (
                "e2",
                r#"{"person":{"org":"Hardware","id":1028},"state":"WA"}"#,
            ),
            (
                "e3",
                r#"{"person":{"org":"Dev Ops","id":1071},"state":"WA"}"#,
            ),
            (
                "e4",
                r#"{"person":{"org":"Finance","id":1007},"state":"NY"}"#,
            ),
            ("raw", "not json"),
        ];
        for (key, value) in rows {
            table
                .apply(&[Operation::Set(set(key, value))], t0())
                .expect("set");
        }
        let mut short = set("gone", r#"{"state":"CA"}"#);
        short
            .metadata
            .insert(TTL_METADATA_KEY.to_owned(), "1".to_owned());
        table.apply(&[Operation::Set(short)], t0()).expect("set");
        let later = t0() + Duration::from_secs(5);

        let all = query(&table, &json!({}), later);
        assert_eq!(
            keys(&all),
            ["e1", "e2", "e3", "e4", "raw"],
            "expired key left out"
        );
        assert_eq!(all.token, None);
        assert_eq!(all.items[0].etag, table.get("e1", later).etag);

        let dev_ops = query(
            &table,
            &json!({"filter": {"EQ": {"person.org": "Dev Ops"}}, "sort": [{"key": "person.id", "order": "DESC"}]}),
            later,
        );
        assert_eq!(keys(&dev_ops), ["e3", "e1"]);
        assert_eq!(
            dev_ops.items[1].data,
            rows[0].1.as_bytes(),
            "the stored bytes are returned"
        );

        let west = json!({
            "filter": {"OR": [{"IN": {"state": ["CA", "WA"]}}, {"AND": [{"EQ": {"state": "NY"}}, {"LT": {"person.id": 1010}}]}]},
            "sort": [{"key": "state"}, {"key": "person.id", "order": "DESC"}],
            "page": {"limit": 2}
        });
        let first = query(&table, &west, later);
        assert_eq!(keys(&first), ["e1", "e4"]);
        let token = first.token.clone().expect("more pages");
        let mut next = west.clone();
        next["page"]["token"] = json!(token);
        let second = query(&table, &next, later);
        assert_eq!(keys(&second), ["e3", "e2"]);
        assert_eq!(second.token, None, "last page");

        let bad_token = QueryRequest::from_document(&json!({"page": {"limit": 1, "token": "x"}}))
            .expect("parses");
        assert!(matches!(
            table.query(&bad_token, later),
            Err(StateError::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn calls_before_init_fail_cleanly() {
        let store = MemoryStore::new("s");
        assert!(matches!(
            store.ping().await,
            Err(StateError::NotInitialized)
        ));
        store.init(Properties::new()).await.expect("init");
        store.set(set("k", "v")).await.expect("set");
        // Re-init keeps the data.
        store.init(Properties::new()).await.expect("re-init");
        let got = store
            .get(GetRequest {
                key: "k".into(),
                ..GetRequest::default()
            })
            .await
            .expect("get");
        assert_eq!(got.data, b"v");
    }
}
