//! The [`StateStore`] implementation: one database connection per component
//! instance, used from blocking threads so the runtime never waits on SQLite.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use plugd_component_sdk::state::{
    BulkGetItem, DeleteRequest, GetRequest, GetResponse, Properties, SetRequest, StateError,
    StateStore, TransactionRequest, feature,
};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

use crate::config::Config;
use crate::db::{Db, now_millis};

/// A SQLite state store instance. Created uninitialised; `init` opens the
/// database named by the Component metadata.
#[derive(Debug)]
pub struct SqliteStore {
    instance: String,
    open: RwLock<Option<Arc<Open>>>,
}

/// An initialised instance: the connection and its cleanup task.
#[derive(Debug)]
struct Open {
    db: Arc<Mutex<Db>>,
    config: Config,
    /// Stops the cleanup task when this instance is re-initialised.
    _cleanup: DropGuard,
}

impl SqliteStore {
    /// A store for the component instance `instance` (used in logs).
    pub fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_owned(),
            open: RwLock::new(None),
        }
    }

    /// The config of the current database, if initialised.
    pub fn config(&self) -> Option<Config> {
        self.current().ok().map(|open| open.config.clone())
    }

    fn current(&self) -> Result<Arc<Open>, StateError> {
        self.open
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StateError::NotInitialized)
    }

    /// Runs `work` on the connection in a blocking thread, with the time.
    async fn with_db<R, F>(&self, work: F) -> Result<R, StateError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Db, i64) -> Result<R, StateError> + Send + 'static,
    {
        let db = Arc::clone(&self.current()?.db);
        run_blocking(move || {
            // A panic inside a transaction rolled it back, so the connection
            // is still consistent after poisoning.
            let mut db = db.lock().unwrap_or_else(PoisonError::into_inner);
            work(&mut db, now_millis())
        })
        .await
    }
}

async fn run_blocking<R, F>(work: F) -> Result<R, StateError>
where
    R: Send + 'static,
    F: FnOnce() -> Result<R, StateError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| StateError::Internal(format!("database task failed: {err}")))?
}

/// Deletes expired rows every `interval` until `stop` is cancelled.
async fn cleanup_loop(db: Arc<Mutex<Db>>, interval: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let db = Arc::clone(&db);
        let result = run_blocking(move || {
            let db = db.lock().unwrap_or_else(PoisonError::into_inner);
            db.delete_expired(now_millis())
        })
        .await;
        match result {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "deleted expired state"),
            Err(err) => tracing::warn!(error = %err, "expired-state cleanup failed"),
        }
    }
}

impl StateStore for SqliteStore {
    const TRANSACTIONAL: bool = true;

    async fn init(&self, properties: Properties) -> Result<(), StateError> {
        let config = Config::from_properties(&properties);
        let opened = match config {
            Ok(config) => {
                plugd_component_sdk::metadata::warn_unknown(
                    "state.sqlite",
                    &self.instance,
                    &properties,
                    &crate::config::keys::ALL,
                );
                let for_open = config.clone();
                run_blocking(move || Db::open(&for_open))
                    .await
                    .map(|db| (config, db))
            }
            Err(err) => Err(StateError::InvalidArgument(err.to_string())),
        };
        let mut slot = self.open.write().unwrap_or_else(PoisonError::into_inner);
        let (config, db) = match opened {
            Ok(opened) => opened,
            Err(err) => {
                // A failed (re-)init leaves the instance uninitialised.
                *slot = None;
                return Err(err);
            }
        };
        let db = Arc::new(Mutex::new(db));
        let stop = CancellationToken::new();
        if let Some(interval) = config.cleanup_interval {
            let span = tracing::debug_span!("sqlite_cleanup", instance = %self.instance);
            tokio::spawn(cleanup_loop(Arc::clone(&db), interval, stop.clone()).instrument(span));
        }
        tracing::info!(
            instance = %self.instance,
            database = %config.connection_string,
            table = %config.table_name,
            "sqlite state store initialised"
        );
        *slot = Some(Arc::new(Open {
            db,
            config,
            _cleanup: stop.drop_guard(),
        }));
        Ok(())
    }

    fn features(&self) -> Vec<String> {
        vec![feature::ETAG.to_owned(), feature::TTL.to_owned()]
    }

    async fn get(&self, request: GetRequest) -> Result<GetResponse, StateError> {
        self.with_db(move |db, now| db.get(&request.key, now)).await
    }

    async fn set(&self, request: SetRequest) -> Result<(), StateError> {
        self.with_db(move |db, now| db.set(&request, now)).await
    }

    async fn delete(&self, request: DeleteRequest) -> Result<(), StateError> {
        self.with_db(move |db, now| db.delete(&request, now)).await
    }

    async fn bulk_get(&self, requests: Vec<GetRequest>) -> Result<Vec<BulkGetItem>, StateError> {
        let keys: Vec<String> = requests.into_iter().map(|request| request.key).collect();
        self.with_db(move |db, now| db.bulk_get(&keys, now)).await
    }

