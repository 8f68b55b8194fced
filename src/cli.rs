//! Command-line flags, named as daprd names them, each with an environment fallback.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// plugd: a Dapr-compatible sidecar that serves the runtime API with pluggable components.
///
/// Without a subcommand, plugd runs the sidecar.
#[derive(Debug, Clone, Parser)]
#[command(name = "plugd", version, about, args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Tools for component authors; without one, plugd runs the sidecar.
    #[command(subcommand)]
    pub command: Option<Tool>,

    /// The application's id: used in state key prefixes and the metadata API.
    #[arg(long = "app-id", env = "APP_ID", default_value = "")]
    pub app_id: String,

    /// A folder of Component YAML files (repeatable).
    #[arg(
        long = "resources-path",
        visible_alias = "components-path",
        env = "DAPR_RESOURCES_PATH",
        value_delimiter = ','
    )]
    pub resources_path: Vec<PathBuf>,

    /// The folder where pluggable components listen on Unix sockets. Falls back to
    /// DAPR_COMPONENTS_SOCKETS_FOLDER, DAPR_COMPONENT_SOCKETS_FOLDER, DAPR_COMPONENT_SOCKET_FOLDER,
    /// then /tmp/dapr-components-sockets.
    #[arg(long = "sockets-folder")]
    pub sockets_folder: Option<PathBuf>,

    /// Port of the gRPC runtime API.
    #[arg(
        long = "dapr-grpc-port",
        env = "DAPR_GRPC_PORT",
        default_value_t = 50001
    )]
    pub dapr_grpc_port: u16,

    /// Port of the HTTP runtime API.
    #[arg(
        long = "dapr-http-port",
        env = "DAPR_HTTP_PORT",
        default_value_t = 3500
    )]
    pub dapr_http_port: u16,

    /// Addresses the APIs listen on, comma-separated (`127.0.0.1,[::1]`).
    #[arg(
        long = "dapr-listen-addresses",
        env = "DAPR_LISTEN_ADDRESSES",
        default_value = "127.0.0.1"
    )]
    pub listen_address: String,

    /// Serve Prometheus metrics on --metrics-port.
    #[arg(long = "enable-metrics", env = "PLUGD_ENABLE_METRICS", default_value_t = true,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub enable_metrics: bool,

    /// Port of the Prometheus metrics endpoint (`/metrics`), on the first listen address.
    #[arg(
        long = "metrics-port",
        env = "DAPR_METRICS_PORT",
        default_value_t = 9090
    )]
    pub metrics_port: u16,

    /// Launch, supervise and stop the reference components (and --managed-component commands)
    /// that Components need and no process serves yet.
    #[arg(long = "managed-components", env = "PLUGD_MANAGED_COMPONENTS", default_value_t = true,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub managed_components: bool,

    /// Your own component to launch when a Component needs its socket: NAME=COMMAND, NAME being
    /// the socket name (`mystore` for `type: state.mystore`). The command gets
    /// DAPR_COMPONENT_SOCKETS_FOLDER and PLUGD_SOCKET_NAME. Repeatable.
    #[arg(long = "managed-component", value_name = "NAME=COMMAND")]
    pub managed_component: Vec<String>,

    /// Folders searched first for reference component binaries (then plugd's own folder, then
    /// PATH). Repeatable, or colon-separated in the environment.
    #[arg(
        long = "managed-components-path",
        env = "PLUGD_MANAGED_COMPONENTS_PATH",
        value_delimiter = ':'
    )]
    pub managed_components_path: Vec<PathBuf>,

    /// Log level: debug, info, warn, error (or a tracing filter directive).
    #[arg(long = "log-level", env = "DAPR_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Write logs as JSON lines.
    #[arg(long = "log-as-json", env = "DAPR_LOG_AS_JSON", default_value_t = false,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub log_as_json: bool,

    /// Threads that run plugd's work. 1 (the default): one thread, the cheapest per request
    /// for a sidecar beside its app; N: a pool of N; 0: one per CPU core.
    #[arg(
        long = "worker-threads",
        env = "PLUGD_WORKER_THREADS",
        default_value_t = 1
    )]
    pub worker_threads: usize,

    /// Export spans over OTLP/gRPC (no TLS) to this endpoint (`http://localhost:4317` or
    /// `localhost:4317`); no export when unset.
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Bound on dialling a component socket and on its reflection call at discovery.
    #[arg(long = "discovery-timeout", env = "PLUGD_DISCOVERY_TIMEOUT", default_value = "2s",
          value_parser = humantime::parse_duration)]
    pub discovery_timeout: std::time::Duration,

    /// Deadline on every call plugd makes to a component (Init is bounded by initTimeout).
    #[arg(long = "component-call-timeout", env = "PLUGD_COMPONENT_CALL_TIMEOUT",
          default_value = "5s", value_parser = humantime::parse_duration)]
    pub component_call_timeout: std::time::Duration,

    /// How long to wait for in-flight requests at shutdown.
    #[arg(
        long = "dapr-graceful-shutdown-seconds",
        visible_alias = "graceful-shutdown-seconds",
        env = "DAPR_GRACEFUL_SHUTDOWN_SECONDS",
        default_value_t = 5
    )]
    pub graceful_shutdown_seconds: u64,

    /// How often each component is pinged (jittered by ±20%); the socket folder is also
    /// rescanned at this pace, besides reacting to change events.
    #[arg(long = "component-health-interval", env = "PLUGD_COMPONENT_HEALTH_INTERVAL",
          default_value = "5s", value_parser = humantime::parse_duration)]
    pub component_health_interval: std::time::Duration,

    /// Consecutive failed pings after which a component is unhealthy (its calls fail fast).
    #[arg(
        long = "component-health-failures",
        env = "PLUGD_COMPONENT_HEALTH_FAILURES",
        default_value_t = 3
    )]
    pub component_health_failures: u32,

    /// How long a component waits for its socket before it is reported failed (it still
    /// starts when the socket appears later). Default: the component's initTimeout.
    #[arg(long = "component-wait", env = "PLUGD_COMPONENT_WAIT",
          value_parser = humantime::parse_duration)]
    pub component_wait: Option<std::time::Duration>,

    /// Port the app listens on; plugd delivers pub/sub events there. Without it, nothing is
    /// delivered to the app.
    #[arg(long = "app-port", env = "APP_PORT")]
    pub app_port: Option<u16>,

    /// Protocol of the app channel: grpc (AppCallback) or http.
    #[arg(long = "app-protocol", env = "APP_PROTOCOL", default_value = "http")]
    pub app_protocol: String,

    /// Address the app listens on.
    #[arg(
        long = "app-channel-address",
        env = "APP_CHANNEL_ADDRESS",
        default_value = "127.0.0.1"
    )]
    pub app_channel_address: String,

    /// Most calls in flight to the app at once, across all subscriptions (default: no limit
    /// beyond each subscription's own).
    #[arg(long = "app-max-concurrency", env = "APP_MAX_CONCURRENCY")]
    pub app_max_concurrency: Option<usize>,

    /// Messages of one subscription handled at once. 1 (the default) keeps the order the
    /// component delivers in. A subscription's `concurrency` metadata overrides it.
    #[arg(
        long = "subscription-concurrency",
        env = "PLUGD_SUBSCRIPTION_CONCURRENCY",
        default_value_t = 1
    )]
    pub subscription_concurrency: usize,

    /// Largest request body (HTTP) and request message (gRPC) the APIs accept: bytes, or a
    /// quantity such as `4Mi`, `16Mi`, `1Gi` (as daprd takes it). Larger requests are answered
    /// HTTP 413 / gRPC RESOURCE_EXHAUSTED. Default 4Mi.
    #[arg(long = "max-body-size", env = "PLUGD_MAX_BODY_SIZE",
          value_parser = crate::limits::parse_size)]
    pub max_body_size: Option<usize>,

    /// daprd's deprecated spelling of --max-body-size, in MB; --max-body-size wins.
    #[arg(long = "dapr-http-max-request-size", hide = true)]
    pub dapr_http_max_request_size: Option<usize>,

    /// Component sockets must be served by one of these uids (comma-separated), checked with
    /// the socket's peer credentials; others are refused. Empty: any uid.
    #[arg(
        long = "allowed-component-uids",
        env = "PLUGD_ALLOWED_COMPONENT_UIDS",
        default_value = ""
    )]
    pub allowed_component_uids: String,

    /// Bound on each call to the app (delivering one event, listing subscriptions).
    #[arg(long = "app-call-timeout", env = "PLUGD_APP_CALL_TIMEOUT", default_value = "60s",
          value_parser = humantime::parse_duration)]
    pub app_call_timeout: std::time::Duration,
}

