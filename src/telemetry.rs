//! Logging set-up: plain or JSON lines, filtered by `--log-level` or `RUST_LOG`.

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber. `level` is a daprd level name (`debug`, `info`, `warn`,
/// `error`, `fatal`) or any `tracing` filter directive.
pub fn init(level: &str, json: bool) -> anyhow::Result<()> {
    let directive = match level.to_ascii_lowercase().as_str() {
        "fatal" => "error".to_string(),
        other => other.to_string(),
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(env)?,
        _ => EnvFilter::try_new(&directive)
            .map_err(|e| anyhow::anyhow!("invalid --log-level {level:?}: {e}"))?,
    };
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}
