//! Bad input, class by class: every case gets a clear error naming what was wrong and where,
//! nothing panics, nothing hangs, and nothing already stored is lost.
//!
//! - Resource files: the corpus in `tests/bad_input/yaml` (see its README), run against the
//!   `plugd` binary at start-up (one process per case) and through hot reload (one process for
//!   every case, next to a valid state store that must keep serving).
//! - The runtime API over HTTP and gRPC: unknown stores, pub/subs, bindings and secret stores,
//!   invalid keys, malformed etags, bad JSON bodies, invalid UTF-8 in paths, headers and
//!   protobuf strings, unknown binding operations and oversized payloads, against an in-process
//!   plugd over the reference components (`plugd-memory`, `plugd-files`), with the data stored
//!   before checked after.

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    ffi::OsString,
    io::{BufRead, BufReader},
    net::SocketAddr,
    os::unix::ffi::OsStringExt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use plugd::proto::{
    common::{Etag, StateItem},
    runtime::{self as rt, dapr_client::DaprClient},
};
use serde_json::{Value, json};
use support::{ChildGuard, RunningPlugd, TestDirs, binary, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

/// Bound on every wait: a case that takes longer has hung.
const WAIT: Duration = Duration::from_secs(30);
/// Bound on one API call.
const CALL: Duration = Duration::from_secs(10);
/// The default `--max-body-size` (4 MiB).
const MAX_BODY: usize = 4 * 1024 * 1024;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_input/yaml")
}

// =============================================================================================
// Resource files

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// plugd refuses to start / a reload is refused.
    Rejected,
    /// plugd starts and serves / a reload is applied.
    Loaded,
    /// A reload neither reports nor applies it (Subscriptions are read at start-up only).
    Ignored,
}

#[derive(Debug)]
struct YamlCase {
    name: String,
    /// (file name, contents) written into the resources folder.
    files: Vec<(OsString, Vec<u8>)>,
    start: Outcome,
    reload: Outcome,
    /// Text in the log, at start and at reload (`{dir}` = the resources folder).
    expect: Vec<String>,
    /// Text in the log at start only.
    expect_at_start: Vec<String>,
}

impl YamlCase {
    fn parse(name: &str, files: Vec<(OsString, Vec<u8>)>, spec: &str) -> Self {
        let mut case = Self {
            name: name.to_string(),
            files,
            start: Outcome::Rejected,
            reload: Outcome::Rejected,
            expect: Vec::new(),
            expect_at_start: Vec::new(),
        };
        let mut reload = None;
        for line in spec.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("{name}.expect: no key in {line:?}"));
            let value = value.trim().to_string();
            match key {
                "outcome" => {
                    case.start = match value.as_str() {
                        "rejected" => Outcome::Rejected,
                        "loaded" => Outcome::Loaded,
                        other => panic!("{name}.expect: unknown outcome {other:?}"),
                    }
                }
                "reload" => {
                    reload = Some(match value.as_str() {
                        "rejected" => Outcome::Rejected,
                        "applied" => Outcome::Loaded,
                        "ignored" => Outcome::Ignored,
                        other => panic!("{name}.expect: unknown reload outcome {other:?}"),
                    })
                }
                "expect" => case.expect.push(value),
                "start" => case.expect_at_start.push(value),
                other => panic!("{name}.expect: unknown key {other:?}"),
            }
        }
        case.reload = reload.unwrap_or(case.start);
        case
    }

    /// The file names as plugd's messages show them (not UTF-8: lossily).
    fn file_names(&self) -> Vec<String> {
        self.files
            .iter()
            .map(|(n, _)| n.to_string_lossy().into_owned())
            .collect()
    }

    fn write(&self, resources: &Path) {
        for (file, bytes) in &self.files {
            std::fs::write(resources.join(file), bytes).expect("write case file");
        }
    }

    fn remove(&self, resources: &Path) {
        for (file, _) in &self.files {
            std::fs::remove_file(resources.join(file)).expect("remove case file");
        }
    }
}

/// Every case of the corpus folder, then the generated ones.
fn yaml_cases() -> Vec<YamlCase> {
    let dir = corpus_dir();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus folder")
        .map(|e| e.expect("corpus entry").path())
        .collect();
    entries.sort();
    let mut cases = Vec::new();
    for path in entries {
        let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if !is_yaml && !path.is_dir() {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("case name")
            .to_string();
        let files = if path.is_dir() {
            let mut files: Vec<(OsString, Vec<u8>)> = std::fs::read_dir(&path)
                .expect("case folder")
                .map(|e| {
                    let p = e.expect("case file").path();
                    let file = p.file_name().expect("name").to_owned();
                    (file, std::fs::read(&p).expect("read case file"))
                })
                .collect();
            files.sort();
            files
        } else {
            let file = path.file_name().expect("name").to_owned();
            vec![(file, std::fs::read(&path).expect("read case"))]
        };
        let spec = std::fs::read_to_string(dir.join(format!("{name}.expect")))
            .unwrap_or_else(|e| panic!("{name}: no {name}.expect beside it: {e}"));
        cases.push(YamlCase::parse(&name, files, &spec));
    }
    assert!(cases.len() >= 30, "the corpus lost cases: {}", cases.len());

    // Too large to keep in the repository: just over the 16 MiB limit.
    let mut huge = b"# filler\n".repeat(16 * 1024 * 1024 / 9 + 1);
    huge.extend_from_slice(
        b"apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: huge}\nspec: {type: state.in-memory}\n",
    );
    cases.push(YamlCase::parse(
        "huge-file",
        vec![(OsString::from("huge-file.yaml"), huge)],
        "outcome: rejected\n\
         expect: {dir}/huge-file.yaml: component -: file is larger than 16 MiB, the limit for a resource file",
    ));
    // A file name that is not UTF-8 (not kept in the repository: not every checkout can hold
    // it): named lossily, its problems reported as for any file.
    cases.push(YamlCase::parse(
        "file-name-not-utf8",
        vec![(
            OsString::from_vec(b"name-\xff\xfe.yaml".to_vec()),
            b"apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: oddfile\nspec:\n  type: queue.thing\n".to_vec(),
        )],
        "outcome: rejected\n\
         expect: {dir}/name-\u{fffd}\u{fffd}.yaml: component oddfile: field spec.type: unknown category",
    ));
    cases
}

/// The valid state store every case runs next to.
const GOOD_STORE: &str = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: goodstore\nspec:\n  type: state.in-memory\n  version: v1\n  metadata: []\n";

fn marker(n: usize) -> (String, String) {
    (
        format!("marker-{n}.yaml"),
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: marker-{n}\nspec:\n  type: state.in-memory\n  version: v1\n"
        ),
    )
}

/// The `plugd` binary as a child process with plain logs kept, its API on ports it picks (read
/// from its log), managed components on (so `state.in-memory` gets a `plugd-memory`).
struct Plugd {
    guard: ChildGuard,
    log: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
    http_port: Option<u16>,
}