/// plugd's tools for component authors.
#[derive(Debug, Clone, Subcommand)]
pub enum Tool {
    /// Check a component socket against the pluggable-component contract (black box): prints a
    /// table of checks and exits 1 if any failed.
    Conformance(ConformanceArgs),
    /// Show what component sockets serve: reachable or not (and why), services, kinds, features,
    /// Ping round-trip time.
    Inspect(InspectArgs),
}

/// The kinds a socket can be checked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    State,
    Pubsub,
    InputBinding,
    OutputBinding,
    Secretstore,
}

impl From<KindArg> for crate::component::ComponentKind {
    fn from(k: KindArg) -> Self {
        use crate::component::ComponentKind as K;
        match k {
            KindArg::State => K::State,
            KindArg::Pubsub => K::PubSub,
            KindArg::InputBinding => K::InputBinding,
            KindArg::OutputBinding => K::OutputBinding,
            KindArg::Secretstore => K::SecretStore,
        }
    }
}

/// `plugd conformance`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConformanceArgs {
    /// The component's Unix socket.
    #[arg(long)]
    pub socket: PathBuf,

    /// Check only these kinds (repeatable); default: every kind the socket serves.
    #[arg(long, value_enum)]
    pub kind: Vec<KindArg>,

    /// Init metadata for the component under test, `key=value` (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub metadata: Vec<(String, String)>,

    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Deadline on each call to the component (greater than 0, at most 1h).
    #[arg(long, default_value = "5s", value_parser = crate::conformance::parse_timeout)]
    pub timeout: std::time::Duration,
}

