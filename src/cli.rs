//! Command-line flags, named as daprd names them, each with an environment fallback.

use std::path::PathBuf;

use clap::Parser;

/// plugd: a Dapr-compatible sidecar that serves the runtime API with pluggable components.
#[derive(Debug, Clone, Parser)]
#[command(name = "plugd", version, about)]
pub struct Args {
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

    /// Address the APIs listen on.
    #[arg(
        long = "dapr-listen-addresses",
        env = "DAPR_LISTEN_ADDRESSES",
        default_value = "127.0.0.1"
    )]
    pub listen_address: String,

    /// Log level: debug, info, warn, error (or a tracing filter directive).
    #[arg(long = "log-level", env = "DAPR_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Write logs as JSON lines.
    #[arg(long = "log-as-json", env = "DAPR_LOG_AS_JSON")]
    pub log_as_json: bool,

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

    /// Bound on each call to the app (delivering one event, listing subscriptions).
    #[arg(long = "app-call-timeout", env = "PLUGD_APP_CALL_TIMEOUT", default_value = "60s",
          value_parser = humantime::parse_duration)]
    pub app_call_timeout: std::time::Duration,
}
