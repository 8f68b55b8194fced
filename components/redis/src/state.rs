//! The Redis state store: the SDK's [`StateStore`] on Redis hashes, with
//! every write done by one Lua script so that etag checks and writes are
//! atomic.
//!
//! # Data layout
//!
//! Each state key is one Redis hash under the key exactly as the host sends
//! it (daprd and plugd already prefix it, `<appid>||<key>`), with the fields:
//!
//! | field | value |
//! |---|---|
//! | `data` | the value, byte for byte |
//! | `version` | the etag: a random UUID (v4, hyphenated lower case), new on every write |
//! | `contentType` | the content type, only when the writer gave one |
//!
//! A `ttlInSeconds` becomes the key's Redis expiry (`PEXPIRE`); `-1` removes
//! it (`PERSIST`). A write without one uses the component's own
//! `ttlInSeconds` when it has one, and otherwise leaves the key's expiry as it
//! was (as Dapr's Redis store does). Redis drops expired keys itself.
//!
//! Versions are UUIDs rather than counters so that a key deleted (or
//! expired) and written again never gets an etag it had before: an etag read
//! before the delete stays a mismatch. Etags given by clients must be UUIDs
//! (any case, hyphenated or not); anything else is an invalid etag.
//!
//! # Atomicity
//!
//! Set, delete, bulk set, bulk delete and transactions all run [`WRITE_SCRIPT`]
//! over their operations: it first checks every operation in order against
//! the state the earlier operations would leave (so a later operation on the
//! same key sees the earlier one's version), and only when every check passed
//! does it write. A failed check therefore writes nothing, and because Redis
//! runs a script without interleaving other commands, the check and the write
//! are one atomic compare-and-set. Reads run [`READ_SCRIPT`], so a bulk read
//! is one consistent snapshot.
//!
//! Keys that hold something other than a hash (a pub/sub stream, a string)
//! are not state: reads report them as an error for that key and writes are
//! refused without touching them.

use std::fmt::Write as _;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use plugd_component_sdk::state::{
    BulkGetItem, DeleteRequest, GetRequest, GetResponse, Operation, Properties, SetRequest,
    StateError, StateStore, TTL_EXPIRE_TIME_METADATA_KEY, TTL_METADATA_KEY, TransactionRequest,
    feature, parse_ttl,
};
use redis::aio::ConnectionManager;
use redis::{RedisError, Value};
use tonic::Status;

use crate::config::{self, Connection, known};
use crate::connection::{ConnectError, Pool, describe, is_connection_error};
use plugd_component_sdk::metadata::warn_unknown;

/// Hash field holding the value.
pub const DATA_FIELD: &str = "data";
/// Hash field holding the version (the etag).
pub const VERSION_FIELD: &str = "version";
/// Hash field holding the content type.
pub const CONTENT_TYPE_FIELD: &str = "contentType";

/// Most operations in one transaction, bulk set or bulk delete. Each runs in
/// one script, during which Redis serves nobody else.
pub const MAX_OPERATIONS: usize = 10_000;

/// Longest expiry handed to Redis, in milliseconds (about 290 000 years);
/// longer TTLs are shortened to it, which cannot be told apart in practice.
const MAX_TTL_MILLIS: u128 = 1 << 53;

/// Arguments per operation in [`WRITE_SCRIPT`].
const ARGS_PER_OPERATION: usize = 7;

/// Checks then applies write operations, all or none.
///
/// `KEYS[i]` is operation `i`'s key; its arguments are `ARGV[7(i-1)+1 ..]`:
/// kind (`set` or `del`), expected version (`""`: none), insert-only (`1`
/// for first-write without etag), new version, TTL in ms (`""`: none),
/// data, content type (`""`: none). Replies `ok`, or `{reason, i[, type]}`
/// for the first operation that failed its check, having written nothing.
pub const WRITE_SCRIPT: &str = r"
local seen = {}
local function current(key)
  local state = seen[key]
  if state == nil then
    local kind = redis.call('TYPE', key).ok
    if kind == 'none' then
      state = {false, ''}
    elseif kind == 'hash' then
      state = {true, redis.call('HGET', key, 'version') or ''}
    else
      return nil, kind
    end
    seen[key] = state
  end
  return state
