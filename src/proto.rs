//! Generated protocol code (from `proto/`, via the `plugd-proto` crate).

pub use plugd_proto::{FILE_DESCRIPTOR_SET, common, components, runtime};
