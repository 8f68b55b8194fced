//! Managed components, as real processes: `plugd` launches the reference component binaries (or a
//! `--managed-component` command) for Components whose sockets nobody serves, restarts them when
//! they die, stops them at shutdown, and leaves alone a socket another process already serves.
//! Also daprd's own command line (Go's `-flag` spelling, unused daprd flags warned once),
//! `/metrics` and several `--dapr-listen-addresses`.
//!
//! plugd runs with `--log-as-json`; its stderr is kept so tests can read which pids it launched.
//! Processes are found through `/proc` (children of plugd's pid). Nothing sleeps a fixed time:
//! every wait is a bounded poll.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::BufRead,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::{ChildGuard, Logs, TestDirs, binary, eventually, free_port, spawn_component};

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// plugd as a child process with its (JSON) log kept

impl Logs {
    /// Pids plugd logged as `managed component started` for the socket name `component`, in
    /// order.
    fn started_pids(&self, component: &str) -> Vec<u32> {
        self.with_message("managed component started")
            .iter()
            .filter(|l| l["component"] == component)
            .filter_map(|l| l["pid"].as_u64().map(|p| p as u32))
            .collect()
    }

    /// Every pid plugd logged as started, by socket name.
    fn all_started(&self) -> BTreeMap<String, Vec<u32>> {
        let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for l in self.with_message("managed component started") {
            if let (Some(c), Some(pid)) = (l["component"].as_str(), l["pid"].as_u64()) {
                out.entry(c.to_string()).or_default().push(pid as u32);
            }
        }
        out
    }
}

struct Plugd {
    guard: ChildGuard,
    /// (gRPC, HTTP) ports plugd bound, read from its log: it binds port 0, so no other process
    /// can take a port between the test choosing it and plugd binding it.
    ports: std::sync::OnceLock<(u16, u16)>,
    logs: Logs,
    http: reqwest::Client,
}

/// How to start plugd.
struct Start<'a> {
    /// Leading arguments, before plugd's own (so daprd spellings can be tested as given).
    args: Vec<String>,
    cwd: Option<&'a Path>,
    env: Vec<(&'a str, &'a str)>,
}

impl<'a> Start<'a> {
    fn new(args: &[&str]) -> Self {
        Self {
            args: args.iter().map(|s| s.to_string()).collect(),
            cwd: None,
            env: Vec::new(),
        }
    }

    /// `--app-id <id>` with managed components on and no metrics: what most tests here want.
    fn managed(app_id: &str) -> Self {
        Self::new(&[
            "--app-id",
            app_id,
            "--managed-components=true",
            "--enable-metrics=false",
        ])
    }

    fn cwd(mut self, dir: &'a Path) -> Self {
        self.cwd = Some(dir);
        self
    }

    fn env(mut self, key: &'a str, value: &'a str) -> Self {
        self.env.push((key, value));
        self
    }
}

impl Plugd {
    /// Starts the plugd binary on `dirs` with free API ports, JSON logs at info, then `start`'s
    /// arguments. Unlike `support::PlugdProcess`, nothing about managed components or metrics
    /// is defaulted: each test says what it wants.
    fn spawn(dirs: &TestDirs, start: Start<'_>) -> Self {
        let mut cmd = Command::new(binary("plugd"));
        cmd.args(["--log-as-json", "--log-level", "info"])
            .arg("--resources-path")
            .arg(&dirs.resources)
            .arg("--sockets-folder")
            .arg(&dirs.sockets)
            .args(["--dapr-grpc-port", "0", "--dapr-http-port", "0"])
            .args(&start.args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &start.env {
            cmd.env(k, v);
        }
        if let Some(dir) = start.cwd {
            cmd.current_dir(dir);
        }
        let mut guard = ChildGuard::spawn("plugd", &mut cmd);
        let logs = Logs::default();
        let stderr = guard.child.stderr.take().expect("plugd stderr");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Self {
            guard,
            ports: std::sync::OnceLock::new(),
            logs,
            http: reqwest::Client::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.guard.child.id()
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}/v1.0", self.http_port())
    }

    /// The port of `/metrics`, from plugd's log (tests pass `--metrics-port 0`).
    fn metrics_port(&self) -> u16 {
        self.logs
            .json()
            .iter()
            .find(|l| l["msg"] == "metrics served at /metrics")
            .and_then(|l| l["addr"].as_str()?.rsplit(':').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no metrics line in plugd's log:\n{}", self.logs.tail()))
    }

    fn grpc_port(&self) -> u16 {
        self.ports.get().expect("wait_listening() first").0
    }

    fn http_port(&self) -> u16 {
        self.ports.get().expect("wait_listening() first").1
    }

    /// Waits for plugd's "serving" log line (which names the ports it bound), then until the
    /// HTTP API answers (`/v1.0/healthz/outbound` is 204 once the APIs listen).
    async fn wait_listening(&self) {
        let logs = self.logs.clone();
        let ports = eventually(WAIT, "plugd to log the ports it serves on", || {
            let logs = logs.clone();
            async move {
                let lines = logs.json();
                if logs.lines().iter().any(|l| l.contains("could not start")) {
                    panic!("plugd could not start:\n{}", logs.tail());
                }
                let port =
                    |v: &Value| -> Option<u16> { v.as_str()?.rsplit(':').next()?.parse().ok() };
                lines
                    .iter()
                    .find(|l| l["msg"] == "plugd is serving the runtime API")
                    .and_then(|l| Some((port(&l["grpc"])?, port(&l["http"])?)))
            }
        })
        .await;
        let _ = self.ports.set(ports);
        let url = format!("{}/healthz/outbound", self.base());
        let http = self.http.clone();
        let logs = self.logs.clone();
        eventually(WAIT, "plugd's HTTP API to listen", || {
            let req = http.get(&url);
            let logs = logs.clone();
            async move {
                let ok = req.send().await.ok().filter(|r| r.status() == 204);
                if ok.is_none() && logs.lines().iter().any(|l| l.contains("could not start")) {
                    panic!("plugd could not start:\n{}", logs.tail());
                }
                ok.map(|_| ())
            }
        })
        .await;
    }

    async fn metadata(&self) -> Value {
        self.http
            .get(format!("{}/metadata", self.base()))
            .send()
            .await
            .expect("GET /v1.0/metadata")
            .json()
            .await
            .expect("metadata JSON")
    }

    /// Each component's status, by name.
    async fn statuses(&self) -> BTreeMap<String, String> {
        let meta = self.metadata().await;
        meta["components"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                Some((
                    c["name"].as_str()?.to_string(),
                    c["status"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    /// Waits until every one of `names` is READY.
    async fn wait_ready(&self, names: &[&str]) {
        let deadline = Instant::now() + WAIT;
        loop {
            let statuses = self.statuses().await;
            if names
                .iter()
                .all(|n| statuses.get(*n).is_some_and(|s| s == "READY"))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{names:?} not READY within {WAIT:?}: {statuses:?}\nplugd log:\n{}",
                self.logs.tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn save(&self, store: &str, key: &str, value: Value) -> reqwest::StatusCode {
        self.http
            .post(format!("{}/state/{store}", self.base()))
            .json(&json!([{"key": key, "value": value}]))
            .send()
            .await
            .expect("save state")
            .status()
    }

    /// GET of a state key: status and body.
    async fn get(&self, store: &str, key: &str) -> (reqwest::StatusCode, String) {
        let resp = self
            .http
            .get(format!("{}/state/{store}/{key}", self.base()))
            .send()
            .await
            .expect("get state");
        let status = resp.status();
        (status, resp.text().await.unwrap_or_default())
    }

    /// A save then a get of the same key, asserted.
    async fn round_trip(&self, store: &str, key: &str) {
        let value = json!({"store": store, "key": key});
        assert_eq!(
            self.save(store, key, value.clone()).await,
            204,
            "save to {store}\nplugd log:\n{}",
            self.logs.tail()
        );
        let (status, body) = self.get(store, key).await;
        assert_eq!(status, 200, "get from {store}: {body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).expect("JSON"),
            value,
            "{store}"
        );
    }

    /// SIGTERM, then waits (bounded) for the exit code.
    /// SIGTERM, and plugd exits 0; its logs.
    async fn stop_cleanly(self) -> Logs {
        let (status, logs) = self.terminate().await;
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "plugd's exit; {}",
            logs.tail()
        );
        logs
    }

    async fn terminate(mut self) -> (Option<std::process::ExitStatus>, Logs) {
        let logs = self.logs.clone();
        let status = tokio::task::spawn_blocking(move || self.guard.terminate())
            .await
            .expect("join");
        (status, logs)
    }
}

// ---------------------------------------------------------------------------------------------
// processes, sockets, metrics

/// `(ppid, state)` of a live or zombie process, from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(u32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Whether `pid` is a running process (not gone, not a zombie waiting to be reaped).
fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(_, state)| state != 'Z' && state != 'X')
}

/// Live processes whose parent is `parent`.
fn children_of(parent: u32) -> BTreeSet<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|(ppid, s)| ppid == parent && s != 'Z'))
        .collect()
}

/// `/proc/<pid>/cmdline` as words.
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
}

/// Names of the `.sock` files in `dir`.
fn sockets_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str().map(str::to_string))
                .filter(|n| n.ends_with(".sock"))
                .collect()
        })
        .unwrap_or_default()
}

