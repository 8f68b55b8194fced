//! The deployment files in `deploy/` agree with plugd itself: the Kubernetes manifests use flags
//! plugd's CLI accepts, probe the health endpoints on the port plugd listens on, share the socket
//! folder between plugd and every component container, hold Component YAML that plugd's own
//! validator accepts for the Deployment's app id, run component binaries that serve the sockets
//! the Components name, and run binaries the Dockerfiles build.
//!
//! Every check reports the file and field it found wrong; the `*_is_caught` tests break one thing
//! each in a copy of the files and show the check notices.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use clap::{CommandFactory, FromArgMatches, parser::ValueSource};
use plugd::{
    cli::Args,
    config::{
        Config,
        manifest::{self, Category, ComponentManifest, MetadataValue},
        sockets_folder_from_env,
    },
};
use serde_yaml::Value;

/// Image repositories built by the Dockerfiles in `deploy/`.
const PLUGD_IMAGE: (&str, &str) = ("plugd", "Dockerfile.plugd");
const COMPONENTS_IMAGE: (&str, &str) = ("plugd-components", "Dockerfile.components");

/// The `ComponentServer` builder calls of the component SDK and what each serves.
const SERVER_CALLS: [(&str, Category); 5] = [
    (".state_store(", Category::State),
    (".pubsub(", Category::PubSub),
    (".secret_store(", Category::SecretStores),
    (".input_binding(", Category::Bindings),
    (".output_binding(", Category::Bindings),
];

/// Flags every reference component binary takes (`true`: takes a value).
const COMPONENT_FLAGS: [(&str, bool); 5] = [
    ("--socket-name", true),
    ("--socket-folder", true),
    ("--shutdown-grace", true),
    ("--log-level", true),
    ("--log-as-json", false),
];

const READY_PATH: &str = "/v1.0/healthz";
const OUTBOUND_PATH: &str = "/v1.0/healthz/outbound";

// ---------------------------------------------------------------------------------------------
// Loading

#[derive(Clone)]
struct Doc {
    /// e.g. `deploy/k8s/app.yaml`
    file: String,
    value: Value,
}

#[derive(Clone)]
struct Deploy {
    docs: Vec<Doc>,
    /// Every `*.yaml` file of deploy/k8s, by relative name.
    files: BTreeSet<String>,
    /// Dockerfile name (`Dockerfile.plugd`) → text.
    dockerfiles: BTreeMap<String, String>,
    /// Workspace package → its binaries.
    packages: BTreeMap<String, BTreeSet<String>>,
    /// Binary of a workspace package → the categories its sources register with the SDK's
    /// `ComponentServer` (read from the sources, so a component gaining a kind is seen).
    serves: BTreeMap<String, BTreeSet<Category>>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

impl Deploy {
    fn load() -> Self {
        let k8s = root().join("deploy/k8s");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&k8s)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", k8s.display()))
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        paths.sort();
        let mut docs = Vec::new();
        let mut files = BTreeSet::new();
        for path in paths {
            let name = path.file_name().expect("file name").to_string_lossy();
            let file = format!("deploy/k8s/{name}");
            files.insert(name.to_string());
            for (i, de) in serde_yaml::Deserializer::from_str(&read(&path)).enumerate() {
                let value: Value = serde::Deserialize::deserialize(de)
                    .unwrap_or_else(|e| panic!("{file}: document {}: invalid YAML: {e}", i + 1));
                if !value.is_null() {
                    docs.push(Doc {
                        file: file.clone(),
                        value,
                    });
                }
            }
        }
        let dockerfiles = [PLUGD_IMAGE.1, COMPONENTS_IMAGE.1]
            .into_iter()
            .map(|f| (f.to_string(), read(&root().join("deploy").join(f))))
            .collect();
        let (packages, serves) = workspace_packages();
        Self {
            docs,
            files,
            dockerfiles,
            packages,
            serves,
        }
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Doc> + 'a {
        self.docs
            .iter()
            .filter(move |d| s(&d.value, "kind") == kind)
    }

    fn named(&self, kind: &str, name: &str) -> Option<&Doc> {
        self.docs
            .iter()
            .find(|d| s(&d.value, "kind") == kind && name_of(&d.value) == name)
    }
}

/// Package names and binaries of the workspace members (a plain reading of their Cargo.toml), and
/// what each binary serves.
fn workspace_packages() -> (
    BTreeMap<String, BTreeSet<String>>,
    BTreeMap<String, BTreeSet<Category>>,
) {
    let text = read(&root().join("Cargo.toml"));
    let members_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("workspace members in Cargo.toml");
    let mut packages = BTreeMap::new();
    let mut serves = BTreeMap::new();
    for member in members_line.split('"').skip(1).step_by(2) {
        let dir = root().join(member);
        let toml = read(&dir.join("Cargo.toml"));
        let (mut section, mut package, mut bins) = (String::new(), None, BTreeSet::new());
        for line in toml.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.to_string();
            } else if let Some(v) = line.strip_prefix("name = ") {
                let v = v.trim_matches('"').to_string();
                match section.as_str() {
                    "[package]" => package = Some(v),
                    "[[bin]]" => {
                        bins.insert(v);
                    }
                    _ => {}
                }
            }
        }
        let package = package.unwrap_or_else(|| panic!("{member}/Cargo.toml: no package name"));
        if dir.join("src/main.rs").exists() && bins.is_empty() {
            bins.insert(package.clone());
        }
        let mut categories = BTreeSet::new();
        for entry in std::fs::read_dir(dir.join("src"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.path().extension().is_some_and(|e| e == "rs") {
                let text = read(&entry.path());
                for (call, category) in SERVER_CALLS {
                    if text.contains(call) {
                        categories.insert(category);
                    }
                }
            }
        }
        for bin in &bins {
            serves.insert(bin.clone(), categories.clone());
        }
        packages.insert(package, bins);
    }
    (packages, serves)
}

// ---------------------------------------------------------------------------------------------
// YAML helpers

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn name_of(v: &Value) -> &str {
    v.get("metadata").map(|m| s(m, "name")).unwrap_or_default()
}

fn seq<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    seq(v, key).iter().map(manifest::scalar_to_string).collect()
}

/// A container's `env`: literal values, and `None` for `valueFrom`.
fn env_of(c: &Value) -> BTreeMap<String, Option<String>> {
    seq(c, "env")
        .iter()
        .map(|e| {
            let value = e.get("value").map(manifest::scalar_to_string);
            (s(e, "name").to_string(), value)
        })
        .collect()
}

fn env_entry<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    seq(c, "env").iter().find(|e| s(e, "name") == name)
}

/// `repository` (last path segment, without tag or digest) and tag of an image reference.
fn image_repo(image: &str) -> (&str, Option<&str>) {
    let image = image.split('@').next().unwrap_or_default();
    let last = image.rsplit('/').next().unwrap_or_default();
    match last.split_once(':') {
        Some((repo, tag)) => (repo, Some(tag)),
        None => (last, None),
    }
}

