//! A secret store reading a JSON file and an output binding on a local
//! folder, served together as one Dapr pluggable component, and a secret
//! store over environment variables ([`env`](mod@env), the `plugd-env` binary).
//!
//! They serve Dapr's built-in types under Dapr's names and metadata:
//! `plugd-files --socket-name local.file` serves `secretstores.local.file`,
//! `plugd-files --socket-name localstorage` serves `bindings.localstorage`
//! (with Dapr's localstorage contract, [`Contract::LocalStorage`]) and
//! `plugd-env` (socket `local.env`) serves `secretstores.local.env`. Without
//! `--socket-name`, `plugd-files` listens on `<sockets folder>/files.sock`
//! for plugd's own `secretstores.files` and `bindings.files` (see
//! `component.yaml` and `README.md` beside this crate). Each Component (each
//! `x-component-instance`) gets its own instance; a re-Init (hot reload)
//! replaces its settings, and a failed Init leaves it uninitialised
//! (`FAILED_PRECONDITION` until the next good Init). Unknown metadata keys
//! are ignored and logged in one warning at Init (names only); Dapr's
//! runtime-level keys (`direction`, `route`, ...) are accepted silently.
//!
//! # Secret store ([`FilesSecretStore`])
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `secretsFile` | path of a JSON file holding an object; relative to the working directory (as in Dapr) | required |
//! | `nestedSeparator` | joins the keys of nested objects and array indices | `:` |
//! | `multiValued` | each top-level key is one secret holding several pairs | `false` |
//!
//! - **Flattening.** Nested objects are flattened with the separator
//!   (`{"db":{"password":"x"}}` → `db:password`), arrays by index
//!   (`{"list":["a","b"]}` → `list:0`, `list:1`). Strings are the values as
//!   they are; numbers and booleans become their JSON text (`5432`, `true`);
//!   `null`s are left out, and so are empty objects and arrays. Two leaves
//!   that flatten to the same key (`{"a:b":"1","a":{"b":"2"}}`) make the file
//!   invalid.
//! - **`multiValued: false`**: every flattened key is a secret with one pair,
//!   `get("db:password")` → `{"db:password": "x"}`.
//! - **`multiValued: true`**: every top-level key is a secret, and its pairs
//!   are what lies below it, flattened (`get("db")` →
//!   `{"password": "x", "user": "y"}`); a top-level string, number or boolean
//!   `k` is the secret `{k: value}`. The instance then reports the feature
//!   `MULTIPLE_KEY_VALUES_PER_SECRET`.
//! - **Reading.** The file is read at Init (a missing file, a file that is
//!   not JSON or not an object fails Init with `INVALID_ARGUMENT` naming the
//!   path) and read again on a Get or BulkGet when it has changed (one
//!   `stat`), so secrets can be added without a restart. If it cannot be read
//!   or parsed then, the call fails with `UNAVAILABLE`.
//! - An unknown key is `NOT_FOUND` naming it. Values are never logged.
//!
//! # Output binding ([`FilesBinding`])
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `rootPath` | the folder holding the files; created if missing; `/proc`, `/sys`, `/boot`, `/var/run/secrets` refused | required |
//! | `decodeBase64` | `create`: `true` decodes base64, `false` never; unset: see [`Contract`] | unset |
//! | `encodeBase64` | `get` returns base64 text | `false` |
//!
//! Operations (`fileName` request metadata names the file, relative to the
//! root, folders allowed: `a/b.txt`):
//!
//! - `create`: writes the data (atomically: a temporary file renamed into
//!   place; missing folders are created; an existing file is replaced).
//!   Without `fileName` a UUID is used. Returns `{"fileName": "<name>"}` and
//!   response metadata `fileName`. Request metadata `decodeBase64` overrides
//!   the component's. Under [`Contract::LocalStorage`] a JSON string is
//!   unquoted first and valid base64 decoded unless `decodeBase64` is set.
//! - `get`: the contents (or base64 text with `encodeBase64`, which request
//!   metadata may set too). Missing file: `NOT_FOUND`.
//! - `list`: a JSON array of every file, recursive; `fileName` narrows it to
//!   a folder. [`Contract::Files`]: names relative to the root, sorted;
//!   [`Contract::LocalStorage`]: absolute paths in walk order.
//! - `delete`: removes the file; missing file: `NOT_FOUND`.
//!
//! Names that leave the root are refused with `INVALID_ARGUMENT`: see
//! [`folder`].

pub mod binding;
pub mod env;
pub mod folder;
pub mod props;
pub mod secrets;

pub use binding::{Contract, FilesBinding};
pub use env::EnvSecretStore;
pub use secrets::FilesSecretStore;

use plugd_component_sdk::ComponentServer;

/// Socket name when none is given: `files.sock`, types `secretstores.files`
/// and `bindings.files`.
pub const DEFAULT_SOCKET_NAME: &str = "files";

/// A server for `socket_name` serving the secret store and the output
/// binding, one instance of each per Component. The binding follows Dapr's
/// localstorage contract when `socket_name` is `localstorage`
/// ([`Contract::for_socket_name`]), plugd's own otherwise.
pub fn server(socket_name: impl Into<String>) -> ComponentServer {
    let socket_name = socket_name.into();
    let contract = Contract::for_socket_name(&socket_name);
    let secrets_type = format!("secretstores.{socket_name}");
    let binding_type = format!("bindings.{socket_name}");
    ComponentServer::new(socket_name)
        .secret_store(move |instance| {
            FilesSecretStore::new(instance).component_type(secrets_type.as_str())
        })
        .output_binding(move |instance| {
            FilesBinding::with_contract(instance, contract).component_type(binding_type.as_str())
        })
}

/// A server for `socket_name` (default [`env::DEFAULT_SOCKET_NAME`], type
/// `secretstores.local.env`) serving the environment-variable secret store,
/// one instance per Component.
pub fn env_server(socket_name: impl Into<String>) -> ComponentServer {
    let socket_name = socket_name.into();
    let component_type = format!("secretstores.{socket_name}");
    ComponentServer::new(socket_name).secret_store(move |instance| {
        EnvSecretStore::new(instance).component_type(component_type.as_str())
    })
}
