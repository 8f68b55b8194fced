//! `plugd`: thin binary over the `plugd` library.

use std::process::ExitCode;

use clap::Parser;
use plugd::{App, cli::Args, config::Config, telemetry};

fn main() -> ExitCode {
    // daprd's command line works too: Go's `-flag` spelling, and its flags plugd does not use.
    let (argv, ignored) = plugd::cli::normalize_daprd_args(std::env::args_os());
    let args = match Args::try_parse_from(argv) {
        Ok(args) => args,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Err(err) = telemetry::init(&args.log_level, args.log_as_json) {
        eprintln!("plugd: {err}");
        return ExitCode::from(64);
    }
    for warning in ignored {
        tracing::warn!("{warning}");
    }
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!("{err:#}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = plugd::shutdown::on_signal();
        match App::build(config, shutdown.clone()).await {
            Ok(app) => match app.run().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("plugd stopped with an error: {err:#}");
                    ExitCode::FAILURE
                }
            },
            Err(err) => {
                tracing::error!("plugd could not start: {err:#}");
                ExitCode::FAILURE
            }
        }
    })
}