fn kill(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Polls (bounded) until `check` holds.
async fn until(what: &str, check: impl Fn() -> bool) {
    eventually(WAIT, what, || {
        let ok = check();
        async move { ok.then_some(()) }
    })
    .await;
}

async fn scrape(http: &reqwest::Client, port: u16) -> Option<String> {
    let resp = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?;
    if resp.status() != 200 {
        return None;
    }
    resp.text().await.ok()
}

/// The value of the sample `series` (name with its labels, exactly as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Builds the workspace's binaries (once) and answers the folder holding them.
fn bins() -> PathBuf {
    binary("plugd");
    support::target_dir()
}

fn component(name: &str, ty: &str, metadata: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {ty}\n  version: v1\n  metadata:{metadata}\n"
    )
}

const IN_MEMORY_STATE: &str = "apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: memstore
spec:
  type: state.in-memory
  version: v1
  metadata: []
";

// ---------------------------------------------------------------------------------------------
// tests

/// Components written as Dapr's docs write them, and no component started by the test: plugd
/// launches each reference program, every Component becomes READY, and each one works.
#[tokio::test]
async fn dapr_doc_components_are_launched_and_serve() {
    bins();
    let dirs = TestDirs::new();
    let root = dirs.root.path();
    let files = root.join("files");
    std::fs::write(
        root.join("secrets.json"),
        r#"{"a": {"b": "nested value"}, "plain": "p"}"#,
    )
    .expect("secrets file");
    // As in Dapr's docs: a relative database file (relative to the working directory, which
    // the launched component inherits from plugd).
    dirs.write_resource(
        "sqlite.yaml",
        "apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.sqlite
  version: v1
  metadata:
  # Connection string
  - name: connectionString
    value: \"data.db\"
",
    );
    dirs.write_resource("memstore.yaml", IN_MEMORY_STATE);
    dirs.write_resource(
        "pubsub.yaml",
        "apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.in-memory
  version: v1
  metadata: []
",
    );
    dirs.write_resource(
        "localstorage.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: files
spec:
  type: bindings.localstorage
  version: v1
  metadata:
  - name: rootPath
    value: \"{}\"
",
            files.display()
        ),
    );
    dirs.write_resource(
        "secrets.yaml",
        "apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: local-secret-store
spec:
  type: secretstores.local.file
  version: v1
  metadata:
  - name: secretsFile
    value: secrets.json
  - name: nestedSeparator
    value: \":\"
  - name: multiValued
    value: \"false\"
",
    );
    let plugd = Plugd::spawn(&dirs, Start::managed("docs").cwd(root));
    plugd.wait_listening().await;
    plugd
        .wait_ready(&[
            "statestore",
            "memstore",
            "pubsub",
            "files",
            "local-secret-store",
        ])
        .await;
    // Every socket plugd launched a program for, each a child of plugd.
    let started = plugd.logs.all_started();
    assert_eq!(
        started.keys().map(String::as_str).collect::<Vec<_>>(),
        ["in-memory", "local.file", "localstorage", "sqlite"],
        "{}",
        plugd.logs.tail()
    );
    let children = children_of(plugd.pid());
    for (name, pids) in &started {
        assert_eq!(pids.len(), 1, "{name} started once: {pids:?}");
        assert!(
            children.contains(&pids[0]),
            "{name} pid {} is plugd's child",
            pids[0]
        );
    }
    assert_eq!(children.len(), 4, "{children:?}");
    assert_eq!(
        sockets_in(&dirs.sockets),
        [
            "in-memory.sock",
            "local.file.sock",
            "localstorage.sock",
            "sqlite.sock"
        ]
        .map(String::from)
        .into(),
    );

    // State, in both stores; the SQLite database is where Dapr's docs say it is.
    plugd.round_trip("statestore", "order-1").await;
    plugd.round_trip("memstore", "order-1").await;
    assert!(
        root.join("data.db").is_file(),
        "data.db in the working directory"
    );

    // Pub/sub accepts a publish.
    let resp = plugd
        .http
        .post(format!("{}/publish/pubsub/orders", plugd.base()))
        .json(&json!({"n": 1}))
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status(), 204);

    // localstorage: create then get a file through the bindings API. (A JSON object, so the
    // file holds exactly its JSON text: how a JSON *string* is written is localstorage's own
    // contract, tested with plugd-files.)
    let resp = plugd
        .http
        .post(format!("{}/bindings/files", plugd.base()))
        .json(&json!({"operation": "create", "data": {"n": 1}, "metadata": {"fileName": "notes/a.json"}}))
        .send()
        .await
        .expect("create");
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let written = std::fs::read_to_string(files.join("notes/a.json")).expect("written file");
    assert_eq!(
        serde_json::from_str::<Value>(&written).expect("JSON file"),
        json!({"n": 1})
    );
    let resp = plugd
        .http
        .post(format!("{}/bindings/files", plugd.base()))
        .json(&json!({"operation": "get", "metadata": {"fileName": "notes/a.json"}}))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), written);

    // local.file: a nested secret by its joined name, and a top-level one.
    for (key, value) in [("a:b", "nested value"), ("plain", "p")] {
        let resp = plugd
            .http
            .get(format!("{}/secrets/local-secret-store/{key}", plugd.base()))
            .send()
            .await
            .expect("get secret");
        assert_eq!(resp.status(), 200, "{key}");
        let body: Value = resp.json().await.expect("secret JSON");
        assert_eq!(body, json!({ key: value }));
    }
    // The components' own output is in plugd's log, under the component's socket name.
    let relayed: BTreeSet<String> = plugd
        .logs
        .json()
        .iter()
        .filter(|l| l["scope"] == "component")
        .filter_map(|l| l["component"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        relayed,
        ["in-memory", "local.file", "localstorage", "sqlite"]
            .map(String::from)
            .into()
    );
    plugd.stop_cleanly().await;
}

