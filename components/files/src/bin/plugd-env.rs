//! `plugd-env`: serves the environment-variable secret store
//! (`secretstores.local.env`) on one Unix socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use plugd_component_sdk::run;

/// A secret store reading the process's environment variables (Dapr's
/// `secretstores.local.env`), served as a Dapr pluggable component.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Socket file name without `.sock`; Components use
    /// `type: secretstores.<name>`.
    #[arg(long, env = "PLUGD_ENV_SOCKET_NAME", default_value = plugd_files::env::DEFAULT_SOCKET_NAME)]
    socket_name: String,

    /// Socket folder. Default: DAPR_COMPONENTS_SOCKETS_FOLDER,
    /// DAPR_COMPONENT_SOCKETS_FOLDER, DAPR_COMPONENT_SOCKET_FOLDER, else
    /// /tmp/dapr-components-sockets.
    #[arg(long, env = "PLUGD_ENV_SOCKET_FOLDER")]
    socket_folder: Option<PathBuf>,

    /// How long in-flight calls may finish after SIGTERM/SIGINT.
    #[arg(long, env = "PLUGD_ENV_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,

    /// Log as JSON lines instead of plain text.
    #[arg(long, env = "PLUGD_ENV_LOG_AS_JSON")]
    log_as_json: bool,

    /// Log filter (tracing env-filter syntax); RUST_LOG is used when unset.
    #[arg(long, env = "PLUGD_ENV_LOG_LEVEL")]
    log_level: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = match run::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    run::init_logging(cli.log_level.as_deref(), cli.log_as_json);

    let mut server = plugd_files::env_server(cli.socket_name).shutdown_grace(cli.shutdown_grace);
    if let Some(folder) = cli.socket_folder {
        server = server.socket_folder(folder);
    }
    run::serve("plugd-env", server).await
}
