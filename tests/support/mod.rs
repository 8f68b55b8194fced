//! Shared by the integration tests and the demo: temp folders, child processes for the
//! reference components, plugd in-process, and bounded polling (no fixed sleeps).
#![allow(dead_code)]

pub mod apps;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// A temp folder with `sockets/` and `resources/` inside.
pub struct TestDirs {
    pub root: tempfile::TempDir,
    pub sockets: PathBuf,
    pub resources: PathBuf,
}

impl TestDirs {
    pub fn new() -> Self {
        // Socket paths must fit in 108 bytes: keep the temp root short.
        let root = tempfile::Builder::new()
            .prefix("plugd-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let sockets = root.path().join("sockets");
        let resources = root.path().join("resources");
        std::fs::create_dir_all(&sockets).expect("sockets dir");
        std::fs::create_dir_all(&resources).expect("resources dir");
        Self {
            root,
            sockets,
            resources,
        }
    }

    /// Writes a resource file.
    pub fn write_resource(&self, file: &str, yaml: &str) -> PathBuf {
        let path = self.resources.join(file);
        std::fs::write(&path, yaml).expect("write resource");
        path
    }

    /// A `state.<socket>` component named `name` with the given extra spec lines.
    pub fn state_component(&self, name: &str, socket: &str, extra_spec: &str) -> PathBuf {
        let db = self.root.path().join(format!("{name}.db"));
        self.write_resource(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: state.{socket}\n  version: v1\n{extra_spec}  metadata:\n  - name: connectionString\n    value: {}\n",
                db.display()
            ),
        )
    }
}

/// The folder holding the workspace's binaries for the running profile.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    dir
}

/// Path to a workspace binary; the workspace's binaries are built once per test process.
pub fn binary(bin: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let path = target_dir().join(bin);
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--workspace", "--bins"]);
        if target_dir().ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build --workspace --bins failed");
    });
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A child process killed when dropped.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
}

impl ChildGuard {
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self {
            child,
            name: name.to_string(),
        }
    }

    /// SIGTERM, then wait (bounded) for the exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the reference component binary `bin` on `<sockets>/<socket_name>.sock` (plus
/// `extra` arguments) and waits until the socket exists.
pub fn spawn_component(bin: &str, sockets: &Path, socket_name: &str, extra: &[&str]) -> ChildGuard {
    let guard = ChildGuard::spawn(
        bin,
        Command::new(binary(bin))
            .arg("--socket-name")
            .arg(socket_name)
            .arg("--socket-folder")
            .arg(sockets)
            .args(extra)
            .env("RUST_LOG", "warn"),
    );
    wait_for_socket(
        &sockets.join(format!("{socket_name}.sock")),
        Duration::from_secs(20),
    );
    guard
}

/// Starts `plugd-sqlite` listening on `<sockets>/<socket_name>.sock` and waits until it accepts.
pub fn spawn_sqlite(sockets: &Path, socket_name: &str) -> ChildGuard {
    let bin = binary("plugd-sqlite");
    let guard = ChildGuard::spawn(
        "plugd-sqlite",
        Command::new(bin)
            .arg("--socket-name")
            .arg(socket_name)
            .arg("--socket-folder")
            .arg(sockets)
            .env("RUST_LOG", "warn"),
    );
    wait_for_socket(
        &sockets.join(format!("{socket_name}.sock")),
        Duration::from_secs(20),
    );
    guard
}

