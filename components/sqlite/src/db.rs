//! The synchronous SQLite layer: one connection, one state table.
//!
//! Every method takes the current time (`now`, Unix milliseconds) as an
//! argument, so expiry is decided by the caller's clock and tests can move
//! time without sleeping.
//!
//! Rows: `key` (primary key), `value`, `content_type`, `etag` (a UUID, new on
//! every write), `update_time` and `expiration_time` (Unix ms, `NULL` = never).
//! A row whose `expiration_time` is not after `now` is treated as absent by
//! every read and every etag check, and is deleted by [`Db::delete_expired`].

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plugd_component_sdk::state::{
    BulkGetItem, DeleteRequest, GetResponse, Operation, SetRequest, StateError,
    TTL_EXPIRE_TIME_METADATA_KEY,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::config::Config;

/// The current time as Unix milliseconds.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

fn db_error(err: rusqlite::Error) -> StateError {
    StateError::internal(err)
}

/// An open database with its state table.
#[derive(Debug)]
pub struct Db {
    conn: Connection,
    sql: Statements,
}

/// The SQL text for one table name, built once.
#[derive(Debug)]
struct Statements {
    get: String,
    update_if_etag: String,
    insert_if_absent: String,
    upsert: String,
    delete_if_etag: String,
    delete: String,
    delete_expired: String,
}

impl Statements {
    fn new(table: &str) -> Self {
        // `table` is a validated identifier; quote it anyway.
        let t = format!("\"{table}\"");
        let live = "(expiration_time IS NULL OR expiration_time > :now)";
        let insert = format!(
            "INSERT INTO {t} (key, value, content_type, etag, update_time, expiration_time) \
             VALUES (:key, :value, :content_type, :etag, :now, :expires)"
        );
        let assign = "value = excluded.value, content_type = excluded.content_type, \
                      etag = excluded.etag, update_time = excluded.update_time, \
                      expiration_time = excluded.expiration_time";
        Self {
            get: format!(
                "SELECT value, etag, content_type, expiration_time FROM {t} WHERE key = :key AND {live}"
            ),
            update_if_etag: format!(
                "UPDATE {t} SET value = :value, content_type = :content_type, etag = :etag, \
                 update_time = :now, expiration_time = :expires \
                 WHERE key = :key AND etag = :old_etag AND {live}"
            ),
            insert_if_absent: format!(
                "{insert} ON CONFLICT (key) DO UPDATE SET {assign} \
                 WHERE expiration_time IS NOT NULL AND expiration_time <= :now"
            ),
            upsert: format!("{insert} ON CONFLICT (key) DO UPDATE SET {assign}"),
            delete_if_etag: format!(
                "DELETE FROM {t} WHERE key = :key AND etag = :old_etag AND {live}"
            ),
            delete: format!("DELETE FROM {t} WHERE key = :key"),
            delete_expired: format!(
                "DELETE FROM {t} WHERE expiration_time IS NOT NULL AND expiration_time <= :now"
            ),
        }
    }
}

impl Db {
    /// Opens (creating if needed) the database and its table.
    pub fn open(config: &Config) -> Result<Self, StateError> {
        let conn = Connection::open(&config.connection_string).map_err(|err| {
            StateError::Internal(format!(
                "cannot open SQLite database {:?}: {err}",
                config.connection_string
            ))
        })?;
        conn.busy_timeout(config.timeout).map_err(db_error)?;
        // WAL lets readers in other processes run beside a writer. In-memory
        // databases answer "memory"; that is fine.
        if !config.disable_wal {
            let _mode: String = conn
                .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
                .map_err(db_error)?;
        }
        // `_pragma=name(value)` of the connection string: both are checked
        // to be plain words (see `Config`), so they can be spliced in. A
        // pragma SQLite does not know is a no-op; one that answers a row
        // (journal_mode, busy_timeout) has it read and dropped.
        for (name, value) in &config.pragmas {
            let mut statement = conn
                .prepare(&format!("PRAGMA {name} = {value}"))
                .map_err(db_error)?;
            let mut rows = statement.query([]).map_err(db_error)?;
            while rows.next().map_err(db_error)?.is_some() {}
        }
        let t = &config.table_name;
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS \"{t}\" (
                key TEXT NOT NULL PRIMARY KEY,
                value BLOB NOT NULL,
                content_type TEXT,
                etag TEXT NOT NULL,
                update_time INTEGER NOT NULL,
                expiration_time INTEGER
            );
            CREATE INDEX IF NOT EXISTS \"{t}_expiration\" ON \"{t}\" (expiration_time)
                WHERE expiration_time IS NOT NULL;"
        ))
        .map_err(db_error)?;
        Ok(Self {
            conn,
            sql: Statements::new(t),
        })
    }

    /// Answers when the database does (`SELECT 1`).
    pub fn ping(&self) -> Result<(), StateError> {
        self.conn
            .query_row("SELECT 1", [], |row| row.get::<_, i64>(0))
            .map(drop)
            .map_err(db_error)
    }

    /// Reads a live key; a missing or expired key gives the default response.
    pub fn get(&self, key: &str, now: i64) -> Result<GetResponse, StateError> {
        get(&self.conn, &self.sql, key, now)
    }

    /// Reads several keys in one snapshot.
    pub fn bulk_get(&mut self, keys: &[String], now: i64) -> Result<Vec<BulkGetItem>, StateError> {
        let tx = self.conn.transaction().map_err(db_error)?;
        let items = keys
            .iter()
            .map(|key| BulkGetItem {
                key: key.clone(),
                result: get(&tx, &self.sql, key, now).map_err(|err| err.to_string()),
            })
            .collect();
        tx.commit().map_err(db_error)?;
        Ok(items)
    }

    /// Writes a key (one statement, so atomic on its own).
    pub fn set(&mut self, request: &SetRequest, now: i64) -> Result<(), StateError> {
        set(&self.conn, &self.sql, request, now)
    }

    /// Deletes a key.
    pub fn delete(&mut self, request: &DeleteRequest, now: i64) -> Result<(), StateError> {
        delete(&self.conn, &self.sql, request, now)
    }

    /// Writes several keys, all or none.
    pub fn bulk_set(&mut self, requests: &[SetRequest], now: i64) -> Result<(), StateError> {
        self.in_transaction(|conn, sql| {
            requests
                .iter()
                .try_for_each(|request| set(conn, sql, request, now))
        })
    }

    /// Deletes several keys, all or none.
    pub fn bulk_delete(&mut self, requests: &[DeleteRequest], now: i64) -> Result<(), StateError> {
        self.in_transaction(|conn, sql| {
            requests
                .iter()
                .try_for_each(|request| delete(conn, sql, request, now))
        })
    }

    /// Applies the operations in order in one transaction; the first failure
    /// (for example an etag mismatch) rolls all of them back.
    pub fn transact(&mut self, operations: &[Operation], now: i64) -> Result<(), StateError> {
        self.in_transaction(|conn, sql| {
            operations.iter().try_for_each(|operation| match operation {
                Operation::Set(request) => set(conn, sql, request, now),
                Operation::Delete(request) => delete(conn, sql, request, now),
            })
        })
    }

    /// Deletes the rows that expired at or before `now`; returns how many.
    pub fn delete_expired(&self, now: i64) -> Result<usize, StateError> {
        self.conn
            .execute(
                &self.sql.delete_expired,
                rusqlite::named_params! {":now": now},
            )
            .map_err(db_error)
    }

    /// Rows in the table, expired or not (for tests and diagnostics).
    pub fn row_count(&self, table: &str) -> Result<u64, StateError> {
        self.conn
            .query_row(&format!("SELECT COUNT(*) FROM \"{table}\""), [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|count| u64::try_from(count).unwrap_or(0))
            .map_err(db_error)
    }

    fn in_transaction(
        &mut self,
        body: impl FnOnce(&Connection, &Statements) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        // IMMEDIATE takes the write lock up front, so another process cannot
        // make the transaction fail half-way with SQLITE_BUSY on upgrade.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_error)?;
        body(&tx, &self.sql)?; // dropping `tx` rolls back
        tx.commit().map_err(db_error)
    }
}