end
for i = 1, #KEYS do
  local base = (i - 1) * 7
  local state, kind = current(KEYS[i])
  if state == nil then
    return {'wrongtype', i, kind}
  end
  local expected = ARGV[base + 2]
  if expected ~= '' then
    if not state[1] or state[2] ~= expected then
      return {'mismatch', i}
    end
  elseif ARGV[base + 3] == '1' and state[1] then
    return {'exists', i}
  end
  if ARGV[base + 1] == 'set' then
    seen[KEYS[i]] = {true, ARGV[base + 4]}
  else
    seen[KEYS[i]] = {false, ''}
  end
end
for i = 1, #KEYS do
  local key, base = KEYS[i], (i - 1) * 7
  if ARGV[base + 1] == 'set' then
    redis.call('HSET', key, 'data', ARGV[base + 6], 'version', ARGV[base + 4])
    if ARGV[base + 7] ~= '' then
      redis.call('HSET', key, 'contentType', ARGV[base + 7])
    else
      redis.call('HDEL', key, 'contentType')
    end
    if ARGV[base + 5] == '-1' then
      redis.call('PERSIST', key)
    elseif ARGV[base + 5] ~= '' then
      redis.call('PEXPIRE', key, ARGV[base + 5])
    end
  else
    redis.call('DEL', key)
  end
end
return 'ok'
";

/// Reads every key of `KEYS` in one snapshot. Per key: `{0}` absent,
/// `{1, data, version, contentType, pttl}` (missing fields as `""`), or
/// `{2, type}` when the key is not a hash.
pub const READ_SCRIPT: &str = r"
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local kind = redis.call('TYPE', key).ok
  if kind == 'none' then
    out[i] = {0}
  elseif kind == 'hash' then
    local f = redis.call('HMGET', key, 'data', 'version', 'contentType')
    out[i] = {1, f[1] or '', f[2] or '', f[3] or '', redis.call('PTTL', key)}
  else
    out[i] = {2, kind}
  end
end
return out
";

/// A script known to the server by its SHA1 (from `SCRIPT LOAD`).
#[derive(Debug)]
struct Script {
    body: &'static str,
    sha: String,
}

impl Script {
    async fn load(conn: &mut ConnectionManager, body: &'static str) -> Result<Self, RedisError> {
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(body)
            .query_async(conn)
            .await?;
        Ok(Self { body, sha })
    }

