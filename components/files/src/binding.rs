//! The output binding: files in a local folder ([`FilesBinding`]).

use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use plugd_component_sdk::bindings::{
    BindingError, InvokeRequest, InvokeResponse, Metadata, OutputBinding, Properties, operation,
};

use crate::folder::{FileName, Root, walk_order};
use plugd_component_sdk::metadata::{ConfigError, warn_unknown};

use crate::props::{bool_property, parse_bool, property};

/// Component metadata keys (matched without regard to case, as Dapr does).
pub mod keys {
    /// The root folder (required; created if missing). Relative paths are
    /// relative to the working directory of the process.
    pub const ROOT_PATH: &str = "rootPath";
    /// `create` decodes the request data from base64 before writing it. Also
    /// a request metadata key, which wins.
    pub const DECODE_BASE64: &str = "decodeBase64";
    /// `get` returns the contents as base64 text. Also a request metadata
    /// key, which wins.
    pub const ENCODE_BASE64: &str = "encodeBase64";
    /// Request (and response) metadata: the file name, relative to the root.
    pub const FILE_NAME: &str = "fileName";

    /// Every Component metadata key the binding reads.
    pub const ALL: [&str; 3] = [ROOT_PATH, DECODE_BASE64, ENCODE_BASE64];
}

/// Which contract the binding follows; chosen by the socket name it is served
/// under (see [`Contract::for_socket_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Contract {
    /// `bindings.files`, plugd's own: data written exactly as received
    /// (base64 decoded only when `decodeBase64` says so), `list` names
    /// relative to the root, sorted.
    #[default]
    Files,
    /// `bindings.localstorage`, Dapr's: `create` unquotes data that is a JSON
    /// string and, unless `decodeBase64` says otherwise, decodes data that is
    /// valid base64; `list` answers absolute paths in walk order.
    LocalStorage,
}

impl Contract {
    /// The socket name (type `bindings.<name>`) that selects Dapr's
    /// localstorage contract.
    pub const LOCALSTORAGE: &str = "localstorage";

    /// [`Contract::LocalStorage`] for the socket name `localstorage` (any
    /// case), else [`Contract::Files`].
    pub fn for_socket_name(name: &str) -> Self {
        if name.eq_ignore_ascii_case(Self::LOCALSTORAGE) {
            Self::LocalStorage
        } else {
            Self::Files
        }
    }
}

/// The operations the binding performs.
pub const OPERATIONS: [&str; 4] = [
    operation::CREATE,
    operation::GET,
    operation::LIST,
    operation::DELETE,
];

/// Validated settings of one binding instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingConfig {
    /// The root folder, created and resolved.
    pub root: Root,
    /// Default of `decodeBase64` for `create`.
    pub decode_base64: bool,
    /// `decodeBase64` as given, `None` when absent (the localstorage
    /// contract then detects base64 itself).
    pub decode_base64_given: Option<bool>,
    /// Default of `encodeBase64` for `get`.
    pub encode_base64: bool,
}

impl BindingConfig {
    /// Reads the Init properties and creates the root folder. Unknown keys
    /// are ignored here (the binding logs them at Init).
    pub fn from_properties(properties: &Properties) -> Result<Self, String> {
        let mut problems = Vec::new();
        let root = property(properties, keys::ROOT_PATH);
        if root.is_none() {
            problems.push(format!("{} is required", keys::ROOT_PATH));
        }
        let mut read_flag = |key: &str| {
            bool_property(properties, key, false).unwrap_or_else(|problem| {
                problems.push(problem);
                false
            })
        };
        let decode_base64 = read_flag(keys::DECODE_BASE64);
        let encode_base64 = read_flag(keys::ENCODE_BASE64);
        let decode_base64_given = property(properties, keys::DECODE_BASE64).map(|_| decode_base64);
        match root {
            Some(root) if problems.is_empty() => Ok(Self {
                root: Root::open(std::path::Path::new(root))?,
                decode_base64,
                decode_base64_given,
                encode_base64,
            }),
            _ => Err(ConfigError(problems).to_string()),
        }
    }
}

/// An output binding on a local folder. One per component instance.
#[derive(Debug)]
pub struct FilesBinding {
    instance: String,
    contract: Contract,
    component_type: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    inits: u64,
    config: Option<Arc<BindingConfig>>,
}

impl FilesBinding {
    /// An uninitialised binding for component instance `instance`, following
    /// plugd's own contract ([`Contract::Files`]).
    pub fn new(instance: &str) -> Self {
        Self::with_contract(instance, Contract::Files)
    }

    /// An uninitialised binding following `contract`.
    pub fn with_contract(instance: &str, contract: Contract) -> Self {
        let component_type = match contract {
            Contract::Files => "bindings.files",
            Contract::LocalStorage => "bindings.localstorage",
        };
        Self {
            instance: instance.to_owned(),
            contract,
            component_type: component_type.to_owned(),
            state: Mutex::new(State::default()),
        }
    }