    async fn bulk_set(&self, requests: Vec<SetRequest>) -> Result<(), StateError> {
        self.with_db(move |db, now| db.bulk_set(&requests, now))
            .await
    }

    async fn bulk_delete(&self, requests: Vec<DeleteRequest>) -> Result<(), StateError> {
        self.with_db(move |db, now| db.bulk_delete(&requests, now))
            .await
    }

    async fn transact(&self, request: TransactionRequest) -> Result<(), StateError> {
        self.with_db(move |db, now| db.transact(&request.operations, now))
            .await
    }

    async fn ping(&self) -> Result<(), StateError> {
        self.with_db(|db, _| db.ping()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugd_component_sdk::state::{Operation, TTL_METADATA_KEY};
    use std::time::Instant;

    fn props(pairs: &[(&str, &str)]) -> Properties {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn set_req(key: &str, value: &str) -> SetRequest {
        SetRequest {
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
            ..SetRequest::default()
        }
    }

    fn get_req(key: &str) -> GetRequest {
        GetRequest {
            key: key.to_owned(),
            ..GetRequest::default()
        }
    }

    /// Polls `check` until it holds or `limit` passes.
    async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if check().await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn calls_before_init_fail_cleanly() {
        let store = SqliteStore::new("s");
        assert!(matches!(
            store.ping().await,
            Err(StateError::NotInitialized)
        ));
        assert!(matches!(
            store.get(get_req("k")).await,
            Err(StateError::NotInitialized)
        ));
    }

    #[tokio::test]
    async fn bad_metadata_is_invalid_argument_and_uninitialises() {
        let store = SqliteStore::new("s");
        store
            .init(props(&[("connectionString", ":memory:")]))
            .await
            .expect("init");
        let err = store
            .init(props(&[("tableName", "no good")]))
            .await
            .expect_err("invalid");
        assert!(matches!(err, StateError::InvalidArgument(_)), "{err:?}");
        assert!(matches!(
            store.ping().await,
            Err(StateError::NotInitialized)
        ));
    }

    #[tokio::test]
    async fn instances_use_their_own_files_and_reinit_switches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let a = SqliteStore::new("a");
        let b = SqliteStore::new("b");
        a.init(props(&[("connectionString", &path("a.db"))]))
            .await
            .expect("init a");
        b.init(props(&[("databasePath", &path("b.db"))]))
            .await
            .expect("init b");
        a.set(set_req("k", "from a")).await.expect("set");
        assert_eq!(
            b.get(get_req("k")).await.expect("get"),
            GetResponse::default()
        );
        b.ping().await.expect("ping");

        // Re-init b on a's file: it now sees a's data.
        b.init(props(&[("connectionString", &path("a.db"))]))
            .await
            .expect("re-init b");
        assert_eq!(b.get(get_req("k")).await.expect("get").data, b"from a");
    }

    #[tokio::test]
    async fn transact_through_the_trait() {
        let store = SqliteStore::new("s");
        store
            .init(props(&[("connectionString", ":memory:")]))
            .await
            .expect("init");
        const { assert!(SqliteStore::TRANSACTIONAL) };
        let mut stale = set_req("b", "2");
        stale.etag = Some(uuid::Uuid::new_v4().to_string());
        let err = store
            .transact(TransactionRequest {
                operations: vec![Operation::Set(set_req("a", "1")), Operation::Set(stale)],
                ..TransactionRequest::default()
            })
            .await
            .expect_err("rolled back");
        assert!(matches!(err, StateError::EtagMismatch(_)));
        assert_eq!(
            store.get(get_req("a")).await.expect("get"),
            GetResponse::default()
        );
    }

    #[tokio::test]
    async fn expired_keys_vanish_and_are_cleaned_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ttl.db").to_string_lossy().into_owned();
        let store = SqliteStore::new("s");
        store
            .init(props(&[
                ("connectionString", &file),
                ("cleanupInterval", "100ms"),
            ]))
            .await
            .expect("init");
        let mut req = set_req("k", "v");
        req.metadata
            .insert(TTL_METADATA_KEY.to_owned(), "1".to_owned());
        store.set(req).await.expect("set");
        store.set(set_req("keep", "v")).await.expect("set");
        assert_eq!(store.get(get_req("k")).await.expect("get").data, b"v");

        let gone = eventually(Duration::from_secs(5), async || {
            store
                .get(get_req("k"))
                .await
                .is_ok_and(|resp| resp == GetResponse::default())
        })
        .await;
        assert!(gone, "key still visible after its ttl");

        let rows = || {
            let conn = rusqlite::Connection::open(&file).expect("open");
            conn.query_row("SELECT COUNT(*) FROM state", [], |row| row.get::<_, i64>(0))
                .expect("count")
        };
        let cleaned = eventually(Duration::from_secs(5), async || rows() == 1).await;
        assert!(cleaned, "expired row not deleted by the cleanup task");
    }
}