/// `plugd inspect`.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// One socket to inspect.
    #[arg(conflicts_with = "sockets_folder")]
    pub socket: Option<PathBuf>,

    /// Inspect every socket in this folder (default: the sockets folder plugd would use).
    #[arg(long = "sockets-folder")]
    pub sockets_folder: Option<PathBuf>,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Deadline on dialling and on each call.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, not {text:?}")),
    }
}

/// daprd flags plugd accepts and does not use: (name, takes a value).
pub const IGNORED_DAPRD_FLAGS: &[(&str, bool)] = &[
    ("allowed-origins", true),
    ("app-health-check-path", true),
    ("app-health-probe-interval", true),
    ("app-health-probe-timeout", true),
    ("app-health-threshold", true),
    ("app-ssl", false),
    ("config", true),
    ("control-plane-address", true),
    ("control-plane-trust-domain", true),
    ("dapr-block-shutdown-duration", true),
    ("dapr-http-read-buffer-size", true),
    ("dapr-internal-grpc-listen-address", true),
    ("dapr-internal-grpc-port", true),
    ("dapr-public-listen-address", true),
    ("dapr-public-port", true),
    ("disable-builtin-k8s-secret-store", false),
    ("enable-api-logging", false),
    ("enable-app-health-check", false),
    ("enable-mtls", false),
    ("enable-profiling", false),
    ("kubeconfig", true),
    ("metrics-listen-address", true),
    ("mode", true),
    ("placement-host-address", true),
    ("profile-port", true),
    ("read-buffer-size", true),
    ("scheduler-host-address", true),
    ("sentry-address", true),
    ("trust-anchors-file", true),
    ("trust-domain", true),
    ("unix-domain-socket", true),
];

