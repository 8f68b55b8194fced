//! Validated runtime settings (from flags) and component manifests (from YAML).

pub mod duration;
pub mod manifest;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use crate::cli::Args;

/// The default socket folder, as in Dapr.
pub const DEFAULT_SOCKETS_FOLDER: &str = "/tmp/dapr-components-sockets";

/// Environment variables naming the socket folder, in the order they are read.
pub const SOCKETS_FOLDER_ENV: [&str; 3] = [
    "DAPR_COMPONENTS_SOCKETS_FOLDER",
    "DAPR_COMPONENT_SOCKETS_FOLDER",
    "DAPR_COMPONENT_SOCKET_FOLDER",
];

/// Everything plugd needs to start, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub app_id: String,
    pub namespace: Option<String>,
    pub resources_paths: Vec<PathBuf>,
    pub sockets_folder: PathBuf,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// More addresses the APIs listen on (the rest of `--dapr-listen-addresses`), on the same
    /// ports as `grpc_addr` / `http_addr`.
    pub more_listen_ips: Vec<IpAddr>,
    /// Where Prometheus metrics are served, if they are.
    pub metrics_addr: Option<SocketAddr>,
    /// Components plugd launches itself.
    pub managed: crate::managed::Settings,
    pub discovery_timeout: Duration,
    pub call_timeout: Duration,
    pub graceful_shutdown: Duration,
    pub health_interval: Duration,
    pub health_failures: u32,
    pub component_wait: Option<Duration>,
    /// How often the socket folder is rescanned even without change events.
    pub rescan_interval: Duration,
    /// Where the app is, if plugd delivers to it.
    pub app: Option<AppConfig>,
    /// Messages of one subscription handled at once.
    pub subscription_concurrency: usize,
    /// Every API call must carry it as `dapr-api-token` (`DAPR_API_TOKEN`), except the health
    /// endpoints.
    pub api_token: Option<String>,
    /// Largest HTTP request body / gRPC request message the APIs accept, in bytes.
    pub max_body_size: usize,
    /// Uids allowed to serve component sockets; empty: any.
    pub allowed_component_uids: Vec<u32>,
}

/// How plugd reaches the app.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub address: SocketAddr,
    pub protocol: AppProtocol,
    /// Sent as `dapr-api-token` on every call to the app (`APP_API_TOKEN`).
    pub token: Option<String>,
    pub max_concurrency: Option<usize>,
    pub call_timeout: Duration,
}

/// The app channel protocols plugd speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppProtocol {
    Grpc,
    Http,
}

impl std::str::FromStr for AppProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "grpc" => Ok(Self::Grpc),
            "http" => Ok(Self::Http),
            "grpcs" | "https" | "h2c" => {
                Err(format!("{s} is not supported by plugd; use grpc or http"))
            }
            _ => Err("must be grpc or http".into()),
        }
    }
}

/// A bad flag value.
#[derive(Debug, thiserror::Error)]
#[error("invalid value {value:?} for {flag}: {reason}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

