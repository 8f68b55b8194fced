//! The cost of the pluggable hop, measured in one run: `cargo bench --bench hop`.
//!
//! Against one plugd-memory state store (1 KiB values), three targets take turns in rounds so
//! that drift of the machine is shared between them:
//!   (a) a bare tonic client straight to the component's Unix socket — the floor;
//!   (b) the same Get through plugd's gRPC API;
//!   (c) the same Get through plugd's HTTP API.
//! Then pub/sub end to end (publish through plugd → plugd-memory → plugd → a Rust gRPC app),
//! start-up time with 1, 10 and 100 component sockets, and plugd's memory with 50 components.
//!
//! Results go to stdout, `docs/bench/results.json` and the chart `docs/bench/hop.svg`
//! (`--out DIR` to change). `--quick` runs shorter rounds (for a smoke run, not for figures).
//! Everything runs as real processes: plugd and the components are the release binaries.

#[path = "../../tests/support/mod.rs"]
mod support;

mod forwarder;
mod report;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{client::legacy::Client as HttpClient, rt::TokioExecutor};
use plugd::proto::{
    common,
    components::{self as pb, state_store_client::StateStoreClient},
    runtime::{
        self as rt,
        app_callback_server::{AppCallback, AppCallbackServer},
        dapr_client::DaprClient,
    },
};
use support::{ChildGuard, PlugdProcess, TestDirs};
use tonic::{
    Request, Response, Status,
    transport::{Channel, Endpoint, Uri},
};

use report::{Fixed, Results, Saturation};

const VALUE_SIZE: usize = 1024;
const KEY: &str = "bench-key";
const APP_ID: &str = "bench";

struct Settings {
    /// `--only hop|pubsub|startup`: run one part (results are written only for a full run).
    only: Option<String>,
    /// Run by `cargo test` (no `--bench` argument): a smoke run of the Get and pub/sub parts
    /// with tiny durations, writing nothing, so the test suite checks that the benchmark works.
    smoke: bool,
    /// `--profile TARGET IN_FLIGHT SECS`: only load one target, for perf.
    profile: Option<(usize, usize, f64)>,
    rounds: usize,
    fixed_secs: f64,
    saturation_secs: f64,
    pubsub_messages: usize,
    out: PathBuf,
}

impl Settings {
    fn from_args() -> anyhow::Result<Self> {
        let mut quick = false;
        let mut profile = None;
        let mut only = None;
        let mut benching = false;
        let mut out = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/bench");
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--only" => {
                    let part = args.next().context("--only needs hop, pubsub or startup")?;
                    ensure!(
                        ["hop", "pubsub", "startup"].contains(&part.as_str()),
                        "--only takes hop, pubsub or startup, not {part:?}"
                    );
                    only = Some(part);
                }
                "--profile" => {
                    let mut next = || args.next().context("--profile TARGET IN_FLIGHT SECS");
                    let target = next()?;
                    let target = Target::NAMES
                        .iter()
                        .chain(&["pubsub"])
                        .position(|n| *n == target)
                        .context("TARGET is direct, grpc, http, forwarder or pubsub")?;
                    profile = Some((target, next()?.parse()?, next()?.parse()?));
                }
                "--out" => out = args.next().context("--out needs a folder")?.into(),
                // `cargo bench` passes `--bench`; `cargo test` does not.
                "--bench" => benching = true,
                other => bail!("unknown argument {other:?} (expected --quick or --out DIR)"),
            }
        }
        let smoke = !benching && !quick && only.is_none() && profile.is_none();
        Ok(if smoke {
            Self {
                only,
                smoke,
                profile,
                rounds: 1,
                fixed_secs: 0.2,
                saturation_secs: 0.2,
                pubsub_messages: 300,
                out,
            }
        } else if quick {
            Self {
                only,
                smoke,
                profile,
                rounds: 2,
                fixed_secs: 1.0,
                saturation_secs: 0.5,
                pubsub_messages: 5_000,
                out,
            }
        } else {
            Self {
                only,
                smoke,
                profile,
                rounds: 5,
                fixed_secs: 3.0,
                saturation_secs: 2.0,
                pubsub_messages: 40_000,
                out,
            }
        })
    }
}

