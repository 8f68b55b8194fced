//! Managed components: component processes plugd starts, supervises and stops itself.
//!
//! When a Component's type has no live socket in the socket folder and plugd knows a program for
//! it, plugd launches that program with its socket in the folder. Known programs are the reference
//! components, under Dapr's type names (`state.redis` → `plugd-redis` on `redis.sock`, …, see
//! [`builtin`]), and any command the user gives for a socket name with
//! `--managed-component NAME=COMMAND`.
//!
//! - **Finding programs.** A reference component's binary is looked for in the folders of
//!   `--managed-components-path` (in order), then next to the plugd binary, then on `PATH`.
//! - **Supervision.** A process that exits is started again after a jittered backoff: 100 ms for
//!   the first exit in a minute, doubling with each further exit in that minute, at most 30 s, so
//!   a crashing program is restarted at a bounded rate.
//! - **Output.** The process's stdout and stderr become plugd log lines with the field
//!   `component` (the socket name) under the log target `component`; in plain logs the line is
//!   prefixed with `[name]`. Reference components are started with `--log-as-json`, and their
//!   level and message are carried over.
//! - **Stopping.** At shutdown (after the APIs have drained) each process gets SIGTERM, then
//!   SIGKILL after the grace period; its socket file is removed. Processes run in their own
//!   process group (a terminal's Ctrl-C reaches plugd only, which then stops them in order) and
//!   get SIGTERM if plugd itself dies.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use tokio::process::{Child, Command};
use tokio_util::{
    codec::{FramedRead, LinesCodec},
    sync::CancellationToken,
    task::TaskTracker,
};

use crate::config::manifest::{Category, ComponentManifest};

/// Longest child output line kept whole; longer lines are cut.
const MAX_LINE: usize = 16 * 1024;
/// First restart delay; doubled for each further exit within [`RESTART_WINDOW`].
const FIRST_RESTART: Duration = Duration::from_millis(100);
const MAX_RESTART: Duration = Duration::from_secs(30);
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// The reference component program serving a socket name, and the categories it serves there.
pub fn builtin(socket_name: &str) -> Option<(&'static str, &'static [Category])> {
    use Category::*;
    Some(match socket_name {
        "redis" => ("plugd-redis", &[State, PubSub]),
        "sqlite" => ("plugd-sqlite", &[State]),
        "in-memory" | "memory" => ("plugd-memory", &[State, PubSub]),
        "localstorage" | "local.file" | "files" => ("plugd-files", &[Bindings, SecretStores]),
        "local.env" => ("plugd-env", &[SecretStores]),
        "cron" => ("plugd-cron", &[Bindings]),
        _ => return None,
    })
}

/// How managed components are run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--managed-components`: off means plugd starts nothing.
    pub enabled: bool,
    pub sockets_folder: PathBuf,
    /// Folders searched first for reference component binaries.
    pub search_path: Vec<PathBuf>,
    /// The user's own commands, by socket name (already split into words).
    pub commands: BTreeMap<String, Vec<String>>,
    /// How long a process may take to stop after SIGTERM.
    pub grace: Duration,
    pub log_as_json: bool,
    /// Passed on as `--log-level` to reference components.
    pub log_level: String,
}

impl Settings {
    /// Off: for tests and embedders that start their components themselves.
    pub fn disabled(sockets_folder: PathBuf) -> Self {
        Self {
            enabled: false,
            sockets_folder,
            search_path: Vec::new(),
            commands: BTreeMap::new(),
            grace: Duration::from_secs(5),
            log_as_json: false,
            log_level: "info".into(),
        }
    }
}

/// A program to run for one socket name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    program: PathBuf,
    args: Vec<String>,
    /// A reference component (speaks our flags and JSON logs).
    reference: bool,
}

struct Running {
    stop: CancellationToken,
    plan: Plan,
    /// How often the process exited (or could not be started).
    exits: Arc<AtomicU64>,
}