fn get(
    conn: &Connection,
    sql: &Statements,
    key: &str,
    now: i64,
) -> Result<GetResponse, StateError> {
    let row = conn
        .prepare_cached(&sql.get)
        .and_then(|mut stmt| {
            stmt.query_row(rusqlite::named_params! {":key": key, ":now": now}, |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, Option<i64>>(3)?,
                ))
            })
            .optional()
        })
        .map_err(db_error)?;
    let Some((data, etag, content_type, expires)) = row else {
        return Ok(GetResponse::default());
    };
    let mut response = GetResponse {
        data,
        etag: Some(etag),
        content_type,
        ..GetResponse::default()
    };
    if let Some(expires) = expires.and_then(|ms| u64::try_from(ms).ok()) {
        // Times past year 9999 have no RFC 3339 form; leave them out.
        let at = UNIX_EPOCH + Duration::from_millis(expires);
        let mut formatted = String::new();
        if write!(formatted, "{}", humantime::format_rfc3339_seconds(at)).is_ok() {
            response
                .metadata
                .insert(TTL_EXPIRE_TIME_METADATA_KEY.to_owned(), formatted);
        }
    }
    Ok(response)
}

/// A client etag in the stored form (a UUID, hyphenated lower case). Anything else is kept as
/// it is: no row has it, so the write fails as an etag mismatch, as Dapr's stores answer.
fn normalize_etag(etag: &str) -> String {
    uuid::Uuid::try_parse(etag.trim())
        .map(|uuid| uuid.hyphenated().to_string())
        .unwrap_or_else(|_| etag.to_string())
}

