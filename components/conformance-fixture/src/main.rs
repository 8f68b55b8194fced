//! `plugd-broken-fixture`: a **deliberately broken** state store for testing `plugd conformance`.
//!
//! `--lie <what>` picks the lie (see README.md); everything else behaves (etags honoured,
//! first-write, all-or-nothing transactions and bulk writes, `FAILED_PRECONDITION` + one
//! `BadRequest` violation on `etag` for a mismatch, expiry), so the suite's other checks pass
//! and the failures are exactly the lie:
//!
//! - `etag` (the default): claims `ETAG` and `TRANSACTIONAL`, but ignores the etags of Set,
//!   Delete and the bulk calls (and first-write), and applies a transaction's operations one by
//!   one (checking etags there), so a failing operation leaves the earlier ones applied;
//! - `ttl`: claims `TTL` (and `ETAG`, `TRANSACTIONAL`) but never expires a key;
//! - `error-shape`: refuses stale etags, but as `INTERNAL` without the `BadRequest` detail;
//! - `bulk-etag`: honours etags on Set and Delete, ignores them in BulkSet and BulkDelete;
//! - `hang`: Get never answers (for the suite's budget: the kind's other checks are skipped).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use clap::{Parser, ValueEnum};
use plugd_component_sdk::state::{
    Concurrency, DeleteRequest, GetRequest, GetResponse, Operation, Properties, SetRequest,
    StateError, StateStore, TransactionRequest, feature,
};
use plugd_component_sdk::{ComponentServer, run};

/// The lie the fixture tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Lie {
    /// Ignores etags (Set, Delete, bulk, first-write); transactions are not atomic.
    Etag,
    /// Claims TTL, never expires.
    Ttl,
    /// Refuses stale etags with the wrong status and no BadRequest detail.
    ErrorShape,
    /// Honours etags on Set and Delete, ignores them in BulkSet and BulkDelete.
    BulkEtag,
    /// Get never answers.
    Hang,
}

/// A deliberately broken state store (claims features it does not honour). For testing
/// `plugd conformance` only.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Socket file name without `.sock`.
    #[arg(long, default_value = "broken")]
    socket_name: String,

    /// Socket folder (default: DAPR_COMPONENTS_SOCKETS_FOLDER, …, else /tmp/dapr-components-sockets).
    #[arg(long)]
    socket_folder: Option<PathBuf>,

    /// Which lie to tell.
    #[arg(long, value_enum, default_value = "etag")]
    lie: Lie,

    /// Log filter (tracing env-filter syntax); RUST_LOG is used when unset.
    #[arg(long)]
    log_level: Option<String>,
}

/// A stored value: data, etag, expiry.
type Entry = (Vec<u8>, String, Option<Instant>);

/// One instance's keys.
#[derive(Debug)]
struct Broken {
    lie: Lie,
    map: Mutex<HashMap<String, Entry>>,
    next_etag: AtomicU64,
}