/// One of the three ways to do the same Get.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // three values, cloned once per worker
enum Target {
    Direct(StateStoreClient<Channel>),
    Grpc(DaprClient<Channel>),
    Http(
        HttpClient<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
        Uri,
    ),
}

impl Target {
    /// (a), (b), (c), and (d): the same stack as plugd with none of plugd's work.
    const NAMES: [&'static str; 4] = ["direct", "grpc", "http", "forwarder"];

    async fn get(&mut self, store: &str) -> anyhow::Result<()> {
        let len = match self {
            Target::Direct(client) => {
                let mut req = Request::new(pb::GetRequest {
                    key: format!("{APP_ID}||{KEY}"),
                    ..Default::default()
                });
                req.metadata_mut().insert(
                    "x-component-instance",
                    store.parse().context("instance header")?,
                );
                client.get(req).await?.into_inner().data.len()
            }
            Target::Grpc(client) => client
                .get_state(rt::GetStateRequest {
                    store_name: store.into(),
                    key: KEY.into(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .data
                .len(),
            Target::Http(client, uri) => {
                let resp = client.get(uri.clone()).await?;
                ensure!(resp.status() == 200, "HTTP {}", resp.status());
                resp.into_body().collect().await?.to_bytes().len()
            }
        };
        ensure!(len == VALUE_SIZE, "got {len} bytes instead of {VALUE_SIZE}");
        Ok(())
    }
}

/// CPU time (user + system) a process has used, from `/proc/<pid>/stat` (USER_HZ = 100).
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let (user, system) = cpu_split(pid)?;
    Ok(user + system)
}

/// User and system CPU time of a process, from `/proc/<pid>/stat` (USER_HZ = 100).
fn cpu_split(pid: u32) -> anyhow::Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may hold spaces: count fields after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("odd /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| -> anyhow::Result<Duration> {
        let t: u64 = fields.get(i).context("no utime/stime")?.parse()?;
        Ok(Duration::from_millis(t * 10))
    };
    Ok((ticks(11)?, ticks(12)?))
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

async fn uds_channel(socket: &Path) -> anyhow::Result<Channel> {
    let socket = socket.to_path_buf();
    Ok(Endpoint::from_static("http://component")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await?)
}

fn memory_yaml(name: &str, kind: &str, socket: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {kind}.{socket}\n  version: v1\n"
    )
}

/// plugd with its defaults (info logs, metrics on) on free ports; its log goes to /dev/null.
fn spawn_plugd(dirs: &TestDirs, extra: &[&str]) -> PlugdProcess {
    // `BENCH_PLUGD_BIN`: another plugd build (a profiling one, with frame pointers).
    let bin =
        std::env::var_os("BENCH_PLUGD_BIN").map_or_else(|| support::binary("plugd"), PathBuf::from);
    let metrics = format!("--metrics-port={}", support::free_port());
    let mut args = vec![metrics.as_str()];
    args.extend_from_slice(extra);
    PlugdProcess::spawn_silent(&bin, dirs, APP_ID, "info", &args)
}

/// The minimal forwarder ([`forwarder`]) as a child process of this benchmark, and its port.
fn spawn_forwarder(socket: &Path) -> anyhow::Result<(ChildGuard, u16)> {
    let mut guard = ChildGuard::spawn(
        "forwarder",
        Command::new(std::env::current_exe()?)
            .arg("--forwarder")
            .arg(socket)
            .arg("store")
            .stdout(Stdio::piped()),
    );
    let stdout = guard.child.stdout.take().context("forwarder stdout")?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let port = line
        .trim()
        .parse()
        .with_context(|| format!("the forwarder printed {line:?}, not its port"))?;
    Ok((guard, port))
}

async fn wait_ready(plugd: &PlugdProcess) {
    plugd.wait_healthy(Duration::from_secs(60)).await;
}

async fn seed(grpc: &mut DaprClient<Channel>, store: &str) -> anyhow::Result<()> {
    grpc.save_state(rt::SaveStateRequest {
        store_name: store.into(),
        states: vec![common::StateItem {
            key: KEY.into(),
            value: vec![b'v'; VALUE_SIZE],
            ..Default::default()
        }],
    })
    .await?;
    Ok(())
}

/// Open loop at `rate` per second for `secs`: each call is sent at its scheduled time from a
/// dedicated thread, and its latency counts from that scheduled time (so a stall is not
/// hidden). Returns the latencies and how late the sends were.
async fn fixed_rate(
    target: &Target,
    store: &'static str,
    rate: u32,
    secs: f64,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let n = (f64::from(rate) * secs) as u32;
    let target = target.clone();
    let tasks = open_loop(rate, n, move |at| {
        let late = at.elapsed();
        let mut target = target.clone();
        async move {
            target.get(store).await?;
            Ok::<_, anyhow::Error>((at.elapsed(), late))
        }
    })
    .await?;
    let (mut latencies, mut lateness) = (Vec::new(), Vec::new());
    for task in tasks {
        let (latency, late) = task.await??;
        latencies.push(latency);
        lateness.push(late);
    }
    Ok((latencies, lateness))
}

/// Starts `count` tasks at `rate` per second, each at its scheduled time from a dedicated
/// thread (a Tokio timer would round to the millisecond); `make` gets the scheduled time.
async fn open_loop<F, Fut>(
    rate: u32,
    count: u32,
    make: F,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<Fut::Output>>>
where
    F: Fn(Instant) -> Fut + Send + 'static,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    let dispatcher = std::thread::spawn(move || {
        let period = Duration::from_secs(1) / rate;
        let start = Instant::now() + Duration::from_millis(5);
        let mut tasks = Vec::with_capacity(count as usize);
        for i in 0..count {
            let at = start + period * i;
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            tasks.push(handle.spawn(make(at)));
        }
        tasks
    });
    tokio::task::spawn_blocking(move || dispatcher.join())
        .await?
        .map_err(|_| anyhow::anyhow!("dispatcher thread panicked"))
}

