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
/// How often sockets that Components need and plugd does not serve are probed.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

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
    /// How often the process exited (or could not be started); also identifies this supervisor.
    exits: Arc<AtomicU64>,
}

/// What a Component needs from the managed processes.
#[derive(Debug, Clone)]
struct Want {
    socket_name: String,
    category: Category,
    component: String,
}

/// State shared by [`Managed`] and its supervisors.
#[derive(Default)]
struct Shared {
    running: Mutex<HashMap<String, Running>>,
    /// Socket names whose supervisor was told to stop and has not finished yet.
    stopping: Mutex<HashMap<String, usize>>,
    /// Socket names already reported as served by someone else (reported once).
    foreign: Mutex<BTreeSet<String>>,
    /// Socket names whose program was not found (reported once).
    missing: Mutex<BTreeSet<String>>,
    /// The Components last reconciled against.
    wanted: Mutex<Vec<Want>>,
    restarts: Mutex<BTreeMap<String, u64>>,
    /// Set when a supervisor finishes or lets go of its socket: worth reconciling again.
    recheck: tokio::sync::Notify,
    closed: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The processes plugd has started, by socket name.
pub struct Managed {
    settings: Settings,
    shared: Arc<Shared>,
    tasks: TaskTracker,
}

impl Managed {
    pub fn new(settings: Settings) -> Arc<Self> {
        if !settings.enabled && !settings.commands.is_empty() {
            tracing::warn!(names = ?settings.commands.keys().collect::<Vec<_>>(),
                "--managed-component is ignored: --managed-components=false");
        }
        Arc::new(Self {
            settings,
            shared: Arc::default(),
            tasks: TaskTracker::new(),
        })
    }

    /// Starts a process for every socket name the components need that nothing serves yet and
    /// plugd knows a program for; stops the processes no component needs any more. Returns the
    /// socket names started now. The components are remembered for [`Managed::recheck`].
    pub async fn reconcile(&self, components: &[ComponentManifest]) -> Vec<String> {
        *lock(&self.shared.wanted) = components
            .iter()
            .map(|c| Want {
                socket_name: c.socket_name.to_ascii_lowercase(),
                category: c.category,
                component: c.name.clone(),
            })
            .collect();
        self.recheck().await
    }

    /// Reconciles again against the last components: a socket that went away (its foreign
    /// process stopped, or an old process of ours finished stopping) gets a process of ours.
    pub async fn recheck(&self) -> Vec<String> {
        if !self.settings.enabled || self.shared.closed.load(Ordering::SeqCst) {
            return Vec::new();
        }
        let wanted = lock(&self.shared.wanted).clone();
        let mut needed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for w in wanted {
            let user = self.settings.commands.contains_key(&w.socket_name);
            let known = builtin(&w.socket_name).is_some_and(|(_, cats)| cats.contains(&w.category));
            if user || known {
                needed.entry(w.socket_name).or_default().insert(w.component);
            }
        }
        let candidates: Vec<String> = {
            let mut running = lock(&self.shared.running);
            let mut stopping = lock(&self.shared.stopping);
            running.retain(|name, r| {
                let keep = needed.contains_key(name);
                if !keep {
                    tracing::info!(component = %name, "no Component uses this managed component any more; stopping it");
                    r.stop.cancel();
                    *stopping.entry(name.clone()).or_default() += 1;
                }
                keep
            });
            needed
                .keys()
                .filter(|n| !running.contains_key(*n) && !stopping.contains_key(*n))
                .cloned()
                .collect()
        };
        let mut started = Vec::new();
        for name in candidates {
            let socket = self.socket_path(&name);
            // Probed without holding a lock: a stuck listener must not stall plugd.
            if is_live(&socket).await {
                if lock(&self.shared.foreign).insert(name.clone()) {
                    tracing::info!(component = %name, socket = %socket.display(),
                        "socket is served by a process plugd did not start; not launching one");
                }
                continue;
            }
            let Some(plan) = self.plan(&name) else {
                continue;
            };
            let mut running = lock(&self.shared.running);
            if running.contains_key(&name) || self.shared.closed.load(Ordering::SeqCst) {
                continue;
            }
            lock(&self.shared.foreign).remove(&name);
            tracing::info!(component = %name, program = %plan.program.display(),
                used_by = ?needed.get(&name), "launching managed component");
            let stop = CancellationToken::new();
            let exits = Arc::new(AtomicU64::new(0));
            let supervisor = Supervisor {
                exits: exits.clone(),
                name: name.clone(),
                plan: plan.clone(),
                socket,
                settings: self.settings.clone(),
                shared: self.shared.clone(),
                stop: stop.clone(),
            };
            self.tasks.spawn(supervisor.run());
            running.insert(name.clone(), Running { stop, plan, exits });
            started.push(name);
        }
        started
    }