fn new_etag() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

fn mismatch(key: &str) -> StateError {
    StateError::EtagMismatch(format!(
        "the etag does not match the current version of key {key:?}"
    ))
}

fn set(
    conn: &Connection,
    sql: &Statements,
    request: &SetRequest,
    now: i64,
) -> Result<(), StateError> {
    let expires = request
        .ttl()?
        .map(|ttl| now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)));
    let etag = new_etag();
    let content_type = request.content_type.as_deref();
    let changed = if let Some(old) = &request.etag {
        let old = normalize_etag(old);
        conn.prepare_cached(&sql.update_if_etag)
            .and_then(|mut stmt| {
                stmt.execute(rusqlite::named_params! {
                    ":key": request.key,
                    ":value": request.value,
                    ":content_type": content_type,
                    ":etag": etag,
                    ":now": now,
                    ":expires": expires,
                    ":old_etag": old,
                })
            })
    } else {
        let statement = if request.is_insert_only() {
            &sql.insert_if_absent
        } else {
            &sql.upsert
        };
        conn.prepare_cached(statement).and_then(|mut stmt| {
            stmt.execute(rusqlite::named_params! {
                ":key": request.key,
                ":value": request.value,
                ":content_type": content_type,
                ":etag": etag,
                ":now": now,
                ":expires": expires,
            })
        })
    }
    .map_err(db_error)?;
    if changed == 0 {
        if request.etag.is_some() {
            return Err(mismatch(&request.key));
        }
        return Err(StateError::EtagMismatch(format!(
            "key {:?} already exists and first-write concurrency was asked without an etag",
            request.key
        )));
    }
    Ok(())
}