/// Polls until a Unix socket accepts connections, or panics at the deadline.
pub fn wait_for_socket(path: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "socket {} did not accept within {within:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `check` until it returns `Some`, or panics at the deadline.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// plugd running in this process.
pub struct RunningPlugd {
    pub grpc: std::net::SocketAddr,
    pub http: std::net::SocketAddr,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub registry: std::sync::Arc<plugd::registry::Registry>,
}

impl RunningPlugd {
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub async fn grpc_client(
        &self,
    ) -> plugd::proto::runtime::dapr_client::DaprClient<tonic::transport::Channel> {
        plugd::proto::runtime::dapr_client::DaprClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect to plugd gRPC")
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// Builds and starts plugd in-process on ephemeral ports.
pub async fn start_plugd(
    config: plugd::config::Config,
) -> Result<RunningPlugd, plugd::app::StartError> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let app = plugd::App::build(config, shutdown.clone()).await?;
    let grpc = app.grpc_addr().expect("grpc addr");
    let http = app.http_addr().expect("http addr");
    let registry = app.registry();
    let task = tokio::spawn(app.run());
    Ok(RunningPlugd {
        grpc,
        http,
        shutdown,
        task,
        registry,
    })
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The `plugd` binary running as a child process on free ports.
pub struct PlugdProcess {
    pub guard: ChildGuard,
    pub grpc_port: u16,
    pub http_port: u16,
}

impl PlugdProcess {
    /// Starts `plugd` (the binary at `bin`) on `dirs` with `--app-id app_id` and `log_level`.
    pub fn spawn(bin: &Path, dirs: &TestDirs, app_id: &str, log_level: &str) -> Self {
        Self::spawn_with(bin, dirs, app_id, log_level, &[])
    }

    /// As [`PlugdProcess::spawn`], with `extra` flags.
    pub fn spawn_with(
        bin: &Path,
        dirs: &TestDirs,
        app_id: &str,
        log_level: &str,
        extra: &[&str],
    ) -> Self {
        Self::spawn_configured(bin, dirs, app_id, log_level, extra, |_| {})
    }

    /// As [`PlugdProcess::spawn_with`], with plugd's output discarded (a benchmark starts
    /// plugd hundreds of times).
    pub fn spawn_silent(
        bin: &Path,
        dirs: &TestDirs,
        app_id: &str,
        log_level: &str,
        extra: &[&str],
    ) -> Self {
        Self::spawn_configured(bin, dirs, app_id, log_level, extra, |cmd| {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        })
    }

    fn spawn_configured(
        bin: &Path,
        dirs: &TestDirs,
        app_id: &str,
        log_level: &str,
        extra: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        let (grpc_port, http_port) = (free_port(), free_port());
        // Tests start their own components and read no metrics, unless they ask.
        let mut defaults = Vec::new();
        if !extra.iter().any(|a| a.starts_with("--managed-component")) {
            defaults.push("--managed-components=false");
        }
        if !extra
            .iter()
            .any(|a| a.starts_with("--metrics-port") || a.starts_with("--enable-metrics"))
        {
            defaults.push("--enable-metrics=false");
        }
        let mut cmd = Command::new(bin);
        cmd.args(["--app-id", app_id, "--log-level", log_level])
            .args(&defaults)
            .arg("--resources-path")
            .arg(&dirs.resources)
            .arg("--sockets-folder")
            .arg(&dirs.sockets)
            .args(["--dapr-grpc-port", &grpc_port.to_string()])
            .args(["--dapr-http-port", &http_port.to_string()])
            .args(extra);
        configure(&mut cmd);
        let guard = ChildGuard::spawn("plugd", &mut cmd);
        Self {
            guard,
            grpc_port,
            http_port,
        }
    }

    /// The HTTP API base URL, `http://127.0.0.1:<port>/v1.0`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}/v1.0", self.http_port)
    }

    /// Polls `/v1.0/healthz` until it answers 204, or panics after `within`.
    pub async fn wait_healthy(&self, within: Duration) {
        let http = reqwest::Client::new();
        let url = format!("{}/healthz", self.base());
        eventually(within, "plugd to be healthy", || {
            let req = http.get(&url);
            async move {
                req.send()
                    .await
                    .ok()
                    .filter(|r| r.status() == 204)
                    .map(|_| ())
            }
        })
        .await;
    }
}

/// A `redis-server` on a free loopback port, in its own temp folder, killed when dropped.
pub struct RedisServer {
    pub port: u16,
    _dir: tempfile::TempDir,
    _guard: ChildGuard,
}

impl RedisServer {
    /// Starts one and waits (bounded) until it answers `PING`. Panics with a clear message when
    /// `redis-server` is not installed (CI installs it).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// As [`RedisServer::start`], with extra `redis-server` arguments. With `--requirepass`, the
    /// readiness check accepts the `-NOAUTH` answer.
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("redis temp dir");
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null());
        let child = cmd.stdin(Stdio::null()).spawn().unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}); install it (apt-get install redis-server)")
        });
        let guard = ChildGuard {
            child,
            name: "redis-server".into(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            use std::io::{Read, Write};
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && (&buf == b"+PONG\r\n" || buf.starts_with(b"-NOAUTH"))
                {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            port,
            _dir: dir,
            _guard: guard,
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A child's output lines (e.g. plugd's JSON log), kept as they arrive.
#[derive(Clone, Default)]
pub struct Logs(pub std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Logs {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The lines that are JSON objects.
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// The last 40 lines, for failure messages.
    pub fn tail(&self) -> String {
        let lines = self.lines();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Reads `stream` line by line into these logs, on a thread of its own.
    pub fn keep(&self, stream: impl std::io::Read + Send + 'static) {
        let sink = self.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                sink.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
    }

    /// JSON lines whose message (`msg`) is exactly `message`.
    pub fn with_message(&self, message: &str) -> Vec<serde_json::Value> {
        self.json()
            .into_iter()
            .filter(|l| l["msg"] == message)
            .collect()
    }
}
