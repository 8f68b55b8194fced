//! `plugd`: thin binary over the `plugd` library.

use std::process::ExitCode;

use clap::Parser;
use plugd::{
    App,
    cli::{Args, Tool},
    config::Config,
    telemetry,
};

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
    if let Some(tool) = args.command {
        return run_tool(tool);
    }
    let runtime = match plugd::runtime(args.worker_threads) {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("plugd: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporter's channel is made inside the runtime.
    let telemetry = {
        let _entered = runtime.enter();
        telemetry::init(&telemetry::Settings {
            level: args.log_level.clone(),
            json: args.log_as_json,
            app_id: args.app_id.clone(),
            otlp_endpoint: args.otlp_endpoint.clone(),
        })
    };
    let telemetry = match telemetry {
        Ok(t) => t,
        Err(err) => {
            eprintln!("plugd: {err}");
            return ExitCode::from(64);
        }
    };
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
    let code = runtime.block_on(async move {
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
    });
    // Flush the spans not yet exported while the runtime still runs: the exporter blocks its
    // own thread on a connection whose tasks live on this runtime (a one-thread runtime runs
    // them only inside `block_on`).
    runtime.block_on(async move {
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    });
    code
}

/// `plugd conformance` and `plugd inspect`: output on stdout, exit 0 when all is well, 1 when a
/// check failed or a socket is unusable, 2 when they could not run at all.
fn run_tool(tool: Tool) -> ExitCode {
    // Quiet by default: the tools print their own results.
    let _ = telemetry::init_plain("warn");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("plugd: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async move {
        match tool {
            Tool::Conformance(args) => {
                let metadata = args.metadata.iter().cloned().collect();
                let problems = plugd::conformance::option_problems(&metadata);
                if !problems.is_empty() {
                    for problem in problems {
                        eprintln!("plugd conformance: {problem}");
                    }
                    return ExitCode::from(64);
                }
                let options = plugd::conformance::Options {
                    socket: args.socket,
                    kinds: args.kind.into_iter().map(Into::into).collect(),
                    metadata: args.metadata.into_iter().collect(),
                    timeout: args.timeout,
                };
                let report = plugd::conformance::run(&options).await;
                if args.json {
                    match serde_json::to_string_pretty(&report) {
                        Ok(text) => println!("{text}"),
                        Err(err) => {
                            eprintln!("plugd: {err}");
                            return ExitCode::from(2);
                        }
                    }
                } else {
                    print!("{}", report.table());
                }
                if report.passed() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Tool::Inspect(args) => {
                let reports = match (&args.socket, &args.sockets_folder) {
                    (Some(socket), _) => vec![plugd::inspect::socket(socket, args.timeout).await],
                    (None, folder) => {
                        let folder = folder.clone().unwrap_or_else(|| {
                            plugd::config::sockets_folder_from_env(|k| std::env::var(k).ok())
                        });
                        match plugd::inspect::folder(&folder, args.timeout).await {
                            Ok(reports) => reports,
                            Err(err) => {
                                eprintln!("plugd: cannot read {}: {err}", folder.display());
                                return ExitCode::from(2);
                            }
                        }
                    }
                };
                if args.json {
                    match serde_json::to_string_pretty(&reports) {
                        Ok(text) => println!("{text}"),
                        Err(err) => {
                            eprintln!("plugd: {err}");
                            return ExitCode::from(2);
                        }
                    }
                } else if reports.is_empty() {
                    println!("no sockets");
                } else {
                    print!("{}", plugd::inspect::table(&reports));
                }
                if reports.iter().all(|r| r.reachable && r.error.is_none()) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
        }
    })
}
