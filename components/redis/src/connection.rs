//! Connecting to Redis: the client, the Init probe and the pool of shared
//! connections, used by both the pub/sub ([`crate::streams`]) and the state
//! store ([`crate::state`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, RedisConnectionInfo, RedisError};

use crate::config::Connection;

/// Bound on establishing a connection.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the connection Init makes (and its PING), kept under daprd's
/// default 5 s `initTimeout` so that a clear error reaches the host.
pub(crate) const INIT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on one command's reply.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server could not be reached.
    #[error("cannot reach Redis at {address}{tls}: {source}{hint}")]
    Unreachable {
        /// `host:port`.
        address: String,
        /// `" over TLS"` or empty.
        tls: &'static str,
        /// The cause.
        #[source]
        source: RedisError,
        /// A likely explanation, or empty.
        hint: &'static str,
    },
    /// Redis refused the credentials.
    #[error("Redis at {address} refused the credentials (redisUsername/redisPassword): {source}")]
    Authentication {
        /// `host:port`.
        address: String,
        /// The cause.
        #[source]
        source: RedisError,
    },
    /// Redis refused `SELECT <db>`.
    #[error("Redis at {address} refused database {db} (redisDB): {source}")]
    Database {
        /// `host:port`.
        address: String,
        /// The database number.
        db: i64,
        /// The cause.
        #[source]
        source: RedisError,
    },
    /// The connection settings could not be turned into a client.
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
}

impl ConnectError {
    /// Whether Redis refused the settings (credentials or database number),
    /// as opposed to not being reachable.
    pub fn is_refused_settings(&self) -> bool {
        matches!(self, Self::Authentication { .. } | Self::Database { .. })
    }
}

/// An error with its causes, `: `-separated (a cause already quoted in the
/// message is not repeated).
pub(crate) fn describe(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Whether a command failed because of the connection rather than the command.
pub fn is_connection_error(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_unrecoverable_error()
}

/// A connected client and `poolSize` shared, multiplexed, self-reconnecting
/// connections used round robin. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    client: Client,
    conns: Vec<ConnectionManager>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("connections", &self.inner.conns.len())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Connects and checks the connection with `PING` (bounded by
    /// [`INIT_TIMEOUT`]), then sets up the shared connections (lazily).
    pub async fn connect(settings: &Connection) -> Result<Self, ConnectError> {
        if settings.tls {
            // The redis crate builds its rustls configuration with the process
            // default provider; ring is the one compiled in.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let addr = if settings.tls {
            ConnectionAddr::TcpTls {
                host: settings.host.clone(),
                port: settings.port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(settings.host.clone(), settings.port)
        };
        let mut redis = RedisConnectionInfo::default().set_db(settings.db);
        if let Some(username) = &settings.username {
            redis = redis.set_username(username);
        }
        if let Some(password) = &settings.password {
            redis = redis.set_password(password);
        }
        let info = redis::IntoConnectionInfo::into_connection_info(addr)?.set_redis_settings(redis);
        let client = Client::open(info)?;

        // One direct connection first, so that a wrong address or password
        // fails Init at once with a clear message instead of being retried.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(INIT_TIMEOUT))
            .set_response_timeout(Some(INIT_TIMEOUT));
        let mut probe: MultiplexedConnection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|source| classify(settings, source))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut probe)
            .await
            .map_err(|source| classify(settings, source))?;
        drop(probe);

        // Settings built in code may hold zero; Init refuses it.
        let conns = (0..settings.pool_size.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), manager_config(None)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            inner: Arc::new(PoolInner {
                client,
                conns,
                next: AtomicUsize::new(0),
            }),
        })
    }

    /// A shared connection (round robin).
    pub fn conn(&self) -> ConnectionManager {
        let index = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.conns.len();
        self.inner.conns[index].clone()
    }

    /// `PING` on a shared connection.
    pub async fn ping(&self) -> Result<(), RedisError> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }

    /// The client, for connections of their own (blocking reads).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}

fn classify(settings: &Connection, source: RedisError) -> ConnectError {
    let address = settings.address();
    match source.kind() {
        redis::ErrorKind::AuthenticationFailed => ConnectError::Authentication { address, source },
        _ if source.code() == Some("WRONGPASS") || source.code() == Some("NOAUTH") => {
            ConnectError::Authentication { address, source }
        }
        _ if source.code() == Some("ERR")
            && source.detail().is_some_and(|d| d.contains("DB index")) =>
        {
            ConnectError::Database {
                address,
                db: settings.db,
                source,
            }
        }
        _ => ConnectError::Unreachable {
            address,
            tls: if settings.tls { " over TLS" } else { "" },
            hint: if settings.tls && source.is_timeout() {
                " (no TLS handshake: does the server have TLS enabled on that port?)"
            } else {
                ""
            },
            source,
        },
    }
}

/// Settings of a self-reconnecting connection; `extra_response_time` is added
/// to the reply bound (for blocking commands).
pub(crate) fn manager_config(extra_response_time: Option<Duration>) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(
            RESPONSE_TIMEOUT + extra_response_time.unwrap_or_default(),
        ))
        .set_max_delay(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[test]
    fn errors_are_described_with_their_causes() {
        assert_eq!(describe(&Outer(Inner)), "outer: inner");
    }
}