    /// `EVALSHA`, falling back to `EVAL` (which caches the script again) when
    /// the server no longer knows it (restarted, `SCRIPT FLUSH`).
    async fn run(
        &self,
        conn: &mut ConnectionManager,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<Value, RedisError> {
        let command = |name: &str, script: &str| {
            let mut cmd = redis::cmd(name);
            cmd.arg(script).arg(keys.len()).arg(keys);
            for arg in args {
                cmd.arg(*arg);
            }
            cmd
        };
        match command("EVALSHA", &self.sha).query_async(conn).await {
            Err(err) if err.code() == Some("NOSCRIPT") => {
                command("EVAL", self.body).query_async(conn).await
            }
            other => other,
        }
    }
}

/// One state store component instance (one per Component resource).
#[derive(Debug)]
pub struct RedisStateStore {
    instance: String,
    open: RwLock<Option<Arc<Open>>>,
}

/// An initialised instance.
#[derive(Debug)]
struct Open {
    pool: Pool,
    connection: Connection,
    /// The component's `ttlInSeconds`: for writes that give none.
    default_ttl: Ttl,
    write: Script,
    read: Script,
}

impl RedisStateStore {
    /// An instance named `instance`, not initialised.
    pub fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_owned(),
            open: RwLock::new(None),
        }
    }

    /// The connection settings of the current Init, if initialised.
    pub fn connection(&self) -> Option<Connection> {
        self.current().ok().map(|open| open.connection.clone())
    }

    fn current(&self) -> Result<Arc<Open>, StateError> {
        self.open
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StateError::NotInitialized)
    }

    async fn connect(&self, properties: &Properties) -> Result<Open, StateError> {
        let connection = Connection::from_properties(properties)
            .map_err(|err| StateError::InvalidArgument(err.to_string()))?;
        let default_ttl =
            match plugd_component_sdk::metadata::property(properties, TTL_METADATA_KEY) {
                None => Ttl::Keep,
                Some(value) => Ttl::parse(value)?,
            };
        warn_unknown(
            "state.redis",
            &self.instance,
            properties,
            &known(&config::keys::CONNECTION),
        );
        tracing::debug!(instance = %self.instance, ?connection, "connecting");
        let pool = Pool::connect(&connection).await.map_err(connect_error)?;
        let mut conn = pool.conn();
        let load = async {
            Ok::<_, RedisError>((
                Script::load(&mut conn, WRITE_SCRIPT).await?,
                Script::load(&mut conn, READ_SCRIPT).await?,
            ))
        };
        let (write, read) = load.await.map_err(|err| {
            redis_error(
                &err,
                "cannot load the state scripts (SCRIPT LOAD; is scripting enabled?)",
            )
        })?;
        Ok(Open {
            pool,
            connection,
            default_ttl,
            write,
            read,
        })
    }

    /// Reads `keys` in one snapshot.
    async fn read(&self, keys: &[&str]) -> Result<Vec<Result<GetResponse, String>>, StateError> {
        let open = self.current()?;
        for key in keys {
            require_key(key)?;
        }
        let reply = open
            .read
            .run(&mut open.pool.conn(), keys, &[])
            .await
            .map_err(|err| redis_error(&err, "read"))?;
        parse_read_reply(&reply, keys)
    }

    /// Checks then applies `operations`, all or none.
    async fn write(&self, operations: Vec<Write>) -> Result<(), StateError> {
        let open = self.current()?;
        if operations.is_empty() {
            return Ok(());
        }
        if operations.len() > MAX_OPERATIONS {
            return Err(StateError::InvalidArgument(format!(
                "{} operations in one request; at most {MAX_OPERATIONS} are allowed",
                operations.len()
            )));
        }
        let keys: Vec<&str> = operations.iter().map(|op| op.key.as_str()).collect();
        let mut args: Vec<&[u8]> = Vec::with_capacity(operations.len() * ARGS_PER_OPERATION);
        for op in &operations {
            args.extend_from_slice(&[
                if op.set.is_some() { b"set" } else { b"del" },
                op.expected.as_deref().unwrap_or_default().as_bytes(),
                if op.insert_only { b"1" } else { b"0" },
            ]);
            match &op.set {
                Some(set) => args.extend_from_slice(&[
                    set.version.as_bytes(),
                    set.ttl.arg().as_bytes(),
                    &set.data,
                    set.content_type.as_deref().unwrap_or_default().as_bytes(),
                ]),
                None => args.extend_from_slice(&[b"", b"", b"", b""]),
            }
        }
        let reply = open
            .write
            .run(&mut open.pool.conn(), &keys, &args)
            .await
            .map_err(|err| redis_error(&err, "write"))?;
        check_write_reply(&reply, &keys)
    }
}

/// One write operation, validated and in the form the script takes.
#[derive(Debug)]
struct Write {
    key: String,
    /// The version the key must have (normalised etag).
    expected: Option<String>,
    /// First-write without etag: the key must not exist.
    insert_only: bool,
    /// `None` for a delete.
    set: Option<NewValue>,
}

/// What a write does to the key's expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ttl {
    /// Leave it as it is.
    Keep,
    /// Remove it (`ttlInSeconds: -1`).
    Persist,
    /// Expire after this many milliseconds.
    Millis(String),
}

impl Ttl {
    /// A `ttlInSeconds` value: `-1` or a positive number of seconds.
    fn parse(value: &str) -> Result<Self, StateError> {
        if value.trim() == "-1" {
            return Ok(Self::Persist);
        }
        Ok(match parse_ttl(Some(value))? {
            // Whole milliseconds; a TTL is at least one second.
            Some(ttl) => Self::Millis(ttl.as_millis().clamp(1, MAX_TTL_MILLIS).to_string()),
            None => Self::Persist,
        })
    }

    /// The script argument: `""` keep, `"-1"` persist, else milliseconds.
    fn arg(&self) -> &str {
        match self {
            Self::Keep => "",
            Self::Persist => "-1",
            Self::Millis(ms) => ms,
        }
    }
}

#[derive(Debug)]
struct NewValue {
    version: String,
    ttl: Ttl,
    data: Vec<u8>,
    content_type: Option<String>,
}

impl Write {
    /// A set; without a `ttlInSeconds` of its own it gets `default_ttl`.
    fn set(request: SetRequest, default_ttl: &Ttl) -> Result<Self, StateError> {
        require_key(&request.key)?;
        let ttl = match request.metadata.get(TTL_METADATA_KEY) {
            Some(value) => Ttl::parse(value)?,
            None => default_ttl.clone(),
        };
        let expected = request.etag.as_deref().map(parse_etag).transpose()?;
        Ok(Self {
            insert_only: request.is_insert_only(),
            key: request.key,
            expected,
            set: Some(NewValue {
                version: new_version(),
                ttl,
                data: request.value,
                content_type: request.content_type.filter(|ct| !ct.is_empty()),
            }),
        })
    }