    /// Sets the type name used in log lines (`bindings.<socket name>`).
    #[must_use]
    pub fn component_type(mut self, component_type: impl Into<String>) -> Self {
        self.component_type = component_type.into();
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn config(&self) -> Result<Arc<BindingConfig>, BindingError> {
        self.state()
            .config
            .clone()
            .ok_or(BindingError::NotInitialized)
    }
}

/// Runs blocking file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BindingError> + Send + 'static,
) -> Result<T, BindingError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(BindingError::internal)?
}

/// The request's `fileName`, checked; `None` when absent.
fn file_name(metadata: &Metadata) -> Result<Option<FileName>, BindingError> {
    metadata
        .get(keys::FILE_NAME)
        .map(|name| FileName::parse(name))
        .transpose()
}

fn required_file_name(metadata: &Metadata) -> Result<FileName, BindingError> {
    file_name(metadata)?.ok_or_else(|| {
        BindingError::InvalidArgument(format!(
            "the {} request metadata is required",
            keys::FILE_NAME
        ))
    })
}

/// A boolean request option, `default` when absent or empty.
fn flag(metadata: &Metadata, key: &str, default: bool) -> Result<bool, BindingError> {
    match metadata.get(key).map(|value| value.trim()) {
        None | Some("") => Ok(default),
        Some(value) => parse_bool(key, value).map_err(BindingError::InvalidArgument),
    }
}

/// A boolean request option, `None` when absent or empty.
fn explicit_flag(metadata: &Metadata, key: &str) -> Result<Option<bool>, BindingError> {
    match metadata.get(key).map(|value| value.trim()) {
        None | Some("") => Ok(None),
        Some(value) => parse_bool(key, value)
            .map(Some)
            .map_err(BindingError::InvalidArgument),
    }
}

/// Standard base64 read the way Go's `base64.StdEncoding` reads it: padding
/// required, stray bits in the last character allowed, line breaks skipped.
const GO_STD_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

fn go_base64_decode(data: &[u8]) -> Option<Vec<u8>> {
    let text: Vec<u8> = data
        .iter()
        .copied()
        .filter(|byte| !matches!(byte, b'\r' | b'\n'))
        .collect();
    GO_STD_BASE64.decode(text).ok()
}

/// What Dapr's localstorage `create` writes for `data`: a JSON string
/// (`"..."`, as daprd's and plugd's HTTP API hand a JSON string `data` over)
/// is unquoted first; then `decode` decides: `Some(true)` decodes base64 or
/// fails, `Some(false)` writes as is, `None` decodes when the data is valid
/// base64 and writes it as is otherwise (Dapr's automatic detection).
fn localstorage_data(data: Vec<u8>, decode: Option<bool>) -> Result<Vec<u8>, BindingError> {
    let data = if data.len() >= 2 && data.starts_with(b"\"") && data.ends_with(b"\"") {
        match serde_json::from_slice::<String>(&data) {
            Ok(text) => text.into_bytes(),
            Err(_) => data,
        }
    } else {
        data
    };
    match decode {
        Some(true) => strict_base64(&data),
        Some(false) => Ok(data),
        None => Ok(go_base64_decode(&data).unwrap_or(data)),
    }
}

fn strict_base64(data: &[u8]) -> Result<Vec<u8>, BindingError> {
    STANDARD.decode(data.trim_ascii()).map_err(|err| {
        BindingError::InvalidArgument(format!("the data is not valid base64: {err}"))
    })
}

/// A `list` request's `fileName`: a folder under the root; empty, `.` or
/// `/`-terminated forms allowed.
fn list_folder(metadata: &Metadata) -> Result<Option<FileName>, BindingError> {
    let name = match metadata.get(keys::FILE_NAME) {
        None => return Ok(None),
        Some(name) if name.starts_with('/') => return FileName::parse(name).map(Some),
        Some(name) => name.trim_end_matches('/'),
    };
    if name.split('/').all(|part| part.is_empty() || part == ".") {
        return Ok(None);
    }
    FileName::parse(name).map(Some)
}

fn name_metadata(name: &str) -> Metadata {
    Metadata::from([(keys::FILE_NAME.to_owned(), name.to_owned())])
}

impl OutputBinding for FilesBinding {
    async fn init(&self, properties: Properties) -> Result<(), BindingError> {
        let generation = {
            let mut state = self.state();
            state.inits += 1;
            state.config = None;
            state.inits
        };
        let (config, properties) = blocking(move || {
            BindingConfig::from_properties(&properties)
                .map(|config| (config, properties))
                .map_err(BindingError::InvalidArgument)
        })
        .await?;
        warn_unknown(
            &self.component_type,
            &self.instance,
            &properties,
            &keys::ALL,
        );
        tracing::info!(
            instance = %self.instance,
            root = %config.root.path().display(),
            decode_base64 = config.decode_base64,
            encode_base64 = config.encode_base64,
            "file binding ready"
        );
        let mut state = self.state();
        if state.inits == generation {
            state.config = Some(Arc::new(config));
        }
        Ok(())
    }