fn mount_path<'a>(c: &'a Value, volume: &str) -> Option<&'a str> {
    seq(c, "volumeMounts")
        .iter()
        .find(|m| s(m, "name") == volume)
        .map(|m| s(m, "mountPath"))
}

fn volume<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    seq(pod, "volumes").iter().find(|v| s(v, "name") == name)
}

/// A probe's or port reference's number (a named port is looked up in the container).
fn port_number(c: &Value, port: &Value) -> Option<u16> {
    match port {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(name) => seq(c, "ports")
            .iter()
            .find(|p| s(p, "name") == name)
            .and_then(|p| p.get("containerPort"))
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Checking

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, at: &str, message: impl std::fmt::Display) {
        self.0.push(format!("{at}: {message}"));
    }
}

/// plugd's settings as the container runs it.
struct PlugdSettings {
    app_id: String,
    http_port: u16,
    grpc_port: u16,
    app_port: Option<u16>,
    sockets_folder: PathBuf,
    resources_paths: Vec<PathBuf>,
}

/// A component container: the binary it runs and where it listens.
struct ComponentContainer<'a> {
    name: String,
    binary: String,
    socket_name: String,
    value: &'a Value,
}

fn check(d: &Deploy) -> Vec<String> {
    let mut p = Problems::default();
    check_kustomization(d, &mut p);
    check_dockerfiles(d, &mut p);
    let mut sidecars = 0;
    for doc in d.of_kind("Deployment") {
        let at = format!("{}: Deployment {}", doc.file, name_of(&doc.value));
        let Some(pod) = doc
            .value
            .get("spec")
            .and_then(|s| s.get("template"))
            .and_then(|t| t.get("spec"))
        else {
            p.add(&at, "no spec.template.spec");
            continue;
        };
        check_pod_basics(&at, pod, &mut p);
        let containers = seq(pod, "containers");
        let plugd: Vec<&Value> = containers
            .iter()
            .filter(|c| image_repo(s(c, "image")).0 == PLUGD_IMAGE.0)
            .collect();
        match plugd.as_slice() {
            [] => {}
            [one] => {
                sidecars += 1;
                check_sidecar_pod(d, &at, pod, one, &mut p);
            }
            _ => p.add(&at, "more than one plugd container in the Pod"),
        }
    }
    if sidecars == 0 {
        p.add("deploy/k8s", "no Deployment runs a plugd container");
    }
    p.0
}

/// kustomization.yaml lists every other manifest.
fn check_kustomization(d: &Deploy, p: &mut Problems) {
    for k in d.of_kind("Kustomization") {
        let listed: BTreeSet<String> = strings(&k.value, "resources").into_iter().collect();
        let own = Path::new(&k.file)
            .file_name()
            .map(|f| f.to_string_lossy().to_string());
        let expected: BTreeSet<String> = d
            .files
            .iter()
            .filter(|f| Some(*f) != own.as_ref())
            .cloned()
            .collect();
        if listed != expected {
            p.add(
                &format!("{}: resources", k.file),
                format!("lists {listed:?}, the folder holds {expected:?}"),
            );
        }
    }
}

fn check_pod_basics(at: &str, pod: &Value, p: &mut Problems) {
    let pod_non_root = pod
        .get("securityContext")
        .and_then(|s| s.get("runAsNonRoot"))
        .and_then(Value::as_bool)
        == Some(true);
    for c in seq(pod, "containers") {
        let at = format!("{at}: container {}", s(c, "name"));
        let non_root = c
            .get("securityContext")
            .and_then(|s| s.get("runAsNonRoot"))
            .and_then(Value::as_bool);
        if !(non_root == Some(true) || pod_non_root && non_root != Some(false)) {
            p.add(
                &at,
                "securityContext.runAsNonRoot is not true (pod or container)",
            );
        }
        let resources = c.get("resources");
        for part in ["requests", "limits"] {
            if resources.and_then(|r| r.get(part)).is_none() {
                p.add(&at, format!("resources.{part} missing"));
            }
        }
    }
}

/// The value plugd sees for a flag: the command line, else the container's env (the flag's own
/// env fallback), else the flag's default.
fn effective(
    matches: &clap::ArgMatches,
    env: &BTreeMap<String, Option<String>>,
    id: &str,
) -> Option<String> {
    if matches.value_source(id) == Some(ValueSource::CommandLine) {
        let raw: Vec<String> = matches
            .get_raw(id)?
            .map(|v| v.to_string_lossy().to_string())
            .collect();
        return Some(raw.join(","));
    }
    let cmd = Args::command();
    let arg = cmd.get_arguments().find(|a| a.get_id() == id)?;
    if let Some(Some(v)) = arg.get_env().and_then(|e| env.get(&*e.to_string_lossy())) {
        return Some(v.clone());
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().to_string())
        .collect();
    (!defaults.is_empty()).then(|| defaults.join(","))
}

fn port(at: &str, what: &str, v: Option<String>, p: &mut Problems) -> u16 {
    match v.as_deref().map(str::parse::<u16>) {
        Some(Ok(n)) => n,
        _ => {
            p.add(at, format!("{what}: not a port: {v:?}"));
            0
        }
    }
}

/// Parses the plugd container's command line with plugd's own CLI and works out its settings.
fn plugd_settings(at: &str, c: &Value, p: &mut Problems) -> Option<PlugdSettings> {
    let command = strings(c, "command");
    if !(command.is_empty() || command == ["plugd"]) {
        p.add(
            at,
            format!("command {command:?}: the image's entrypoint is plugd; use args"),
        );
    }
    let argv = std::iter::once("plugd".to_string()).chain(strings(c, "args"));
    let matches = match Args::command().try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) => {
            p.add(at, format!("args are refused by plugd's CLI: {e}"));
            return None;
        }
    };
    match Args::from_arg_matches(&matches).map(Config::from_args) {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => p.add(at, format!("args: {e}")),
        Err(e) => p.add(at, format!("args: {e}")),
    }
    let env = env_of(c);
    let app_id = effective(&matches, &env, "app_id").unwrap_or_default();
    if app_id.is_empty() {
        p.add(at, "no --app-id (nor APP_ID)");
    }
    let http_port = port(
        at,
        "--dapr-http-port",
        effective(&matches, &env, "dapr_http_port"),
        p,
    );
    let grpc_port = port(
        at,
        "--dapr-grpc-port",
        effective(&matches, &env, "dapr_grpc_port"),
        p,
    );
    let app_port =
        effective(&matches, &env, "app_port").map(|v| port(at, "--app-port", Some(v), p));
    let listen = effective(&matches, &env, "listen_address").unwrap_or_default();
    let probed = ["readinessProbe", "livenessProbe", "startupProbe"]
        .iter()
        .any(|k| c.get(*k).and_then(|pr| pr.get("httpGet")).is_some());
    match listen.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() && probed => p.add(
            at,
            format!(
                "--dapr-listen-addresses is {ip}: the kubelet's httpGet probes go to the Pod IP \
                 and cannot reach it (use 0.0.0.0)"
            ),
        ),
        Ok(_) => {}
        Err(e) => p.add(at, format!("--dapr-listen-addresses {listen:?}: {e}")),
    }
    let from_env = sockets_folder_from_env(|k| env.get(k).cloned().flatten());
    let sockets_folder = if matches.value_source("sockets_folder") == Some(ValueSource::CommandLine)
    {
        let flag = PathBuf::from(effective(&matches, &env, "sockets_folder").unwrap_or_default());
        let env_set = plugd::config::SOCKETS_FOLDER_ENV
            .iter()
            .any(|k| env.contains_key(*k));
        if env_set && flag != from_env {
            p.add(
                at,
                format!(
                    "--sockets-folder {} disagrees with its env {} (plugd uses the flag)",
                    flag.display(),
                    from_env.display()
                ),
            );
        }
        flag
    } else {
        from_env
    };
    let resources_paths = effective(&matches, &env, "resources_path")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect::<Vec<_>>();
    if resources_paths.is_empty() {
        p.add(
            at,
            "no --resources-path (nor DAPR_RESOURCES_PATH): no components would load",
        );
    }
    Some(PlugdSettings {
        app_id,
        http_port,
        grpc_port,
        app_port,
        sockets_folder,
        resources_paths,
    })
}