/// Rewrites daprd-style arguments for clap: Go's single-dash spelling (`-app-id x`,
/// `-log-as-json=true`) becomes `--app-id x`, and daprd flags plugd does not use are removed with
/// their values. Returns the arguments and one warning per removed flag.
pub fn normalize_daprd_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> (Vec<std::ffi::OsString>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    let mut iter = args.into_iter().peekable();
    if let Some(program) = iter.next() {
        out.push(program);
    }
    // The tools take their own flags: left as they are.
    if iter
        .peek()
        .and_then(|a| a.to_str())
        .is_some_and(|a| matches!(a, "conformance" | "inspect" | "help"))
    {
        out.extend(iter);
        return (out, warnings);
    }
    let mut rest_verbatim = false;
    while let Some(arg) = iter.next() {
        let Some(text) = arg.to_str().filter(|_| !rest_verbatim) else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            rest_verbatim = true;
            out.push(arg);
            continue;
        }
        // `-name...` with a letter after the dash and more than one letter: Go's long flag.
        let long = match text.strip_prefix('-') {
            Some(rest)
                if !rest.starts_with('-')
                    && rest.len() > 1
                    && rest.starts_with(|c: char| c.is_ascii_alphabetic()) =>
            {
                format!("-{text}")
            }
            _ => text.to_string(),
        };
        let Some(flag) = long.strip_prefix("--") else {
            out.push(arg);
            continue;
        };
        let (name, has_value) = match flag.split_once('=') {
            Some((name, _)) => (name, true),
            None => (flag, false),
        };
        if let Some((_, takes_value)) = IGNORED_DAPRD_FLAGS.iter().find(|(n, _)| *n == name) {
            if *takes_value && !has_value {
                iter.next();
            }
            let warning = format!("daprd flag --{name} is accepted but not used by plugd");
            if !warnings.contains(&warning) {
                warnings.push(warning);
            }
            continue;
        }
        out.push(long.into());
    }
    (out, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalize(args: &[&str]) -> (Vec<String>, Vec<String>) {
        let (out, warnings) = normalize_daprd_args(args.iter().map(std::ffi::OsString::from));
        let out = out
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        (out, warnings)
    }

    #[test]
    fn go_spelling_and_unused_daprd_flags() {
        let (out, warnings) = normalize(&[
            "plugd",
            "-app-id",
            "orders",
            "-log-as-json=true",
            "--dapr-internal-grpc-port",
            "50002",
            "-placement-host-address=localhost:50005",
            "-enable-mtls",
            "--config",
            "./config.yaml",
            "--config",
            "x.yaml",
            "-h",
            "--dapr-http-port",
            "3501",
        ]);
        assert_eq!(
            out,
            [
                "plugd",
                "--app-id",
                "orders",
                "--log-as-json=true",
                "-h",
                "--dapr-http-port",
                "3501"
            ]
        );
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        assert!(warnings[0].contains("--dapr-internal-grpc-port"));
    }

    #[test]
    fn daprd_command_lines_parse() {
        let (out, warnings) = normalize(&[
            "plugd",
            "-app-id",
            "a",
            "-mode",
            "standalone",
            "-app-max-concurrency",
            "4",
            "-enable-app-health-check",
            "-log-as-json",
            "-metrics-port",
            "9091",
            "-enable-metrics=false",
            "-dapr-listen-addresses",
            "127.0.0.1,[::1]",
            "-managed-components=false",
        ]);
        assert_eq!(warnings.len(), 2);
        let args = Args::try_parse_from(out).expect("parses");
        assert_eq!(args.app_id, "a");
        assert_eq!(args.app_max_concurrency, Some(4));
        assert!(args.log_as_json);
        assert!(!args.enable_metrics);
        assert_eq!(args.metrics_port, 9091);
        assert!(!args.managed_components);
        for (text, want) in [("1", true), ("T", true), ("False", false), ("0", false)] {
            let args = Args::try_parse_from(["plugd", &format!("--log-as-json={text}")])
                .expect("Go's boolean spellings");
            assert_eq!(args.log_as_json, want, "{text}");
        }
        let args = Args::try_parse_from(["plugd"]).expect("defaults");
        assert!(args.managed_components && args.enable_metrics && !args.log_as_json);
    }

    #[test]
    fn tools_parse_and_keep_their_flags() {
        let (out, warnings) = normalize(&[
            "plugd",
            "conformance",
            "--socket",
            "/tmp/x.sock",
            "--kind",
            "state",
            "--metadata",
            "a=b=c",
            "--json",
        ]);
        assert!(warnings.is_empty());
        let args = Args::try_parse_from(out).expect("parses");
        match args.command {
            Some(Tool::Conformance(c)) => {
                assert_eq!(c.socket, PathBuf::from("/tmp/x.sock"));
                assert_eq!(c.kind, [KindArg::State]);
                assert_eq!(c.metadata, [("a".to_string(), "b=c".to_string())]);
                assert!(c.json);
            }
            other => panic!("{other:?}"),
        }
        let args = Args::try_parse_from(["plugd", "inspect", "/tmp/x.sock"]).expect("parses");
        assert!(matches!(args.command, Some(Tool::Inspect(i)) if i.socket.is_some()));
        assert!(Args::try_parse_from(["plugd", "conformance", "--metadata", "novalue"]).is_err());
        assert!(Args::try_parse_from(["plugd", "--app-id", "x", "inspect"]).is_err());
    }

    #[test]
    fn limits_and_security_flags_parse() {
        let (out, warnings) = normalize(&[
            "plugd",
            "-max-body-size=16Mi",
            "--allowed-component-uids",
            "0, 1000",
        ]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let args = Args::try_parse_from(out).expect("parses");
        assert_eq!(args.max_body_size, Some(16 << 20));
        let config = crate::config::Config::from_args(args).expect("valid");
        assert_eq!(config.max_body_size, 16 << 20);
        assert_eq!(config.allowed_component_uids, [0, 1000]);

        let args = Args::try_parse_from(["plugd", "--max-body-size", "4194304"]).expect("bytes");
        assert_eq!(args.max_body_size, Some(4 << 20));
        let err = Args::try_parse_from(["plugd", "--max-body-size", "4MB"]).expect_err("MB");
        assert!(err.to_string().contains("--max-body-size"), "{err}");

        // daprd's deprecated flag, in MB; the default; an empty uid list.
        let args =
            Args::try_parse_from(["plugd", "--dapr-http-max-request-size", "8"]).expect("parses");
        let config = crate::config::Config::from_args(args).expect("valid");
        assert_eq!(config.max_body_size, 8 << 20);
        let config = crate::config::Config::from_args(Args::try_parse_from(["plugd"]).expect("p"))
            .expect("valid");
        assert_eq!(config.max_body_size, crate::limits::DEFAULT_MAX_BODY_SIZE);
        assert!(config.allowed_component_uids.is_empty());

        let args =
            Args::try_parse_from(["plugd", "--allowed-component-uids", "0,root"]).expect("parses");
        let err = crate::config::Config::from_args(args).expect_err("not a uid");
        assert!(
            err.to_string().contains("--allowed-component-uids")
                && err.to_string().contains("root")
        );
    }

    #[test]
    fn values_after_double_dash_are_kept() {
        let (out, _) = normalize(&["plugd", "--", "-mode"]);
        assert_eq!(out, ["plugd", "--", "-mode"]);
    }
}