/// Closed loop: `in_flight` workers each call again as soon as the previous call answered.
async fn saturate(
    target: &Target,
    store: &'static str,
    in_flight: usize,
    secs: f64,
) -> anyhow::Result<(u64, Duration)> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..in_flight {
        let (mut target, stop, done) = (target.clone(), stop.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                target.get(store).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let started = Instant::now();
    let begin = done.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let ops = done.load(Ordering::Relaxed) - begin;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await??;
    }
    Ok((ops, elapsed))
}

async fn hop(settings: &Settings, results: &mut Results) -> anyhow::Result<()> {
    let dirs = TestDirs::new();
    let component = support::spawn_component("plugd-memory", &dirs.sockets, "memory", &[]);
    dirs.write_resource("store.yaml", &memory_yaml("store", "state", "memory"));
    let plugd = spawn_plugd(&dirs, &[]);
    wait_ready(&plugd).await;
    let plugd_pid = plugd.guard.child.id();
    let component_pid = component.child.id();

    let grpc_channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", plugd.grpc_port))?
        .connect()
        .await?;
    let mut grpc = DaprClient::new(grpc_channel);
    seed(&mut grpc, "store").await?;
    let mut http = HttpClient::builder(TokioExecutor::new());
    http.pool_max_idle_per_host(128);
    let http = http.build_http();
    let uri: Uri = format!(
        "http://127.0.0.1:{}/v1.0/state/store/{KEY}",
        plugd.http_port
    )
    .parse()?;
    let forwarder = spawn_forwarder(&dirs.sockets.join("memory.sock"))?;
    let forwarder_channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", forwarder.1))?
        .connect()
        .await?;
    let targets = [
        Target::Direct(StateStoreClient::new(
            uds_channel(&dirs.sockets.join("memory.sock")).await?,
        )),
        Target::Grpc(grpc),
        Target::Http(http, uri),
        Target::Grpc(DaprClient::new(forwarder_channel)),
    ];
    // The process each target goes through, whose CPU time is the hop's.
    let hop_pids = [
        None,
        Some(plugd_pid),
        Some(plugd_pid),
        Some(forwarder.0.child.id()),
    ];
    let hop_cpu = |i: usize| hop_pids[i].map_or(Ok(Duration::ZERO), cpu_time);
    // Warm up every path (connections, pools, allocator).
    for target in &targets {
        saturate(target, "store", 16, 0.5).await?;
    }
    if let Some((target, in_flight, secs)) = settings.profile {
        let pid = hop_pids[target].unwrap_or(plugd_pid);
        println!("hop pid {pid}, component pid {component_pid}");
        let (p0, c0) = (cpu_split(pid)?, cpu_time(component_pid)?);
        let (n, elapsed) = saturate(&targets[target], "store", in_flight, secs).await?;
        let (p1, c1) = (cpu_split(pid)?, cpu_time(component_pid)?);
        let per_op = |d: Duration| d.as_secs_f64() * 1e6 / n.max(1) as f64;
        println!(
            "{} × {in_flight}: {:.0} ops/s; hop µs/op user {:.1} sys {:.1}; component µs/op {:.1}",
            Target::NAMES[target],
            n as f64 / elapsed.as_secs_f64(),
            per_op(p1.0.saturating_sub(p0.0)),
            per_op(p1.1.saturating_sub(p0.1)),
            per_op(c1.saturating_sub(c0)),
        );
        return Ok(());
    }

    println!(
        "\n== State Get, {VALUE_SIZE} B value, fixed rate 1000/s ({} rounds × {} s per target)",
        settings.rounds, settings.fixed_secs
    );
    let mut latencies: [Vec<Duration>; 4] = Default::default();
    let mut lateness = Vec::new();
    for _ in 0..settings.rounds {
        for (i, target) in targets.iter().enumerate() {
            let (l, late) = fixed_rate(target, "store", 1000, settings.fixed_secs).await?;
            latencies[i].extend(l);
            lateness.extend(late);
        }
    }
    lateness.sort();
    for (i, l) in latencies.iter_mut().enumerate() {
        l.sort();
        results.fixed.push(Fixed::from_sorted(Target::NAMES[i], l));
    }
    results.send_lateness_p50_us = report::micros(report::percentile(&lateness, 0.5));
    results.send_lateness_p99_us = report::micros(report::percentile(&lateness, 0.99));

    println!(
        "== State Get at saturation ({} rounds × {} s per target and depth)",
        settings.rounds, settings.saturation_secs
    );
    for in_flight in [1, 16, 64] {
        let mut ops = [0u64; 4];
        let mut time = [Duration::ZERO; 4];
        let mut hop = [Duration::ZERO; 4];
        let mut component_cpu = [Duration::ZERO; 4];
        for _ in 0..settings.rounds {
            for (i, target) in targets.iter().enumerate() {
                let (h0, c0) = (hop_cpu(i)?, cpu_time(component_pid)?);
                let (n, elapsed) =
                    saturate(target, "store", in_flight, settings.saturation_secs).await?;
                hop[i] += hop_cpu(i)?.saturating_sub(h0);
                component_cpu[i] += cpu_time(component_pid)?.saturating_sub(c0);
                ops[i] += n;
                time[i] += elapsed;
            }
        }
        for i in 0..4 {
            results.saturation.push(Saturation {
                target: Target::NAMES[i].into(),
                in_flight,
                ops_per_sec: ops[i] as f64 / time[i].as_secs_f64(),
                hop_cpu_us_per_op: hop[i].as_secs_f64() * 1e6 / ops[i].max(1) as f64,
                component_cpu_us_per_op: component_cpu[i].as_secs_f64() * 1e6
                    / ops[i].max(1) as f64,
            });
        }
    }
    drop(plugd);
    drop(forwarder);
    drop(component);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Pub/sub: a lean Rust gRPC app that records when each message arrived.

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

#[derive(Clone, Default)]
struct BenchApp {
    /// (sent, received) in ns since `epoch()`.
    received: Arc<Mutex<Vec<(u64, u64)>>>,
}

#[tonic::async_trait]
impl AppCallback for BenchApp {
    async fn on_invoke(
        &self,
        _: Request<common::InvokeRequest>,
    ) -> Result<Response<common::InvokeResponse>, Status> {
        Err(Status::unimplemented("no invoke"))
    }

    async fn list_topic_subscriptions(
        &self,
        _: Request<()>,
    ) -> Result<Response<rt::ListTopicSubscriptionsResponse>, Status> {
        Ok(Response::new(rt::ListTopicSubscriptionsResponse {
            subscriptions: vec![rt::TopicSubscription {
                pubsub_name: "pubsub".into(),
                topic: "bench".into(),
                routes: Some(rt::TopicRoutes::default()),
                ..Default::default()
            }],
        }))
    }

    async fn on_topic_event(
        &self,
        req: Request<rt::TopicEventRequest>,
    ) -> Result<Response<rt::TopicEventResponse>, Status> {
        let now = epoch().elapsed().as_nanos() as u64;
        let sent = std::str::from_utf8(&req.get_ref().data)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| Status::invalid_argument("not a timestamp"))?;
        if let Ok(mut r) = self.received.lock() {
            r.push((sent, now));
        }
        Ok(Response::new(rt::TopicEventResponse {
            status: rt::topic_event_response::TopicEventResponseStatus::Success as i32,
        }))
    }

    async fn list_input_bindings(
        &self,
        _: Request<()>,
    ) -> Result<Response<rt::ListInputBindingsResponse>, Status> {
        Ok(Response::new(rt::ListInputBindingsResponse::default()))
    }

    async fn on_binding_event(
        &self,
        _: Request<rt::BindingEventRequest>,
    ) -> Result<Response<rt::BindingEventResponse>, Status> {
        Err(Status::unimplemented("no bindings"))
    }

    async fn on_bulk_topic_event(
        &self,
        _: Request<rt::TopicEventBulkRequest>,
    ) -> Result<Response<rt::TopicEventBulkResponse>, Status> {
        Err(Status::unimplemented("no bulk"))
    }

    async fn on_job_event(
        &self,
        _: Request<rt::JobEventRequest>,
    ) -> Result<Response<rt::JobEventResponse>, Status> {
        Err(Status::unimplemented("no jobs"))
    }
}

