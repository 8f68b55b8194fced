//! A SQLite state store for Dapr, served as a pluggable component.
//!
//! Run the `plugd-sqlite` binary; it listens on `<sockets folder>/sqlite.sock`,
//! so Components use `type: state.sqlite`, Dapr's own type name and metadata
//! (see `component.yaml` and `README.md` beside this crate). Each Component
//! (each `x-component-instance`) gets its own connection to the database its
//! metadata names:
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `connectionString` (alias `databasePath`) | database file path, `:memory:`, or a `file:` URI (SQLite's parameters; Dapr's Go-driver `_pragma=name(value)` applied, other `_` parameters dropped) | required |
//! | `tableName` | state table, a plain identifier | `state` |
//! | `timeout` (alias `timeoutInSeconds`) | lock wait when `busyTimeout` is unset (`20s`, `500ms`, or seconds; at most 1 day) | `20s` |
//! | `busyTimeout` | how long a statement waits for a lock held by another connection | `timeout` |
//! | `disableWAL` | rollback journal instead of WAL | `false` |
//! | `cleanupInterval` | how often expired rows are deleted; `0` or negative disables; at most 365 days | `1h` |
//! | `metadataTableName` | accepted, unused | — |
//!
//! Unknown keys are ignored and logged once per Init (names only); Dapr's
//! runtime-level keys (`actorStateStore`, `keyPrefix`, ...) are accepted
//! silently.
//!
//! Features: `ETAG`, `TRANSACTIONAL`, `TTL`.
//!
//! - **Etags** are UUIDs (v4), new on every write. A Set or Delete with an
//!   etag succeeds only if it equals the stored one, checked in the same SQL
//!   statement as the write; otherwise it fails as an etag mismatch (also for
//!   a missing key, or an etag this store never issued).
//!   First-write concurrency without an etag only creates the key.
//! - **TTL**: `ttlInSeconds` on Set: a positive number of seconds, or `-1` for
//!   never (also the meaning of no `ttlInSeconds`); anything else (`0`, other
//!   negatives, not an integer) is `INVALID_ARGUMENT`. Expired keys are invisible
//!   at once and deleted by the periodic cleanup. Gets of keys with a TTL
//!   return `ttlExpireTime` (RFC 3339) in the response metadata.
//! - **Atomicity**: Transact, BulkSet and BulkDelete run in one SQLite
//!   transaction; any failure rolls all of it back.
//! - The database uses WAL journaling unless `disableWAL` (or a
//!   `journal_mode` pragma) says otherwise; SQLite work runs on blocking
//!   threads.

pub mod config;
pub mod db;
mod store;

pub use config::Config;
pub use store::SqliteStore;