fn delete(
    conn: &Connection,
    sql: &Statements,
    request: &DeleteRequest,
    now: i64,
) -> Result<(), StateError> {
    match &request.etag {
        Some(old) => {
            let old = normalize_etag(old);
            let changed = conn
                .prepare_cached(&sql.delete_if_etag)
                .and_then(|mut stmt| {
                    stmt.execute(rusqlite::named_params! {
                        ":key": request.key,
                        ":old_etag": old,
                        ":now": now,
                    })
                })
                .map_err(db_error)?;
            if changed == 0 {
                return Err(mismatch(&request.key));
            }
        }
        None => {
            conn.prepare_cached(&sql.delete)
                .and_then(|mut stmt| stmt.execute(rusqlite::named_params! {":key": request.key}))
                .map_err(db_error)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugd_component_sdk::state::{Concurrency, StateOptions, TTL_METADATA_KEY};

    const T0: i64 = 1_700_000_000_000;

    fn pragma(db: &Db, name: &str) -> String {
        db.conn
            .query_row(&format!("PRAGMA {name}"), [], |row| {
                row.get::<_, rusqlite::types::Value>(0)
            })
            .map(|value| match value {
                rusqlite::types::Value::Integer(n) => n.to_string(),
                rusqlite::types::Value::Text(text) => text,
                other => format!("{other:?}"),
            })
            .expect("pragma")
    }

    #[test]
    fn dapr_connection_strings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let props = |pairs: &[(&str, &str)]| -> std::collections::HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        // A file: URI with the Go driver's parameters: the file is opened,
        // busy_timeout applied, _txlock dropped; WAL as usual.
        let file = dir.path().join("data.db");
        let uri = format!(
            "file:{}?_pragma=busy_timeout(2000)&_txlock=immediate",
            file.display()
        );
        let config = Config::from_properties(&props(&[("connectionString", &uri)])).expect("valid");
        let mut db = Db::open(&config).expect("open");
        db.set(&set_req("k", "v"), T0).expect("set");
        assert!(file.exists(), "the path inside the URI is the database");
        assert_eq!(pragma(&db, "busy_timeout"), "2000");
        assert_eq!(pragma(&db, "journal_mode"), "wal");
        drop(db);

        // disableWAL: the rollback journal.
        let config = Config::from_properties(&props(&[
            ("connectionString", &file.display().to_string()),
            ("disableWAL", "true"),
            ("busyTimeout", "1500ms"),
        ]))
        .expect("valid");
        let db = Db::open(&config).expect("open");
        assert_eq!(pragma(&db, "busy_timeout"), "1500");
        assert_eq!(db.get("k", T0).expect("get").data, b"v");
        drop(db);

        // mode=memory: nothing on disk.
        let memory_file = dir.path().join("mem.db");
        let uri = format!("file:{}?mode=memory&cache=shared", memory_file.display());
        let config = Config::from_properties(&props(&[("connectionString", &uri)])).expect("valid");
        let mut db = Db::open(&config).expect("open");
        db.set(&set_req("k", "v"), T0).expect("set");
        assert_eq!(db.get("k", T0).expect("get").data, b"v");
        assert!(!memory_file.exists());
        assert_eq!(pragma(&db, "journal_mode"), "memory");
    }

    fn memory() -> Db {
        Db::open(&Config::new(":memory:")).expect("open in-memory db")
    }

    fn set_req(key: &str, value: &str) -> SetRequest {
        SetRequest {
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
            ..SetRequest::default()
        }
    }

    fn with_etag(mut req: SetRequest, etag: &str) -> SetRequest {
        req.etag = Some(etag.to_owned());
        req
    }

    fn with_ttl(mut req: SetRequest, ttl: &str) -> SetRequest {
        req.metadata
            .insert(TTL_METADATA_KEY.to_owned(), ttl.to_owned());
        req
    }

    fn first_write(mut req: SetRequest) -> SetRequest {
        req.options = StateOptions {
            concurrency: Concurrency::FirstWrite,
            ..StateOptions::default()
        };
        req
    }

    fn del_req(key: &str, etag: Option<&str>) -> DeleteRequest {
        DeleteRequest {
            key: key.to_owned(),
            etag: etag.map(str::to_owned),
            ..DeleteRequest::default()
        }
    }

    fn etag_of(db: &Db, key: &str, now: i64) -> String {
        db.get(key, now)
            .expect("get")
            .etag
            .expect("key exists and has an etag")
    }

    #[test]
    fn missing_key_has_no_data_and_no_etag() {
        let db = memory();
        assert_eq!(db.get("nope", T0).expect("get"), GetResponse::default());
    }

    #[test]
    fn every_write_gets_a_new_etag() {
        let mut db = memory();
        db.set(&set_req("k", "v1"), T0).expect("set");
        let first = db.get("k", T0).expect("get");
        assert_eq!(first.data, b"v1");
        let etag1 = first.etag.expect("etag");
        assert!(uuid::Uuid::try_parse(&etag1).is_ok());

        db.set(&set_req("k", "v2"), T0).expect("set");
        let etag2 = etag_of(&db, "k", T0);
        assert_ne!(etag1, etag2);
    }

    #[test]
    fn content_type_round_trips() {
        let mut db = memory();
        let mut req = set_req("k", "{}");
        req.content_type = Some("application/json".to_owned());
        db.set(&req, T0).expect("set");
        assert_eq!(
            db.get("k", T0).expect("get").content_type.as_deref(),
            Some("application/json")
        );
    }

    #[test]
    fn set_with_etag_first_writer_wins() {
        let mut db = memory();
        db.set(&set_req("k", "v0"), T0).expect("set");
        let seen = etag_of(&db, "k", T0);

        // Two writers read the same etag; only the first write lands.
        db.set(&with_etag(set_req("k", "a"), &seen), T0)
            .expect("first writer");
        let err = db
            .set(&with_etag(set_req("k", "b"), &seen), T0)
            .expect_err("second writer");
        assert!(matches!(err, StateError::EtagMismatch(_)), "{err:?}");
        assert_eq!(db.get("k", T0).expect("get").data, b"a");
    }

    #[test]
    fn etag_on_missing_key_is_a_mismatch() {
        let mut db = memory();
        let etag = new_etag();
        let err = db
            .set(&with_etag(set_req("k", "v"), &etag), T0)
            .expect_err("no such key");
        assert!(matches!(err, StateError::EtagMismatch(_)), "{err:?}");
        let err = db
            .delete(&del_req("k", Some(&etag)), T0)
            .expect_err("no such key");
        assert!(matches!(err, StateError::EtagMismatch(_)), "{err:?}");
    }

    #[test]
    fn foreign_etag_is_a_mismatch() {
        let mut db = memory();
        db.set(&set_req("k", "v"), T0).expect("set");
        let err = db
            .set(&with_etag(set_req("k", "v"), "17"), T0)
            .expect_err("foreign etag");
        assert!(matches!(err, StateError::EtagMismatch(_)), "{err:?}");
        let err = db
            .delete(&del_req("k", Some("not-an-etag")), T0)
            .expect_err("foreign etag");
        assert!(matches!(err, StateError::EtagMismatch(_)), "{err:?}");
    }

    #[test]
    fn etags_compare_without_regard_to_case() {
        let mut db = memory();
        db.set(&set_req("k", "v"), T0).expect("set");
        let upper = etag_of(&db, "k", T0).to_uppercase();
        db.set(&with_etag(set_req("k", "w"), &upper), T0)
            .expect("same uuid");
    }

    #[test]
    fn delete_honours_etag() {
        let mut db = memory();
        db.set(&set_req("k", "v"), T0).expect("set");
        let etag = etag_of(&db, "k", T0);
        let err = db
            .delete(&del_req("k", Some(&new_etag())), T0)
            .expect_err("wrong etag");
        assert!(matches!(err, StateError::EtagMismatch(_)));
        db.delete(&del_req("k", Some(&etag)), T0)
            .expect("right etag");
        assert_eq!(db.get("k", T0).expect("get"), GetResponse::default());
        db.delete(&del_req("k", None), T0)
            .expect("deleting a missing key is fine");
    }

    #[test]
    fn first_write_without_etag_only_inserts() {
        let mut db = memory();
        db.set(&first_write(set_req("k", "v1")), T0)
            .expect("insert");
        let err = db
            .set(&first_write(set_req("k", "v2")), T0)
            .expect_err("exists");
        assert!(matches!(err, StateError::EtagMismatch(_)), "{err:?}");
        assert_eq!(db.get("k", T0).expect("get").data, b"v1");

        // Last-write (or unspecified) without an etag overwrites.
        db.set(&set_req("k", "v3"), T0).expect("overwrite");
        assert_eq!(db.get("k", T0).expect("get").data, b"v3");
    }

    #[test]
    fn first_write_may_replace_an_expired_row() {
        let mut db = memory();
        db.set(&with_ttl(set_req("k", "old"), "1"), T0)
            .expect("set");
        db.set(&first_write(set_req("k", "new")), T0 + 1_000)
            .expect("expired row counts as absent");
        let got = db.get("k", T0 + 1_000_000).expect("get");
        assert_eq!(got.data, b"new");
        assert!(got.metadata.is_empty(), "no ttl any more");
    }

    #[test]
    fn transaction_rolls_back_on_etag_mismatch() {
        let mut db = memory();
        db.set(&set_req("a", "a0"), T0).expect("set");
        let ops = [
            Operation::Set(set_req("b", "b1")),
            Operation::Delete(del_req("a", None)),
            Operation::Set(with_etag(set_req("c", "c1"), &new_etag())),
        ];
        let err = db.transact(&ops, T0).expect_err("mismatch on c");
        assert!(matches!(err, StateError::EtagMismatch(_)), "{err:?}");
        assert_eq!(db.get("a", T0).expect("get").data, b"a0");
        assert_eq!(db.get("b", T0).expect("get"), GetResponse::default());

        let etag = etag_of(&db, "a", T0);
        let ops = [
            Operation::Set(set_req("b", "b1")),
            Operation::Set(with_etag(set_req("a", "a1"), &etag)),
            Operation::Delete(del_req("b", None)),
            Operation::Set(set_req("c", "c1")),
        ];
        db.transact(&ops, T0).expect("commit");
        assert_eq!(db.get("a", T0).expect("get").data, b"a1");
        assert_eq!(db.get("b", T0).expect("get"), GetResponse::default());
        assert_eq!(db.get("c", T0).expect("get").data, b"c1");
    }

    #[test]
    fn transaction_rolls_back_on_invalid_ttl() {
        let mut db = memory();
        let ops = [
            Operation::Set(set_req("a", "a")),
            Operation::Set(with_ttl(set_req("b", "b"), "soon")),
        ];
        let err = db.transact(&ops, T0).expect_err("bad ttl");
        assert!(matches!(err, StateError::InvalidArgument(_)), "{err:?}");
        assert_eq!(db.row_count("state").expect("count"), 0);
    }

    #[test]
    fn ttl_hides_expired_keys_then_cleanup_deletes_them() {
        let mut db = memory();
        db.set(&with_ttl(set_req("short", "v"), "10"), T0)
            .expect("set");
        db.set(&with_ttl(set_req("forever", "v"), "-1"), T0)
            .expect("set");

        let live = db.get("short", T0 + 9_999).expect("get");
        assert_eq!(live.data, b"v");
        assert!(live.metadata.contains_key(TTL_EXPIRE_TIME_METADATA_KEY));
        assert!(db.get("forever", T0).expect("get").metadata.is_empty());

        // Invisible from the expiry instant on, before any cleanup ran.
        assert_eq!(
            db.get("short", T0 + 10_000).expect("get"),
            GetResponse::default()
        );
        assert_eq!(db.row_count("state").expect("count"), 2);
        // An etag write on an expired key is a mismatch.
        let etag = etag_of(&db, "short", T0);
        let err = db
            .set(&with_etag(set_req("short", "w"), &etag), T0 + 10_000)
            .expect_err("expired");
        assert!(matches!(err, StateError::EtagMismatch(_)));

        assert_eq!(db.delete_expired(T0 + 9_999).expect("cleanup"), 0);
        assert_eq!(db.delete_expired(T0 + 10_000).expect("cleanup"), 1);
        assert_eq!(db.row_count("state").expect("count"), 1);
        assert_eq!(db.get("forever", T0 + 10_000_000).expect("get").data, b"v");
    }

    #[test]
    fn huge_ttls_do_not_overflow() {
        let mut db = memory();
        db.set(&with_ttl(set_req("k", "v"), &i64::MAX.to_string()), T0)
            .expect("set");
        let got = db.get("k", i64::MAX - 1).expect("get");
        assert_eq!(got.data, b"v");
        assert!(got.metadata.is_empty(), "no RFC 3339 form past year 9999");

        db.set(&with_ttl(set_req("k", "v"), "3600"), T0)
            .expect("set");
        let got = db.get("k", T0).expect("get");
        assert_eq!(
            got.metadata[TTL_EXPIRE_TIME_METADATA_KEY],
            "2023-11-14T23:13:20Z"
        );
    }

    #[test]
    fn a_write_without_ttl_clears_the_ttl() {
        let mut db = memory();
        db.set(&with_ttl(set_req("k", "v"), "5"), T0).expect("set");
        db.set(&set_req("k", "w"), T0 + 1).expect("set");
        assert_eq!(db.get("k", T0 + 60_000).expect("get").data, b"w");
    }

    #[test]
    fn invalid_ttl_is_rejected_and_writes_nothing() {
        let mut db = memory();
        for ttl in ["0", "-5", "ten", "1.5"] {
            let err = db
                .set(&with_ttl(set_req("k", "v"), ttl), T0)
                .expect_err("invalid ttl");
            assert!(
                matches!(err, StateError::InvalidArgument(_)),
                "{ttl}: {err:?}"
            );
        }
        assert_eq!(db.row_count("state").expect("count"), 0);
    }

    #[test]
    fn bulk_get_reports_present_and_missing_keys() {
        let mut db = memory();
        db.set(&set_req("a", "1"), T0).expect("set");
        db.set(&set_req("c", "3"), T0).expect("set");
        let keys = ["a", "b", "c"].map(str::to_owned);
        let items = db.bulk_get(&keys, T0).expect("bulk get");
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].key, "a");
        let a = items[0].result.as_ref().expect("a");
        assert_eq!(a.data, b"1");
        assert!(a.etag.is_some());
        let b = items[1].result.as_ref().expect("b");
        assert_eq!(b, &GetResponse::default());
        assert_eq!(items[2].result.as_ref().expect("c").data, b"3");
    }

    #[test]
    fn bulk_set_is_all_or_nothing() {
        let mut db = memory();
        let bad = vec![
            set_req("a", "1"),
            set_req("b", "2"),
            with_etag(set_req("c", "3"), &new_etag()),
        ];
        let err = db.bulk_set(&bad, T0).expect_err("mismatch");
        assert!(matches!(err, StateError::EtagMismatch(_)));
        assert_eq!(db.row_count("state").expect("count"), 0);

        db.bulk_set(&bad[..2], T0).expect("bulk set");
        assert_eq!(db.get("b", T0).expect("get").data, b"2");
    }

    #[test]
    fn bulk_delete_is_all_or_nothing() {
        let mut db = memory();
        db.bulk_set(&[set_req("a", "1"), set_req("b", "2")], T0)
            .expect("bulk set");
        let bad = [del_req("a", None), del_req("b", Some(&new_etag()))];
        let err = db.bulk_delete(&bad, T0).expect_err("mismatch");
        assert!(matches!(err, StateError::EtagMismatch(_)));
        assert_eq!(db.row_count("state").expect("count"), 2);

        let etag_b = etag_of(&db, "b", T0);
        db.bulk_delete(&[del_req("a", None), del_req("b", Some(&etag_b))], T0)
            .expect("bulk delete");
        assert_eq!(db.row_count("state").expect("count"), 0);
    }

    #[test]
    fn data_survives_reopening_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::new(dir.path().join("state.db").to_string_lossy());
        config.table_name = "custom".to_owned();
        {
            let mut db = Db::open(&config).expect("open");
            db.set(&set_req("k", "durable"), T0).expect("set");
            db.ping().expect("ping");
        }
        let db = Db::open(&config).expect("reopen");
        assert_eq!(db.get("k", T0).expect("get").data, b"durable");
        assert_eq!(db.row_count("custom").expect("count"), 1);
    }

    #[test]
    fn keys_and_values_are_opaque_bytes() {
        let mut db = memory();
        let key = "app||weird 'key\"; DROP TABLE state; --";
        let req = SetRequest {
            key: key.to_owned(),
            value: vec![0, 159, 146, 150, 255],
            ..SetRequest::default()
        };
        db.set(&req, T0).expect("set");
        assert_eq!(db.get(key, T0).expect("get").data, req.value);
    }
}