/// `secretstores.local.env` launches `plugd-env` (when it has been built), which sees plugd's
/// environment.
#[tokio::test]
async fn local_env_secret_store_is_launched_with_plugds_environment() {
    let dir = bins();
    if !dir.join("plugd-env").is_file() {
        eprintln!("skipped: plugd-env is not part of this workspace yet");
        return;
    }
    let dirs = TestDirs::new();
    dirs.write_resource(
        "env.yaml",
        &component("envsecrets", "secretstores.local.env", " []"),
    );
    let plugd = Plugd::spawn(
        &dirs,
        Start::managed("env").env("PLUGD_TEST_MANAGED_SECRET", "from-plugd-env"),
    );
    plugd.wait_listening().await;
    plugd.wait_ready(&["envsecrets"]).await;
    assert_eq!(plugd.logs.started_pids("local.env").len(), 1);
    let body: Value = plugd
        .http
        .get(format!(
            "{}/secrets/envsecrets/PLUGD_TEST_MANAGED_SECRET",
            plugd.base()
        ))
        .send()
        .await
        .expect("get secret")
        .json()
        .await
        .expect("JSON");
    assert_eq!(body, json!({"PLUGD_TEST_MANAGED_SECRET": "from-plugd-env"}));
}

/// A managed component killed with -9 is started again (a new pid), its Component serves again
/// (the SQLite data written before the kill is still there), and the restart is counted.
#[tokio::test]
async fn a_killed_managed_component_is_restarted_and_counted() {
    bins();
    let dirs = TestDirs::new();
    let db = dirs.root.path().join("state.db");
    dirs.write_resource(
        "statestore.yaml",
        &component(
            "statestore",
            "state.sqlite",
            &format!(
                "\n  - name: connectionString\n    value: \"{}\"",
                db.display()
            ),
        ),
    );
    dirs.write_resource("memstore.yaml", IN_MEMORY_STATE);
    let plugd = Plugd::spawn(
        &dirs,
        Start::new(&[
            "--app-id",
            "restarts",
            "--managed-components=true",
            "--metrics-port",
            "0",
        ]),
    );
    plugd.wait_listening().await;
    let metrics_port = plugd.metrics_port();
    plugd.wait_ready(&["statestore", "memstore"]).await;
    let series = "plugd_managed_component_restarts_total{socket=\"sqlite\"}";
    let text = scrape(&plugd.http, metrics_port).await.expect("/metrics");
    assert_eq!(sample(&text, series), Some(0.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "plugd_managed_component_restarts_total{socket=\"in-memory\"}"
        ),
        Some(0.0)
    );
    assert_eq!(plugd.save("statestore", "kept", json!("before")).await, 204);

    let first = plugd.logs.started_pids("sqlite");
    assert_eq!(first.len(), 1, "{}", plugd.logs.tail());
    let old = first[0];
    assert_eq!(proc_stat(old).map(|s| s.0), Some(plugd.pid()));
    let other = plugd.logs.started_pids("in-memory");
    kill("KILL", old);
    let killed = Instant::now();

    // A new process, a child of plugd; the old one is gone (reaped by plugd).
    let logs = plugd.logs.clone();
    until("plugd to start sqlite again", || {
        logs.started_pids("sqlite").len() >= 2
    })
    .await;
    let new = plugd.logs.started_pids("sqlite")[1];
    assert_ne!(new, old);
    assert!(alive(new), "new pid {new} runs");
    assert_eq!(proc_stat(new).map(|s| s.0), Some(plugd.pid()));
    until("the killed process to be reaped", || {
        proc_stat(old).is_none()
    })
    .await;

    // Traffic recovers, with the data written before the kill.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = plugd.get("statestore", "kept").await;
        if status == 200 {
            assert_eq!(body, "\"before\"");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "statestore did not recover: {status} {body}\n{}",
            plugd.logs.tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered = killed.elapsed();
    plugd.round_trip("statestore", "after").await;

    let http = plugd.http.clone();
    let text = eventually(WAIT, "the restart to be counted", || {
        let http = http.clone();
        async move {
            let text = scrape(&http, metrics_port).await?;
            (sample(&text, series) == Some(1.0)).then_some(text)
        }
    })
    .await;
    // The other managed component was not touched.
    assert_eq!(
        sample(
            &text,
            "plugd_managed_component_restarts_total{socket=\"in-memory\"}"
        ),
        Some(0.0)
    );
    assert_eq!(plugd.logs.started_pids("in-memory"), other);
    plugd.round_trip("memstore", "untouched").await;
    println!("sqlite killed with -9: pid {old} → {new}, serving again after {recovered:?}");
}

/// SIGTERM to plugd: it exits 0, every process it launched is gone, and no socket file is left.
#[tokio::test]
async fn shutdown_stops_every_managed_component_and_leaves_no_socket() {
    bins();
    let dirs = TestDirs::new();
    let root = dirs.root.path();
    std::fs::write(root.join("secrets.json"), r#"{"k": "v"}"#).expect("secrets");
    dirs.write_resource("memstore.yaml", IN_MEMORY_STATE);
    dirs.write_resource(
        "sqlite.yaml",
        &component(
            "statestore",
            "state.sqlite",
            &format!(
                "\n  - name: connectionString\n    value: \"{}\"",
                root.join("s.db").display()
            ),
        ),
    );
    dirs.write_resource(
        "files.yaml",
        &component(
            "files",
            "bindings.localstorage",
            &format!(
                "\n  - name: rootPath\n    value: \"{}\"",
                root.join("files").display()
            ),
        ),
    );
    dirs.write_resource(
        "secrets.yaml",
        &component(
            "secrets",
            "secretstores.local.file",
            &format!(
                "\n  - name: secretsFile\n    value: \"{}\"",
                root.join("secrets.json").display()
            ),
        ),
    );
    dirs.write_resource(
        "cron.yaml",
        &component(
            "tick",
            "bindings.cron",
            "\n  - name: schedule\n    value: \"@every 1h\"",
        ),
    );
    let plugd = Plugd::spawn(&dirs, Start::managed("stop"));
    plugd.wait_listening().await;
    plugd
        .wait_ready(&["memstore", "statestore", "files", "secrets", "tick"])
        .await;
    let started = plugd.logs.all_started();
    let pids: BTreeSet<u32> = started.values().flatten().copied().collect();
    assert_eq!(
        started.keys().map(String::as_str).collect::<Vec<_>>(),
        ["cron", "in-memory", "local.file", "localstorage", "sqlite"]
    );
    assert_eq!(children_of(plugd.pid()), pids);
    assert_eq!(sockets_in(&dirs.sockets).len(), 5);

    let (status, logs) = plugd.terminate().await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit status {status:?}\n{}",
        logs.tail()
    );
    // plugd waited for them: nothing is left running once it has exited.
    let running: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    assert!(running.is_empty(), "still running: {running:?}");
    assert_eq!(sockets_in(&dirs.sockets), BTreeSet::new());
    assert_eq!(
        logs.with_message("managed component stopped").len(),
        pids.len(),
        "{}",
        logs.tail()
    );
}

/// plugd killed with -9 cannot stop its components in order; the kernel tells them
/// (SIGTERM on the parent's death), so none outlives it.
#[tokio::test]
async fn managed_components_do_not_outlive_a_killed_plugd() {
    bins();
    let dirs = TestDirs::new();
    dirs.write_resource("memstore.yaml", IN_MEMORY_STATE);
    dirs.write_resource(
        "cron.yaml",
        &component(
            "tick",
            "bindings.cron",
            "\n  - name: schedule\n    value: \"@every 1h\"",
        ),
    );
    let mut plugd = Plugd::spawn(&dirs, Start::managed("k9"));
    plugd.wait_listening().await;
    plugd.wait_ready(&["memstore", "tick"]).await;
    let pids: Vec<u32> = plugd.logs.all_started().into_values().flatten().collect();
    assert_eq!(pids.len(), 2);
    let _ = plugd.guard.child.kill();
    let _ = plugd.guard.child.wait();
    until(
        "the managed components to stop after plugd was killed",
        || pids.iter().all(|p| !alive(*p)),
    )
    .await;
}

/// `--managed-components=false`: plugd launches nothing; the Components wait for sockets that
/// never come.
#[tokio::test]
async fn nothing_is_launched_when_managed_components_are_off() {
    bins();
    let dirs = TestDirs::new();
    dirs.write_resource("memstore.yaml", IN_MEMORY_STATE);
    dirs.write_resource(
        "files.yaml",
        &component(
            "files",
            "bindings.localstorage",
            &format!(
                "\n  - name: rootPath\n    value: \"{}\"",
                dirs.root.path().join("files").display()
            ),
        ),
    );
    let plugd = Plugd::spawn(
        &dirs,
        Start::new(&[
            "--app-id",
            "off",
            "--managed-components=false",
            "--enable-metrics=false",
            "--component-wait",
            "5m",
        ]),
    );
    // Managed components are launched (and awaited) before the APIs listen, so once they do,
    // anything plugd launched would be there.
    plugd.wait_listening().await;
    let statuses = plugd.statuses().await;
    assert_eq!(
        statuses.get("memstore").map(String::as_str),
        Some("WAITING")
    );
    assert_eq!(statuses.get("files").map(String::as_str), Some("WAITING"));
    let health = plugd
        .http
        .get(format!("{}/healthz", plugd.base()))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 500);
    assert_eq!(children_of(plugd.pid()), BTreeSet::new());
    assert_eq!(sockets_in(&dirs.sockets), BTreeSet::new());
    assert!(
        plugd
            .logs
            .with_message("launching managed component")
            .is_empty()
    );
    assert!(plugd.logs.all_started().is_empty());
    // A state call fails fast rather than waiting.
    let (status, body) = plugd.get("memstore", "k").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("ERR_COMPONENT_UNAVAILABLE"), "{body}");
}