/// The processes plugd has started, by socket name.
pub struct Managed {
    settings: Settings,
    running: Mutex<HashMap<String, Running>>,
    tasks: TaskTracker,
    restarts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Managed {
    pub fn new(settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            running: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            restarts: Arc::default(),
        })
    }

    /// Starts a process for every socket name the components need that nothing serves yet and
    /// plugd knows a program for; stops the processes no component needs any more. Returns the
    /// socket names started now.
    pub fn reconcile(&self, components: &[ComponentManifest]) -> Vec<String> {
        if !self.settings.enabled {
            return Vec::new();
        }
        let mut needed: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        for c in components {
            let socket_name = c.socket_name.to_ascii_lowercase();
            let user = self.settings.commands.contains_key(&socket_name);
            let known = builtin(&socket_name).is_some_and(|(_, cats)| cats.contains(&c.category));
            if user || known {
                needed.entry(socket_name).or_default().insert(&c.name);
            }
        }
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|name, r| {
            let keep = needed.contains_key(name);
            if !keep {
                tracing::info!(component = %name, "no Component uses this managed component any more; stopping it");
                r.stop.cancel();
            }
            keep
        });
        let mut started = Vec::new();
        for (name, users) in needed {
            if running.contains_key(&name) {
                continue;
            }
            let socket = self.socket_path(&name);
            if is_live(&socket) {
                tracing::info!(component = %name, socket = %socket.display(),
                    "socket is served by a process plugd did not start; not launching one");
                continue;
            }
            let Some(plan) = self.plan(&name) else {
                continue;
            };
            tracing::info!(component = %name, program = %plan.program.display(), used_by = ?users,
                "launching managed component");
            let stop = CancellationToken::new();
            let exits = Arc::new(AtomicU64::new(0));
            let supervisor = Supervisor {
                exits: exits.clone(),
                name: name.clone(),
                plan: plan.clone(),
                socket,
                settings: self.settings.clone(),
                restarts: self.restarts.clone(),
                stop: stop.clone(),
            };
            self.tasks.spawn(supervisor.run());
            running.insert(name.clone(), Running { stop, plan, exits });
            started.push(name);
        }
        started
    }

    /// Waits (bounded) until every started process's socket accepts connections; a process that
    /// exits before it listens is not waited for (its Components wait for it, as for any socket).
    pub async fn ready(&self, names: &[String], within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        for name in names {
            let socket = self.socket_path(name);
            let exits = self
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .map(|r| r.exits.clone());
            while !is_live(&socket) {
                if exits
                    .as_ref()
                    .is_some_and(|e| e.load(Ordering::Relaxed) > 0)
                {
                    tracing::warn!(component = %name,
                        "managed component exited before it listened; not waiting for it");
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(component = %name, socket = %socket.display(),
                        "managed component is not listening yet; its Components wait for it");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    /// Socket names with a process plugd manages, and the program for each.
    pub fn list(&self) -> Vec<(String, PathBuf)> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = running
            .iter()
            .map(|(n, r)| (n.clone(), r.plan.program.clone()))
            .collect();
        out.sort();
        out
    }

    /// How many times each managed component was restarted after exiting by itself.
    pub fn restarts(&self) -> BTreeMap<String, u64> {
        self.restarts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops every process (SIGTERM, SIGKILL after the grace period) and removes its socket.
    pub async fn shutdown(&self) {
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            for (_, r) in running.drain() {
                r.stop.cancel();
            }
        }
        self.tasks.close();
        // Each supervisor bounds its own stop by the grace period; this is a backstop.
        let bound = self.settings.grace + Duration::from_secs(2);
        if tokio::time::timeout(bound, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("managed components did not stop in time");
        }
    }

    fn socket_path(&self, name: &str) -> PathBuf {
        self.settings.sockets_folder.join(format!("{name}.sock"))
    }

    fn plan(&self, name: &str) -> Option<Plan> {
        if let Some(words) = self.settings.commands.get(name) {
            let (program, args) = words.split_first()?;
            return Some(Plan {
                program: PathBuf::from(program),
                args: args.to_vec(),
                reference: false,
            });
        }
        let (binary, _) = builtin(name)?;
        let dirs = search_dirs(&self.settings.search_path);
        let Some(program) = find_program(binary, &dirs) else {
            tracing::warn!(component = %name, binary, searched = ?dirs,
                "no managed component: the program was not found; start the component yourself \
                 or put the binary next to plugd");
            return None;
        };
        let mut args = vec![
            "--socket-name".to_string(),
            name.to_string(),
            "--socket-folder".to_string(),
            self.settings.sockets_folder.display().to_string(),
            "--log-as-json".to_string(),
        ];
        if let Some(level) = simple_level(&self.settings.log_level) {
            args.extend(["--log-level".to_string(), level.to_string()]);
        }
        Some(Plan {
            program,
            args,
            reference: true,
        })
    }
}

/// Folders searched for reference component binaries, in order: the given ones, the plugd
/// binary's own folder, then `PATH`.
pub fn search_dirs(first: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = first.to_vec();
    if let Some(own) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        dirs.push(own);
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

fn find_program(binary: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    dirs.iter().map(|d| d.join(binary)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

fn simple_level(level: &str) -> Option<&'static str> {
    Some(match level.to_ascii_lowercase().as_str() {
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "fatal" => "error",
        "trace" => "trace",
        _ => return None,
    })
}

/// Whether something accepts connections on the socket.
fn is_live(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

/// Parses `NAME=COMMAND` (the command split as a shell would, without running a shell).
pub fn parse_command(spec: &str) -> Result<(String, Vec<String>), String> {
    let (name, command) = spec
        .split_once('=')
        .ok_or_else(|| "expected NAME=COMMAND".to_string())?;
    let name = name.trim();
    if name.is_empty() || name.contains('/') || name.ends_with(".sock") {
        return Err(format!(
            "{name:?} is not a socket name (the file stem, such as \"mystore\" for mystore.sock)"
        ));
    }
    let words = shlex::split(command)
        .ok_or_else(|| format!("cannot split the command {command:?} (unbalanced quotes?)"))?;
    if words.is_empty() {
        return Err("the command is empty".into());
    }
    Ok((name.to_ascii_lowercase(), words))
}

struct Supervisor {
    name: String,
    plan: Plan,
    socket: PathBuf,
    settings: Settings,
    restarts: Arc<Mutex<BTreeMap<String, u64>>>,
    stop: CancellationToken,
    exits: Arc<AtomicU64>,
}

impl Supervisor {
    async fn run(self) {
        let span = tracing::info_span!("managed", component = %self.name);
        let _ = tracing::Instrument::instrument(self.supervise(), span).await;
    }

    async fn supervise(&self) {
        let mut exits: Vec<Instant> = Vec::new();
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            match self.spawn() {
                Ok(mut child) => {
                    let pid = child.id();
                    tracing::info!(pid, "managed component started");
                    tokio::select! {
                        status = child.wait() => {
                            match status {
                                Ok(s) => tracing::warn!(status = %s, "managed component exited"),
                                Err(e) => tracing::warn!(error = %e, "cannot wait for the managed component"),
                            }
                            // What a wrapper left behind would hold the socket the next start needs.
                            if let Some(pid) = pid.filter(|p| group_alive(*p)) {
                                tracing::warn!("processes of the exited component's group are still running; killing them");
                                signal_group(pid, libc::SIGKILL);
                            }
                            self.exits.fetch_add(1, Ordering::Relaxed);
                        }
                        _ = self.stop.cancelled() => {
                            self.terminate(&mut child).await;
                            break;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(program = %self.plan.program.display(), error = %e,
                        "cannot start the managed component");
                    self.exits.fetch_add(1, Ordering::Relaxed);
                }
            }
            let now = Instant::now();
            exits.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
            exits.push(now);
            let delay = restart_delay(exits.len());
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                exits_last_minute = exits.len(),
                "restarting the managed component"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.cancelled() => break,
            }
            *self
                .restarts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(self.name.clone())
                .or_default() += 1;
        }
        remove_socket(&self.socket);
    }

    // The one unsafe call: `pre_exec`, to ask the kernel for SIGTERM when plugd dies.
    #[allow(unsafe_code)]
    fn spawn(&self) -> std::io::Result<Child> {
        let folder = self.settings.sockets_folder.display().to_string();
        let mut cmd = Command::new(&self.plan.program);
        cmd.args(&self.plan.args)
            .env("DAPR_COMPONENTS_SOCKETS_FOLDER", &folder)
            .env("DAPR_COMPONENT_SOCKETS_FOLDER", &folder)
            .env("PLUGD_SOCKET_NAME", &self.name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches only the child's own state.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let relay = Relay {
            name: Arc::from(self.name.as_str()),
            json_children: self.plan.reference,
            json_plugd: self.settings.log_as_json,
        };
        if let Some(out) = child.stdout.take() {
            tokio::spawn(relay.clone().forward(out, "stdout"));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(relay.forward(err, "stderr"));
        }
        Ok(child)
    }

    /// SIGTERM to the child's whole process group (a wrapper's own children too), SIGKILL to
    /// what is left of it after the grace period.
    async fn terminate(&self, child: &mut Child) {
        let deadline = tokio::time::Instant::now() + self.settings.grace;
        if let Some(pid) = child.id() {
            signal_group(pid, libc::SIGTERM);
            if tokio::time::timeout_at(deadline, child.wait())
                .await
                .is_ok()
            {
                // The child is gone; members of its group (a wrapper's children) may still be
                // stopping.
                while group_alive(pid) && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                if !group_alive(pid) {
                    tracing::info!("managed component stopped");
                    return;
                }
            }
            tracing::warn!(grace = ?self.settings.grace,
                "managed component did not stop after SIGTERM; killing it");
            signal_group(pid, libc::SIGKILL);
        }
        if let Err(e) = child.kill().await {
            tracing::debug!(error = %e, "cannot kill the managed component");
        }
    }
}

/// Sends `signal` to the process group led by our child `pid` (children run with
/// `process_group(0)`, so the group id is the child's pid). A group id stays reserved while any
/// member lives, so this cannot reach an unrelated process.
#[allow(unsafe_code)]
fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid signals that process group; no memory is touched.
    unsafe {
        libc::kill(-pid, signal);
    }
}

/// Whether any process of the group led by `pid` is still there.
#[allow(unsafe_code)]
fn group_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the group exists.
    unsafe { libc::kill(-pid, 0) == 0 }
}

fn restart_delay(exits_in_window: usize) -> Duration {
    let doublings = exits_in_window.saturating_sub(1).min(16) as u32;
    let base = FIRST_RESTART
        .saturating_mul(1 << doublings)
        .min(MAX_RESTART);
    // ±20 % jitter, so components that crash together do not restart in lockstep.
    let factor = 0.8 + rand::random::<f64>() * 0.4;
    base.mul_f64(factor)
}

fn remove_socket(socket: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket())
        && !is_live(socket)
    {
        match std::fs::remove_file(socket) {
            Ok(()) => tracing::debug!(socket = %socket.display(), "removed the socket file"),
            Err(e) => {
                tracing::warn!(socket = %socket.display(), error = %e, "cannot remove the socket file")
            }
        }
    }
}

/// Turns a child's output lines into plugd log lines.
#[derive(Clone)]
struct Relay {
    name: Arc<str>,
    json_children: bool,
    json_plugd: bool,
}

impl Relay {
    async fn forward<R: tokio::io::AsyncRead + Unpin>(self, out: R, stream: &'static str) {
        let mut lines = FramedRead::new(out, LinesCodec::new_with_max_length(MAX_LINE));
        while let Some(line) = lines.next().await {
            match line {
                Ok(line) => self.emit(&line, stream),
                Err(tokio_util::codec::LinesCodecError::MaxLineLengthExceeded) => self.emit(
                    &format!("(a line longer than {MAX_LINE} bytes was cut)"),
                    stream,
                ),
                Err(tokio_util::codec::LinesCodecError::Io(_)) => break,
            }
        }
    }

    fn emit(&self, line: &str, stream: &'static str) {
        let line = line.trim_end();
        if line.is_empty() {
            return;
        }
        let (level, message) = match self.json_children.then(|| parse_json_line(line)).flatten() {
            Some(parsed) => parsed,
            None => (tracing::Level::INFO, line.to_string()),
        };
        let component = &*self.name;
        macro_rules! at {
            ($lvl:ident) => {
                if self.json_plugd {
                    tracing::$lvl!(target: "component", component, stream, "{message}")
                } else {
                    tracing::$lvl!(target: "component", component, stream, "[{component}] {message}")
                }
            };
        }
        match level {
            tracing::Level::ERROR => at!(error),
            tracing::Level::WARN => at!(warn),
            tracing::Level::DEBUG => at!(debug),
            tracing::Level::TRACE => at!(trace),
            _ => at!(info),
        }
    }
}

/// Level and text of a `tracing-subscriber` JSON line: the message, then the other fields.
fn parse_json_line(line: &str) -> Option<(tracing::Level, String)> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let obj = value.as_object()?;
    let level = obj
        .get("level")
        .and_then(|l| l.as_str())
        .and_then(|l| l.parse().ok())
        .unwrap_or(tracing::Level::INFO);
    let fields = obj.get("fields").and_then(|f| f.as_object());
    let message = fields
        .and_then(|f| f.get("message"))
        .or_else(|| obj.get("message"))
        .and_then(|m| m.as_str())
        .unwrap_or("");
    let mut text = message.to_string();
    for (k, v) in fields.into_iter().flatten() {
        if k != "message" {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            text.push_str(&format!(" {k}={v}"));
        }
    }
    Some((level, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dapr_type_names_map_to_reference_programs() {
        assert_eq!(builtin("redis").map(|b| b.0), Some("plugd-redis"));
        assert_eq!(builtin("local.file").map(|b| b.0), Some("plugd-files"));
        assert_eq!(builtin("localstorage").map(|b| b.0), Some("plugd-files"));
        assert_eq!(builtin("local.env").map(|b| b.0), Some("plugd-env"));
        assert_eq!(builtin("in-memory").map(|b| b.0), Some("plugd-memory"));
        assert!(builtin("kafka").is_none());
        assert!(!builtin("cron").is_some_and(|(_, c)| c.contains(&Category::State)));
    }

    #[test]
    fn commands_are_split_like_a_shell_without_one() {
        let (name, words) =
            parse_command("MyStore=python3 'my store.py' --flag \"a b\"").expect("valid");
        assert_eq!(name, "mystore");
        assert_eq!(words, ["python3", "my store.py", "--flag", "a b"]);
        assert!(parse_command("no-equals").is_err());
        assert!(parse_command("x=").is_err());
        assert!(parse_command("=cmd").is_err());
        assert!(parse_command("a/b=cmd").is_err());
        assert!(parse_command("x=python3 'unbalanced").is_err());
    }

    #[test]
    fn restart_delay_grows_and_is_bounded() {
        let first = restart_delay(1);
        assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(120));
        let fourth = restart_delay(4);
        assert!(fourth >= Duration::from_millis(640) && fourth <= Duration::from_millis(960));
        assert!(restart_delay(1000) <= MAX_RESTART.mul_f64(1.2));
    }

    #[test]
    fn json_lines_keep_their_level_and_fields() {
        let (level, text) = parse_json_line(
            r#"{"timestamp":"t","level":"WARN","fields":{"message":"slow","ms":12},"target":"x"}"#,
        )
        .expect("json");
        assert_eq!(level, tracing::Level::WARN);
        assert_eq!(text, "slow ms=12");
        assert!(parse_json_line("plain text").is_none());
    }
}