impl Config {
    /// Builds the runtime settings from parsed flags and the environment.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let ips = parse_listen_addresses(&args.listen_address).map_err(|reason| ConfigError {
            flag: "--dapr-listen-addresses",
            value: args.listen_address.clone(),
            reason,
        })?;
        let ip = ips[0];
        let mut commands = std::collections::BTreeMap::new();
        for spec in &args.managed_component {
            let (name, words) =
                crate::managed::parse_command(spec).map_err(|reason| ConfigError {
                    flag: "--managed-component",
                    value: spec.clone(),
                    reason,
                })?;
            commands.insert(name, words);
        }
        let app = match args.app_port {
            None => None,
            Some(port) => {
                let ip: IpAddr = args
                    .app_channel_address
                    .parse()
                    .or_else(|_| {
                        if args.app_channel_address == "localhost" {
                            Ok(IpAddr::from([127, 0, 0, 1]))
                        } else {
                            Err("must be an IP address")
                        }
                    })
                    .map_err(|reason| ConfigError {
                        flag: "--app-channel-address",
                        value: args.app_channel_address.clone(),
                        reason: reason.to_string(),
                    })?;
                let protocol = args.app_protocol.parse().map_err(|reason| ConfigError {
                    flag: "--app-protocol",
                    value: args.app_protocol.clone(),
                    reason,
                })?;
                Some(AppConfig {
                    address: SocketAddr::new(ip, port),
                    protocol,
                    token: std::env::var("APP_API_TOKEN")
                        .ok()
                        .filter(|t| !t.is_empty()),
                    max_concurrency: args.app_max_concurrency.filter(|n| *n > 0),
                    call_timeout: args.app_call_timeout,
                })
            }
        };
        if args.subscription_concurrency == 0 {
            return Err(ConfigError {
                flag: "--subscription-concurrency",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        let max_body_size = match (args.max_body_size, args.dapr_http_max_request_size) {
            (Some(bytes), _) => bytes,
            (None, Some(mb)) => {
                mb.checked_mul(1 << 20)
                    .filter(|n| *n > 0)
                    .ok_or_else(|| ConfigError {
                        flag: "--dapr-http-max-request-size",
                        value: mb.to_string(),
                        reason: "must be a number of MB, more than 0".into(),
                    })?
            }
            (None, None) => crate::limits::DEFAULT_MAX_BODY_SIZE,
        };
        let allowed_component_uids =
            parse_uids(&args.allowed_component_uids).map_err(|reason| ConfigError {
                flag: "--allowed-component-uids",
                value: args.allowed_component_uids.clone(),
                reason,
            })?;
        let sockets_folder = args
            .sockets_folder
            .unwrap_or_else(|| sockets_folder_from_env(|k| std::env::var(k).ok()));
        let managed = crate::managed::Settings {
            enabled: args.managed_components,
            sockets_folder: sockets_folder.clone(),
            search_path: args.managed_components_path.clone(),
            commands,
            grace: Duration::from_secs(args.graceful_shutdown_seconds),
            log_as_json: args.log_as_json,
            log_level: args.log_level.clone(),
        };
        Ok(Self {
            app_id: args.app_id,
            namespace: std::env::var("NAMESPACE").ok().filter(|s| !s.is_empty()),
            resources_paths: args.resources_path,
            sockets_folder,
            grpc_addr: SocketAddr::new(ip, args.dapr_grpc_port),
            http_addr: SocketAddr::new(ip, args.dapr_http_port),
            more_listen_ips: ips[1..].to_vec(),
            metrics_addr: args
                .enable_metrics
                .then(|| SocketAddr::new(ip, args.metrics_port)),
            managed,
            discovery_timeout: args.discovery_timeout,
            call_timeout: args.component_call_timeout,
            graceful_shutdown: Duration::from_secs(args.graceful_shutdown_seconds),
            health_interval: args.component_health_interval,
            health_failures: args.component_health_failures,
            component_wait: args.component_wait,
            rescan_interval: args.component_health_interval,
            app,
            subscription_concurrency: args.subscription_concurrency,
            api_token: std::env::var("DAPR_API_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            max_body_size,
            allowed_component_uids,
        })
    }

    /// Settings for tests: ephemeral ports on loopback, short timeouts.
    pub fn for_tests(sockets_folder: PathBuf, resources: Vec<PathBuf>) -> Self {
        let lo = IpAddr::from([127, 0, 0, 1]);
        Self {
            app_id: "testapp".into(),
            namespace: None,
            resources_paths: resources,
            managed: crate::managed::Settings::disabled(sockets_folder.clone()),
            sockets_folder,
            grpc_addr: SocketAddr::new(lo, 0),
            http_addr: SocketAddr::new(lo, 0),
            more_listen_ips: Vec::new(),
            metrics_addr: None,
            discovery_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_secs(5),
            graceful_shutdown: Duration::from_secs(2),
            health_interval: Duration::from_millis(500),
            health_failures: 2,
            component_wait: None,
            rescan_interval: Duration::from_millis(500),
            app: None,
            subscription_concurrency: 1,
            api_token: None,
            max_body_size: crate::limits::DEFAULT_MAX_BODY_SIZE,
            allowed_component_uids: Vec::new(),
        }
    }
}

/// Parses daprd's `--dapr-listen-addresses`: comma-separated IPs (IPv6 with or without brackets),
/// `localhost` meaning 127.0.0.1. Never empty.
pub fn parse_listen_addresses(text: &str) -> Result<Vec<IpAddr>, String> {
    let mut ips = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bare = part
            .strip_prefix('[')
            .and_then(|p| p.strip_suffix(']'))
            .unwrap_or(part);
        let ip = if bare.eq_ignore_ascii_case("localhost") {
            IpAddr::from([127, 0, 0, 1])
        } else {
            bare.parse()
                .map_err(|e| format!("{part:?} is not an IP address: {e}"))?
        };
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    if ips.is_empty() {
        return Err("no address given".into());
    }
    Ok(ips)
}

/// Parses a comma-separated list of uids; empty means none (any uid is allowed).
pub fn parse_uids(text: &str) -> Result<Vec<u32>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u32>()
                .map_err(|e| format!("{p:?} is not a numeric uid: {e}"))
        })
        .collect()
}

/// The socket folder named by the first set environment variable, else the default.
pub fn sockets_folder_from_env(get: impl Fn(&str) -> Option<String>) -> PathBuf {
    SOCKETS_FOLDER_ENV
        .iter()
        .find_map(|k| get(k).filter(|v| !v.is_empty()))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKETS_FOLDER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        let ips = parse_listen_addresses("127.0.0.1, [::1],localhost").expect("valid");
        assert_eq!(
            ips,
            [
                IpAddr::from([127, 0, 0, 1]),
                "::1".parse::<IpAddr>().expect("ip")
            ]
        );
        assert!(parse_listen_addresses("").is_err());
        assert!(
            parse_listen_addresses("127.0.0.1,example.com")
                .expect_err("not an ip")
                .contains("example.com")
        );
    }

    #[test]
    fn socket_folder_env_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            sockets_folder_from_env(env(&[])),
            PathBuf::from(DEFAULT_SOCKETS_FOLDER)
        );
        assert_eq!(
            sockets_folder_from_env(env(&[
                ("DAPR_COMPONENT_SOCKET_FOLDER", "/c"),
                ("DAPR_COMPONENT_SOCKETS_FOLDER", "/b"),
            ])),
            PathBuf::from("/b")
        );
        assert_eq!(
            sockets_folder_from_env(env(&[
                ("DAPR_COMPONENTS_SOCKETS_FOLDER", "/a"),
                ("DAPR_COMPONENT_SOCKETS_FOLDER", "/b"),
            ])),
            PathBuf::from("/a")
        );
        assert_eq!(
            sockets_folder_from_env(env(&[("DAPR_COMPONENT_SOCKET_FOLDER", "/c")])),
            PathBuf::from("/c")
        );
    }
}