async fn publish_stamped(client: &mut DaprClient<Channel>, stamp: u64) -> Result<(), Status> {
    client
        .publish_event(rt::PublishEventRequest {
            pubsub_name: "pubsub".into(),
            topic: "bench".into(),
            data: stamp.to_string().into_bytes(),
            data_content_type: "text/plain".into(),
            metadata: HashMap::new(),
        })
        .await
        .map(|_| ())
}

/// `count` messages in one BulkPublishEvent call, each stamped with the send time.
async fn publish_bulk(client: &mut DaprClient<Channel>, count: usize) -> Result<(), Status> {
    let stamp = epoch().elapsed().as_nanos() as u64;
    let entries = (0..count)
        .map(|i| rt::BulkPublishRequestEntry {
            entry_id: i.to_string(),
            event: stamp.to_string().into_bytes(),
            content_type: "text/plain".into(),
            metadata: HashMap::new(),
        })
        .collect();
    let resp = client
        .bulk_publish_event_alpha1(rt::BulkPublishRequest {
            pubsub_name: "pubsub".into(),
            topic: "bench".into(),
            entries,
            metadata: HashMap::new(),
        })
        .await?
        .into_inner();
    match resp.failed_entries.first() {
        None => Ok(()),
        Some(f) => Err(Status::internal(format!("bulk entry failed: {}", f.error))),
    }
}

