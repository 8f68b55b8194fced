//! `plugd-broken-fixture`: a **deliberately broken** state store for testing `plugd conformance`.
//!
//! It claims `ETAG` and `TRANSACTIONAL` but ignores the etags of Set and Delete, and applies a
//! transaction's operations one by one (checking etags there), so a failing operation leaves
//! the earlier ones applied. Everything else behaves. See README.md.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use clap::Parser;
use plugd_component_sdk::state::{
    DeleteRequest, GetRequest, GetResponse, Operation, Properties, SetRequest, StateError,
    StateStore, TransactionRequest, feature,
};
use plugd_component_sdk::{ComponentServer, run};

/// A deliberately broken state store (claims ETAG and TRANSACTIONAL, honours neither). For
/// testing `plugd conformance` only.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Socket file name without `.sock`.
    #[arg(long, default_value = "broken")]
    socket_name: String,

    /// Socket folder (default: DAPR_COMPONENTS_SOCKETS_FOLDER, …, else /tmp/dapr-components-sockets).
    #[arg(long)]
    socket_folder: Option<PathBuf>,

    /// Log filter (tracing env-filter syntax); RUST_LOG is used when unset.
    #[arg(long)]
    log_level: Option<String>,
}

/// One instance's keys: value and etag.
#[derive(Debug, Default)]
struct Broken {
    map: Mutex<HashMap<String, (Vec<u8>, String)>>,
    next_etag: AtomicU64,
}

impl Broken {
    fn map(&self) -> MutexGuard<'_, HashMap<String, (Vec<u8>, String)>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn etag(&self) -> String {
        (self.next_etag.fetch_add(1, Ordering::Relaxed) + 1).to_string()
    }

    /// Writes without looking at the etag (the first lie).
    fn write(&self, key: String, value: Vec<u8>) {
        let etag = self.etag();
        self.map().insert(key, (value, etag));
    }

    /// Checks `etag` against the stored one (used only inside transactions).
    fn check(&self, key: &str, etag: Option<&String>) -> Result<(), StateError> {
        match (etag, self.map().get(key)) {
            (None, _) => Ok(()),
            (Some(given), Some((_, stored))) if given == stored => Ok(()),
            (Some(given), _) => Err(StateError::EtagMismatch(format!(
                "etag {given:?} does not match the stored one of {key:?}"
            ))),
        }
    }
}

impl StateStore for Broken {
    const TRANSACTIONAL: bool = true;

    async fn init(&self, _properties: Properties) -> Result<(), StateError> {
        Ok(())
    }

    fn features(&self) -> Vec<String> {
        vec![feature::ETAG.to_owned()]
    }

    async fn get(&self, request: GetRequest) -> Result<GetResponse, StateError> {
        Ok(match self.map().get(&request.key) {
            Some((data, etag)) => GetResponse {
                data: data.clone(),
                etag: Some(etag.clone()),
                ..Default::default()
            },
            None => GetResponse::default(),
        })
    }

    async fn set(&self, request: SetRequest) -> Result<(), StateError> {
        self.write(request.key, request.value);
        Ok(())
    }

    async fn delete(&self, request: DeleteRequest) -> Result<(), StateError> {
        self.map().remove(&request.key);
        Ok(())
    }

    /// One by one, stopping at the first failure: not atomic (the second lie).
    async fn transact(&self, request: TransactionRequest) -> Result<(), StateError> {
        for operation in request.operations {
            match operation {
                Operation::Set(set) => {
                    self.check(&set.key, set.etag.as_ref())?;
                    self.write(set.key, set.value);
                }
                Operation::Delete(delete) => {
                    self.check(&delete.key, delete.etag.as_ref())?;
                    self.map().remove(&delete.key);
                }
            }
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = match run::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    run::init_logging(cli.log_level.as_deref(), false);
    let mut server = ComponentServer::new(cli.socket_name).state_store(|_| Broken::default());
    if let Some(folder) = cli.socket_folder {
        server = server.socket_folder(folder);
    }
    run::serve("plugd-broken-fixture", server).await
}
