//! Wiring: configuration → components → registry → API servers, and the bounded shutdown.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::Layer;
use tower_http::normalize_path::NormalizePathLayer;

use crate::{
    api,
    appchannel::{self, AppChannel},
    config::{Config, manifest},
    discovery, lifecycle,
    managed::Managed,
    registry::Registry,
    reload,
};

/// Why plugd could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] manifest::Problems),
    #[error("app channel: {0}")]
    AppChannel(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A built plugd, ready to serve.
pub struct App {
    config: Config,
    registry: Arc<Registry>,
    grpc: TcpListener,
    http: TcpListener,
    /// Listeners on the other `--dapr-listen-addresses`.
    more_grpc: Vec<TcpListener>,
    more_http: Vec<TcpListener>,
    metrics_addr: Option<SocketAddr>,
    managed: Arc<Managed>,
    shutdown: CancellationToken,
    /// Background work that shutdown drains within the grace period (input bindings closing).
    background: TaskTracker,
}

impl App {
    /// Validates the resources, binds the API ports, discovers sockets and starts a supervisor per
    /// component (components whose sockets are there get their first Init before this returns).
    /// Fails only if the resources are invalid or a port cannot be bound: components that cannot
    /// be initialised are reported and retried.
    pub async fn build(config: Config, shutdown: CancellationToken) -> Result<Self, StartError> {
        // Record from the start (the first scan's sockets count as discovery events).
        if config.metrics_addr.is_some() {
            crate::metrics::install();
        }
        let started = Instant::now();
        let (docs, mut problems) = manifest::read_documents(&config.resources_paths);
        // Components and Subscriptions are both checked, so every problem is reported at once.
        let components = manifest::validate(&docs, &config.app_id, config.namespace.as_deref());
        let subscriptions = crate::pubsub::subscription::declarative(&docs, &config.app_id);
        if let Err(manifest::Problems(more)) = &components {
            problems.extend(more.iter().cloned());
        }
        if let Err(more) = &subscriptions {
            problems.extend(more.iter().cloned());
        }
        let (Ok(loaded), Ok(subscriptions), true) =
            (components, subscriptions, problems.is_empty())
        else {
            return Err(manifest::Problems(problems).into());
        };
        for (file, name, why) in &loaded.skipped {
            tracing::info!(component = %name, file = %file.display(), "component skipped: {why}");
        }

        // Bind first: a port in use stops start-up before any component is touched.
        let grpc = TcpListener::bind(config.grpc_addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.grpc_addr,
                source,
            })?;
        let http = TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.http_addr,
                source,
            })?;
        let (mut more_grpc, mut more_http) = (Vec::new(), Vec::new());
        for ip in &config.more_listen_ips {
            for (port, into) in [
                (grpc.local_addr().map(|a| a.port()), &mut more_grpc),
                (http.local_addr().map(|a| a.port()), &mut more_http),
            ] {
                let addr = SocketAddr::new(*ip, port.unwrap_or(0));
                // As daprd: an extra address that cannot be bound is reported and skipped.
                match TcpListener::bind(addr).await {
                    Ok(listener) => into.push(listener),
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "cannot listen on this address; skipping it")
                    }
                }
            }
        }
        let longest_init = loaded
            .components
            .iter()
            .map(|c| c.init_timeout)
            .max()
            .unwrap_or_default();
        // Components nobody has started yet, which plugd knows how to run, are launched before
        // the first scan, so their sockets are usually there when it runs.
        let managed = Managed::new(config.managed.clone());
        let launched = managed.reconcile(&loaded.components).await;
        managed.ready(&launched, longest_init, &shutdown).await;
        let mut scanner =
            discovery::Scanner::new(config.sockets_folder.clone(), config.discovery_timeout)
                .with_allowed_uids(&config.allowed_component_uids);
        let first = scanner.scan().await;
        crate::metrics::discovery_changed(None, &first);
        let registry = Arc::new(Registry::default());
        registry.set_discovery(Arc::new(first.clone()));
        let sockets =
            discovery::watch_folder(scanner, first, config.rescan_interval, shutdown.clone());
        // A socket that goes away (its foreign process stopped) gets a managed process.
        managed.watch(sockets.clone(), shutdown.clone());
        let mirror = registry.clone();
        let mut changes = sockets.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let latest = changes.borrow_and_update().clone();
                crate::metrics::discovery_changed(Some(&mirror.snapshot().discovery), &latest);
                mirror.set_discovery(latest);
            }
        });

        let pubsubs: std::collections::HashSet<String> = loaded
            .components
            .iter()
            .filter(|c| c.category == manifest::Category::PubSub)
            .map(|c| c.name.clone())
            .collect();
        let mut manager = lifecycle::Manager::new(
            registry.clone(),
            lifecycle::Settings::from_config(&config),
            sockets,
            shutdown.clone(),
        );
        manager.start(loaded.components);
        // Components whose sockets are there get their first Init before the APIs open.
        manager
            .settled(longest_init + Duration::from_millis(500))
            .await;
        reload::watch_resources(
            config.resources_paths.clone(),
            config.app_id.clone(),
            config.namespace.clone(),
            manager,
            managed.clone(),
            shutdown.clone(),
        );
        let metrics_addr = match config.metrics_addr {
            Some(addr) => {
                crate::metrics::serve(addr, registry.clone(), managed.clone(), shutdown.clone())
                    .await
            }
            None => None,
        };
        let background = TaskTracker::new();
        match &config.app {
            Some(app) => {
                let channel = match appchannel::connect(appchannel::AppSettings {
                    address: app.address,
                    protocol: app.protocol,
                    token: app.token.clone(),
                    call_timeout: app.call_timeout,
                }) {
                    Ok(channel) => channel,
                    Err(e) => {
                        shutdown.cancel();
                        managed.shutdown().await;
                        return Err(StartError::AppChannel(e));
                    }
                };
                let channel: Arc<dyn AppChannel> = channel.into();
                // One bound on calls to the app, shared by pub/sub and input bindings.
                let app_limit = app.max_concurrency.map(|n| Arc::new(Semaphore::new(n)));
                let deliverer = Arc::new(crate::pubsub::delivery::Deliverer {
                    registry: registry.clone(),
                    app: channel.clone(),
                    app_limit: app_limit.clone(),
                    concurrency: config.subscription_concurrency,
                    stop: shutdown.clone(),
                });
                crate::pubsub::delivery::start(deliverer, app.address, subscriptions, pubsubs);
                let inputs = Arc::new(crate::bindings::InputDelivery {
                    registry: registry.clone(),
                    app: channel,
                    outputs: api::bindings::BindingsApi::new(registry.clone()),
                    app_limit,
                    concurrency: app
                        .max_concurrency
                        .map_or(crate::bindings::DEFAULT_CONCURRENCY, |n| {
                            n.min(crate::bindings::DEFAULT_CONCURRENCY)
                        }),
                    stop: shutdown.clone(),
                });
                crate::bindings::start(inputs, app.address, &background);
            }
            None if !subscriptions.is_empty() => {
                tracing::warn!(
                    count = subscriptions.len(),
                    "Subscription resources found but no --app-port: nothing will be delivered"
                );
            }
            None => {}
        }
        log_summary(&config, &registry.snapshot(), started);

        Ok(Self {
            config,
            registry,
            grpc,
            http,
            more_grpc,
            more_http,
            metrics_addr,
            managed,
            shutdown,
            background,
        })
    }

    /// Where metrics are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The components plugd launched itself.
    pub fn managed(&self) -> Arc<Managed> {
        self.managed.clone()
    }

    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Serves both APIs until the shutdown token is cancelled, then drains for at most the
    /// configured grace period.
    pub async fn run(self) -> anyhow::Result<()> {
        let managed = self.managed.clone();
        let shutdown = self.shutdown.clone();
        let result = self.serve().await;
        // Components plugd launched stop last (in-flight requests needed them), whatever happened.
        shutdown.cancel();
        managed.shutdown().await;
        result
    }

    async fn serve(self) -> anyhow::Result<()> {
        let Self {
            config,
            registry,
            grpc,
            http,
            more_grpc,
            more_http,
            shutdown,
            background,
            ..
        } = self;
        let grpc_addr = grpc.local_addr()?;
        let http_addr = http.local_addr()?;

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .with_service_name("dapr.proto.runtime.v1.Dapr")
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .with_service_name("dapr.proto.runtime.v1.Dapr")
            .build_v1alpha()?;
        let dapr =
            api::grpc::DaprApi::new(registry.clone(), config.app_id.clone(), shutdown.clone())
                .into_server()
                .max_decoding_message_size(config.max_body_size);
        let grpc_token = shutdown.clone();
        let grpc_incoming = futures::stream::select_all(
            std::iter::once(grpc)
                .chain(more_grpc)
                .map(|l| tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true))),
        );
        let grpc_server = tonic::transport::Server::builder()
            .layer(crate::metrics::GrpcMetricsLayer)
            .layer(api::gate::GrpcGateLayer::new(
                config.api_token.as_deref().map(Arc::from),
            ))
            .layer(crate::limits::GrpcBodyLimitLayer::new(config.max_body_size))
            .layer(crate::telemetry::trace::ApiTraceLayer::grpc())
            .add_service(dapr)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(grpc_incoming, grpc_token.cancelled_owned());
        let mut grpc_task =
            tokio::spawn(async move { grpc_server.await.map_err(anyhow::Error::from) });

        let api_token: Option<Arc<str>> = config.api_token.as_deref().map(Arc::from);
        let router = api::http::router(
            registry,
            config.app_id.clone(),
            shutdown.clone(),
            api_token.clone(),
            config.max_body_size,
        );
        // As daprd: `//` inside a path and a trailing `/` are tolerated (before routing, so the
        // token check sees the same path as the router).
        let service = axum::ServiceExt::<axum::extract::Request>::into_make_service(
            tower::util::MapRequestLayer::new(api::gate::collapse_slashes)
                .layer(NormalizePathLayer::trim_trailing_slash().layer(router)),
        );
        let http_token = shutdown.clone();
        let mut http_task = tokio::spawn(async move {
            use axum::serve::ListenerExt;
            let servers = std::iter::once(http).chain(more_http).map(|listener| {
                // Small responses must not wait for a delayed ACK.
                let listener = listener.tap_io(|tcp| {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                });
                let token = http_token.clone();
                let service = service.clone();
                async move {
                    axum::serve(listener, service)
                        .with_graceful_shutdown(token.cancelled_owned())
                        .await
                        .map_err(anyhow::Error::from)
                }
            });
            futures::future::try_join_all(servers).await.map(|_| ())
        });
        tracing::info!(grpc = %grpc_addr, http = %http_addr, app_id = %config.app_id, "plugd is serving the runtime API");

        // Run until the shutdown signal, or until a server stops by itself; then stop both.
        let early = tokio::select! {
            // The signal first: a server that stops because of it has not stopped early.
            biased;
            _ = shutdown.cancelled() => None,
            r = &mut grpc_task => Some(("gRPC", joined(r))),
            r = &mut http_task => Some(("HTTP", joined(r))),
        };
        shutdown.cancel();
        tracing::info!(grace = ?config.graceful_shutdown, "shutting down");
        let (grpc_abort, http_abort) = (grpc_task.abort_handle(), http_task.abort_handle());
        let finished = early.as_ref().map(|(server, _)| *server);
        let drain = async move {
            if finished != Some("gRPC") {
                log_stop("gRPC", joined(grpc_task.await));
            }
            if finished != Some("HTTP") {
                log_stop("HTTP", joined(http_task.await));
            }
            // Input bindings answer late events as closed while the app finishes theirs.
            background.close();
            background.wait().await;
        };
        if tokio::time::timeout(config.graceful_shutdown, drain)
            .await
            .is_err()
        {
            tracing::warn!(
                "in-flight requests did not finish within the grace period; stopping anyway"
            );
            grpc_abort.abort();
            http_abort.abort();
        }
        match early {
            None => Ok(()),
            Some((server, Ok(()))) => Err(anyhow::anyhow!(
                "the {server} API server stopped unexpectedly"
            )),
            Some((server, Err(e))) => Err(e.context(format!("the {server} API server failed"))),
        }
    }
}

fn joined(r: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    r.map_err(anyhow::Error::from)?
}

fn log_stop(server: &str, result: anyhow::Result<()>) {
    if let Err(e) = result {
        tracing::warn!(server, error = %e, "API server stopped with an error");
    }
}

fn log_summary(config: &Config, snapshot: &crate::registry::Snapshot, started: Instant) {
    let d = &snapshot.discovery;
    tracing::info!(folder = %config.sockets_folder.display(), sockets = d.sockets.len(), failed = d.failures.len(),
        "socket discovery finished");
    for s in &d.sockets {
        tracing::info!(socket = %s.path.display(), component_type = %s.name, services = ?s.services, "socket");
    }
    for f in &d.failures {
        tracing::warn!(socket = %f.path.display(), reason = %f.reason, "socket unusable");
    }
    for c in snapshot.components.values() {
        let reason = c.status.reason().unwrap_or("");
        tracing::info!(component = %c.name, r#type = %c.type_name, features = ?c.features,
            status = c.status.name(), reason, ignore_errors = c.ignore_errors, "component");
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "start-up complete"
    );
}