    fn delete(request: DeleteRequest) -> Result<Self, StateError> {
        require_key(&request.key)?;
        Ok(Self {
            expected: request.etag.as_deref().map(parse_etag).transpose()?,
            key: request.key,
            insert_only: false,
            set: None,
        })
    }
}

fn require_key(key: &str) -> Result<(), StateError> {
    if key.is_empty() {
        Err(StateError::InvalidArgument("key is required".to_owned()))
    } else {
        Ok(())
    }
}

/// A new version: a random UUID, hyphenated lower case.
fn new_version() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// A client's etag in the stored form; anything but a UUID is invalid.
fn parse_etag(etag: &str) -> Result<String, StateError> {
    uuid::Uuid::try_parse(etag.trim())
        .map(|uuid| uuid.hyphenated().to_string())
        .map_err(|_| {
            StateError::InvalidEtag(format!(
                "{etag:?} is not an etag of this store (etags are UUIDs)"
            ))
        })
}

/// Prefixes an operation's error with its position, keeping its kind.
fn in_operation(index: usize, err: StateError) -> StateError {
    let at = |message: String| format!("operation {index}: {message}");
    match err {
        StateError::InvalidArgument(message) => StateError::InvalidArgument(at(message)),
        StateError::InvalidEtag(message) => StateError::InvalidEtag(at(message)),
        other => other,
    }
}

fn connect_error(err: ConnectError) -> StateError {
    let message = describe(&err);
    if err.is_refused_settings() {
        StateError::InvalidArgument(message)
    } else {
        StateError::Status(Status::unavailable(message))
    }
}

/// A failed command: `UNAVAILABLE` when Redis could not be reached,
/// `INTERNAL` otherwise.
fn redis_error(err: &RedisError, what: &str) -> StateError {
    let message = format!("Redis {what}: {}", describe(err));
    if is_connection_error(err) {
        StateError::Status(Status::unavailable(message))
    } else {
        StateError::Internal(message)
    }
}

fn unexpected(what: &str, reply: &Value) -> StateError {
    StateError::Internal(format!(
        "unexpected reply from the {what} script: {reply:?}"
    ))
}

fn bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        Value::SimpleString(text) => Some(text.clone().into_bytes()),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    bytes(value).and_then(|bytes| String::from_utf8(bytes).ok())
}

fn not_state(key: &str, kind: &str) -> String {
    format!("key {key:?} holds a Redis {kind}, not state (a hash); it is left untouched")
}

fn check_write_reply(reply: &Value, keys: &[&str]) -> Result<(), StateError> {
    if text(reply).as_deref() == Some("ok") {
        return Ok(());
    }
    let bad = || unexpected("write", reply);
    let Value::Array(parts) = reply else {
        return Err(bad());
    };
    let reason = parts.first().and_then(text).ok_or_else(bad)?;
    let index = match parts.get(1) {
        Some(Value::Int(index)) => usize::try_from(*index).ok(),
        _ => None,
    }
    .filter(|index| (1..=keys.len()).contains(index))
    .ok_or_else(bad)?;
    let key = keys[index - 1];
    let at = if keys.len() > 1 {
        format!("operation {}: ", index - 1)
    } else {
        String::new()
    };
    Err(match reason.as_str() {
        "mismatch" => StateError::EtagMismatch(format!(
            "{at}the etag does not match the current version of key {key:?}"
        )),
        "exists" => StateError::EtagMismatch(format!(
            "{at}key {key:?} already exists and first-write concurrency was asked without an etag"
        )),
        "wrongtype" => {
            let kind = parts.get(2).and_then(text).unwrap_or_default();
            StateError::Status(Status::failed_precondition(format!(
                "{at}{}",
                not_state(key, &kind)
            )))
        }
        _ => return Err(bad()),
    })
}