/// The probes of the plugd container hit the health endpoints on plugd's HTTP port.
fn check_probes(at: &str, c: &Value, settings: &PlugdSettings, p: &mut Problems) {
    let path_of = |k: &str| {
        c.get(k)
            .and_then(|pr| pr.get("httpGet"))
            .map(|h| s(h, "path").to_string())
    };
    match path_of("readinessProbe") {
        Some(path) if path == READY_PATH => {}
        other => p.add(
            at,
            format!("readinessProbe.httpGet.path is {other:?}, must be {READY_PATH}"),
        ),
    }
    let outbound = ["livenessProbe", "startupProbe"]
        .iter()
        .any(|k| path_of(k).as_deref() == Some(OUTBOUND_PATH));
    if !outbound {
        p.add(
            at,
            format!("neither livenessProbe nor startupProbe is httpGet {OUTBOUND_PATH}"),
        );
    }
    if path_of("livenessProbe").as_deref() == Some(READY_PATH) {
        p.add(
            at,
            format!(
                "livenessProbe.httpGet.path is {READY_PATH}: a component not ready would restart \
                 plugd; use {OUTBOUND_PATH}"
            ),
        );
    }
    for k in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let Some(get) = c.get(k).and_then(|pr| pr.get("httpGet")) else {
            continue;
        };
        let path = s(get, "path");
        if path != READY_PATH && path != OUTBOUND_PATH {
            p.add(
                at,
                format!(
                    "{k}.httpGet.path {path:?} is not a health endpoint (others need the API token)"
                ),
            );
        }
        let port = get.get("port").and_then(|v| port_number(c, v));
        if port != Some(settings.http_port) {
            p.add(
                at,
                format!(
                    "{k}.httpGet.port is {port:?}, plugd's HTTP API is on {}",
                    settings.http_port
                ),
            );
        }
    }
    for port in seq(c, "ports") {
        let n = port.get("containerPort").and_then(|v| port_number(c, v));
        if n != Some(settings.http_port) && n != Some(settings.grpc_port) {
            p.add(
                at,
                format!(
                    "ports: containerPort {n:?} is neither plugd's HTTP ({}) nor gRPC ({}) port",
                    settings.http_port, settings.grpc_port
                ),
            );
        }
    }
}

/// Parses a reference component's flags (`--x=v` or `--x v`).
fn component_flags(args: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        let Some((_, takes_value)) = COMPONENT_FLAGS.iter().find(|(f, _)| *f == flag) else {
            return Err(format!("unknown flag {a:?}"));
        };
        let value = match (takes_value, inline) {
            (true, Some(v)) => v,
            (true, None) => it.next().cloned().ok_or(format!("{flag} needs a value"))?,
            (false, None) => "true".into(),
            (false, Some(_)) => return Err(format!("{flag} takes no value")),
        };
        out.insert(flag.to_string(), value);
    }
    Ok(out)
}

/// The component containers of the Pod, each checked to listen in plugd's socket folder, on the
/// socket volume mounted at the same path.
fn component_containers<'a>(
    at: &str,
    pod: &'a Value,
    settings: &PlugdSettings,
    socket_volume: Option<&str>,
    p: &mut Problems,
) -> Vec<ComponentContainer<'a>> {
    let mut out = Vec::new();
    for c in seq(pod, "containers") {
        if image_repo(s(c, "image")).0 != COMPONENTS_IMAGE.0 {
            continue;
        }
        let name = s(c, "name").to_string();
        let at = format!("{at}: container {name}");
        let command = strings(c, "command");
        let Some(binary) = command
            .first()
            .map(|b| b.rsplit('/').next().unwrap_or(b).to_string())
        else {
            p.add(
                &at,
                format!(
                    "no command: the {} image has no entrypoint",
                    COMPONENTS_IMAGE.0
                ),
            );
            continue;
        };
        let flags = match component_flags(&[&command[1..], &strings(c, "args")[..]].concat()) {
            Ok(f) => f,
            Err(e) => {
                p.add(&at, format!("args: {e}"));
                continue;
            }
        };
        let env = env_of(c);
        let prefix = format!("{}_", binary.to_ascii_uppercase().replace('-', "_"));
        let from_env = |suffix: &str| env.get(&format!("{prefix}{suffix}")).cloned().flatten();
        let socket_name = flags
            .get("--socket-name")
            .cloned()
            .or_else(|| from_env("SOCKET_NAME"))
            .unwrap_or_else(|| binary.trim_start_matches("plugd-").to_string())
            .to_ascii_lowercase();
        let folder = flags
            .get("--socket-folder")
            .cloned()
            .or_else(|| from_env("SOCKET_FOLDER"))
            .map(PathBuf::from)
            .unwrap_or_else(|| sockets_folder_from_env(|k| env.get(k).cloned().flatten()));
        if folder != settings.sockets_folder {
            p.add(
                &at,
                format!(
                    "listens in {} (--socket-folder / env), plugd's socket folder is {}",
                    folder.display(),
                    settings.sockets_folder.display()
                ),
            );
        }
        if let Some(volume) = socket_volume {
            match mount_path(c, volume) {
                Some(path) if Path::new(path) == settings.sockets_folder => {}
                other => p.add(
                    &at,
                    format!(
                        "volumeMounts: the socket volume {volume:?} is mounted at {other:?}, plugd \
                         has it at {}",
                        settings.sockets_folder.display()
                    ),
                ),
            }
        }
        out.push(ComponentContainer {
            name,
            binary,
            socket_name,
            value: c,
        });
    }
    out
}

