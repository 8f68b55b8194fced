//! `plugd-memory`: serves the in-memory pub/sub broker and state store on one
//! Unix socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use plugd_component_sdk::{ComponentServer, shutdown_signal};
use plugd_memory::{MemoryPubSub, MemoryStore};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Exit code for bad usage (sysexits EX_USAGE).
const EXIT_USAGE: u8 = 64;

/// An in-memory pub/sub broker and state store served as one Dapr pluggable
/// component. Everything is lost when the process exits.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Socket file name without `.sock`; Components use `type: pubsub.<name>`
    /// and `type: state.<name>`.
    #[arg(long, env = "PLUGD_MEMORY_SOCKET_NAME", default_value = "memory")]
    socket_name: String,

    /// Socket folder. Default: DAPR_COMPONENTS_SOCKETS_FOLDER,
    /// DAPR_COMPONENT_SOCKETS_FOLDER, DAPR_COMPONENT_SOCKET_FOLDER, else
    /// /tmp/dapr-components-sockets.
    #[arg(long, env = "PLUGD_MEMORY_SOCKET_FOLDER")]
    socket_folder: Option<PathBuf>,

    /// How long in-flight calls may finish after SIGTERM/SIGINT.
    #[arg(long, env = "PLUGD_MEMORY_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,

    /// Log as JSON lines instead of plain text.
    #[arg(long, env = "PLUGD_MEMORY_LOG_AS_JSON")]
    log_as_json: bool,

    /// Log filter (tracing env-filter syntax); RUST_LOG is used when unset.
    #[arg(long, env = "PLUGD_MEMORY_LOG_LEVEL")]
    log_level: Option<String>,
}

fn init_logging(cli: &Cli) {
    let filter = match &cli.log_level {
        Some(level) => EnvFilter::try_new(level).ok(),
        None => EnvFilter::try_from_default_env().ok(),
    }
    .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_as_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(&cli);

    // One signal stops the server and ends every subscription stream, so the
    // drain does not wait for hosts to close their streams.
    let stop = CancellationToken::new();
    let subscriptions = stop.clone();
    let mut server = ComponentServer::new(cli.socket_name)
        .shutdown_grace(cli.shutdown_grace)
        .state_store(MemoryStore::new)
        .pubsub(move |instance: &str| MemoryPubSub::with_shutdown(instance, subscriptions.clone()));
    if let Some(folder) = cli.socket_folder {
        server = server.socket_folder(folder);
    }
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal.cancel();
    });
    match server.serve_with_shutdown(stop.cancelled_owned()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = %err, "plugd-memory failed");
            ExitCode::FAILURE
        }
    }
}