    fn operations(&self) -> Vec<String> {
        OPERATIONS.map(str::to_owned).into()
    }

    async fn invoke(&self, request: InvokeRequest) -> Result<InvokeResponse, BindingError> {
        let config = self.config()?;
        let InvokeRequest {
            data,
            metadata,
            operation,
        } = request;
        match operation.as_str() {
            operation::CREATE => {
                let name = match file_name(&metadata)? {
                    Some(name) => name,
                    None => FileName::parse(&uuid::Uuid::new_v4().to_string())?,
                };
                let data = match self.contract {
                    Contract::Files => {
                        if flag(&metadata, keys::DECODE_BASE64, config.decode_base64)? {
                            strict_base64(&data)?
                        } else {
                            data
                        }
                    }
                    Contract::LocalStorage => {
                        let decode = explicit_flag(&metadata, keys::DECODE_BASE64)?
                            .or(config.decode_base64_given);
                        localstorage_data(data, decode)?
                    }
                };
                let normal = name.as_string();
                tracing::debug!(instance = %self.instance, file = %normal, bytes = data.len(), "create");
                blocking(move || config.root.create(&name, &data)).await?;
                let body = serde_json::json!({ keys::FILE_NAME: normal });
                Ok(InvokeResponse {
                    data: body.to_string().into_bytes(),
                    metadata: name_metadata(&normal),
                    content_type: Some("application/json".to_owned()),
                })
            }
            operation::GET => {
                let encode = flag(&metadata, keys::ENCODE_BASE64, config.encode_base64)?;
                let name = required_file_name(&metadata)?;
                let normal = name.as_string();
                tracing::debug!(instance = %self.instance, file = %normal, "get");
                let contents = blocking(move || config.root.read(&name)).await?;
                let (data, content_type) = if encode {
                    (STANDARD.encode(contents).into_bytes(), "text/plain")
                } else {
                    (contents, "application/octet-stream")
                };
                Ok(InvokeResponse {
                    data,
                    metadata: name_metadata(&normal),
                    content_type: Some(content_type.to_owned()),
                })
            }
            operation::LIST => {
                let folder = list_folder(&metadata)?;
                tracing::debug!(instance = %self.instance, folder = ?folder.as_ref().map(FileName::as_string), "list");
                let contract = self.contract;
                let names = blocking(move || {
                    let mut names = config.root.list_under(folder.as_ref())?;
                    if contract == Contract::LocalStorage {
                        walk_order(&mut names);
                        let root = config.root.path();
                        names = names
                            .iter()
                            .map(|name| root.join(name).to_string_lossy().into_owned())
                            .collect();
                    }
                    Ok(names)
                })
                .await?;
                let body = serde_json::to_vec(&names).map_err(BindingError::internal)?;
                Ok(InvokeResponse {
                    data: body,
                    metadata: Metadata::new(),
                    content_type: Some("application/json".to_owned()),
                })
            }
            operation::DELETE => {
                let name = required_file_name(&metadata)?;
                tracing::debug!(instance = %self.instance, file = %name.as_string(), "delete");
                blocking(move || config.root.delete(&name)).await?;
                Ok(InvokeResponse::default())
            }
            // The SDK refuses operations not in `operations` before this.
            other => Err(BindingError::UnsupportedOperation {
                operation: other.to_owned(),
                supported: self.operations(),
            }),
        }
    }

    async fn ping(&self) -> Result<(), BindingError> {
        let Some(config) = self.state().config.clone() else {
            return Ok(());
        };
        let root = config.root.path().to_path_buf();
        match tokio::fs::metadata(&root).await {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(BindingError::Unavailable(format!(
                "root folder {root:?} is no longer a folder"
            ))),
            Err(err) => Err(BindingError::Unavailable(format!(
                "root folder {root:?}: {err}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Properties {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn config_problems_are_reported_together() {
        let err =
            BindingConfig::from_properties(&props(&[("decodeBase64", "x")])).expect_err("invalid");
        assert_eq!(
            err,
            "invalid metadata: rootPath is required; decodeBase64 must be true or false, not \"x\""
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("new");
        let root_text = root.to_str().expect("utf-8 temp path");
        let config = BindingConfig::from_properties(&props(&[
            ("ROOTPATH", root_text),
            ("encodeBase64", "true"),
        ]))
        .expect("valid");
        assert!(root.is_dir());
        assert!(config.encode_base64);
        assert!(!config.decode_base64);
    }

    #[test]
    fn request_flags() {
        let md = Metadata::from([
            ("decodeBase64".to_owned(), "true".to_owned()),
            ("encodeBase64".to_owned(), " ".to_owned()),
            ("bad".to_owned(), "sometimes".to_owned()),
        ]);
        assert!(flag(&md, "decodeBase64", false).expect("valid"));
        assert!(flag(&md, "encodeBase64", true).expect("empty is absent"));
        assert!(!flag(&md, "missing", false).expect("absent"));
        assert!(matches!(
            flag(&md, "bad", false),
            Err(BindingError::InvalidArgument(_))
        ));
    }
}