fn check_sidecar_pod(d: &Deploy, at: &str, pod: &Value, plugd: &Value, p: &mut Problems) {
    let plugd_at = format!("{at}: container {}", s(plugd, "name"));
    let Some(settings) = plugd_settings(&plugd_at, plugd, p) else {
        return;
    };
    check_probes(&plugd_at, plugd, &settings, p);

    // The socket folder: an emptyDir mounted where plugd looks.
    let socket_mount = seq(plugd, "volumeMounts")
        .iter()
        .find(|m| Path::new(s(m, "mountPath")) == settings.sockets_folder);
    let socket_volume = match socket_mount {
        None => {
            p.add(
                &plugd_at,
                format!(
                    "volumeMounts: nothing is mounted at the socket folder {}",
                    settings.sockets_folder.display()
                ),
            );
            None
        }
        Some(m) => {
            let name = s(m, "name");
            match volume(pod, name) {
                Some(v) if v.get("emptyDir").is_some() => {}
                _ => p.add(
                    at,
                    format!("volumes: the socket volume {name:?} is not an emptyDir"),
                ),
            }
            Some(name)
        }
    };
    let components = component_containers(at, pod, &settings, socket_volume, p);
    if components.is_empty() {
        p.add(
            at,
            "no component container (image plugd-components) in the Pod",
        );
    }
    let mut sockets: BTreeMap<&str, &ComponentContainer> = BTreeMap::new();
    for c in &components {
        if let Some(other) = sockets.insert(&c.socket_name, c) {
            p.add(
                at,
                format!(
                    "containers {} and {} both listen on {}.sock",
                    other.name, c.name, c.socket_name
                ),
            );
        }
    }

    check_app_containers(at, pod, plugd, &components, &settings, p);

    // The Component resources: ConfigMaps mounted at the resources paths.
    let mut loaded = Vec::new();
    for path in &settings.resources_paths {
        let mount = seq(plugd, "volumeMounts")
            .iter()
            .find(|m| Path::new(s(m, "mountPath")) == path);
        let Some(cm_name) = mount
            .and_then(|m| volume(pod, s(m, "name")))
            .and_then(|v| v.get("configMap"))
            .map(|c| s(c, "name"))
        else {
            p.add(
                &plugd_at,
                format!(
                    "--resources-path {}: no ConfigMap volume is mounted there",
                    path.display()
                ),
            );
            continue;
        };
        let Some(cm) = d.named("ConfigMap", cm_name) else {
            p.add(
                at,
                format!(
                    "ConfigMap {cm_name:?} (mounted at {}) is not in deploy/k8s",
                    path.display()
                ),
            );
            continue;
        };
        loaded.extend(validate_config_map(cm, &settings.app_id, p));
    }
    if loaded.is_empty() {
        p.add(at, "no Component is loaded from the resources paths");
    }

    // Every Component's socket is served by a component container of the right kind.
    for m in &loaded {
        let at = format!(
            "{}: component {} ({})",
            m.file.display(),
            m.name,
            m.type_name()
        );
        match sockets.get(m.socket_name.as_str()) {
            None => p.add(
                &at,
                format!(
                    "spec.type: no component container listens on {}.sock (they serve {:?})",
                    m.socket_name,
                    sockets.keys().collect::<Vec<_>>()
                ),
            ),
            Some(c) => {
                let serves = d.serves.get(&c.binary).filter(|s| !s.is_empty());
                if let Some(serves) = serves
                    && !serves.contains(&m.category)
                {
                    p.add(
                        &at,
                        format!(
                            "spec.type: {}.sock is served by {} (container {}), which serves {:?}, \
                             not {:?}",
                            m.socket_name, c.binary, c.name, serves, m.category
                        ),
                    );
                }
            }
        }
        for item in &m.metadata {
            if let MetadataValue::EnvRef(var) = &item.value
                && !env_of(plugd).contains_key(var)
            {
                p.add(
                    &at,
                    format!(
                        "metadata {}: envRef {var} is not in the plugd container's env",
                        item.name
                    ),
                );
            }
        }
        let uses_secrets = m
            .metadata
            .iter()
            .any(|i| matches!(i.value, MetadataValue::SecretKeyRef { .. }));
        if uses_secrets {
            let store = m.secret_store.as_deref().unwrap_or_default();
            if !loaded
                .iter()
                .any(|s| s.name == store && s.category == Category::SecretStores)
            {
                p.add(
                    &at,
                    format!("auth.secretStore {store:?} is not a loaded secret store: secretKeyRef cannot be resolved"),
                );
            }
        }
    }
    check_secret_files(d, pod, &loaded, &sockets, p);
    check_redis_hosts(d, &loaded, p);
}

/// App containers point the SDKs at plugd and listen on --app-port.
fn check_app_containers(
    at: &str,
    pod: &Value,
    plugd: &Value,
    components: &[ComponentContainer],
    settings: &PlugdSettings,
    p: &mut Problems,
) {
    let apps: Vec<&Value> = seq(pod, "containers")
        .iter()
        .filter(|c| {
            !std::ptr::eq(*c, plugd) && !components.iter().any(|k| std::ptr::eq(k.value, *c))
        })
        .collect();
    if apps.is_empty() {
        p.add(at, "no app container beside plugd and the components");
    }
    let plugd_token = env_entry(plugd, "DAPR_API_TOKEN");
    for c in &apps {
        let at = format!("{at}: container {}", s(c, "name"));
        let env = env_of(c);
        for (var, want) in [
            ("DAPR_HTTP_PORT", settings.http_port),
            ("DAPR_GRPC_PORT", settings.grpc_port),
        ] {
            match env.get(var) {
                Some(Some(v)) if v.parse::<u16>() == Ok(want) => {}
                other => p.add(
                    &at,
                    format!(
                        "env {var} is {:?}, plugd listens on {want}",
                        other.cloned().flatten()
                    ),
                ),
            }
        }
        if let Some(token) = plugd_token
            && env_entry(c, "DAPR_API_TOKEN").map(|e| e.get("valueFrom").or(e.get("value")))
                != Some(token.get("valueFrom").or(token.get("value")))
        {
            p.add(
                &at,
                "env DAPR_API_TOKEN does not come from where plugd's does: its calls would be refused",
            );
        }
    }
    if let Some(app_port) = settings.app_port {
        let declared: Vec<u16> = apps
            .iter()
            .flat_map(|c| {
                seq(c, "ports")
                    .iter()
                    .filter_map(|pt| pt.get("containerPort").and_then(|v| port_number(c, v)))
            })
            .collect();
        if !declared.contains(&app_port) {
            p.add(
                at,
                format!("--app-port {app_port}: no app container declares that containerPort ({declared:?})"),
            );
        }
    }
}