impl Plugd {
    fn spawn(dirs: &TestDirs) -> Self {
        let mut cmd = Command::new(binary("plugd"));
        cmd.args(["--app-id", "corpus", "--log-level", "info"])
            .args(["--enable-metrics=false", "--managed-components=true"])
            .args(["--dapr-grpc-port", "0", "--dapr-http-port", "0"])
            .arg("--resources-path")
            .arg(&dirs.resources)
            .arg("--sockets-folder")
            .arg(&dirs.sockets)
            .env_remove("RUST_LOG")
            .env_remove("DAPR_API_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut guard = ChildGuard::spawn("plugd", &mut cmd);
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let stderr = guard.child.stderr.take().expect("plugd stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(text);
                line.clear();
            }
        });
        Self {
            guard,
            log,
            http: reqwest::Client::new(),
            http_port: None,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn text_from(&self, line: usize) -> String {
        self.lines().get(line..).unwrap_or_default().join("\n")
    }

    /// Waits (bounded) for the process to end.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.guard.child.try_wait() {
                // The log reader may still be draining the pipe: let it finish (bounded).
                let drained = Instant::now() + Duration::from_secs(5);
                while Instant::now() < drained
                    && !self.lines().iter().any(|l| l.contains("could not start"))
                    && !status.success()
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "plugd neither ended nor served within {WAIT:?} (hung):\n{}",
                self.text_from(0)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the log line naming the ports plugd serves on; fails if plugd ends first.
    async fn wait_serving(&mut self) {
        let log = self.log.clone();
        let port = eventually(WAIT, "plugd to serve the runtime API", || {
            let lines = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
            async move {
                if let Some(l) = lines.iter().find(|l| l.contains("could not start")) {
                    panic!("plugd could not start: {l}\n{}", lines.join("\n"));
                }
                lines
                    .iter()
                    .find(|l| l.contains("plugd is serving the runtime API"))
                    .and_then(|l| port_after(l, "http"))
            }
        })
        .await;
        self.http_port = Some(port);
    }

    fn base(&self) -> String {
        format!(
            "http://127.0.0.1:{}/v1.0",
            self.http_port.expect("wait_serving() first")
        )
    }

    async fn save(&self, store: &str, key: &str, value: &Value) -> u16 {
        self.http
            .post(format!("{}/state/{store}", self.base()))
            .json(&json!([{"key": key, "value": value}]))
            .timeout(CALL)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    async fn get(&self, store: &str, key: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/state/{store}/{key}", self.base()))
            .timeout(CALL)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {store}/{key}: {e}"));
        assert!(r.status().is_success(), "GET {store}/{key}: {}", r.status());
        let body = r.bytes().await.expect("body");
        (!body.is_empty()).then(|| serde_json::from_slice(&body).expect("stored JSON"))
    }

    /// Waits until `store` takes a save (it is ready), then checks the value reads back.
    async fn round_trip(&self, store: &str, key: &str, value: &Value) {
        eventually(WAIT, &format!("{store} to take a save"), || async {
            (self.save(store, key, value).await == 204).then_some(())
        })
        .await;
        assert_eq!(self.get(store, key).await.as_ref(), Some(value));
    }

    async fn component_names(&self) -> Vec<String> {
        let Ok(r) = self
            .http
            .get(format!("{}/metadata", self.base()))
            .timeout(CALL)
            .send()
            .await
        else {
            return Vec::new();
        };
        let v: Value = r.json().await.unwrap_or_default();
        v["components"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn assert_no_panic(&self, what: &str) {
        let text = self.text_from(0);
        assert!(
            !text.contains("panicked"),
            "{what}: something panicked:\n{text}"
        );
    }
}

/// The port in `<field>=<ip>:<port>` (plain logs) or `"<field>":"<ip>:<port>"` (JSON logs).
fn port_after(line: &str, field: &str) -> Option<u16> {
    let start = [format!("{field}="), format!("\"{field}\":\"")]
        .iter()
        .find_map(|p| line.find(p.as_str()).map(|i| i + p.len()))?;
    let addr: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.rsplit(':').next()?.parse().ok()
}

fn expected(lines: &[String], dir: &Path) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.replace("{dir}", &dir.display().to_string()))
        .collect()
}

/// Each case alone in a resources folder next to a valid store: a rejected case stops plugd
/// with exit code 1 and every expected problem in its log; a loaded one starts, serves the
/// valid store, logs what is expected and stops cleanly. Never a panic, never a hang.
#[tokio::test(flavor = "multi_thread")]
async fn resource_files_at_start() {
    let mut failures = Vec::new();
    for case in yaml_cases() {
        let dirs = TestDirs::new();
        std::fs::write(dirs.resources.join("good.yaml"), GOOD_STORE).expect("good.yaml");
        case.write(&dirs.resources);
        let mut want = expected(&case.expect, &dirs.resources);
        want.extend(expected(&case.expect_at_start, &dirs.resources));
        let mut plugd = Plugd::spawn(&dirs);
        match case.start {
            Outcome::Rejected => {
                let status = plugd.wait_exit();
                plugd.assert_no_panic(&case.name);
                let log = plugd.text_from(0);
                if status.code() != Some(1) {
                    failures.push(format!(
                        "{}: exit status {status}, want 1\n{log}",
                        case.name
                    ));
                    continue;
                }
                for w in &want {
                    if !log.contains(w.as_str()) {
                        failures.push(format!("{}: {w:?} missing from:\n{log}", case.name));
                    }
                }
                // Nothing but the resources named in the corpus is blamed.
                assert!(
                    !log.contains("good.yaml"),
                    "{}: the valid file was blamed:\n{log}",
                    case.name
                );
            }
            Outcome::Loaded | Outcome::Ignored => {
                plugd.wait_serving().await;
                plugd
                    .round_trip("goodstore", "k", &json!({"case": case.name}))
                    .await;
                let log = plugd.text_from(0);
                for w in &want {
                    if !log.contains(w.as_str()) {
                        failures.push(format!("{}: {w:?} missing from:\n{log}", case.name));
                    }
                }
                let status = plugd.guard.terminate();
                plugd.assert_no_panic(&case.name);
                assert!(
                    status.is_some_and(|s| s.success()),
                    "{}: plugd did not stop cleanly: {status:?}\n{}",
                    case.name,
                    plugd.text_from(0)
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// One plugd serving a valid store; each case is brought in by a hot reload. A rejected case is
/// reported (every expected text) and changes nothing; the store keeps serving with its data.
/// After each case a marker component proves the next reload was applied, and at the end a new
/// component still loads: the watcher survived every case.
#[tokio::test(flavor = "multi_thread")]
async fn resource_files_at_hot_reload() {
    let dirs = TestDirs::new();
    std::fs::write(dirs.resources.join("good.yaml"), GOOD_STORE).expect("good.yaml");
    let (mut marker_file, text) = marker(0);
    std::fs::write(dirs.resources.join(&marker_file), text).expect("marker");
    let mut plugd = Plugd::spawn(&dirs);
    plugd.wait_serving().await;
    let seed = json!({"seeded": "before every bad file", "n": [1, 2, 3]});
    plugd.round_trip("goodstore", "seed", &seed).await;

    for (i, case) in yaml_cases().into_iter().enumerate() {
        let from = plugd.lines().len();
        let want = expected(&case.expect, &dirs.resources);
        let invalid = "resources changed but are invalid";
        // A rejected case: write it, wait for the report.
        if case.reload == Outcome::Rejected {
            case.write(&dirs.resources);
            let log = plugd.log.clone();
            eventually(
                WAIT,
                &format!("{}: the reload to be refused", case.name),
                || {
                    let text = log.lock().unwrap_or_else(|e| e.into_inner())[from..].join("\n");
                    let done = text
                        .split(invalid)
                        .skip(1)
                        .any(|report| want.iter().all(|w| report.contains(w.as_str())));
                    async move { done.then_some(()) }
                },
            )
            .await;
            assert_eq!(
                plugd.get("goodstore", "seed").await.as_ref(),
                Some(&seed),
                "{}: the store lost its data",
                case.name
            );
            case.remove(&dirs.resources);
        }
        // Then (or at once, for the others) a new marker: once it is listed, a reload that
        // saw the case's files (or their removal) was applied.
        let (next, text) = marker(i + 1);
        if case.reload != Outcome::Rejected {
            case.write(&dirs.resources);
        }
        std::fs::write(dirs.resources.join(&next), text).expect("marker");
        std::fs::remove_file(dirs.resources.join(&marker_file)).expect("old marker");
        marker_file = next;
        let name = marker_file.trim_end_matches(".yaml").to_string();
        eventually(
            WAIT,
            &format!("{}: the reload after it to be applied", case.name),
            || async { plugd.component_names().await.contains(&name).then_some(()) },
        )
        .await;
        if case.reload != Outcome::Rejected {
            let text = plugd.text_from(from);
            assert!(
                !case
                    .file_names()
                    .iter()
                    .any(|f| text.contains(invalid) && text.contains(f)),
                "{}: a reload reported it:\n{text}",
                case.name
            );
            for w in &want {
                assert!(
                    text.contains(w.as_str()),
                    "{}: {w:?} missing after the reload:\n{text}",
                    case.name
                );
            }
            case.remove(&dirs.resources);
        }
        plugd.assert_no_panic(&case.name);
    }

    // Still serving, data intact, and a valid change still applies.
    assert_eq!(plugd.get("goodstore", "seed").await.as_ref(), Some(&seed));
    std::fs::write(
        dirs.resources.join("late.yaml"),
        GOOD_STORE.replace("goodstore", "latestore"),
    )
    .expect("late.yaml");
    plugd
        .round_trip("latestore", "k", &json!("added after every bad file"))
        .await;
    let status = plugd.guard.terminate();
    plugd.assert_no_panic("hot reload");
    assert!(
        status.is_some_and(|s| s.success()),
        "plugd did not stop cleanly: {status:?}\n{}",
        plugd.text_from(0)
    );
}

// =============================================================================================
// The runtime API

const STORE: &str = "statestore";
const PUBSUB: &str = "pubsub";
const BINDING: &str = "files";
const SECRETS: &str = "secrets";

/// plugd in this process over a `plugd-memory` (state store and pub/sub) and a `plugd-files`
/// (output binding and secret store) child process.
struct Api {
    dirs: TestDirs,
    _memory: ChildGuard,
    _files: ChildGuard,
    plugd: RunningPlugd,
    data: PathBuf,
}

impl Api {
    async fn start() -> Self {
        let dirs = TestDirs::new();
        let data = dirs.root.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let secrets = dirs.root.path().join("secrets.json");
        std::fs::write(&secrets, r#"{"token": "t0ken", "db": {"password": "pw"}}"#)
            .expect("secrets file");
        let component = |name: &str, ty: &str, meta: &str| {
            dirs.write_resource(
                &format!("{name}.yaml"),
                &format!(
                    "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {ty}\n  version: v1\n  metadata:\n{meta}"
                ),
            );
        };
        component(STORE, "state.in-memory", "    []\n");
        component(PUBSUB, "pubsub.in-memory", "    []\n");
        component(
            BINDING,
            "bindings.files",
            &format!("    - {{name: rootPath, value: {:?}}}\n", data.display()),
        );
        component(
            SECRETS,
            "secretstores.files",
            &format!(
                "    - {{name: secretsFile, value: {:?}}}\n",
                secrets.display()
            ),
        );
        let memory = support::spawn_component("plugd-memory", &dirs.sockets, "in-memory", &[]);
        let files = support::spawn_component("plugd-files", &dirs.sockets, "files", &[]);
        let config =
            plugd::config::Config::for_tests(dirs.sockets.clone(), vec![dirs.resources.clone()]);
        let plugd = support::start_plugd(config)
            .await
            .unwrap_or_else(|e| panic!("plugd did not start: {e}"));
        let registry = plugd.registry.clone();
        eventually(WAIT, "every component to be ready", || {
            let snapshot = registry.snapshot();
            async move { snapshot.ready().then_some(()) }
        })
        .await;
        Self {
            dirs,
            _memory: memory,
            _files: files,
            plugd,
            data,
        }
    }

    async fn grpc(&self) -> DaprClient<Channel> {
        self.plugd
            .grpc_client()
            .await
            .max_decoding_message_size(64 * 1024 * 1024)
    }

    /// Sends raw bytes as one HTTP/1.1 request (so anything can be sent: invalid UTF-8 in the
    /// target or headers) and reads the whole answer.
    async fn raw(&self, request: &[u8]) -> Reply {
        raw_http(self.plugd.http, request).await
    }

    async fn http(&self, method: &str, target: &str, body: &[u8]) -> Reply {
        self.raw(&request(method, target.as_bytes(), &[], body))
            .await
    }
}

/// An HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts a Dapr JSON error: status, `errorCode`, and a message containing `says`.
    fn assert_error(&self, what: &str, status: u16, code: &str, says: &str) {
        let text = String::from_utf8_lossy(&self.body);
        assert_eq!(self.status, status, "{what}: status; body {text}");
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{what}: not a JSON error: {:?} {text}",
            self.headers
        );
        let body = self.json();
        assert_eq!(body["errorCode"], code, "{what}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(says),
            "{what}: message {message:?} does not say {says:?}"
        );
    }
}

fn request(method: &str, target: &[u8], headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

async fn raw_http(addr: SocketAddr, request: &[u8]) -> Reply {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut rd, mut wr) = stream.split();
        // Written while the answer is read: the server may answer (413) and close before it has
        // read the whole body. A failed write is not the answer; what was read is.
        let ((), answer) = tokio::join!(
            async {
                let _ = wr.write_all(request).await;
            },
            async {
                let mut answer = Vec::new();
                let _ = rd.read_to_end(&mut answer).await;
                answer
            }
        );
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(CALL, exchange)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no answer within {CALL:?} (hung) to {:?}",
                String::from_utf8_lossy(&request[..request.len().min(200)])
            )
        })
        .expect("connect to plugd's HTTP API");
    parse_reply(&answer).unwrap_or_else(|| {
        panic!(
            "not an HTTP answer to {:?}: {:?}",
            String::from_utf8_lossy(&request[..request.len().min(200)]),
            String::from_utf8_lossy(&answer)
        )
    })
}

fn parse_reply(answer: &[u8]) -> Option<Reply> {
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = answer[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = body.as_slice();
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..end]).ok()?.trim(), 16).ok()?;
            rest = &rest[end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body = out;
    }
    Some(Reply {
        status,
        headers,
        body,
    })
}

/// Asserts a gRPC error: code, `ErrorInfo.reason` (`None`: a plain status without details),
/// and a message containing `says`.
fn assert_status<T: std::fmt::Debug>(
    what: &str,
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    reason: Option<&str>,
    says: &str,
) {
    let status = match result {
        Ok(r) => panic!("{what}: succeeded: {:?}", r.into_inner()),
        Err(s) => s,
    };
    assert_eq!(status.code(), code, "{what}: {status:?}");
    assert!(
        status.message().contains(says),
        "{what}: message {:?} does not say {says:?}",
        status.message()
    );
    let got = status.get_details_error_info().map(|i| i.reason);
    assert_eq!(got.as_deref(), reason, "{what}: ErrorInfo reason");
}

/// Bounds a gRPC call: one that does not answer has hung.
async fn bounded<F: std::future::Future>(what: &str, call: F) -> F::Output {
    tokio::time::timeout(CALL, call)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {CALL:?} (hung)"))
}

fn item(key: &str, value: &[u8], etag: Option<&str>) -> StateItem {
    StateItem {
        key: key.into(),
        value: value.to_vec(),
        etag: etag.map(|e| Etag { value: e.into() }),
        metadata: HashMap::new(),
        options: None,
    }
}

/// What was stored before the bad requests, to check nothing was lost after them.
struct Seeded {
    /// key → (raw stored bytes, etag)
    state: BTreeMap<String, (Vec<u8>, String)>,
    file: (String, Vec<u8>),
}

async fn seed(api: &Api) -> Seeded {
    let r = api
        .http(
            "POST",
            &format!("/v1.0/state/{STORE}"),
            br#"[{"key":"k1","value":{"n":1}},{"key":"k2","value":"two"}]"#,
        )
        .await;
    assert_eq!(r.status, 204, "seed over HTTP: {r:?}");
    let mut c = api.grpc().await;
    c.save_state(rt::SaveStateRequest {
        store_name: STORE.into(),
        states: vec![item("k3", b"\x00raw\xffbytes", None)],
    })
    .await
    .expect("seed over gRPC");
    let state = read_state(api, &["k1", "k2", "k3"]).await;
    assert_eq!(state["k1"].0, br#"{"n":1}"#);
    assert_eq!(state["k3"].0, b"\x00raw\xffbytes");
    let file = ("keep.txt".to_string(), b"kept through everything".to_vec());
    std::fs::write(api.data.join(&file.0), &file.1).expect("seed file");
    Seeded { state, file }
}

async fn read_state(api: &Api, keys: &[&str]) -> BTreeMap<String, (Vec<u8>, String)> {
    let mut c = api.grpc().await;
    let mut out = BTreeMap::new();
    for key in keys {
        let got = c
            .get_state(rt::GetStateRequest {
                store_name: STORE.into(),
                key: key.to_string(),
                ..Default::default()
            })
            .await
            .expect("get state")
            .into_inner();
        out.insert(key.to_string(), (got.data, got.etag));
    }
    out
}

/// Nothing stored before is lost or changed, nothing refused was stored, and plugd still
/// serves good requests on both APIs.
async fn assert_nothing_lost(api: &Api, seeded: &Seeded, never_stored: &[&str]) {
    let keys: Vec<&str> = seeded.state.keys().map(String::as_str).collect();
    assert_eq!(
        read_state(api, &keys).await,
        seeded.state,
        "stored state changed"
    );
    for key in never_stored {
        let r = api
            .http("GET", &format!("/v1.0/state/{STORE}/{key}"), b"")
            .await;
        assert_eq!(
            r.status, 204,
            "{key} was stored by a refused request: {r:?}"
        );
    }
    let r = api
        .http(
            "POST",
            &format!("/v1.0/bindings/{BINDING}"),
            format!(
                r#"{{"operation":"get","metadata":{{"fileName":"{}"}}}}"#,
                seeded.file.0
            )
            .as_bytes(),
        )
        .await;
    assert_eq!((r.status, &r.body), (200, &seeded.file.1), "{r:?}");
    let r = api
        .http("GET", &format!("/v1.0/secrets/{SECRETS}/token"), b"")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"token": "t0ken"}));
    // Good requests still work: a save and read back, a publish, over both APIs.
    let r = api
        .http(
            "POST",
            &format!("/v1.0/state/{STORE}"),
            br#"[{"key":"after","value":"fine"}]"#,
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    let r = api
        .http("GET", &format!("/v1.0/state/{STORE}/after"), b"")
        .await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, br#""fine""#.as_slice())
    );
    let r = api
        .http("POST", &format!("/v1.0/publish/{PUBSUB}/orders"), b"{}")
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    let mut c = api.grpc().await;
    bounded(
        "good gRPC publish",
        c.publish_event(rt::PublishEventRequest {
            pubsub_name: PUBSUB.into(),
            topic: "orders".into(),
            data: b"{}".to_vec(),
            data_content_type: "application/json".into(),
            ..Default::default()
        }),
    )
    .await
    .expect("a good publish after the bad requests");
}