async fn pubsub(
    settings: &Settings,
    concurrency: usize,
    batch: usize,
) -> anyhow::Result<report::PubSub> {
    let dirs = TestDirs::new();
    let _component = support::spawn_component("plugd-memory", &dirs.sockets, "memory", &[]);
    // plugd-memory hands out at most `maxInFlight` unacknowledged messages per stream (64 by
    // default): at least as many as plugd may deliver at once.
    let in_flight = concurrency.max(64);
    dirs.write_resource(
        "pubsub.yaml",
        &format!(
            "{}  metadata:\n  - name: maxInFlight\n    value: \"{in_flight}\"\n",
            memory_yaml("pubsub", "pubsub", "memory")
        ),
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app_port = listener.local_addr()?.port();
    let app = BenchApp::default();
    let server = {
        let app = app.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(AppCallbackServer::new(app))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
        })
    };
    let (port, conc) = (app_port.to_string(), concurrency.to_string());
    let plugd = spawn_plugd(
        &dirs,
        &[
            "--app-port",
            &port,
            "--app-protocol",
            "grpc",
            "--subscription-concurrency",
            &conc,
        ],
    );
    wait_ready(&plugd).await;
    if settings.profile.is_some() {
        println!("plugd pid {}", plugd.guard.child.id());
    }
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", plugd.grpc_port))?
        .connect()
        .await?;
    let client = DaprClient::new(channel);
    // The subscription is open once a warm-up message arrives.
    let publish = |mut client: DaprClient<Channel>| async move {
        let sent = epoch().elapsed().as_nanos() as u64;
        publish_stamped(&mut client, sent).await
    };
    support::eventually(
        Duration::from_secs(30),
        "the subscription to deliver",
        || {
            let (client, app) = (client.clone(), app.clone());
            async move {
                publish(client).await.ok()?;
                tokio::time::sleep(Duration::from_millis(50)).await;
                (!app.received.lock().ok()?.is_empty()).then_some(())
            }
        },
    )
    .await;
    // Let the warm-up messages drain, then count from zero.
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.received
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clear();

    let n = settings.pubsub_messages;
    // One at a time: 64 PublishEvent calls in flight. In bulk: 8 BulkPublishEvent calls of
    // `batch` messages in flight.
    let (publishers, step) = if batch > 1 { (8, batch) } else { (64, 1) };
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..publishers {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(step as u64, Ordering::Relaxed);
                if first >= n as u64 {
                    break;
                }
                let count = step.min(n - first as usize);
                if count == 1 {
                    publish(client.clone()).await?;
                } else {
                    publish_bulk(&mut client.clone(), count).await?;
                }
            }
            Ok::<_, Status>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let published = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let count = app.received.lock().map(|r| r.len()).unwrap_or(0);
        if count >= n {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {count} of {n} messages arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let received = std::mem::take(
        &mut *app
            .received
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?,
    );
    let first_sent = received.iter().map(|r| r.0).min().unwrap_or(0);
    let last_received = received.iter().map(|r| r.1).max().unwrap_or(0);

    // Latency: publish at a fixed rate the subscription keeps up with, each message stamped
    // with its scheduled send time.
    let rate = 1000;
    let count = (f64::from(rate) * settings.fixed_secs * 2.0) as u32;
    let tasks = {
        let client = client.clone();
        open_loop(rate, count, move |at| {
            let stamp = at.duration_since(epoch()).as_nanos() as u64;
            let mut client = client.clone();
            async move { publish_stamped(&mut client, stamp).await }
        })
        .await?
    };
    for t in tasks {
        t.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.received.lock().map(|r| r.len()).unwrap_or(0) < count as usize {
        ensure!(
            Instant::now() < deadline,
            "fixed-rate messages did not all arrive"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut latencies: Vec<Duration> = app
        .received
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
        .map(|(s, r)| Duration::from_nanos(r.saturating_sub(*s)))
        .collect();
    latencies.sort();
    server.abort();
    Ok(report::PubSub {
        subscription_concurrency: concurrency,
        batch,
        messages: n,
        publish_msgs_per_sec: n as f64 / published.as_secs_f64(),
        end_to_end_msgs_per_sec: n as f64
            / Duration::from_nanos(last_received - first_sent).as_secs_f64(),
        p50_ms: report::percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        p99_ms: report::percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    })
}

// ---------------------------------------------------------------------------------------------
// Start-up and memory with many components.

struct Fleet {
    dirs: TestDirs,
    _components: Vec<ChildGuard>,
}

/// `n` plugd-memory processes, each on its own socket with one state store in plugd.
fn fleet(n: usize) -> Fleet {
    let dirs = TestDirs::new();
    let mut components = Vec::new();
    for i in 0..n {
        components.push(support::spawn_component(
            "plugd-memory",
            &dirs.sockets,
            &format!("m{i}"),
            &[],
        ));
        dirs.write_resource(
            &format!("s{i}.yaml"),
            &memory_yaml(&format!("s{i}"), "state", &format!("m{i}")),
        );
    }
    Fleet {
        dirs,
        _components: components,
    }
}

/// From spawning plugd until `/v1.0/healthz` answers 204 (every component ready).
async fn startup(fleet: &Fleet) -> anyhow::Result<Duration> {
    let http = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let started = Instant::now();
    let plugd = spawn_plugd(&fleet.dirs, &[]);
    let uri: Uri = format!("http://127.0.0.1:{}/v1.0/healthz", plugd.http_port).parse()?;
    let deadline = started + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(uri.clone()).await
            && r.status() == 204
        {
            return Ok(started.elapsed());
        }
        ensure!(Instant::now() < deadline, "plugd not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn startup_and_memory(results: &mut Results) -> anyhow::Result<()> {
    println!("== Start-up with 1, 10 and 100 sockets (median of 3)");
    for n in [1, 10, 100] {
        let fleet = fleet(n);
        let mut runs = Vec::new();
        for _ in 0..3 {
            runs.push(startup(&fleet).await?);
        }
        runs.sort();
        results.startup_ms.push((n, runs[1].as_secs_f64() * 1e3));
    }

    println!("== Memory with 50 components");
    let fleet = fleet(50);
    let plugd = spawn_plugd(&fleet.dirs, &[]);
    wait_ready(&plugd).await;
    let pid = plugd.guard.child.id();
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", plugd.grpc_port))?
        .connect()
        .await?;
    let mut grpc = DaprClient::new(channel);
    for i in 0..50 {
        seed(&mut grpc, &format!("s{i}")).await?;
    }
    // Idle: after start-up work has settled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    results.rss_idle_mib = status_kib(pid, "VmRSS")? as f64 / 1024.0;
    // Under load: 64 calls in flight spread over the 50 stores.
    let stores: Vec<&'static str> = (0..50)
        .map(|i| &*Box::leak(format!("s{i}").into_boxed_str()))
        .collect();
    let mut workers = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    for w in 0..64 {
        let (mut target, stop, store) = (Target::Grpc(grpc.clone()), stop.clone(), stores[w % 50]);
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                target.get(store).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let mut peak = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(status_kib(pid, "VmRSS")?);
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await??;
    }
    results.rss_load_mib = peak as f64 / 1024.0;
    results.rss_hwm_mib = status_kib(pid, "VmHWM")? as f64 / 1024.0;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // `--replot DIR`: draw the chart again from DIR/results.json, measuring nothing.
    if let Some(i) = args.iter().position(|a| a == "--replot") {
        let dir = PathBuf::from(args.get(i + 1).context("--replot needs a folder")?);
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("results.json"))?)?;
        let results = Results::from_json(&json).context("results.json is not a run's results")?;
        return results.write_chart(&dir);
    }
    if let [_, flag, socket, instance] = args.as_slice()
        && flag == "--forwarder"
    {
        return forwarder::run(Path::new(socket), instance);
    }
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    epoch();
    let settings = Settings::from_args()?;
    // Build (once) the release binaries of plugd and the components.
    support::binary("plugd");
    let mut results = Results::new();
    results.smoke = settings.smoke;
    if let Some((4, concurrency, secs)) = settings.profile {
        let settings = Settings {
            pubsub_messages: (secs * 10_000.0) as usize,
            ..settings
        };
        let p = pubsub(&settings, concurrency, 1).await?;
        println!(
            "pubsub × {concurrency}: {:.0} msg/s end to end, p50 {:.1} ms",
            p.end_to_end_msgs_per_sec, p.p50_ms
        );
        return Ok(());
    }
    let part = |name: &str| settings.only.as_deref().is_none_or(|o| o == name);
    if part("hop") {
        hop(&settings, &mut results).await?;
        if settings.profile.is_some() {
            return Ok(());
        }
    }
    if part("pubsub") {
        println!("== Pub/sub end to end (publish → plugd → plugd-memory → plugd → Rust gRPC app)");
        for (concurrency, batch) in [(1, 1), (256, 1), (256, 100)] {
            results
                .pubsub
                .push(pubsub(&settings, concurrency, batch).await?);
        }
    }
    if part("startup") && !settings.smoke {
        startup_and_memory(&mut results).await?;
    }
    results.print();
    if settings.only.is_none() && !settings.smoke {
        results.write(&settings.out)?;
    }
    Ok(())
}