/// Runs plugd's own validator over the Component YAMLs of a ConfigMap.
fn validate_config_map(cm: &Doc, app_id: &str, p: &mut Problems) -> Vec<ComponentManifest> {
    let mut docs = Vec::new();
    let mut parse_problems = Vec::new();
    let Some(data) = cm.value.get("data").and_then(Value::as_mapping) else {
        p.add(
            &format!("{}: ConfigMap {}", cm.file, name_of(&cm.value)),
            "no data",
        );
        return Vec::new();
    };
    for (key, text) in data {
        let key = manifest::scalar_to_string(key);
        if !(key.ends_with(".yaml") || key.ends_with(".yml")) {
            continue;
        }
        let label = PathBuf::from(format!(
            "{} (ConfigMap {}, data.{key})",
            cm.file,
            name_of(&cm.value)
        ));
        manifest::parse_documents(
            &label,
            text.as_str().unwrap_or_default(),
            &mut docs,
            &mut parse_problems,
        );
    }
    for problem in parse_problems {
        p.0.push(problem.to_string());
    }
    match manifest::validate(&docs, app_id, None) {
        Err(problems) => {
            for problem in problems.0 {
                p.0.push(problem.to_string());
            }
            Vec::new()
        }
        Ok(loaded) => {
            for (file, name, why) in loaded.skipped {
                p.add(
                    &file.display().to_string(),
                    format!("component {name} is not loaded by plugd --app-id {app_id}: {why}"),
                );
            }
            loaded.components
        }
    }
}

/// Reads the contents of `file` inside container `c` when it comes from a Secret or ConfigMap of
/// the manifests.
fn file_in_container(d: &Deploy, pod: &Value, c: &Value, file: &str) -> Result<String, String> {
    let mount = seq(c, "volumeMounts")
        .iter()
        .filter(|m| Path::new(file).starts_with(s(m, "mountPath")))
        .max_by_key(|m| s(m, "mountPath").len())
        .ok_or_else(|| format!("{file} is not on any volume mounted in the container"))?;
    let rest = Path::new(file)
        .strip_prefix(s(mount, "mountPath"))
        .map_err(|e| e.to_string())?
        .to_string_lossy()
        .to_string();
    let vol =
        volume(pod, s(mount, "name")).ok_or_else(|| format!("no volume {:?}", s(mount, "name")))?;
    let (kind, source, name) = if let Some(sec) = vol.get("secret") {
        ("Secret", sec, s(sec, "secretName"))
    } else if let Some(cm) = vol.get("configMap") {
        ("ConfigMap", cm, s(cm, "name"))
    } else {
        return Err(format!(
            "volume {:?} is neither a Secret nor a ConfigMap",
            s(mount, "name")
        ));
    };
    let items = seq(source, "items");
    let key = if items.is_empty() {
        rest.clone()
    } else {
        items
            .iter()
            .find(|i| s(i, "path") == rest)
            .map(|i| s(i, "key").to_string())
            .ok_or_else(|| format!("{kind} volume {name:?} has no item with path {rest:?}"))?
    };
    let doc = d
        .named(kind, name)
        .ok_or_else(|| format!("{kind} {name:?} is not in deploy/k8s"))?;
    if let Some(text) = doc
        .value
        .get("stringData")
        .and_then(|m| m.get(key.as_str()))
        .and_then(Value::as_str)
    {
        return Ok(text.to_string());
    }
    let data = doc
        .value
        .get("data")
        .and_then(|m| m.get(key.as_str()))
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{}: {kind} {name} has no key {key:?}", doc.file))?;
    if kind == "ConfigMap" {
        return Ok(data.to_string());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("{}: {kind} {name}: data.{key}: {e}", doc.file))?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

fn flatten(prefix: &str, sep: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}{sep}{k}")
        }
    };
    match v {
        serde_json::Value::Object(m) => m.iter().for_each(|(k, v)| flatten(&join(k), sep, v, out)),
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| flatten(&join(&i.to_string()), sep, v, out)),
        serde_json::Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn metadata_ci<'a>(m: &'a ComponentManifest, key: &str) -> Option<&'a str> {
    m.metadata.iter().find_map(|i| match &i.value {
        MetadataValue::Plain(v) if i.name.eq_ignore_ascii_case(key) => Some(v.as_str()),
        _ => None,
    })
}

/// Every secretKeyRef resolved through a `secretstores.files` store finds its value in the file
/// that store reads (a Secret of the manifests mounted in the files container).
fn check_secret_files(
    d: &Deploy,
    pod: &Value,
    loaded: &[ComponentManifest],
    sockets: &BTreeMap<&str, &ComponentContainer>,
    p: &mut Problems,
) {
    for store in loaded
        .iter()
        .filter(|m| m.category == Category::SecretStores)
    {
        let Some(c) = sockets.get(store.socket_name.as_str()) else {
            continue;
        };
        if c.binary != "plugd-files" {
            continue;
        }
        let at = format!("{}: component {}", store.file.display(), store.name);
        let Some(file) = metadata_ci(store, "secretsFile") else {
            p.add(&at, "metadata secretsFile missing");
            continue;
        };
        if !file.starts_with('/') {
            p.add(
                &at,
                format!("metadata secretsFile {file:?}: use an absolute path in a container"),
            );
            continue;
        }
        let text = match file_in_container(d, pod, c.value, file) {
            Ok(t) => t,
            Err(e) => {
                p.add(
                    &at,
                    format!("metadata secretsFile (container {}): {e}", c.name),
                );
                continue;
            }
        };
        let json: serde_json::Value = match serde_json::from_str(&text) {
            Ok(j) => j,
            Err(e) => {
                p.add(&at, format!("secretsFile {file}: not JSON: {e}"));
                continue;
            }
        };
        let multi =
            metadata_ci(store, "multiValued").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let sep = metadata_ci(store, "nestedSeparator").unwrap_or(":");
        for user in loaded
            .iter()
            .filter(|m| m.secret_store.as_deref() == Some(store.name.as_str()))
        {
            for item in &user.metadata {
                let MetadataValue::SecretKeyRef { name, key } = &item.value else {
                    continue;
                };
                let at = format!(
                    "{}: component {}: metadata {}",
                    user.file.display(),
                    user.name,
                    item.name
                );
                let key = key.clone().unwrap_or_else(|| name.clone());
                let found = if multi {
                    let mut values = BTreeMap::new();
                    if let Some(v) = json.get(name) {
                        flatten("", sep, v, &mut values);
                    }
                    values.contains_key(&key)
                } else {
                    let mut values = BTreeMap::new();
                    flatten("", sep, &json, &mut values);
                    values.contains_key(name) && key == *name
                };
                if !found {
                    p.add(
                        &at,
                        format!(
                            "secretKeyRef {{name: {name}, key: {key}}}: not in {file} as store {} \
                             reads it (multiValued {multi})",
                            store.name
                        ),
                    );
                }
            }
        }
    }
}