/// One bad HTTP request and the Dapr error it must get.
struct HttpCase {
    what: &'static str,
    method: &'static str,
    target: Vec<u8>,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    says: &'static str,
}

fn case(
    what: &'static str,
    method: &'static str,
    target: &str,
    body: &[u8],
    (status, code, says): (u16, &'static str, &'static str),
) -> HttpCase {
    HttpCase {
        what,
        method,
        target: target.as_bytes().to_vec(),
        headers: Vec::new(),
        body: body.to_vec(),
        status,
        code,
        says,
    }
}

fn http_cases() -> Vec<HttpCase> {
    const NOSTORE: (u16, &str, &str) = (
        400,
        "ERR_STATE_STORE_NOT_FOUND",
        "state store nostore is not found",
    );
    const PIPES: (u16, &str, &str) = (400, "ERR_MALFORMED_REQUEST", "can't contain '||'");
    const BAD_BODY: (u16, &str, &str) = (
        400,
        "ERR_MALFORMED_REQUEST",
        "failed deserializing HTTP body",
    );
    const NO_KEY: (u16, &str, &str) = (400, "ERR_MALFORMED_REQUEST", "\"key\" is a required field");
    const ETAG_TYPE: (u16, &str, &str) = (400, "ERR_MALFORMED_REQUEST", "etag must be a string");
    let mut cases = vec![
        // Unknown stores, pub/subs, bindings, secret stores.
        case("get from unknown store", "GET", "/v1.0/state/nostore/k1", b"", NOSTORE),
        case("save to unknown store", "POST", "/v1.0/state/nostore", br#"[{"key":"k1","value":1}]"#, NOSTORE),
        case("unknown store before a bad body", "POST", "/v1.0/state/nostore", b"{", NOSTORE),
        case("delete from unknown store", "DELETE", "/v1.0/state/nostore/k1", b"", NOSTORE),
        case("bulk get from unknown store", "POST", "/v1.0/state/nostore/bulk", br#"{"keys":["k1"]}"#, NOSTORE),
        case("transaction on unknown store", "POST", "/v1.0/state/nostore/transaction", br#"{"operations":[]}"#, NOSTORE),
        case("query on unknown store", "POST", "/v1.0-alpha1/state/nostore/query", b"{}", NOSTORE),
        case("publish to unknown pubsub", "POST", "/v1.0/publish/nopubsub/orders", b"{}",
            (404, "ERR_PUBSUB_NOT_FOUND", "pubsub nopubsub is not found")),
        case("bulk publish to unknown pubsub", "POST", "/v1.0-alpha1/publish/bulk/nopubsub/orders",
            br#"[{"entryId":"1","event":"x","contentType":"text/plain"}]"#,
            (404, "ERR_PUBSUB_NOT_FOUND", "pubsub nopubsub is not found")),
        case("invoke unknown binding", "POST", "/v1.0/bindings/nobinding", br#"{"operation":"create"}"#,
            (500, "ERR_INVOKE_OUTPUT_BINDING", "couldn't find output binding nobinding")),
        case("invoke a state store as a binding", "POST", "/v1.0/bindings/statestore", br#"{"operation":"create"}"#,
            (500, "ERR_INVOKE_OUTPUT_BINDING", "couldn't find output binding statestore")),
        case("secret from unknown store", "GET", "/v1.0/secrets/nosecrets/token", b"",
            (401, "ERR_SECRET_STORE_NOT_FOUND", "failed finding secret store with key nosecrets")),
        case("bulk secrets from unknown store", "GET", "/v1.0/secrets/nosecrets/bulk", b"",
            (401, "ERR_SECRET_STORE_NOT_FOUND", "failed finding secret store with key nosecrets")),
        case("unknown secret", "GET", "/v1.0/secrets/secrets/nosuchsecret", b"",
            (500, "ERR_SECRET_GET", "failed getting secret with key nosuchsecret from secret store secrets")),
        // Unknown operations.
        case("unknown binding operation", "POST", "/v1.0/bindings/files", br#"{"operation":"explode","data":"x"}"#,
            (500, "ERR_INVOKE_OUTPUT_BINDING", "does not support operation \"explode\"; valid operations: ")),
        case("binding without operation", "POST", "/v1.0/bindings/files", br#"{"data":"x"}"#,
            (500, "ERR_INVOKE_OUTPUT_BINDING", "operation field is missing from request")),
        case("unknown transaction operation", "POST", "/v1.0/state/statestore/transaction",
            br#"{"operations":[{"operation":"merge","request":{"key":"k1","value":2}}]}"#,
            (400, "ERR_NOT_SUPPORTED_STATE_OPERATION", "operation type merge not supported")),
        case("unknown state sub-resource", "POST", "/v1.0/state/statestore/explode", b"{}",
            (404, "ERR_NOT_FOUND", "no API at /v1.0/state/statestore/explode")),
        case("unknown API path", "GET", "/v1.0/nothing/here", b"",
            (404, "ERR_NOT_FOUND", "no API at /v1.0/nothing/here")),
        case("method a route does not take", "GET", "/v1.0/state/statestore", b"",
            (405, "ERR_METHOD_NOT_ALLOWED", "method GET is not allowed for /v1.0/state/statestore")),
        // Invalid keys.
        case("get a key with ||", "GET", "/v1.0/state/statestore/a||b", b"", PIPES),
        case("delete a key with ||", "DELETE", "/v1.0/state/statestore/k1||x", b"", PIPES),
        case("save a key with || next to a good one", "POST", "/v1.0/state/statestore",
            br#"[{"key":"never1","value":1},{"key":"a||b","value":2}]"#, PIPES),
        case("bulk get a key with ||", "POST", "/v1.0/state/statestore/bulk", br#"{"keys":["k1","a||b"]}"#, PIPES),
        case("transaction with a || key", "POST", "/v1.0/state/statestore/transaction",
            br#"{"operations":[{"operation":"upsert","request":{"key":"never2","value":1}},{"operation":"delete","request":{"key":"k1||"}}]}"#, PIPES),
        case("save an empty key", "POST", "/v1.0/state/statestore", br#"[{"key":"","value":1}]"#, NO_KEY),
        case("save without a key", "POST", "/v1.0/state/statestore", br#"[{"value":1}]"#, NO_KEY),
        case("save a key that is not a string", "POST", "/v1.0/state/statestore", br#"[{"key":7,"value":1}]"#, NO_KEY),
        case("transaction with an empty key", "POST", "/v1.0/state/statestore/transaction",
            br#"{"operations":[{"operation":"upsert","request":{"key":"","value":1}}]}"#, NO_KEY),
        case("empty key (trailing slash) on GET", "GET", "/v1.0/state/statestore/", b"",
            (405, "ERR_METHOD_NOT_ALLOWED", "method GET is not allowed")),
        // Malformed etags.
        case("etag that is a boolean", "POST", "/v1.0/state/statestore", br#"[{"key":"k1","value":9,"etag":true}]"#, ETAG_TYPE),
        case("etag that is a list", "POST", "/v1.0/state/statestore", br#"[{"key":"k1","value":9,"etag":["1"]}]"#, ETAG_TYPE),
        case("etag object without a string", "POST", "/v1.0/state/statestore", br#"[{"key":"k1","value":9,"etag":{"value":{}}}]"#, ETAG_TYPE),
        case("etag that matches nothing", "POST", "/v1.0/state/statestore", br#"[{"key":"k1","value":9,"etag":"not-an-etag"}]"#,
            (409, "ERR_STATE_SAVE", "possible etag mismatch")),
        case("etag mismatch in a transaction", "POST", "/v1.0/state/statestore/transaction",
            br#"{"operations":[{"operation":"upsert","request":{"key":"k1","value":9,"etag":"garbage"}}]}"#,
            (500, "ERR_STATE_TRANSACTION", "possible etag mismatch")),
        // Bad JSON bodies.
        case("save: truncated JSON", "POST", "/v1.0/state/statestore", b"[{\"key\":", BAD_BODY),
        case("save: empty body", "POST", "/v1.0/state/statestore", b"", BAD_BODY),
        case("save: an object, not a list", "POST", "/v1.0/state/statestore", br#"{"key":"k1","value":1}"#,
            (400, "ERR_MALFORMED_REQUEST", "expected a JSON array of state items")),
        case("save: items that are not objects", "POST", "/v1.0/state/statestore", b"[1,2]",
            (400, "ERR_MALFORMED_REQUEST", "each state item must be a JSON object")),
        case("save: metadata not a map", "POST", "/v1.0/state/statestore", br#"[{"key":"k1","value":1,"metadata":"x"}]"#,
            (400, "ERR_MALFORMED_REQUEST", "metadata must be an object of strings")),
        case("save: body not UTF-8", "POST", "/v1.0/state/statestore", b"[{\"key\":\"k\xff\xfe\"}]", BAD_BODY),
        case("bulk get: not JSON", "POST", "/v1.0/state/statestore/bulk", b"keys=k1", BAD_BODY),
        case("bulk get: keys not strings", "POST", "/v1.0/state/statestore/bulk", br#"{"keys":[1]}"#,
            (400, "ERR_MALFORMED_REQUEST", "keys must be strings")),
        case("bulk get: keys not a list", "POST", "/v1.0/state/statestore/bulk", br#"{"keys":"k1"}"#,
            (400, "ERR_MALFORMED_REQUEST", "keys must be an array of strings")),
        case("transaction: a string", "POST", "/v1.0/state/statestore/transaction", br#""upsert""#,
            (400, "ERR_MALFORMED_REQUEST", "expected an object with \"operations\"")),
        case("transaction: operation without request", "POST", "/v1.0/state/statestore/transaction",
            br#"{"operations":[{"operation":"upsert"}]}"#,
            (400, "ERR_MALFORMED_REQUEST", "operation has no \"request\"")),
        case("transaction: operations not a list", "POST", "/v1.0/state/statestore/transaction",
            br#"{"operations":{"operation":"upsert"}}"#,
            (400, "ERR_MALFORMED_REQUEST", "operations must be an array")),
        case("binding: not JSON", "POST", "/v1.0/bindings/files", b"operation=create", BAD_BODY),
        case("binding: a list", "POST", "/v1.0/bindings/files", b"[]",
            (400, "ERR_MALFORMED_REQUEST", "the request body must be a JSON object")),
        case("binding: operation a number", "POST", "/v1.0/bindings/files", br#"{"operation":5}"#,
            (400, "ERR_MALFORMED_REQUEST", "operation must be a string")),
        case("binding: metadata a list", "POST", "/v1.0/bindings/files", br#"{"operation":"create","metadata":["a"]}"#,
            (400, "ERR_MALFORMED_REQUEST", "metadata must be an object of strings")),
        case("bulk publish: an object", "POST", "/v1.0-alpha1/publish/bulk/pubsub/orders", b"{}",
            (400, "ERR_PUBSUB_EVENTS_SER", "the body must be a JSON array of entries")),
        case("bulk publish: entry not an object", "POST", "/v1.0-alpha1/publish/bulk/pubsub/orders", b"[1]",
            (400, "ERR_PUBSUB_EVENTS_SER", "entry 0 is not an object")),
        case("bulk publish: base64 event not a string", "POST", "/v1.0-alpha1/publish/bulk/pubsub/orders",
            br#"[{"entryId":"1","event":{},"contentType":"application/octet-stream"}]"#,
            (400, "ERR_PUBSUB_EVENTS_SER", "must be a base64 string")),
        case("query: not JSON", "POST", "/v1.0-alpha1/state/statestore/query", b"{filter",
            (500, "ERR_STATE_QUERY", "invalid query JSON")),
        // Invalid UTF-8 once percent-decoded, in paths.
        case("key not UTF-8", "GET", "/v1.0/state/statestore/%FF%FE", b"",
            (400, "ERR_MALFORMED_REQUEST", "invalid request path /v1.0/state/statestore/%FF%FE")),
        case("store name not UTF-8", "POST", "/v1.0/state/%C3%28", br#"[{"key":"k","value":1}]"#,
            (400, "ERR_MALFORMED_REQUEST", "invalid request path")),
        case("binding name not UTF-8", "POST", "/v1.0/bindings/%80", br#"{"operation":"create"}"#,
            (400, "ERR_MALFORMED_REQUEST", "invalid request path")),
        case("topic not UTF-8", "POST", "/v1.0/publish/pubsub/a%FFb", b"{}",
            (400, "ERR_MALFORMED_REQUEST", "invalid request path")),
        case("secret key not UTF-8", "GET", "/v1.0/secrets/secrets/%ED%A0%80", b"",
            (400, "ERR_MALFORMED_REQUEST", "invalid request path")),
    ];
    // Invalid UTF-8 in headers: a delete whose If-Match is not UTF-8 matches no etag.
    cases.push(HttpCase {
        headers: vec![("If-Match", b"\xff\xfe-etag".to_vec())],
        ..case(
            "If-Match not UTF-8",
            "DELETE",
            "/v1.0/state/statestore/k1",
            b"",
            (409, "ERR_STATE_DELETE", "possible etag mismatch"),
        )
    });
    cases.push(HttpCase {
        headers: vec![("If-Match", b"garbage".to_vec())],
        ..case(
            "If-Match that matches nothing",
            "DELETE",
            "/v1.0/state/statestore/k2",
            b"",
            (
                409,
                "ERR_STATE_DELETE",
                "failed deleting state with key k2: possible etag mismatch",
            ),
        )
    });
    cases
}

/// Every bad HTTP request gets its Dapr error, as JSON, with a clear message; then nothing was
/// lost and good requests still work.
#[tokio::test(flavor = "multi_thread")]
async fn http_api_bad_requests() {
    let api = Api::start().await;
    let seeded = seed(&api).await;
    for c in http_cases() {
        let headers: Vec<(&str, &[u8])> =
            c.headers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        let r = api
            .raw(&request(c.method, &c.target, &headers, &c.body))
            .await;
        r.assert_error(c.what, c.status, c.code, c.says);
    }

    // Headers that are not UTF-8 where plugd only reads text: ignored, the request served.
    let r = api
        .raw(&request(
            "POST",
            b"/v1.0/publish/pubsub/orders",
            &[
                ("Content-Type", b"text/\xffplain"),
                ("traceparent", b"00-\xfe\xff-01"),
            ],
            b"hello",
        ))
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    // Bytes that are not UTF-8 (nor valid in a URI) in the request target: refused by the HTTP
    // server itself, with a 400, and the connection closed; plugd goes on.
    let r = api
        .raw(&request(
            "GET",
            b"/v1.0/state/statestore/\xff\xfe",
            &[],
            b"",
        ))
        .await;
    assert_eq!(r.status, 400, "{r:?}");

    assert_nothing_lost(&api, &seeded, &["never1", "never2"]).await;
    api.plugd.stop().await;
    drop(api.dirs);
}

/// The same classes over gRPC: Dapr's codes, `ErrorInfo` reasons and messages.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_api_bad_requests() {
    let api = Api::start().await;
    let seeded = seed(&api).await;
    let mut c = api.grpc().await;
    let etag_k1 = seeded.state["k1"].1.clone();
    assert!(!etag_k1.is_empty());

    macro_rules! expect {
        ($what:expr, $call:expr, $code:expr, $reason:expr, $says:expr) => {
            assert_status($what, bounded($what, $call).await, $code, $reason, $says)
        };
    }
    let not_found = Some("DAPR_STATE_NOT_FOUND");
    let nostore = "state store nostore is not found";

    // Unknown stores, pub/subs, bindings, secret stores.
    expect!(
        "get from unknown store",
        c.get_state(rt::GetStateRequest {
            store_name: "nostore".into(),
            key: "k1".into(),
            ..Default::default()
        }),
        Code::InvalidArgument,
        not_found,
        nostore
    );
    expect!(
        "save to unknown store",
        c.save_state(rt::SaveStateRequest {
            store_name: "nostore".into(),
            states: vec![item("k1", b"1", None)]
        }),
        Code::InvalidArgument,
        not_found,
        nostore
    );
    expect!(
        "delete from unknown store",
        c.delete_state(rt::DeleteStateRequest {
            store_name: "nostore".into(),
            key: "k1".into(),
            ..Default::default()
        }),
        Code::InvalidArgument,
        not_found,
        nostore
    );
    expect!(
        "bulk get from unknown store",
        c.get_bulk_state(rt::GetBulkStateRequest {
            store_name: "nostore".into(),
            keys: vec!["k1".into()],
            ..Default::default()
        }),
        Code::InvalidArgument,
        not_found,
        nostore
    );
    expect!(
        "bulk delete from unknown store",
        c.delete_bulk_state(rt::DeleteBulkStateRequest {
            store_name: "nostore".into(),
            states: vec![item("k1", b"", None)]
        }),
        Code::InvalidArgument,
        not_found,
        nostore
    );
    expect!(
        "transaction on unknown store",
        c.execute_state_transaction(rt::ExecuteStateTransactionRequest {
            store_name: "nostore".into(),
            ..Default::default()
        }),
        Code::InvalidArgument,
        not_found,
        nostore
    );
    expect!(
        "query on unknown store",
        c.query_state_alpha1(rt::QueryStateRequest {
            store_name: "nostore".into(),
            query: "{}".into(),
            ..Default::default()
        }),
        Code::InvalidArgument,
        not_found,
        nostore
    );
    expect!(
        "publish to unknown pubsub",
        c.publish_event(rt::PublishEventRequest {
            pubsub_name: "nopubsub".into(),
            topic: "orders".into(),
            data: b"{}".to_vec(),
            ..Default::default()
        }),
        Code::InvalidArgument,
        Some("DAPR_PUBSUB_NOT_FOUND"),
        "pubsub nopubsub is not found"
    );
    expect!(
        "publish without a topic",
        c.publish_event(rt::PublishEventRequest {
            pubsub_name: PUBSUB.into(),
            topic: String::new(),
            data: b"{}".to_vec(),
            ..Default::default()
        }),
        Code::InvalidArgument,
        Some("DAPR_PUBSUB_TOPIC_NAME_EMPTY"),
        "topic is empty in pubsub pubsub"
    );
    expect!(
        "publish without a pubsub name",
        c.publish_event(rt::PublishEventRequest {
            pubsub_name: String::new(),
            topic: "orders".into(),
            data: b"{}".to_vec(),
            ..Default::default()
        }),
        Code::InvalidArgument,
        Some("DAPR_PUBSUB_NAME_EMPTY"),
        "pubsub name is empty"
    );
    expect!(
        "bulk publish to unknown pubsub",
        c.bulk_publish_event_alpha1(rt::BulkPublishRequest {
            pubsub_name: "nopubsub".into(),
            topic: "orders".into(),
            ..Default::default()
        }),
        Code::InvalidArgument,
        Some("DAPR_PUBSUB_NOT_FOUND"),
        "pubsub nopubsub is not found"
    );
    expect!(
        "invoke unknown binding",
        c.invoke_binding(rt::InvokeBindingRequest {
            name: "nobinding".into(),
            operation: "create".into(),
            ..Default::default()
        }),
        Code::Internal,
        Some("ERR_INVOKE_OUTPUT_BINDING"),
        "couldn't find output binding nobinding"
    );
    expect!(
        "secret from unknown store",
        c.get_secret(rt::GetSecretRequest {
            store_name: "nosecrets".into(),
            key: "token".into(),
            ..Default::default()
        }),
        Code::InvalidArgument,
        None,
        "failed finding secret store with key nosecrets"
    );
    expect!(
        "bulk secrets from unknown store",
        c.get_bulk_secret(rt::GetBulkSecretRequest {
            store_name: "nosecrets".into(),
            ..Default::default()
        }),
        Code::InvalidArgument,
        None,
        "failed finding secret store with key nosecrets"
    );
    expect!(
        "unknown secret",
        c.get_secret(rt::GetSecretRequest {
            store_name: SECRETS.into(),
            key: "nosuchsecret".into(),
            ..Default::default()
        }),
        Code::Internal,
        None,
        "failed getting secret with key nosuchsecret from secret store secrets"
    );

    // Unknown operations.
    expect!(
        "unknown binding operation",
        c.invoke_binding(rt::InvokeBindingRequest {
            name: BINDING.into(),
            operation: "explode".into(),
            ..Default::default()
        }),
        Code::Internal,
        Some("ERR_INVOKE_OUTPUT_BINDING"),
        "does not support operation \"explode\"; valid operations: "
    );
    expect!(
        "binding without operation",
        c.invoke_binding(rt::InvokeBindingRequest {
            name: BINDING.into(),
            ..Default::default()
        }),
        Code::Internal,
        Some("ERR_INVOKE_OUTPUT_BINDING"),
        "operation field is missing from request"
    );
    let op = |operation: &str, key: &str, etag: Option<&str>| rt::TransactionalStateOperation {
        operation_type: operation.into(),
        request: Some(item(key, b"\"tx\"", etag)),
    };
    expect!(
        "unknown transaction operation",
        c.execute_state_transaction(rt::ExecuteStateTransactionRequest {
            store_name: STORE.into(),
            operations: vec![op("merge", "k1", None)],
            ..Default::default()
        }),
        Code::Unimplemented,
        Some("ERR_NOT_SUPPORTED_STATE_OPERATION"),
        "operation type merge not supported"
    );

    // Invalid keys.
    let illegal = Some("DAPR_STATE_ILLEGAL_KEY");
    expect!(
        "get a key with ||",
        c.get_state(rt::GetStateRequest {
            store_name: STORE.into(),
            key: "a||b".into(),
            ..Default::default()
        }),
        Code::InvalidArgument,
        illegal,
        "can't contain '||'"
    );
    expect!(
        "save a key with || next to a good one",
        c.save_state(rt::SaveStateRequest {
            store_name: STORE.into(),
            states: vec![item("never1", b"1", None), item("a||b", b"2", None)]
        }),
        Code::InvalidArgument,
        illegal,
        "can't contain '||'"
    );
    expect!(
        "delete a key with ||",
        c.delete_state(rt::DeleteStateRequest {
            store_name: STORE.into(),
            key: "k1||".into(),
            ..Default::default()
        }),
        Code::InvalidArgument,
        illegal,
        "can't contain '||'"
    );
    expect!(
        "bulk get a key with ||",
        c.get_bulk_state(rt::GetBulkStateRequest {
            store_name: STORE.into(),
            keys: vec!["k1".into(), "||".into()],
            ..Default::default()
        }),
        Code::InvalidArgument,
        illegal,
        "can't contain '||'"
    );
    expect!(
        "bulk delete a key with ||",
        c.delete_bulk_state(rt::DeleteBulkStateRequest {
            store_name: STORE.into(),
            states: vec![item("k1", b"", None), item("k2||x", b"", None)]
        }),
        Code::InvalidArgument,
        illegal,
        "can't contain '||'"
    );
    expect!(
        "transaction with a || key",
        c.execute_state_transaction(rt::ExecuteStateTransactionRequest {
            store_name: STORE.into(),
            operations: vec![op("upsert", "never2", None), op("delete", "k1||", None)],
            ..Default::default()
        }),
        Code::InvalidArgument,
        illegal,
        "can't contain '||'"
    );
    expect!(
        "save an empty key",
        c.save_state(rt::SaveStateRequest {
            store_name: STORE.into(),
            states: vec![item("never3", b"1", None), item("", b"1", None)]
        }),
        Code::InvalidArgument,
        Some("ERR_STATE_SAVE"),
        "state key cannot be empty"
    );
    expect!(
        "delete an empty key",
        c.delete_state(rt::DeleteStateRequest {
            store_name: STORE.into(),
            key: String::new(),
            ..Default::default()
        }),
        Code::InvalidArgument,
        None,
        "state key cannot be empty"
    );
    expect!(
        "transaction with an empty key",
        c.execute_state_transaction(rt::ExecuteStateTransactionRequest {
            store_name: STORE.into(),
            operations: vec![op("upsert", "never4", None), op("upsert", "", None)],
            ..Default::default()
        }),
        Code::InvalidArgument,
        None,
        "state key cannot be empty"
    );
    expect!(
        "transaction operation without request",
        c.execute_state_transaction(rt::ExecuteStateTransactionRequest {
            store_name: STORE.into(),
            operations: vec![rt::TransactionalStateOperation {
                operation_type: "upsert".into(),
                request: None
            }],
            ..Default::default()
        }),
        Code::InvalidArgument,
        None,
        "state key cannot be empty"
    );

    // Malformed etags.
    expect!(
        "save with an etag that matches nothing",
        c.save_state(rt::SaveStateRequest {
            store_name: STORE.into(),
            states: vec![item("k1", b"9", Some("not-an-etag"))]
        }),
        Code::Aborted,
        Some("ERR_STATE_SAVE"),
        "possible etag mismatch"
    );
    // (An empty etag is no etag, as in Dapr's stores: not a bad input.)
    expect!(
        "delete with an etag that matches nothing",
        c.delete_state(rt::DeleteStateRequest {
            store_name: STORE.into(),
            key: "k2".into(),
            etag: Some(Etag {
                value: "\u{fffd}garbage".into()
            }),
            ..Default::default()
        }),
        Code::Aborted,
        Some("ERR_STATE_DELETE"),
        "failed deleting state with key k2: possible etag mismatch"
    );
    expect!(
        "transaction with an etag that matches nothing",
        c.execute_state_transaction(rt::ExecuteStateTransactionRequest {
            store_name: STORE.into(),
            operations: vec![op("upsert", "k1", Some("garbage"))],
            ..Default::default()
        }),
        Code::Internal,
        Some("ERR_STATE_TRANSACTION"),
        "possible etag mismatch"
    );
    expect!(
        "query that is not JSON",
        c.query_state_alpha1(rt::QueryStateRequest {
            store_name: STORE.into(),
            query: "{filter".into(),
            ..Default::default()
        }),
        Code::Internal,
        Some("DAPR_STATE_QUERY_FAILED"),
        "invalid query JSON"
    );

    // Protobuf strings that are not UTF-8: the request cannot be decoded, and says so.
    let raw = raw_get_state(&api, b"k\xff\xfe").await;
    assert_eq!(raw.code(), Code::Internal, "{raw:?}");
    assert!(raw.message().contains("UTF-8"), "{raw:?}");

    // A missing key is not an error (Dapr: an empty answer), a key with odd text is a key.
    let got = c
        .get_state(rt::GetStateRequest {
            store_name: STORE.into(),
            key: "nosuchkey/\u{0}\u{202e}".into(),
            ..Default::default()
        })
        .await
        .expect("a missing key")
        .into_inner();
    assert!(got.data.is_empty() && got.etag.is_empty(), "{got:?}");

    assert_nothing_lost(&api, &seeded, &["never1", "never2", "never3", "never4"]).await;
    // The etag of k1 is the one it had before: no bad write went through.
    assert_eq!(read_state(&api, &["k1"]).await["k1"].1, etag_k1);
    api.plugd.stop().await;
}

/// `GetState` with a key field holding bytes that are not UTF-8 (same field numbers as
/// `GetStateRequest`, but `bytes`, so anything can be sent).
#[derive(Clone, PartialEq, prost::Message)]
struct RawGetStateRequest {
    #[prost(string, tag = "1")]
    store_name: String,
    #[prost(bytes = "vec", tag = "2")]
    key: Vec<u8>,
}

async fn raw_get_state(api: &Api, key: &[u8]) -> tonic::Status {
    let channel = Channel::from_shared(format!("http://{}", api.plugd.grpc))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static("/dapr.proto.runtime.v1.Dapr/GetState");
    let request = tonic::Request::new(RawGetStateRequest {
        store_name: STORE.into(),
        key: key.to_vec(),
    });
    let result: Result<tonic::Response<rt::GetStateResponse>, tonic::Status> = bounded(
        "GetState with a key that is not UTF-8",
        grpc.unary(request, path, tonic_prost::ProstCodec::default()),
    )
    .await;
    result.expect_err("a key that is not UTF-8 was accepted")
}

/// A body over the default 4 MiB limit: HTTP 413 / gRPC RESOURCE_EXHAUSTED (the messages belong
/// to `--max-body-size` and are not checked here), nothing stored, and plugd goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_payloads_are_refused_and_nothing_is_stored() {
    let api = Api::start().await;
    let seeded = seed(&api).await;
    let big = "x".repeat(MAX_BODY + 1024);

    let body = format!(r#"[{{"key":"big-http","value":"{big}"}}]"#);
    let r = api
        .http("POST", &format!("/v1.0/state/{STORE}"), body.as_bytes())
        .await;
    assert_eq!(r.status, 413, "save over the limit: {:?}", r.headers);
    let body =
        format!(r#"{{"operation":"create","data":"{big}","metadata":{{"fileName":"big.txt"}}}}"#);
    let r = api
        .http(
            "POST",
            &format!("/v1.0/bindings/{BINDING}"),
            body.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 413, "binding over the limit: {:?}", r.headers);
    let r = api
        .http(
            "POST",
            &format!("/v1.0/publish/{PUBSUB}/orders"),
            big.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 413, "publish over the limit: {:?}", r.headers);

    let mut c = api.grpc().await;
    let result = bounded(
        "SaveState over the limit",
        c.save_state(rt::SaveStateRequest {
            store_name: STORE.into(),
            states: vec![item("big-grpc", big.as_bytes(), None)],
        }),
    )
    .await;
    let save_status = result.expect_err("a SaveState over the limit was accepted");
    let result = bounded(
        "InvokeBinding over the limit",
        c.invoke_binding(rt::InvokeBindingRequest {
            name: BINDING.into(),
            data: big.clone().into_bytes(),
            operation: "create".into(),
            metadata: HashMap::from([("fileName".into(), "big-grpc.txt".into())]),
        }),
    )
    .await;
    let invoke_status = result.expect_err("an InvokeBinding over the limit was accepted");

    // Just under the limit is fine on both.
    let fits = "y".repeat(MAX_BODY - 64 * 1024);
    c.save_state(rt::SaveStateRequest {
        store_name: STORE.into(),
        states: vec![item("fits", fits.as_bytes(), None)],
    })
    .await
    .expect("a SaveState under the limit");
    let body = format!(r#"[{{"key":"fits-http","value":"{fits}"}}]"#);
    let r = api
        .http("POST", &format!("/v1.0/state/{STORE}"), body.as_bytes())
        .await;
    assert_eq!(r.status, 204, "save under the limit: {:?}", r.headers);

    assert!(!api.data.join("big.txt").exists() && !api.data.join("big-grpc.txt").exists());
    assert_nothing_lost(&api, &seeded, &["big-http", "big-grpc"]).await;
    api.plugd.stop().await;
    // The codes last, so that everything above is checked whatever they are.
    for status in [save_status, invoke_status] {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    }
}
