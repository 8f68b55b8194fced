//! Protobuf messages and gRPC stubs used by plugd.
//!
//! This crate holds plugd's own `.proto` files (under `proto/` in the crate
//! directory, written from the wire contract of Dapr) and the Rust generated
//! from them, which is **checked in** under `src/gen/`. Nothing is generated at
//! build time, so building needs neither `protoc` nor a build script.
//!
//! Packages:
//!
//! * [`components`] (`dapr.proto.components.v1`): the pluggable component
//!   services daprd calls: `StateStore`, `TransactionalStateStore`,
//!   `QueriableStateStore`, `TransactionalStoreMultiMaxSize`, `PubSub`,
//!   `InputBinding`, `OutputBinding` and `SecretStore`.
//! * [`runtime`] (`dapr.proto.runtime.v1`): the app-facing `Dapr` service (the
//!   subset plugd serves) and the app callback services `AppCallback`,
//!   `AppCallbackHealthCheck` and `AppCallbackAlpha`.
//! * [`common`] (`dapr.proto.common.v1`): types shared by the runtime API and
//!   app callbacks (`StateItem`, `Etag`, `StateOptions`, `InvokeRequest`, ...).
//!
//! Every service has both a client (`<service>_client::<Service>Client`) and a
//! server (`<service>_server::{<Service>, <Service>Server}`) module, following
//! prost/tonic naming, e.g.
//! [`components::state_store_server::StateStoreServer`] or
//! [`runtime::dapr_client::DaprClient`]. Well-known types
//! (`google.protobuf.*`) map to [`prost_types`], with `google.protobuf.Empty`
//! mapped to `()`.
//!
//! [`FILE_DESCRIPTOR_SET`] is the encoded descriptor set of all these files
//! (imports included), for gRPC reflection servers.
//!
//! # Regenerating
//!
//! After editing a `.proto` file, run
//!
//! ```text
//! PLUGD_UPDATE_PROTO=1 cargo test -p plugd-proto --test codegen_drift
//! ```
//!
//! Without the variable the same test fails when `src/gen/` is out of date.

/// Generated code, nested like the protobuf packages so that the relative
/// paths prost emits between packages resolve.
pub mod dapr {
    /// `dapr.proto.*` packages.
    pub mod proto {
        /// `dapr.proto.common.*` packages.
        pub mod common {
            /// `dapr.proto.common.v1`: types shared by the runtime and app callback APIs.
            #[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
            pub mod v1 {
                include!("gen/dapr.proto.common.v1.rs");
            }
        }

        /// `dapr.proto.components.*` packages.
        pub mod components {
            /// `dapr.proto.components.v1`: the pluggable component services.
            #[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
            pub mod v1 {
                include!("gen/dapr.proto.components.v1.rs");
            }
        }

        /// `dapr.proto.runtime.*` packages.
        pub mod runtime {
            /// `dapr.proto.runtime.v1`: the app-facing Dapr API and app callbacks.
            #[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
            pub mod v1 {
                include!("gen/dapr.proto.runtime.v1.rs");
            }
        }
    }
}

pub use dapr::proto::common::v1 as common;
pub use dapr::proto::components::v1 as components;
pub use dapr::proto::runtime::v1 as runtime;

/// Encoded `google.protobuf.FileDescriptorSet` of every `.proto` file of this
/// crate plus the well-known types they import, in dependency order and
/// without source info. Pass it to a gRPC reflection server builder.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/descriptor.bin");

#[cfg(test)]
mod tests;