/// `--managed-component NAME=COMMAND`: the user's own program for a socket name, started with
/// DAPR_COMPONENT_SOCKETS_FOLDER and PLUGD_SOCKET_NAME.
#[tokio::test]
async fn a_users_command_is_launched_for_its_socket_name() {
    let dir = bins();
    let memory = dir.join("plugd-memory");
    let dirs = TestDirs::new();
    dirs.write_resource(
        "mystore.yaml",
        &component("mystore", "state.mystore", " []"),
    );
    // Another one that takes its socket name and folder from the environment only.
    dirs.write_resource(
        "envstore.yaml",
        &component("envstore", "state.fromenv", " []"),
    );
    let direct = format!("mystore={} --socket-name mystore", memory.display());
    let via_env = format!(
        "fromenv=sh -c 'exec \"{}\" --socket-name \"$PLUGD_SOCKET_NAME\"'",
        memory.display()
    );
    let plugd = Plugd::spawn(
        &dirs,
        Start::new(&[
            "--app-id",
            "mine",
            "--managed-component",
            &direct,
            "--managed-component",
            &via_env,
            "--metrics-port",
            "0",
        ]),
    );
    plugd.wait_listening().await;
    let metrics_port = plugd.metrics_port();
    plugd.wait_ready(&["mystore", "envstore"]).await;
    plugd.round_trip("mystore", "k").await;
    plugd.round_trip("envstore", "k").await;
    let started = plugd.logs.all_started();
    assert_eq!(
        started.keys().map(String::as_str).collect::<Vec<_>>(),
        ["fromenv", "mystore"]
    );
    let pid = started["mystore"][0];
    assert_eq!(
        cmdline(pid),
        [
            memory.display().to_string(),
            "--socket-name".into(),
            "mystore".into()
        ]
    );
    assert_eq!(proc_stat(pid).map(|s| s.0), Some(plugd.pid()));
    assert_eq!(
        sockets_in(&dirs.sockets),
        ["fromenv.sock", "mystore.sock"].map(String::from).into()
    );
    let text = scrape(&plugd.http, metrics_port).await.expect("/metrics");
    assert_eq!(
        sample(
            &text,
            "plugd_managed_component_restarts_total{socket=\"mystore\"}"
        ),
        Some(0.0),
        "{text}"
    );
    let logs = plugd.stop_cleanly().await;
    assert!(started.values().flatten().all(|p| !alive(*p)));
    assert_eq!(
        sockets_in(&dirs.sockets),
        BTreeSet::new(),
        "{}",
        logs.tail()
    );
}

