//! One component instance per `x-component-instance` header value.
//!
//! daprd opens one connection per Component resource and puts the resource's
//! `metadata.name` in the `x-component-instance` header of every call. Several
//! resources can point at the same socket, so the server keeps one instance per
//! header value, created on first use by the author's factory. Calls without the
//! header (for example from a test client) go to a default instance.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use tonic::Status;
use tonic::metadata::MetadataMap;

/// The request header that names the component instance a call is for.
pub const INSTANCE_HEADER: &str = "x-component-instance";

/// The instance name used when a call carries no [`INSTANCE_HEADER`].
pub const DEFAULT_INSTANCE: &str = "#default__instance#";

type Factory<T> = dyn Fn(&str) -> T + Send + Sync;

/// A lazily filled map from instance name to instance.
///
/// Instances live as long as the server: daprd never says that an instance has
/// ended (there is no Close RPC), and it re-uses the name after a hot reload,
/// where the same instance is initialised again.
pub struct Multiplexer<T> {
    factory: Box<Factory<T>>,
    instances: RwLock<HashMap<String, Arc<T>>>,
}

impl<T> Multiplexer<T> {
    /// A multiplexer that creates instances with `factory`, which is given the
    /// instance name (the header value, or [`DEFAULT_INSTANCE`]).
    pub fn new<F>(factory: F) -> Self
    where
        F: Fn(&str) -> T + Send + Sync + 'static,
    {
        Self {
            factory: Box::new(factory),
            instances: RwLock::new(HashMap::new()),
        }
    }

    /// The instance called `name`, created if it does not exist yet.
    pub fn get_or_create(&self, name: &str) -> Arc<T> {
        // The map is only ever inserted into, so a poisoned lock still holds a
        // consistent map: keep using it rather than failing every later call.
        if let Some(found) = self
            .instances
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return Arc::clone(found);
        }
        let mut instances = self
            .instances
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let instance = instances.entry(name.to_owned()).or_insert_with(|| {
            tracing::debug!(instance = name, "creating component instance");
            Arc::new((self.factory)(name))
        });
        Arc::clone(instance)
    }

    /// The instance a request is for, by its [`INSTANCE_HEADER`].
    ///
    /// A header value that is not visible ASCII is refused with
    /// `INVALID_ARGUMENT`.
    pub fn for_request(&self, metadata: &MetadataMap) -> Result<(String, Arc<T>), Status> {
        let name = instance_name(metadata)?;
        let instance = self.get_or_create(&name);
        Ok((name, instance))
    }

    /// The names of the instances created so far, sorted.
    pub fn instance_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .instances
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }
}

impl<T> fmt::Debug for Multiplexer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Multiplexer")
            .field("instances", &self.instance_names())
            .finish_non_exhaustive()
    }
}

/// The instance name carried by `metadata`, or [`DEFAULT_INSTANCE`].
pub fn instance_name(metadata: &MetadataMap) -> Result<String, Status> {
    match metadata.get(INSTANCE_HEADER) {
        None => Ok(DEFAULT_INSTANCE.to_owned()),
        Some(value) => value.to_str().map(str::to_owned).map_err(|_| {
            Status::invalid_argument(format!("the {INSTANCE_HEADER} header is not valid ASCII"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn creates_one_instance_per_name_lazily() {
        let created = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&created);
        let mux = Multiplexer::new(move |name: &str| {
            counter.fetch_add(1, Ordering::SeqCst);
            name.to_owned()
        });
        assert_eq!(created.load(Ordering::SeqCst), 0);

        let a1 = mux.get_or_create("a");
        let a2 = mux.get_or_create("a");
        let b = mux.get_or_create("b");
        assert!(Arc::ptr_eq(&a1, &a2));
        assert_eq!(*b, "b");
        assert_eq!(created.load(Ordering::SeqCst), 2);
        assert_eq!(mux.instance_names(), ["a", "b"]);
    }

    #[test]
    fn header_selects_the_instance() {
        let mux = Multiplexer::new(|name: &str| name.to_owned());
        let mut md = MetadataMap::new();
        let (name, _) = mux.for_request(&md).expect("default instance");
        assert_eq!(name, DEFAULT_INSTANCE);

        md.insert(INSTANCE_HEADER, "mystore".parse().expect("ascii value"));
        let (name, instance) = mux.for_request(&md).expect("named instance");
        assert_eq!(name, "mystore");
        assert_eq!(*instance, "mystore");
    }
}
