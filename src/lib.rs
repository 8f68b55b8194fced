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
