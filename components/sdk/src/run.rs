//! What a component binary's `main` needs besides its own flags: flag parsing with the usual exit
//! codes, logging to stderr (plain or JSON), and serving until SIGTERM or SIGINT.
//!
//! ```no_run
//! use plugd_component_sdk::{ComponentServer, run};
//! # #[derive(clap::Parser)] struct Cli { #[arg(long)] log_level: Option<String> }
//! # fn add_kinds(s: ComponentServer) -> ComponentServer { s }
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     let cli: Cli = match run::parse_args() {
//!         Ok(cli) => cli,
//!         Err(code) => return code,
//!     };
//!     run::init_logging(cli.log_level.as_deref(), false);
//!     run::serve("my-component", add_kinds(ComponentServer::new("mine"))).await
//! }
//! ```

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use crate::ComponentServer;

/// Exit code for bad usage (sysexits `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

/// Parses the command line. `Err` holds the exit code to return at once: 0 after `--help` or
/// `--version`, [`EXIT_USAGE`] after a bad flag (clap has printed the message).
pub fn parse_args<C: clap::Parser>() -> Result<C, ExitCode> {
    C::try_parse().map_err(|err| {
        let _ = err.print();
        if err.use_stderr() {
            ExitCode::from(EXIT_USAGE)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// Logs to stderr. `level` is a tracing env-filter directive; without one `RUST_LOG` is used,
/// else `info`.
pub fn init_logging(level: Option<&str>, json: bool) {
    let filter = match level {
        Some(level) => EnvFilter::try_new(level).ok(),
        None => EnvFilter::try_from_default_env().ok(),
    }
    .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a host relaying the output gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Serves until SIGTERM or SIGINT and returns the process exit code; failures are logged under
/// `name`.
pub async fn serve(name: &str, server: ComponentServer) -> ExitCode {
    match server.serve().await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = %err, "{name} failed");
            ExitCode::FAILURE
        }
    }
}