/// The secret value a secretKeyRef resolves to through a plugd-files store, if it can be read.
fn resolved_secret(
    d: &Deploy,
    loaded: &[ComponentManifest],
    m: &ComponentManifest,
    item: &str,
) -> Option<String> {
    let MetadataValue::SecretKeyRef { name, key } =
        &m.metadata.iter().find(|i| i.name == item)?.value
    else {
        return None;
    };
    let store = loaded
        .iter()
        .find(|s| Some(s.name.as_str()) == m.secret_store.as_deref())?;
    let file = metadata_ci(store, "secretsFile")?;
    // The Secret holding the file: the one whose key is the file's name.
    let file_name = Path::new(file).file_name()?.to_string_lossy().to_string();
    let text = d.of_kind("Secret").find_map(|s| {
        s.value
            .get("stringData")
            .and_then(|m| m.get(file_name.as_str()))
            .and_then(Value::as_str)
    })?;
    let json: serde_json::Value = serde_json::from_str(text).ok()?;
    let key = key.clone().unwrap_or_else(|| name.clone());
    json.get(name)?
        .get(&key)
        .or(json.get(&key))?
        .as_str()
        .map(str::to_string)
}

/// `redisHost` of every pubsub.redis and state.redis Component names a Service of the manifests on that port, and
/// the password plugd resolves is the one that Redis is started with.
fn check_redis_hosts(d: &Deploy, loaded: &[ComponentManifest], p: &mut Problems) {
    for m in loaded
        .iter()
        .filter(|m| matches!(m.type_name().as_str(), "pubsub.redis" | "state.redis"))
    {
        let at = format!(
            "{}: component {}: metadata redisHost",
            m.file.display(),
            m.name
        );
        let host = metadata_ci(m, "redisHost").unwrap_or("localhost:6379");
        let (name, port) = host.rsplit_once(':').unwrap_or((host, "6379"));
        let service = name.split('.').next().unwrap_or_default();
        let Some(svc) = d.named("Service", service) else {
            p.add(&at, format!("{host}: no Service {service:?} in deploy/k8s"));
            continue;
        };
        let spec = svc.value.get("spec").unwrap_or(&Value::Null);
        if !seq(spec, "ports")
            .iter()
            .any(|pt| pt.get("port").map(manifest::scalar_to_string).as_deref() == Some(port))
        {
            p.add(&at, format!("{host}: Service {service} has no port {port}"));
        }
        // The server behind the Service: `--requirepass $(VAR)` with VAR from a Secret.
        let Some(password) = resolved_secret(d, loaded, m, "redisPassword") else {
            continue;
        };
        let selector = spec.get("selector").and_then(Value::as_mapping);
        for dep in d.of_kind("Deployment") {
            let template = &dep.value["spec"]["template"];
            let labels = template["metadata"]["labels"].as_mapping();
            let selected = match (selector, labels) {
                (Some(sel), Some(labels)) => sel.iter().all(|(k, v)| labels.get(k) == Some(v)),
                _ => false,
            };
            if !selected {
                continue;
            }
            for c in seq(&template["spec"], "containers") {
                let args = strings(c, "args");
                let Some(i) = args.iter().position(|a| a == "--requirepass") else {
                    continue;
                };
                let var = args
                    .get(i + 1)
                    .and_then(|a| a.strip_prefix("$(")?.strip_suffix(')'))
                    .unwrap_or_default();
                let from = env_entry(c, var).and_then(|e| e.get("valueFrom")?.get("secretKeyRef"));
                let value = from.and_then(|r| {
                    d.named("Secret", s(r, "name"))?
                        .value
                        .get("stringData")?
                        .get(s(r, "key"))?
                        .as_str()
                        .map(str::to_string)
                });
                if value.as_deref() != Some(password.as_str()) {
                    p.add(
                        &format!(
                            "{}: Deployment {}: container {}",
                            dep.file,
                            name_of(&dep.value),
                            s(c, "name")
                        ),
                        format!(
                            "--requirepass is not the password component {} resolves for \
                             redisPassword (they must be the same Secret value)",
                            m.name
                        ),
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dockerfiles

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') && current.is_empty() {
            continue;
        }
        let (body, more) = match trimmed.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (trimmed, false),
        };
        current.push_str(body);
        current.push(' ');
        if !more {
            if !current.trim().is_empty() {
                out.push(current.trim().to_string());
            }
            current.clear();
        }
    }
    out
}

struct Build {
    packages: BTreeSet<String>,
    bins: BTreeSet<String>,
    /// Basenames of the files copied from the build stage.
    copied: BTreeSet<String>,
    entrypoint: Option<String>,
    exposed: BTreeSet<u16>,
}

fn parse_dockerfile(name: &str, text: &str, p: &mut Problems) -> Build {
    let at = format!("deploy/{name}");
    let mut b = Build {
        packages: BTreeSet::new(),
        bins: BTreeSet::new(),
        copied: BTreeSet::new(),
        entrypoint: None,
        exposed: BTreeSet::new(),
    };
    let mut builds = 0;
    for ins in instructions(text) {
        let words: Vec<&str> = ins.split_whitespace().collect();
        match words.first().map(|w| w.to_ascii_uppercase()).as_deref() {
            Some("RUN") => {
                for cmd in ins.split("&&") {
                    let w: Vec<&str> = cmd.split_whitespace().collect();
                    let Some(i) = w.windows(2).position(|p| p == ["cargo", "build"]) else {
                        continue;
                    };
                    builds += 1;
                    let w = &w[i..];
                    for need in ["--release", "--locked"] {
                        if !w.contains(&need) {
                            p.add(&at, format!("cargo build without {need}"));
                        }
                    }
                    for pair in w.windows(2) {
                        match pair[0] {
                            "-p" | "--package" => {
                                b.packages.insert(pair[1].to_string());
                            }
                            "--bin" => {
                                b.bins.insert(pair[1].to_string());
                            }
                            _ => {}
                        }
                    }
                }
            }
            Some("COPY") if words.iter().any(|w| w.starts_with("--from=")) => {
                let sources = &words[1..words.len().saturating_sub(1)];
                for src in sources.iter().filter(|w| !w.starts_with("--")) {
                    b.copied
                        .insert(src.rsplit('/').next().unwrap_or(src).to_string());
                }
            }
            Some("ENTRYPOINT") => {
                let rest = ins[words[0].len()..].trim();
                let first = serde_json::from_str::<Vec<String>>(rest)
                    .ok()
                    .and_then(|v| v.first().cloned())
                    .or_else(|| rest.split_whitespace().next().map(str::to_string));
                b.entrypoint = first.map(|f| f.rsplit('/').next().unwrap_or(&f).to_string());
            }
            Some("EXPOSE") => {
                for w in &words[1..] {
                    match w.split('/').next().unwrap_or_default().parse() {
                        Ok(n) => {
                            b.exposed.insert(n);
                        }
                        Err(_) => p.add(&at, format!("EXPOSE {w}: not a port")),
                    }
                }
            }
            _ => {}
        }
    }
    if builds == 0 {
        p.add(&at, "no `cargo build` command");
    }
    b
}

/// The binaries an image built by a Dockerfile holds: built (`-p` / `--bin`) and copied out of
/// the build stage.
fn built_binaries(d: &Deploy, b: &Build, at: &str, p: &mut Problems) -> BTreeSet<String> {
    let mut built = BTreeSet::new();
    for pkg in &b.packages {
        match d.packages.get(pkg) {
            None => p.add(at, format!("-p {pkg}: no such package in the workspace")),
            Some(bins) => {
                let selected: Vec<&String> = if b.bins.is_empty() {
                    bins.iter().collect()
                } else {
                    bins.iter().filter(|x| b.bins.contains(*x)).collect()
                };
                built.extend(selected.into_iter().cloned());
            }
        }
    }
    for bin in &b.bins {
        if !built.contains(bin) {
            p.add(
                at,
                format!(
                    "--bin {bin}: not a binary of the packages built ({:?})",
                    b.packages
                ),
            );
        }
    }
    built.retain(|bin| {
        let copied = b.copied.contains(bin);
        if !copied {
            p.add(
                at,
                format!("{bin} is built but never copied into the image (COPY --from=...)"),
            );
        }
        copied
    });
    built
}

fn check_dockerfiles(d: &Deploy, p: &mut Problems) {
    let mut images: BTreeMap<&str, (String, BTreeSet<String>, Option<String>)> = BTreeMap::new();
    for (repo, file) in [PLUGD_IMAGE, COMPONENTS_IMAGE] {
        let at = format!("deploy/{file}");
        let b = parse_dockerfile(file, &d.dockerfiles[file], p);
        let bins = built_binaries(d, &b, &at, p);
        if repo == PLUGD_IMAGE.0 {
            if !bins.contains("plugd") {
                p.add(
                    &at,
                    "does not build the plugd binary (-p plugd --bin plugd)",
                );
            }
            if b.entrypoint.as_deref() != Some("plugd") {
                p.add(
                    &at,
                    format!("ENTRYPOINT is {:?}, must be plugd", b.entrypoint),
                );
            }
            let cmd = Args::command();
            for id in ["dapr_http_port", "dapr_grpc_port"] {
                let default = cmd
                    .get_arguments()
                    .find(|a| a.get_id() == id)
                    .and_then(|a| a.get_default_values().first())
                    .and_then(|v| v.to_str()?.parse::<u16>().ok());
                if let Some(port) = default
                    && !b.exposed.contains(&port)
                {
                    p.add(
                        &at,
                        format!("EXPOSE lacks {port}, plugd's default for {id}"),
                    );
                }
            }
        }
        images.insert(repo, (at, bins, b.entrypoint));
    }
    // Each container of the manifests runs a binary its image holds.
    for doc in d.of_kind("Deployment") {
        let pod = &doc.value["spec"]["template"]["spec"];
        for c in seq(pod, "containers") {
            let (repo, tag) = image_repo(s(c, "image"));
            let Some((dockerfile, bins, entrypoint)) = images.get(repo) else {
                continue;
            };
            let at = format!(
                "{}: Deployment {}: container {}",
                doc.file,
                name_of(&doc.value),
                s(c, "name")
            );
            if tag != Some(plugd::VERSION) {
                p.add(
                    &at,
                    format!(
                        "image tag {tag:?}: the documented build tags {repo}:{}",
                        plugd::VERSION
                    ),
                );
            }
            let command = strings(c, "command");
            let runs = command
                .first()
                .map(|b| b.rsplit('/').next().unwrap_or(b).to_string())
                .or(entrypoint.clone());
            match runs {
                Some(bin) if bins.contains(&bin) => {}
                other => p.add(
                    &at,
                    format!("command runs {other:?}, which {dockerfile} does not build (it builds {bins:?})"),
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

fn assert_clean(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "deploy/ disagrees with plugd:\n  - {}",
        problems.join("\n  - ")
    );
}

#[test]
fn deploy_files_agree_with_plugd() {
    assert_clean(&check(&Deploy::load()));
}

/// Applies `edit` to a copy of the files and expects a problem containing every one of `want`.
fn expect_caught(edit: impl FnOnce(&mut Deploy), want: &[&str]) {
    let mut d = Deploy::load();
    edit(&mut d);
    let problems = check(&d);
    assert!(
        problems.iter().any(|p| want.iter().all(|w| p.contains(w))),
        "expected a problem mentioning {want:?}, got:\n  - {}",
        problems.join("\n  - ")
    );
}

fn deployment_mut<'a>(d: &'a mut Deploy, name: &str) -> &'a mut Value {
    &mut d
        .docs
        .iter_mut()
        .find(|doc| s(&doc.value, "kind") == "Deployment" && name_of(&doc.value) == name)
        .unwrap_or_else(|| panic!("no Deployment {name}"))
        .value
}

fn container_mut<'a>(d: &'a mut Deploy, name: &str) -> &'a mut Value {
    let dep = d
        .docs
        .iter_mut()
        .filter(|doc| s(&doc.value, "kind") == "Deployment")
        .flat_map(|doc| {
            doc.value["spec"]["template"]["spec"]["containers"]
                .as_sequence_mut()
                .into_iter()
                .flatten()
        })
        .find(|c| s(c, "name") == name);
    dep.unwrap_or_else(|| panic!("no container {name}"))
}

/// Replaces `from` by `to` in the args of container `name`.
fn replace_arg(d: &mut Deploy, name: &str, from: &str, to: &str) {
    let c = container_mut(d, name);
    let args = c["args"].as_sequence_mut().expect("args");
    let a = args
        .iter_mut()
        .find(|a| a.as_str() == Some(from))
        .unwrap_or_else(|| panic!("container {name} has no arg {from}"));
    *a = Value::from(to);
}

fn edit_config_map(d: &mut Deploy, key: &str, from: &str, to: &str) {
    let cm = d
        .docs
        .iter_mut()
        .find(|doc| s(&doc.value, "kind") == "ConfigMap")
        .expect("a ConfigMap");
    let text = cm.value["data"][key]
        .as_str()
        .expect("data key")
        .to_string();
    assert!(text.contains(from), "data.{key} has no {from:?}");
    cm.value["data"][key] = Value::from(text.replacen(from, to, 1));
}

#[test]
fn a_wrong_readiness_path_is_caught() {
    expect_caught(
        |d| {
            container_mut(d, "plugd")["readinessProbe"]["httpGet"]["path"] = Value::from("/healthz")
        },
        &[
            "deploy/k8s/app.yaml",
            "container plugd",
            "readinessProbe.httpGet.path",
        ],
    );
}

#[test]
fn a_liveness_probe_on_readiness_is_caught() {
    expect_caught(
        |d| container_mut(d, "plugd")["livenessProbe"]["httpGet"]["path"] = Value::from(READY_PATH),
        &["container plugd", "livenessProbe.httpGet.path"],
    );
}

#[test]
fn a_probe_on_another_port_is_caught() {
    expect_caught(
        |d| replace_arg(d, "plugd", "--dapr-http-port=3500", "--dapr-http-port=3600"),
        &["container plugd", "readinessProbe.httpGet.port", "3600"],
    );
}

#[test]
fn a_loopback_listen_address_is_caught() {
    expect_caught(
        |d| {
            replace_arg(
                d,
                "plugd",
                "--dapr-listen-addresses=0.0.0.0",
                "--log-level=info",
            )
        },
        &["container plugd", "--dapr-listen-addresses is 127.0.0.1"],
    );
}

#[test]
fn an_unknown_plugd_flag_is_caught() {
    expect_caught(
        |d| replace_arg(d, "plugd", "--log-as-json", "--no-such-flag"),
        &[
            "container plugd",
            "refused by plugd's CLI",
            "--no-such-flag",
        ],
    );
}

#[test]
fn a_socket_folder_mismatch_is_caught() {
    // plugd's flag and its env disagree.
    expect_caught(
        |d| {
            replace_arg(
                d,
                "plugd",
                "--sockets-folder=/var/run/dapr-sockets",
                "--sockets-folder=/tmp/s",
            )
        },
        &["container plugd", "--sockets-folder /tmp/s disagrees"],
    );
    // A component listening elsewhere.
    expect_caught(
        |d| {
            let c = container_mut(d, "plugd-redis");
            c["args"]
                .as_sequence_mut()
                .expect("args")
                .push(Value::from("--socket-folder=/tmp/elsewhere"));
        },
        &["container plugd-redis", "listens in /tmp/elsewhere"],
    );
    // The socket volume mounted at another path in a component container.
    expect_caught(
        |d| {
            container_mut(d, "plugd-files")["volumeMounts"][0]["mountPath"] =
                Value::from("/sockets")
        },
        &["container plugd-files", "volumeMounts", "\"/sockets\""],
    );
    // Not an emptyDir.
    expect_caught(
        |d| {
            let pod = &mut deployment_mut(d, "myapp")["spec"]["template"]["spec"];
            let v = pod["volumes"]
                .as_sequence_mut()
                .expect("volumes")
                .iter_mut()
                .find(|v| s(v, "name") == "dapr-sockets")
                .expect("socket volume");
            *v = serde_yaml::from_str("{name: dapr-sockets, hostPath: {path: /tmp/x}}")
                .expect("yaml");
        },
        &["Deployment myapp", "is not an emptyDir"],
    );
}

#[test]
fn a_component_without_a_socket_is_caught() {
    expect_caught(
        |d| edit_config_map(d, "pubsub.yaml", "type: pubsub.redis", "type: pubsub.kafka"),
        &[
            "data.pubsub.yaml",
            "component pubsub (pubsub.kafka)",
            "no component container listens on kafka.sock",
        ],
    );
    expect_caught(
        |d| {
            replace_arg(
                d,
                "plugd-redis",
                "--socket-name=redis",
                "--socket-name=streams",
            )
        },
        &["component pubsub (pubsub.redis)", "redis.sock"],
    );
}

#[test]
fn a_socket_of_the_wrong_kind_is_caught() {
    expect_caught(
        |d| edit_config_map(d, "pubsub.yaml", "type: pubsub.redis", "type: pubsub.files"),
        &["data.pubsub.yaml", "served by plugd-files", "not PubSub"],
    );
}

#[test]
fn components_plugd_refuses_are_caught() {
    expect_caught(
        |d| {
            edit_config_map(
                d,
                "pubsub.yaml",
                "version: v1",
                "version: v1\n  initTimeout: soon",
            )
        },
        &["data.pubsub.yaml", "component pubsub", "spec.initTimeout"],
    );
    // Scoped to another app id than the Deployment's.
    expect_caught(
        |d| replace_arg(d, "plugd", "--app-id=myapp", "--app-id=otherapp"),
        &["data.pubsub.yaml", "not loaded by plugd --app-id otherapp"],
    );
}

#[test]
fn a_secret_reference_without_a_value_is_caught() {
    expect_caught(
        |d| edit_config_map(d, "pubsub.yaml", "key: password", "key: passwd"),
        &[
            "component pubsub: metadata redisPassword",
            "secretKeyRef {name: redis, key: passwd}",
        ],
    );
    expect_caught(
        |d| {
            edit_config_map(
                d,
                "pubsub.yaml",
                "secretStore: secretstore",
                "secretStore: vault",
            )
        },
        &["component pubsub", "auth.secretStore \"vault\""],
    );
}

#[test]
fn a_redis_host_without_a_service_is_caught() {
    expect_caught(
        |d| edit_config_map(d, "pubsub.yaml", "redis:6379", "redis-master:6379"),
        &["metadata redisHost", "no Service \"redis-master\""],
    );
    expect_caught(
        |d| edit_config_map(d, "statestore.yaml", "redis:6379", "redis-master:6379"),
        &[
            "component statestore: metadata redisHost",
            "no Service \"redis-master\"",
        ],
    );
}

#[test]
fn app_ports_that_miss_plugd_are_caught() {
    expect_caught(
        |d| container_mut(d, "app")["env"][0]["value"] = Value::from("3501"),
        &["container app", "DAPR_HTTP_PORT", "3500"],
    );
    expect_caught(
        |d| replace_arg(d, "plugd", "--app-port=8080", "--app-port=9090"),
        &["--app-port 9090"],
    );
}

#[test]
fn a_binary_the_image_lacks_is_caught() {
    expect_caught(
        |d| {
            let text = d.dockerfiles[COMPONENTS_IMAGE.1].replace(" -p plugd-files", "");
            d.dockerfiles.insert(COMPONENTS_IMAGE.1.into(), text);
        },
        &[
            "container plugd-files",
            "\"plugd-files\"",
            "Dockerfile.components does not build",
        ],
    );
    expect_caught(
        |d| {
            let text = d.dockerfiles[COMPONENTS_IMAGE.1].replace(
                "COPY --from=build /out/plugd-redis /usr/local/bin/plugd-redis\n",
                "",
            );
            d.dockerfiles.insert(COMPONENTS_IMAGE.1.into(), text);
        },
        &[
            "deploy/Dockerfile.components",
            "plugd-redis is built but never copied",
        ],
    );
    expect_caught(
        |d| {
            let text = d.dockerfiles[PLUGD_IMAGE.1].replace("--locked ", "");
            d.dockerfiles.insert(PLUGD_IMAGE.1.into(), text);
        },
        &["deploy/Dockerfile.plugd", "without --locked"],
    );
    expect_caught(
        |d| container_mut(d, "plugd-redis")["command"][0] = Value::from("plugd-kafka"),
        &["container plugd-redis", "plugd-kafka"],
    );
}

#[test]
fn a_kustomization_missing_a_file_is_caught() {
    expect_caught(
        |d| {
            d.files.insert("extra.yaml".into());
        },
        &["deploy/k8s/kustomization.yaml: resources", "extra.yaml"],
    );
}