fn parse_read_reply(
    reply: &Value,
    keys: &[&str],
) -> Result<Vec<Result<GetResponse, String>>, StateError> {
    let bad = || unexpected("read", reply);
    let Value::Array(items) = reply else {
        return Err(bad());
    };
    if items.len() != keys.len() {
        return Err(bad());
    }
    items
        .iter()
        .zip(keys)
        .map(|(item, key)| {
            let Value::Array(fields) = item else {
                return Err(bad());
            };
            match fields.as_slice() {
                [Value::Int(0)] => Ok(Ok(GetResponse::default())),
                [Value::Int(1), data, version, content_type, Value::Int(pttl)] => {
                    let data = bytes(data).ok_or_else(bad)?;
                    let version = text(version).ok_or_else(bad)?;
                    let content_type = text(content_type).ok_or_else(bad)?;
                    let mut response = GetResponse {
                        data,
                        etag: (!version.is_empty()).then_some(version),
                        content_type: (!content_type.is_empty()).then_some(content_type),
                        ..GetResponse::default()
                    };
                    if let Some(at) = expire_time(*pttl, SystemTime::now()) {
                        response
                            .metadata
                            .insert(TTL_EXPIRE_TIME_METADATA_KEY.to_owned(), at);
                    }
                    Ok(Ok(response))
                }
                [Value::Int(2), kind] => Ok(Err(not_state(key, &text(kind).unwrap_or_default()))),
                _ => Err(bad()),
            }
        })
        .collect()
}

/// The expiry as RFC 3339 (seconds, UTC) for a `PTTL` reply; `None` without
/// expiry (negative) or past what RFC 3339 can write (year 9999).
fn expire_time(pttl_millis: i64, now: SystemTime) -> Option<String> {
    let millis = u64::try_from(pttl_millis).ok()?;
    let at = now.checked_add(Duration::from_millis(millis))?;
    let mut formatted = String::new();
    write!(formatted, "{}", humantime::format_rfc3339_seconds(at)).ok()?;
    Some(formatted)
}

impl StateStore for RedisStateStore {
    const TRANSACTIONAL: bool = true;

    async fn init(&self, properties: Properties) -> Result<(), StateError> {
        let opened = self.connect(&properties).await;
        let mut slot = self.open.write().unwrap_or_else(PoisonError::into_inner);
        match opened {
            Ok(open) => {
                tracing::info!(
                    instance = %self.instance,
                    redis = %open.connection.address(),
                    db = open.connection.db,
                    "redis state store initialised"
                );
                *slot = Some(Arc::new(open));
                Ok(())
            }
            Err(err) => {
                // A failed (re-)init leaves the instance uninitialised.
                *slot = None;
                Err(err)
            }
        }
    }

    fn features(&self) -> Vec<String> {
        // TRANSACTIONAL is added by the SDK.
        vec![feature::ETAG.to_owned(), feature::TTL.to_owned()]
    }

    async fn get(&self, request: GetRequest) -> Result<GetResponse, StateError> {
        let mut items = self.read(&[request.key.as_str()]).await?;
        match items.pop() {
            Some(Ok(response)) => Ok(response),
            Some(Err(message)) => Err(StateError::Status(Status::failed_precondition(message))),
            None => Err(StateError::Internal("no reply for the key".to_owned())),
        }
    }

    async fn set(&self, request: SetRequest) -> Result<(), StateError> {
        let default_ttl = self.current()?.default_ttl.clone();
        self.write(vec![Write::set(request, &default_ttl)?]).await
    }

    async fn delete(&self, request: DeleteRequest) -> Result<(), StateError> {
        self.write(vec![Write::delete(request)?]).await
    }

    async fn bulk_get(&self, requests: Vec<GetRequest>) -> Result<Vec<BulkGetItem>, StateError> {
        let keys: Vec<&str> = requests
            .iter()
            .map(|request| request.key.as_str())
            .collect();
        if keys.is_empty() {
            self.current()?;
            return Ok(Vec::new());
        }
        if keys.len() > MAX_OPERATIONS {
            return Err(StateError::InvalidArgument(format!(
                "{} keys in one bulk get; at most {MAX_OPERATIONS} are allowed",
                keys.len()
            )));
        }
        let results = self.read(&keys).await?;
        Ok(keys
            .iter()
            .zip(results)
            .map(|(key, result)| BulkGetItem {
                key: (*key).to_owned(),
                result,
            })
            .collect())
    }

    /// All or none, like a transaction.
    async fn bulk_set(&self, requests: Vec<SetRequest>) -> Result<(), StateError> {
        let default_ttl = self.current()?.default_ttl.clone();
        let writes = requests
            .into_iter()
            .enumerate()
            .map(|(index, request)| {
                Write::set(request, &default_ttl).map_err(|err| in_operation(index, err))
            })
            .collect::<Result<_, _>>()?;
        self.write(writes).await
    }