impl Broken {
    fn new(lie: Lie) -> Self {
        Self {
            lie,
            map: Mutex::new(HashMap::new()),
            next_etag: AtomicU64::new(0),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        map.retain(|_, (_, _, expiry)| expiry.is_none_or(|e| e > now));
        map
    }

    fn etag(&self) -> String {
        (self.next_etag.fetch_add(1, Ordering::Relaxed) + 1).to_string()
    }

    /// The refusal of a stale etag, as the lie wants it.
    fn mismatch(&self, message: String) -> StateError {
        if self.lie == Lie::ErrorShape {
            StateError::Internal(message)
        } else {
            StateError::EtagMismatch(message)
        }
    }

    /// Checks `etag` (and first-write) against `map`, unless `ignore`.
    fn check(
        &self,
        map: &HashMap<String, Entry>,
        key: &str,
        etag: Option<&String>,
        first_write: bool,
        ignore: bool,
    ) -> Result<(), StateError> {
        if ignore {
            return Ok(());
        }
        match (etag, map.get(key)) {
            (None, Some(_)) if first_write => {
                Err(self.mismatch(format!("first-write: {key:?} exists and no etag was given")))
            }
            (None, _) => Ok(()),
            (Some(given), Some((_, stored, _))) if given == stored => Ok(()),
            (Some(given), _) => Err(self.mismatch(format!(
                "etag {given:?} does not match the stored one of {key:?}"
            ))),
        }
    }

    /// Applies `operations` to `map` in order, stopping at the first failure.
    fn apply(
        &self,
        map: &mut HashMap<String, Entry>,
        operations: Vec<Operation>,
        ignore_etags: bool,
    ) -> Result<(), StateError> {
        for operation in operations {
            match operation {
                Operation::Set(set) => {
                    let first_write = set.options.concurrency == Concurrency::FirstWrite;
                    self.check(map, &set.key, set.etag.as_ref(), first_write, ignore_etags)?;
                    let ttl = set.ttl()?;
                    let expiry = match self.lie {
                        Lie::Ttl => None,
                        _ => ttl.map(|t| Instant::now() + t),
                    };
                    map.insert(set.key, (set.value, self.etag(), expiry));
                }
                Operation::Delete(delete) => {
                    self.check(map, &delete.key, delete.etag.as_ref(), false, ignore_etags)?;
                    map.remove(&delete.key);
                }
            }
        }
        Ok(())
    }

    /// All or nothing: applied to a copy, kept only when every operation succeeded.
    fn atomic(&self, operations: Vec<Operation>, ignore_etags: bool) -> Result<(), StateError> {
        let mut map = self.map();
        let mut copy = map.clone();
        self.apply(&mut copy, operations, ignore_etags)?;
        *map = copy;
        Ok(())
    }
}

impl StateStore for Broken {
    const TRANSACTIONAL: bool = true;

    async fn init(&self, _properties: Properties) -> Result<(), StateError> {
        Ok(())
    }

    fn features(&self) -> Vec<String> {
        let mut features = vec![feature::ETAG.to_owned()];
        if self.lie == Lie::Ttl {
            features.push(feature::TTL.to_owned());
        }
        features
    }

    async fn get(&self, request: GetRequest) -> Result<GetResponse, StateError> {
        if self.lie == Lie::Hang {
            std::future::pending::<()>().await;
        }
        Ok(match self.map().get(&request.key) {
            Some((data, etag, _)) => GetResponse {
                data: data.clone(),
                etag: Some(etag.clone()),
                ..Default::default()
            },
            None => GetResponse::default(),
        })
    }

    async fn set(&self, request: SetRequest) -> Result<(), StateError> {
        self.atomic(vec![Operation::Set(request)], self.lie == Lie::Etag)
    }

    async fn delete(&self, request: DeleteRequest) -> Result<(), StateError> {
        self.atomic(vec![Operation::Delete(request)], self.lie == Lie::Etag)
    }

    async fn bulk_set(&self, requests: Vec<SetRequest>) -> Result<(), StateError> {
        let ignore = matches!(self.lie, Lie::Etag | Lie::BulkEtag);
        self.atomic(requests.into_iter().map(Operation::Set).collect(), ignore)
    }

    async fn bulk_delete(&self, requests: Vec<DeleteRequest>) -> Result<(), StateError> {
        let ignore = matches!(self.lie, Lie::Etag | Lie::BulkEtag);
        self.atomic(
            requests.into_iter().map(Operation::Delete).collect(),
            ignore,
        )
    }

    async fn transact(&self, request: TransactionRequest) -> Result<(), StateError> {
        if self.lie == Lie::Etag {
            // One by one, checking etags, stopping at the first failure: not atomic.
            let mut map = self.map();
            return self.apply(&mut map, request.operations, false);
        }
        self.atomic(request.operations, false)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = match run::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    run::init_logging(cli.log_level.as_deref(), false);
    let lie = cli.lie;
    let mut server = ComponentServer::new(cli.socket_name).state_store(move |_| Broken::new(lie));
    if let Some(folder) = cli.socket_folder {
        server = server.socket_folder(folder);
    }
    run::serve("plugd-broken-fixture", server).await
}
