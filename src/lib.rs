//! plugd — a sidecar runtime that serves the Dapr runtime API with pluggable components.
//!
//! Components are separate processes serving `dapr.proto.components.v1` over gRPC on Unix
//! domain sockets in a shared folder. plugd discovers them ([`discovery`]), reads Dapr
//! Component YAML ([`config::manifest`]), initialises each component instance
//! ([`lifecycle`]), keeps them in a [`registry`] and serves the app-facing API over gRPC and
//! HTTP ([`api`]).

pub mod api;
pub mod app;
pub mod appchannel;
pub mod bindings;
pub mod cli;
pub mod component;
pub mod config;
pub mod conformance;
pub mod discovery;
pub mod inspect;
pub mod lifecycle;
pub mod limits;
pub mod managed;
pub mod metrics;
pub mod proto;
pub mod pubsub;
pub mod registry;
pub mod reload;
pub mod secret;
pub mod shutdown;
pub mod telemetry;

pub use app::App;

/// The version reported as `runtimeVersion` / `daprRuntimeVersion`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The async runtime plugd runs on: with `worker_threads` 1, a single-threaded runtime (a
/// sidecar shares the machine with its app, and one thread spends the least CPU per
/// forwarded request: no cross-thread wake-ups); otherwise a pool of that many threads, or
/// one per CPU core for 0.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder.enable_all().thread_name("plugd").build()
}

#[cfg(test)]
mod tests {
    #[test]
    fn worker_threads_choose_the_runtime() {
        use tokio::runtime::RuntimeFlavor;
        let one = super::runtime(1).expect("runtime");
        assert_eq!(one.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        let three = super::runtime(3).expect("runtime");
        assert_eq!(three.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(three.metrics().num_workers(), 3);
        let per_core = super::runtime(0).expect("runtime");
        assert_eq!(
            per_core.handle().runtime_flavor(),
            RuntimeFlavor::MultiThread
        );
    }
}