/// A socket another process already serves is used, not replaced: plugd launches nothing for it
/// and its calls reach that process.
#[tokio::test]
async fn a_socket_served_by_another_process_is_used_not_replaced() {
    bins();
    let dirs = TestDirs::new();
    let mut ours = spawn_component("plugd-memory", &dirs.sockets, "in-memory", &[]);
    dirs.write_resource("memstore.yaml", IN_MEMORY_STATE);
    let plugd = Plugd::spawn(&dirs, Start::managed("shared"));
    plugd.wait_listening().await;
    plugd.wait_ready(&["memstore"]).await;
    let noted = plugd
        .logs
        .with_message("socket is served by a process plugd did not start; not launching one");
    assert_eq!(noted.len(), 1, "{}", plugd.logs.tail());
    assert_eq!(noted[0]["component"], "in-memory");
    assert!(plugd.logs.all_started().is_empty(), "{}", plugd.logs.tail());
    assert_eq!(children_of(plugd.pid()), BTreeSet::new());
    plugd.round_trip("memstore", "k").await;

    // The calls went to our process; when it goes away, plugd launches its own in its place
    // and the store serves again (the in-memory data went with the process).
    let _ = ours.child.kill();
    let _ = ours.child.wait();
    until("plugd to launch its own in-memory process", || {
        plugd.logs.started_pids("in-memory").len() == 1
    })
    .await;
    let launched = plugd.logs.started_pids("in-memory")[0];
    assert_eq!(proc_stat(launched).map(|s| s.0), Some(plugd.pid()));
    plugd.wait_ready(&["memstore"]).await;
    let deadline = Instant::now() + WAIT;
    loop {
        if plugd
            .save("memstore", "k", serde_json::json!("again"))
            .await
            .is_success()
        {
            break;
        }
        assert!(Instant::now() < deadline, "memstore does not serve again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    plugd.round_trip("memstore", "k2").await;
    plugd.stop_cleanly().await;
    assert!(!alive(launched));
}

/// A managed process that prints a line longer than plugd keeps (16 KiB) goes on running and
/// logging: the relay cuts that line and keeps reading (the process is not killed by SIGPIPE).
#[tokio::test]
async fn an_overlong_output_line_is_cut_and_the_output_goes_on() {
    let dir = bins();
    let memory = dir.join("plugd-memory");
    let dirs = TestDirs::new();
    dirs.write_resource(
        "mystore.yaml",
        &component("mystore", "state.mystore", " []"),
    );
    let command = format!(
        "mystore=sh -c 'head -c 20000 /dev/zero | tr \"\\000\" x; echo; echo after-the-long-line; exec \"{}\" --socket-name mystore'",
        memory.display()
    );
    let plugd = Plugd::spawn(
        &dirs,
        Start::new(&[
            "--app-id",
            "longline",
            "--managed-component",
            &command,
            "--metrics-port",
            "0",
        ])
        .env("DAPR_API_TOKEN", "")
        .env("APP_API_TOKEN", "app-secret-token"),
    );
    plugd.wait_listening().await;
    let metrics_port = plugd.metrics_port();
    plugd.wait_ready(&["mystore"]).await;
    plugd.round_trip("mystore", "k").await;
    until("the lines after the long one to be relayed", || {
        let lines = plugd.logs.lines();
        let cut = lines
            .iter()
            .position(|l| l.contains("was cut") && l.contains("mystore"));
        let after = lines.iter().position(|l| l.contains("after-the-long-line"));
        let serving = lines
            .iter()
            .position(|l| l.contains("serving pluggable component") && l.contains("mystore"));
        matches!((cut, after, serving), (Some(c), Some(a), Some(s)) if c < a && a < s)
    })
    .await;
    let text = scrape(&plugd.http, metrics_port).await.expect("/metrics");
    assert_eq!(
        sample(
            &text,
            "plugd_managed_component_restarts_total{socket=\"mystore\"}"
        ),
        Some(0.0),
        "{text}"
    );
    // The API tokens are not handed to component processes.
    let pid = plugd.logs.started_pids("mystore")[0];
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("APP_API_TOKEN"), "{environ}");
    assert!(!environ.contains("DAPR_API_TOKEN"), "{environ}");
    assert!(environ.contains("PLUGD_SOCKET_NAME=mystore"));
    plugd.stop_cleanly().await;
}

/// A Component removed and added back while its process is still stopping gets a process again
/// once the old one is gone.
#[tokio::test]
async fn a_component_removed_and_re_added_at_once_gets_its_process_back() {
    bins();
    let dirs = TestDirs::new();
    let yaml = dirs.write_resource("memstore.yaml", IN_MEMORY_STATE);
    let plugd = Plugd::spawn(&dirs, Start::managed("flip"));
    plugd.wait_listening().await;
    plugd.wait_ready(&["memstore"]).await;
    let first = plugd.logs.started_pids("in-memory")[0];
    let parked = dirs.root.path().join("memstore.yaml.parked");
    std::fs::rename(&yaml, &parked).expect("park");
    until("plugd to stop the process", || {
        !plugd
            .logs
            .with_message("no Component uses this managed component any more; stopping it")
            .is_empty()
    })
    .await;
    std::fs::rename(&parked, &yaml).expect("restore");
    until("a new process for in-memory", || {
        plugd.logs.started_pids("in-memory").len() == 2
    })
    .await;
    plugd.wait_ready(&["memstore"]).await;
    plugd.round_trip("memstore", "k").await;
    assert!(!alive(first));
    plugd.stop_cleanly().await;
}

/// An extra listen address that cannot be bound is skipped, as daprd does: plugd serves on the
/// others.
#[tokio::test]
async fn an_unbindable_extra_listen_address_is_skipped() {
    bins();
    let dirs = TestDirs::new();
    let plugd = Plugd::spawn(
        &dirs,
        Start::new(&[
            "--app-id",
            "addrs",
            // TEST-NET-1: not an address of this machine.
            "--dapr-listen-addresses",
            "127.0.0.1,192.0.2.1",
            "--enable-metrics=false",
        ]),
    );
    plugd.wait_listening().await;
    assert!(
        plugd
            .logs
            .lines()
            .iter()
            .any(|l| l.contains("192.0.2.1")
                && l.contains("cannot listen on this address; skipping it")),
        "{}",
        plugd.logs.tail()
    );
    plugd.stop_cleanly().await;
}

/// A Component added while plugd runs gets its managed component; a second Component on the same
/// socket shares the process, which stays while one Component uses it; removing the last one
/// stops it and removes its socket.
#[tokio::test]
async fn hot_reload_launches_and_stops_managed_components() {
    bins();
    let dirs = TestDirs::new();
    let plugd = Plugd::spawn(&dirs, Start::managed("reload"));
    plugd.wait_listening().await;
    assert!(plugd.logs.all_started().is_empty());
    let file = dirs.write_resource("memstore.yaml", IN_MEMORY_STATE);
    plugd.wait_ready(&["memstore"]).await;
    plugd.round_trip("memstore", "k").await;
    let pids = plugd.logs.started_pids("in-memory");
    assert_eq!(pids.len(), 1);
    assert_eq!(children_of(plugd.pid()), BTreeSet::from([pids[0]]));

    // A second Component on the same socket (pub/sub) shares the process.
    let pubsub = dirs.write_resource(
        "pubsub.yaml",
        &component("pubsub", "pubsub.in-memory", " []"),
    );
    plugd.wait_ready(&["memstore", "pubsub"]).await;
    assert_eq!(plugd.logs.started_pids("in-memory"), pids);
    // Removing one of the two keeps the process for the other.
    std::fs::remove_file(pubsub).expect("remove the pub/sub Component");
    let http = plugd.http.clone();
    let url = format!("{}/metadata", plugd.base());
    eventually(WAIT, "the pub/sub Component to be gone", || {
        let req = http.get(&url);
        async move {
            let meta: Value = req.send().await.ok()?.json().await.ok()?;
            let names: Vec<&str> = meta["components"]
                .as_array()?
                .iter()
                .filter_map(|c| c["name"].as_str())
                .collect();
            (names == ["memstore"]).then_some(())
        }
    })
    .await;
    assert!(alive(pids[0]), "the process still serves memstore");
    plugd.round_trip("memstore", "k2").await;

    std::fs::remove_file(file).expect("remove the Component");
    let (pid, folder) = (pids[0], dirs.sockets.clone());
    until("the unused managed component to stop", || {
        !alive(pid) && sockets_in(&folder).is_empty()
    })
    .await;
    assert_eq!(plugd.statuses().await, BTreeMap::new());
    assert_eq!(plugd.logs.started_pids("in-memory"), pids, "not restarted");
    plugd.stop_cleanly().await;
}

/// daprd's own command line: Go's single-dash spelling works, and each daprd flag plugd does not
/// use is accepted with exactly one warning.
#[tokio::test]
async fn a_daprd_command_line_is_accepted() {
    bins();
    let dirs = TestDirs::new();
    let cfg = dirs.root.path().join("cfg.yaml");
    std::fs::write(&cfg, "apiVersion: dapr.io/v1alpha1\nkind: Configuration\n").expect("cfg");
    let cfg = cfg.display().to_string();
    let plugd = Plugd::spawn(
        &dirs,
        Start::new(&[
            "-app-id",
            "x",
            "-placement-host-address",
            "localhost:50005",
            "--dapr-internal-grpc-port",
            "50002",
            "-enable-mtls",
            "--config",
            &cfg,
            "-mode",
            "standalone",
            "-managed-components=false",
            "-enable-metrics=false",
        ]),
    );
    plugd.wait_listening().await;
    let meta = plugd.metadata().await;
    assert_eq!(meta["id"], "x", "{meta}");
    let lines = plugd.logs.json();
    for flag in [
        "placement-host-address",
        "dapr-internal-grpc-port",
        "enable-mtls",
        "config",
        "mode",
    ] {
        let text = format!("daprd flag --{flag} is accepted but not used by plugd");
        let n = lines
            .iter()
            .filter(|l| l["msg"] == text.as_str() && l["level"] == "warning")
            .count();
        assert_eq!(n, 1, "{text}\n{}", plugd.logs.tail());
    }
    let warned = lines
        .iter()
        .filter(|l| {
            l["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("daprd flag --"))
        })
        .count();
    assert_eq!(warned, 5, "{}", plugd.logs.tail());
    // (Their values were consumed with them: a stray `standalone` or `50002` would have been a
    // usage error, exit 64, and plugd would not be listening.)
    plugd.stop_cleanly().await;
}

/// `/metrics` on a free `--metrics-port` with each component's readiness and status, and
/// `--enable-metrics=false` serving none.
#[tokio::test]
async fn metrics_report_components_and_can_be_turned_off() {
    bins();
    let dirs = TestDirs::new();
    dirs.write_resource("memstore.yaml", IN_MEMORY_STATE);
    dirs.write_resource("waiting.yaml", &component("nowhere", "state.nosuch", " []"));
    let plugd = Plugd::spawn(
        &dirs,
        Start::new(&[
            "--app-id",
            "metrics",
            "--managed-components=true",
            "--metrics-port",
            "0",
            "--component-wait",
            "5m",
        ]),
    );
    plugd.wait_listening().await;
    let metrics_port = plugd.metrics_port();
    plugd.wait_ready(&["memstore"]).await;
    let resp = plugd
        .http
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .expect("/metrics");
    assert_eq!(resp.status(), 200);
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    let text = resp.text().await.expect("body");
    for (series, value) in [
        (
            "plugd_component_ready{component=\"memstore\",type=\"state.in-memory\"}",
            1.0,
        ),
        (
            "plugd_component_status{component=\"memstore\",type=\"state.in-memory\",status=\"READY\"}",
            1.0,
        ),
        (
            "plugd_component_ready{component=\"nowhere\",type=\"state.nosuch\"}",
            0.0,
        ),
        (
            "plugd_component_status{component=\"nowhere\",type=\"state.nosuch\",status=\"WAITING\"}",
            1.0,
        ),
        (
            "plugd_managed_component_restarts_total{socket=\"in-memory\"}",
            0.0,
        ),
        ("plugd_sockets_discovered", 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
    }
    // Every sample line is `name{labels} number`.
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    plugd.stop_cleanly().await;

    // Off: nothing listens on the port.
    let dirs = TestDirs::new();
    let metrics_port = free_port();
    let plugd = Plugd::spawn(
        &dirs,
        Start::new(&[
            "--app-id",
            "nometrics",
            "--managed-components=false",
            "--metrics-port",
            &metrics_port.to_string(),
            "--enable-metrics=false",
        ]),
    );
    plugd.wait_listening().await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", metrics_port)).is_err(),
        "metrics port {metrics_port} is open with --enable-metrics=false"
    );
    assert!(
        plugd
            .logs
            .with_message("metrics served at /metrics")
            .is_empty()
    );
}

/// `--dapr-listen-addresses 127.0.0.1,[::1]`: the APIs answer on both (the IPv6 half only where
/// `::1` can be bound).
#[tokio::test]
async fn several_listen_addresses_are_all_served() {
    bins();
    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let dirs = TestDirs::new();
    let addresses = if ipv6 { "127.0.0.1,[::1]" } else { "127.0.0.1" };
    if !ipv6 {
        eprintln!("::1 cannot be bound here: only the IPv4 half is tested");
    }
    let plugd = Plugd::spawn(
        &dirs,
        Start::new(&[
            "--app-id",
            "dual",
            "--managed-components=false",
            "--enable-metrics=false",
            "--dapr-listen-addresses",
            addresses,
        ]),
    );
    plugd.wait_listening().await;
    let mut urls = vec![format!(
        "http://127.0.0.1:{}/v1.0/healthz",
        plugd.http_port()
    )];
    if ipv6 {
        urls.push(format!("http://[::1]:{}/v1.0/healthz", plugd.http_port()));
    }
    for url in &urls {
        let resp = plugd.http.get(url).send().await.expect(url);
        assert_eq!(resp.status(), 204, "{url}");
    }
    // gRPC listens on the same addresses.
    assert!(std::net::TcpStream::connect(("127.0.0.1", plugd.grpc_port())).is_ok());
    if ipv6 {
        assert!(
            std::net::TcpStream::connect(("::1", plugd.grpc_port())).is_ok(),
            "gRPC on [::1]"
        );
    }
    plugd.stop_cleanly().await;
}

/// A program that keeps exiting is restarted at a bounded, growing pace (≈100 ms, then doubling,
/// jittered by ±20 %), and every restart is counted.
#[tokio::test]
async fn a_crashing_command_is_restarted_with_growing_delays() {
    bins();
    let dirs = TestDirs::new();
    // plugd waits (up to the longest initTimeout) for a launched program to listen before its
    // APIs open: keep that short.
    dirs.write_resource(
        "crashy.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: crashy\nspec:\n  type: state.crashy\n  version: v1\n  initTimeout: 1s\n  metadata: []\n",
    );
    let plugd = Plugd::spawn(
        &dirs,
        Start::new(&[
            "--app-id",
            "crashy",
            "--managed-component",
            "crashy=sh -c 'exit 3'",
            "--metrics-port",
            "0",
            "--component-wait",
            "5m",
        ]),
    );
    plugd.wait_listening().await;
    let metrics_port = plugd.metrics_port();
    let logs = plugd.logs.clone();
    until("four starts of the crashing command", || {
        logs.started_pids("crashy").len() >= 4
    })
    .await;
    let starts: Vec<chrono_free::Stamp> = plugd
        .logs
        .with_message("managed component started")
        .iter()
        .filter(|l| l["component"] == "crashy")
        .map(|l| chrono_free::parse(l["time"].as_str().expect("time")))
        .collect();
    // Each gap holds at least the restart delay: 100 ms · 2^(k-1), less the 20 % jitter.
    for (k, pair) in starts.windows(2).take(3).enumerate() {
        let gap = pair[1] - pair[0];
        let least = 0.8 * 0.1 * f64::from(1u32 << k);
        assert!(
            gap >= least - 0.002,
            "restart {} came after {gap:.3}s, less than {least:.3}s",
            k + 1
        );
        assert!(gap < 10.0, "restart {} took {gap:.3}s", k + 1);
    }
    let exited = plugd.logs.with_message("managed component exited");
    assert!(
        exited
            .iter()
            .any(|l| l["status"].as_str().is_some_and(|s| s.contains('3'))),
        "{}",
        plugd.logs.tail()
    );
    let http = plugd.http.clone();
    eventually(WAIT, "three restarts counted", || {
        let http = http.clone();
        async move {
            let text = scrape(&http, metrics_port).await?;
            let n = sample(
                &text,
                "plugd_managed_component_restarts_total{socket=\"crashy\"}",
            )?;
            (n >= 3.0).then_some(())
        }
    })
    .await;
    let statuses = plugd.statuses().await;
    assert_eq!(statuses.get("crashy").map(String::as_str), Some("WAITING"));
    plugd.stop_cleanly().await;
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp as tracing writes it
/// (`2026-01-02T03:04:05.123456Z`), without a date-time crate.
mod chrono_free {
    pub type Stamp = f64;

    pub fn parse(ts: &str) -> Stamp {
        let (date, time) = ts.trim_end_matches('Z').split_once('T').expect("T");
        let d: Vec<i64> = date.split('-').map(|p| p.parse().expect("date")).collect();
        let (y, m, day) = (d[0], d[1], d[2]);
        // Days from the civil date (Howard Hinnant's algorithm).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let t: Vec<f64> = time.split(':').map(|p| p.parse().expect("time")).collect();
        days as f64 * 86_400.0 + t[0] * 3600.0 + t[1] * 60.0 + t[2]
    }

    #[test]
    fn parses_tracing_timestamps() {
        assert_eq!(parse("1970-01-01T00:00:01.5Z"), 1.5);
        assert_eq!(parse("2000-03-01T00:00:00Z"), 951_868_800.0);
    }
}

/// A socket file left behind by a dead process (nobody accepts on it) does not count as served:
/// plugd launches the component, which takes the path over.
#[tokio::test]
async fn a_stale_socket_file_is_replaced_by_the_managed_component() {
    bins();
    let dirs = TestDirs::new();
    let stale = dirs.sockets.join("in-memory.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists() && std::os::unix::net::UnixStream::connect(&stale).is_err());
    dirs.write_resource("memstore.yaml", IN_MEMORY_STATE);
    let plugd = Plugd::spawn(&dirs, Start::managed("stale"));
    plugd.wait_listening().await;
    plugd.wait_ready(&["memstore"]).await;
    assert_eq!(plugd.logs.started_pids("in-memory").len(), 1);
    plugd.round_trip("memstore", "k").await;
    plugd.stop_cleanly().await;
    assert_eq!(sockets_in(&dirs.sockets), BTreeSet::new());
}

/// `--managed-components-path` is searched before plugd's own folder.
#[tokio::test]
async fn managed_components_path_is_searched_first() {
    use std::os::unix::fs::PermissionsExt;
    let dir = bins();
    let dirs = TestDirs::new();
    let ours = dirs.root.path().join("bin");
    std::fs::create_dir_all(&ours).expect("bin dir");
    let marker = dirs.root.path().join("ours-ran");
    let script = ours.join("plugd-memory");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch '{}'\nexec '{}' \"$@\"\n",
            marker.display(),
            dir.join("plugd-memory").display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dirs.write_resource("memstore.yaml", IN_MEMORY_STATE);
    let plugd = Plugd::spawn(
        &dirs,
        Start::new(&[
            "--app-id",
            "path",
            "--managed-components=true",
            "--enable-metrics=false",
            "--managed-components-path",
            ours.to_str().expect("utf-8 path"),
        ]),
    );
    plugd.wait_listening().await;
    plugd.wait_ready(&["memstore"]).await;
    let launching = plugd.logs.with_message("launching managed component");
    assert_eq!(launching.len(), 1);
    assert_eq!(launching[0]["program"], script.display().to_string());
    assert!(
        marker.exists(),
        "the script in --managed-components-path ran"
    );
    plugd.round_trip("memstore", "k").await;
    plugd.stop_cleanly().await;
}

/// A `--managed-component` command that is a shell wrapper (the component is the shell's
/// child, not the shell itself) is stopped with everything it started: plugd puts each managed
/// process in its own process group, so the whole group should get the SIGTERM.
#[tokio::test]
async fn a_wrapper_commands_component_stops_with_plugd() {
    let dir = bins();
    let memory = dir.join("plugd-memory");
    let dirs = TestDirs::new();
    dirs.write_resource(
        "mystore.yaml",
        &component("mystore", "state.mystore", " []"),
    );
    // `; true` keeps the shell from exec-ing the component: it stays the shell's child.
    let wrapper = format!(
        "mystore=sh -c '\"{}\" --socket-name mystore; true'",
        memory.display()
    );
    let plugd = Plugd::spawn(
        &dirs,
        Start::new(&[
            "--app-id",
            "wrapped",
            "--managed-component",
            &wrapper,
            "--enable-metrics=false",
        ]),
    );
    plugd.wait_listening().await;
    plugd.wait_ready(&["mystore"]).await;
    plugd.round_trip("mystore", "k").await;
    let shell = plugd.logs.started_pids("mystore")[0];
    let inner: Vec<u32> = children_of(shell).into_iter().collect();
    assert_eq!(inner.len(), 1, "the component under the shell");
    // Whatever the outcome, the component does not outlive the test.
    struct Reap(u32);
    impl Drop for Reap {
        fn drop(&mut self) {
            if alive(self.0) {
                let _ = Command::new("kill")
                    .args(["-KILL", &self.0.to_string()])
                    .status();
            }
        }
    }
    let _reap = Reap(inner[0]);
    plugd.stop_cleanly().await;
    assert!(!alive(shell), "the shell stopped");
    let component = inner[0];
    eventually(
        Duration::from_secs(10),
        "the wrapped component to stop with plugd",
        || async move { (!alive(component)).then_some(()) },
    )
    .await;
    assert_eq!(sockets_in(&dirs.sockets), BTreeSet::new());
}
