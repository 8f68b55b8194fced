//! `plugd-redis`: serves the Redis Streams pub/sub and the Redis state store
//! on one Unix socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use plugd_component_sdk::{ComponentServer, run};
use plugd_redis::{RedisPubSub, RedisStateStore};

/// A Redis Streams pub/sub and a Redis state store served as a Dapr pluggable
/// component.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Socket file name without `.sock`; Components use `type: pubsub.<name>`
    /// and `type: state.<name>`.
    #[arg(long, env = "PLUGD_REDIS_SOCKET_NAME", default_value = "redis")]
    socket_name: String,

    /// Socket folder. Default: DAPR_COMPONENTS_SOCKETS_FOLDER,
    /// DAPR_COMPONENT_SOCKETS_FOLDER, DAPR_COMPONENT_SOCKET_FOLDER, else
    /// /tmp/dapr-components-sockets.
    #[arg(long, env = "PLUGD_REDIS_SOCKET_FOLDER")]
    socket_folder: Option<PathBuf>,

    /// How long in-flight calls may finish after SIGTERM/SIGINT.
    #[arg(long, env = "PLUGD_REDIS_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,

    /// Log as JSON lines instead of plain text.
    #[arg(long, env = "PLUGD_REDIS_LOG_AS_JSON")]
    log_as_json: bool,

    /// Log filter (tracing env-filter syntax); RUST_LOG is used when unset.
    #[arg(long, env = "PLUGD_REDIS_LOG_LEVEL")]
    log_level: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = match run::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    run::init_logging(cli.log_level.as_deref(), cli.log_as_json);

    let mut server = ComponentServer::new(cli.socket_name)
        .shutdown_grace(cli.shutdown_grace)
        .state_store(RedisStateStore::new)
        .pubsub(RedisPubSub::new);
    if let Some(folder) = cli.socket_folder {
        server = server.socket_folder(folder);
    }
    run::serve("plugd-redis", server).await
}