    /// All or none, like a transaction.
    async fn bulk_delete(&self, requests: Vec<DeleteRequest>) -> Result<(), StateError> {
        let writes = requests
            .into_iter()
            .enumerate()
            .map(|(index, request)| Write::delete(request).map_err(|err| in_operation(index, err)))
            .collect::<Result<_, _>>()?;
        self.write(writes).await
    }

    async fn transact(&self, request: TransactionRequest) -> Result<(), StateError> {
        let default_ttl = self.current()?.default_ttl.clone();
        let writes = request
            .operations
            .into_iter()
            .enumerate()
            .map(|(index, operation)| {
                match operation {
                    Operation::Set(request) => Write::set(request, &default_ttl),
                    Operation::Delete(request) => Write::delete(request),
                }
                .map_err(|err| in_operation(index, err))
            })
            .collect::<Result<_, _>>()?;
        self.write(writes).await
    }

    async fn ping(&self) -> Result<(), StateError> {
        let open = self.current()?;
        open.pool
            .ping()
            .await
            .map_err(|err| redis_error(&err, "PING"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn etags_must_be_uuids_and_are_normalised() {
        let uuid = "6F9619FF-8B86-D011-B42D-00CF4FC964FF";
        assert_eq!(
            parse_etag(uuid).expect("uuid"),
            "6f9619ff-8b86-d011-b42d-00cf4fc964ff"
        );
        assert_eq!(
            parse_etag("6f9619ff8b86d011b42d00cf4fc964ff").expect("simple form"),
            "6f9619ff-8b86-d011-b42d-00cf4fc964ff"
        );
        for bad in ["1", "not-an-etag", "6f9619ff-8b86-d011-b42d"] {
            assert!(
                matches!(parse_etag(bad), Err(StateError::InvalidEtag(_))),
                "{bad:?} accepted"
            );
        }
        assert!(parse_etag(&new_version()).is_ok());
    }

    #[test]
    fn expire_times() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(expire_time(-1, now), None);
        assert_eq!(expire_time(-2, now), None);
        assert_eq!(
            expire_time(3_600_000, now).as_deref(),
            Some("2023-11-14T23:13:20Z")
        );
        assert_eq!(expire_time(i64::MAX, now), None);
    }

    #[test]
    fn write_replies() {
        let keys = ["a", "b"];
        assert!(check_write_reply(&Value::BulkString(b"ok".to_vec()), &keys).is_ok());
        let mismatch = Value::Array(vec![Value::BulkString(b"mismatch".to_vec()), Value::Int(2)]);
        match check_write_reply(&mismatch, &keys) {
            Err(StateError::EtagMismatch(message)) => {
                assert!(message.contains("operation 1") && message.contains("\"b\""));
            }
            other => panic!("{other:?}"),
        }
        let out_of_range =
            Value::Array(vec![Value::BulkString(b"mismatch".to_vec()), Value::Int(3)]);
        assert!(matches!(
            check_write_reply(&out_of_range, &keys),
            Err(StateError::Internal(_))
        ));
        assert!(matches!(
            check_write_reply(&Value::Nil, &keys),
            Err(StateError::Internal(_))
        ));
    }

    #[test]
    fn invalid_requests_are_refused_before_redis() {
        let mut request = SetRequest {
            key: "k".to_owned(),
            etag: Some("7".to_owned()),
            ..SetRequest::default()
        };
        assert!(matches!(
            Write::set(request.clone(), &Ttl::Keep),
            Err(StateError::InvalidEtag(_))
        ));
        request.etag = None;
        request
            .metadata
            .insert("ttlInSeconds".to_owned(), "0".to_owned());
        assert!(matches!(
            Write::set(request, &Ttl::Keep),
            Err(StateError::InvalidArgument(_))
        ));
        assert!(matches!(
            Write::delete(DeleteRequest::default()),
            Err(StateError::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn calls_before_init_are_refused() {
        let store = RedisStateStore::new("s");
        assert!(matches!(
            store.ping().await,
            Err(StateError::NotInitialized)
        ));
        assert!(matches!(
            store.get(GetRequest::default()).await,
            Err(StateError::NotInitialized)
        ));
        assert!(matches!(
            store.transact(TransactionRequest::default()).await,
            Err(StateError::NotInitialized)
        ));
    }
}