    /// Reconciles again whenever the socket folder changes, a supervisor lets go, or every second,
    /// until `stop`.
    pub fn watch(
        self: &Arc<Self>,
        mut sockets: tokio::sync::watch::Receiver<Arc<crate::discovery::Discovery>>,
        stop: CancellationToken,
    ) {
        if !self.settings.enabled {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            // A process killed with SIGKILL leaves its socket file: no folder event tells, so
            // the sockets plugd does not serve itself are also probed every second.
            let mut tick = tokio::time::interval(RECHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    changed = sockets.changed() => if changed.is_err() { break },
                    _ = this.shared.recheck.notified() => {}
                    _ = tick.tick() => {}
                }
                this.recheck().await;
            }
        });
    }

    /// Waits (bounded, and not past `stop`) until every started process's socket accepts
    /// connections; a process that exits before it listens is not waited for (its Components
    /// wait for it, as for any socket).
    pub async fn ready(&self, names: &[String], within: Duration, stop: &CancellationToken) {
        let deadline = tokio::time::Instant::now() + within;
        for name in names {
            let socket = self.socket_path(name);
            let exits = lock(&self.shared.running)
                .get(name)
                .map(|r| r.exits.clone());
            while !is_live(&socket).await {
                if exits
                    .as_ref()
                    .is_some_and(|e| e.load(Ordering::Relaxed) > 0)
                {
                    tracing::warn!(component = %name,
                        "managed component exited before it listened; not waiting for it");
                    break;
                }
                if tokio::time::Instant::now() >= deadline || stop.is_cancelled() {
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
        let mut out: Vec<_> = lock(&self.shared.running)
            .iter()
            .map(|(n, r)| (n.clone(), r.plan.program.clone()))
            .collect();
        out.sort();
        out
    }

    /// How many times each managed component was restarted after exiting by itself.
    pub fn restarts(&self) -> BTreeMap<String, u64> {
        lock(&self.shared.restarts).clone()
    }

    /// Stops every process (SIGTERM to its group, SIGKILL after the grace period) and removes its
    /// socket; launches nothing afterwards. Calling it again does nothing more.
    pub async fn shutdown(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        for (_, r) in lock(&self.shared.running).drain() {
            r.stop.cancel();
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
            if lock(&self.shared.missing).insert(name.to_string()) {
                tracing::warn!(component = %name, binary, searched = ?dirs,
                    "no managed component: the program was not found; start the component \
                     yourself or put the binary next to plugd");
            }
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

/// Whether something listens on the socket. Never blocks: a listener whose queue is full, or
/// that does not answer within 200 ms, counts as there.
async fn is_live(socket: &Path) -> bool {
    match tokio::time::timeout(
        Duration::from_millis(200),
        tokio::net::UnixStream::connect(socket),
    )
    .await
    {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::WouldBlock,
        Err(_) => true,
    }
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
    shared: Arc<Shared>,
    stop: CancellationToken,
    exits: Arc<AtomicU64>,
}

/// Output lines kept per process, shown with its exit when component output is not logged.
const TAIL_LINES: usize = 20;

impl Supervisor {
    async fn run(self) {
        let socket = self
            .settings
            .sockets_folder
            .join(format!("{}.sock", self.name));
        let span =
            tracing::info_span!("managed", component = %self.name, socket = %socket.display());
        let _ = tracing::Instrument::instrument(self.supervise(), span).await;
    }

    async fn supervise(&self) {
        let mut exits: Vec<Instant> = Vec::new();
        let mut first = true;
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            // Someone else took the socket while we were down: let go instead of crash-looping
            // on a socket in use.
            if !first && is_live(&self.socket).await {
                tracing::warn!(socket = %self.socket.display(),
                    "the socket is served by another process now; plugd stops managing it");
                self.release();
                return;
            }
            first = false;
            let tail = Arc::new(Mutex::new(std::collections::VecDeque::new()));
            match self.spawn(&tail) {
                Ok((mut child, relays)) => {
                    let pid = child.id();
                    tracing::info!(pid, "managed component started");
                    tokio::select! {
                        status = child.wait() => {
                            // Its last lines, before reporting the exit.
                            let _ = tokio::time::timeout(Duration::from_secs(1), relays).await;
                            let shown = tracing::enabled!(target: "component", tracing::Level::INFO);
                            let last = if shown {
                                String::new()
                            } else {
                                lock(&tail).iter().cloned().collect::<Vec<_>>().join("\n")
                            };
                            match status {
                                Ok(s) if last.is_empty() => tracing::warn!(status = %s, "managed component exited"),
                                Ok(s) => tracing::warn!(status = %s, "managed component exited; its last output:\n{last}"),
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
                            let _ = tokio::time::timeout(Duration::from_secs(1), relays).await;
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
            *lock(&self.shared.restarts)
                .entry(self.name.clone())
                .or_default() += 1;
        }
        remove_socket(&self.socket).await;
        // A stopped supervisor: its socket name may be wanted again.
        {
            let mut stopping = lock(&self.shared.stopping);
            if let Some(n) = stopping.get_mut(&self.name) {
                *n -= 1;
                if *n == 0 {
                    stopping.remove(&self.name);
                }
            }
        }
        self.shared.recheck.notify_one();
    }

    /// Forgets this supervisor's socket name (only if it is still ours).
    fn release(&self) {
        let mut running = lock(&self.shared.running);
        if running
            .get(&self.name)
            .is_some_and(|r| Arc::ptr_eq(&r.exits, &self.exits))
        {
            running.remove(&self.name);
        }
        lock(&self.shared.foreign).insert(self.name.clone());
    }

    // The one unsafe call: `pre_exec`, to ask the kernel for SIGTERM when plugd dies.
    #[allow(unsafe_code)]
    fn spawn(
        &self,
        tail: &Arc<Mutex<std::collections::VecDeque<String>>>,
    ) -> std::io::Result<(Child, impl std::future::Future<Output = ()> + use<>)> {
        let folder = self.settings.sockets_folder.display().to_string();
        let mut cmd = Command::new(&self.plan.program);
        cmd.args(&self.plan.args)
            .env("DAPR_COMPONENTS_SOCKETS_FOLDER", &folder)
            .env("DAPR_COMPONENT_SOCKETS_FOLDER", &folder)
            .env("PLUGD_SOCKET_NAME", &self.name)
            // The API tokens open plugd's API and the app: not for component code.
            .env_remove("DAPR_API_TOKEN")
            .env_remove("APP_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        // SAFETY: prctl and getppid are async-signal-safe and touch only the child's own state.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // plugd died between fork and prctl: the signal will never come.
                if libc::getppid() == 1 {
                    return Err(std::io::Error::other("plugd exited"));
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let relay = Relay {
            name: Arc::from(self.name.as_str()),
            json_children: self.plan.reference,
            json_plugd: self.settings.log_as_json,
            tail: tail.clone(),
        };
        let out = child.stdout.take().map(|o| {
            tokio::spawn(tracing::Instrument::in_current_span(
                relay.clone().forward(o, "stdout"),
            ))
        });
        let err = child.stderr.take().map(|e| {
            tokio::spawn(tracing::Instrument::in_current_span(
                relay.forward(e, "stderr"),
            ))
        });
        let relays = async move {
            for handle in [out, err].into_iter().flatten() {
                let _ = handle.await;
            }
        };
        Ok((child, relays))
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

async fn remove_socket(socket: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket())
        && !is_live(socket).await
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
    /// The last lines, for the exit report.
    tail: Arc<Mutex<std::collections::VecDeque<String>>>,
}

impl Relay {
    async fn forward<R: tokio::io::AsyncRead + Unpin>(self, out: R, stream: &'static str) {
        let mut lines = FramedRead::new(out, CutLines(LinesCodec::new_with_max_length(MAX_LINE)));
        while let Some(Ok(line)) = lines.next().await {
            match line {
                Line::Whole(line) => self.emit(&line, stream),
                Line::Cut => self.emit(
                    &format!("(a line longer than {MAX_LINE} bytes was cut)"),
                    stream,
                ),
            }
        }
    }

    fn emit(&self, line: &str, stream: &'static str) {
        let line = strip_ansi(line.trim_end());
        if line.is_empty() {
            return;
        }
        let (level, message) = match self.json_children.then(|| parse_json_line(&line)).flatten() {
            Some(parsed) => parsed,
            None => (tracing::Level::INFO, line),
        };
        {
            let mut tail = lock(&self.tail);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(message.clone());
        }
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

/// One line of a child's output, or the mark of an overlong line whose rest is skipped.
enum Line {
    Whole(String),
    Cut,
}

/// `LinesCodec` with an overlong line as an item rather than an error: after a decoder error
/// `FramedRead` pauses and then waits for new input before decoding what it already holds, so
/// the lines right after a long one would stay unread until the child wrote again.
struct CutLines(LinesCodec);

impl tokio_util::codec::Decoder for CutLines {
    type Item = Line;
    type Error = tokio_util::codec::LinesCodecError;

    fn decode(&mut self, buf: &mut bytes::BytesMut) -> Result<Option<Line>, Self::Error> {
        match self.0.decode(buf) {
            Ok(line) => Ok(line.map(Line::Whole)),
            Err(tokio_util::codec::LinesCodecError::MaxLineLengthExceeded) => Ok(Some(Line::Cut)),
            Err(e) => Err(e),
        }
    }

    fn decode_eof(&mut self, buf: &mut bytes::BytesMut) -> Result<Option<Line>, Self::Error> {
        match self.0.decode_eof(buf) {
            Ok(line) => Ok(line.map(Line::Whole)),
            Err(tokio_util::codec::LinesCodecError::MaxLineLengthExceeded) => Ok(Some(Line::Cut)),
            Err(e) => Err(e),
        }
    }
}

/// Removes terminal escape sequences (`ESC [ ... final`), which programs print for colours.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates, up to the final byte (@ to ~).
                for f in chars.by_ref() {
                    if ('@'..='~').contains(&f) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Level and text of a JSON log line — `tracing-subscriber`'s (`level`, `fields.message`) or
/// Dapr's schema (`level` `warning`/`fatal`, `msg`): the message, then the other fields.
fn parse_json_line(line: &str) -> Option<(tracing::Level, String)> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let obj = value.as_object()?;
    let level = obj
        .get("level")
        .and_then(|l| l.as_str())
        .and_then(|l| match l.to_ascii_lowercase().as_str() {
            "warning" => Some(tracing::Level::WARN),
            "fatal" | "panic" => Some(tracing::Level::ERROR),
            other => other.parse().ok(),
        })
        .unwrap_or(tracing::Level::INFO);
    let fields = obj.get("fields").and_then(|f| f.as_object());
    let message = fields
        .and_then(|f| f.get("message"))
        .or_else(|| obj.get("message"))
        .or_else(|| obj.get("msg"))
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

    #[tokio::test]
    async fn a_listener_that_never_accepts_is_live_and_never_blocks_the_probe() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stuck.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        // Far more probes than the accept queue holds: once it is full, connecting would block.
        let probes = async {
            for _ in 0..400 {
                assert!(is_live(&path).await);
            }
        };
        tokio::time::timeout(Duration::from_secs(20), probes)
            .await
            .expect("the probes never block");
        assert!(!is_live(&dir.path().join("absent.sock")).await);
    }

    #[test]
    fn colours_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m ready"),
            "2026  INFO ready"
        );
        assert_eq!(strip_ansi("plain"), "plain");
        assert_eq!(strip_ansi("cut \u{1b}[31"), "cut ");
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
        let (level, text) = parse_json_line(
            r#"{"time":"t","level":"warning","type":"log","msg":"slow","scope":"x"}"#,
        )
        .expect("dapr json");
        assert_eq!((level, text.as_str()), (tracing::Level::WARN, "slow"));
    }
}
