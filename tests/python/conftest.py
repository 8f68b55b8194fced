"""Fixtures for the Python SDK compatibility tests.

A session fixture starts the real binaries -- `plugd-sqlite` on a Unix socket and `plugd` on
free TCP ports -- and points the official `dapr` SDK at them through DAPR_GRPC_PORT and
DAPR_HTTP_PORT. Every wait is a bounded poll; teardown is SIGTERM, a bounded wait, then kill.

Binaries are taken from $PLUGD_BIN_DIR (default <repo>/target/debug); build them first with
`cargo build --workspace --bins`. plugd's and the component's output go to log files in the
temp dir and are attached to the report of every failing test.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("PLUGD_BIN_DIR", REPO / "target" / "debug"))

APP_ID = "pysdk-compat"
STORE = "statestore"
SOCKET_NAME = "sqlite"  # -> <sockets>/sqlite.sock, served for type state.sqlite

SOCKET_WAIT_S = 20.0
HEALTH_WAIT_S = 20.0
STOP_WAIT_S = 10.0

# Environment the SDK reads at every access (dapr 1.19). Short health/call timeouts make a
# broken sidecar fail the suite quickly instead of hanging for the SDK's 60 s default.
SDK_ENV_DEFAULTS = {
    "DAPR_HEALTH_TIMEOUT": "15",
    "DAPR_API_TIMEOUT_SECONDS": "15",
}
SDK_ENV_CLEARED = (
    "DAPR_GRPC_ENDPOINT",
    "DAPR_HTTP_ENDPOINT",
    "DAPR_API_TOKEN",
    "DAPR_RUNTIME_HOST",
    "DAPR_API_MAX_RETRIES",
)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"<cannot read {self.log_path}: {e}>"

    def stop(self) -> Optional[int]:
        """SIGTERM, bounded wait, then SIGKILL. Returns the exit code (None if it had to be killed)."""
        if self.popen.poll() is not None:
            return self.popen.returncode
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=STOP_WAIT_S)
            return None


class _Env:
    """What every environment dataclass below shares: it has `root`, `procs`, `grpc_port`,
    `http_port`, `app_id` and `label` (and, with an app, `app_port` and `events_path`)."""

    def http_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def logs(self) -> str:
        return "\n".join(
            f"----- {p.name} (pid {p.popen.pid}, rc {p.popen.poll()}) log {p.log_path} -----\n{p.log()}"
            for p in self.procs
        )

    def sdk_env(self) -> Dict[str, str]:
        """Environment that points the SDK at this plugd (an API token is the test's choice)."""
        return {
            **SDK_ENV_DEFAULTS,
            "DAPR_GRPC_PORT": str(self.grpc_port),
            "DAPR_HTTP_PORT": str(self.http_port),
        }

    def events(self) -> List[dict]:
        """Every complete line the app has written so far, parsed."""
        if getattr(self, "events_path", None) is None:
            return []
        try:
            text = self.events_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        lines = text.split("\n")[:-1]  # a last line without its newline is still being written
        return [json.loads(line) for line in lines if line]


@dataclass
class Sidecar(_Env):
    root: Path
    sockets: Path
    resources: Path
    db_path: Path
    grpc_port: int
    http_port: int
    app_id: str = APP_ID
    store: str = STORE
    label: str = "sidecar"
    procs: List[Proc] = field(default_factory=list)


def _binary(name: str) -> Path:
    path = BIN_DIR / name
    if not path.is_file():
        raise RuntimeError(f"{path} not found: run `cargo build --workspace --bins` (or set PLUGD_BIN_DIR)")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(name: str, args: List[str], root: Path, env: Optional[Dict[str, str]] = None) -> Proc:
    log_path = root / f"{name}.log"
    log = open(log_path, "wb")
    try:
        popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    finally:
        log.close()  # the child holds its own descriptor
    return Proc(name, popen, log_path)


def _wait_for_socket(path: Path, proc: Proc, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} before listening on {path}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(path))
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"socket {path} did not accept within {within}s")
        time.sleep(0.02)


def _http_status(url: str, timeout: float = 1.0) -> Optional[int]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def _wait_for_healthz(env: _Env, proc: Proc, within: float) -> None:
    url = env.http_url("/v1.0/healthz")
    deadline = time.monotonic() + within
    last = None
    while True:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"plugd exited with {proc.popen.returncode} before becoming healthy")
        last = _http_status(url)
        if last == 204:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"GET {url} did not return 204 within {within}s (last: {last})")
        time.sleep(0.05)


def _wait_for_tcp(port: int, proc: Proc, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} did not accept on port {port} within {within}s")
        time.sleep(0.02)


def _spawn_retrying(env: _Env, name: str, launch: Callable[[], List[str]], wait: Callable[[Proc], None],
                    spawn_env: Optional[Dict[str, str]] = None) -> Proc:
    """Spawns `launch()` (which picks the free ports the command uses) as `name` and `wait`s for it.
    A port picked by binding to 0 can be taken again before the child binds it: when the child
    exits early, tries again with new ports (`name-1`, `name-2`), three attempts in all."""
    for attempt in range(3):
        proc = _spawn(name if attempt == 0 else f"{name}-{attempt}", launch(), env.root, spawn_env)
        env.procs.append(proc)
        try:
            wait(proc)
            return proc
        except RuntimeError:
            if proc.popen.poll() is None or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _start_component(env: _Env, binary: str, socket_name: str, sockets: Path,
                     log_var: str = "PLUGD_BINDINGS_COMPONENT_LOG") -> None:
    """Starts a pluggable component binary on <sockets>/<socket_name>.sock (RUST_LOG from $log_var)."""
    proc = _spawn(
        binary,
        [str(_binary(binary)), "--socket-name", socket_name, "--socket-folder", str(sockets)],
        env.root,
        {"RUST_LOG": os.environ.get(log_var, "info")},
    )
    env.procs.append(proc)
    _wait_for_socket(sockets / f"{socket_name}.sock", proc, SOCKET_WAIT_S)


def _start_plugd(env: _Env, sockets: Path, resources: Path, *, extra_args: Sequence[str] = (),
                 extra_env: Optional[Dict[str, str]] = None, managed: bool = False) -> None:
    """Starts plugd for `env` on free ports (recorded in env.grpc_port/http_port) and waits until
    it is healthy; `extra_args` go before --log-level, `extra_env` into its environment. Unless
    `managed`, plugd launches no components itself (the tests start theirs) and serves no metrics."""
    defaults = [] if managed else ["--managed-components=false", "--enable-metrics=false"]

    def launch() -> List[str]:
        env.grpc_port, env.http_port = _free_port(), _free_port()
        while env.http_port in (env.grpc_port, getattr(env, "app_port", 0)):
            env.http_port = _free_port()
        return [
            str(_binary("plugd")),
            "--app-id", env.app_id,
            "--resources-path", str(resources),
            "--sockets-folder", str(sockets),
            "--dapr-grpc-port", str(env.grpc_port),
            "--dapr-http-port", str(env.http_port),
            *defaults,
            *extra_args,
            "--log-level", os.environ.get("PLUGD_LOG_LEVEL", "info"),
        ]

    _spawn_retrying(env, "plugd", launch, lambda proc: _wait_for_healthz(env, proc, HEALTH_WAIT_S), extra_env)


def _stop_env(env: _Env) -> List[str]:
    """Stops the processes in reverse order of start (plugd first); lists what went wrong."""
    problems = []
    for proc in reversed(env.procs):
        was_running = proc.popen.poll() is None
        rc = proc.stop()
        if not proc.name.startswith(("plugd", "redis")):
            continue  # the Python apps do not handle SIGTERM (their exit code is -15)
        if was_running and rc is None:
            problems.append(f"{env.label}: {proc.name} ignored SIGTERM for {STOP_WAIT_S}s and was killed")
        elif was_running and rc != 0:
            problems.append(f"{env.label}: {proc.name} exited with {rc} after SIGTERM")
    return problems


# Environments alive now: (env, report section title, attach to every failing test rather than
# only to those that use the env).
_ACTIVE_ENVS: List[Tuple[_Env, str, bool]] = []


def _new_root(prefix: str) -> Tuple[Path, Path, Path]:
    """A fresh /tmp/<prefix>* folder and its `sockets` and `resources` subfolders."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    sockets, resources = root / "sockets", root / "resources"
    sockets.mkdir()
    resources.mkdir()
    return root, sockets, resources


@contextlib.contextmanager
def _env_running(env: _Env, title: str, *, every_test: bool = False) -> Iterator[_Env]:
    """The life of an environment in a fixture: its output is attached (as section `title`) to
    the report of each failing test that uses it (every failing test with `every_test`); at the
    end its processes are stopped, the fixture fails (printing the logs) if one did not stop
    cleanly, and env.root is removed unless $PLUGD_KEEP_TMP is set."""
    entry = (env, title, every_test)
    _ACTIVE_ENVS.append(entry)
    try:
        yield env
    finally:
        _ACTIVE_ENVS.remove(entry)
        problems = _stop_env(env)
        if problems:
            print(env.logs())
            pytest.fail("; ".join(problems), pytrace=False)
        if os.environ.get("PLUGD_KEEP_TMP"):
            print(f"kept {env.root}")
        else:
            shutil.rmtree(env.root, ignore_errors=True)


@contextlib.contextmanager
def _starting(env: _Env, what: str) -> Iterator[None]:
    """Turns an error while starting `env` into a fixture failure `could not start <what>` with the logs."""
    try:
        yield
    except Exception as e:
        pytest.fail(f"could not start {what}: {e}\n{env.logs()}", pytrace=False)


COMPONENT_YAML = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {store}
spec:
  type: state.{socket}
  version: v1
  metadata:
    - name: connectionString
      value: "{db}"
"""


def _new_sidecar() -> Sidecar:
    root, sockets, resources = _new_root("plugd-py-")
    return Sidecar(root, sockets, resources, root / "state.db", 0, 0)


def _start(sidecar: Sidecar) -> None:
    """Starts the component, then plugd; the processes are recorded in `sidecar.procs`."""
    _start_component(sidecar, "plugd-sqlite", SOCKET_NAME, sidecar.sockets, "PLUGD_SQLITE_LOG")
    (sidecar.resources / f"{STORE}.yaml").write_text(
        COMPONENT_YAML.format(store=STORE, socket=SOCKET_NAME, db=sidecar.db_path)
    )
    _start_plugd(sidecar, sidecar.sockets, sidecar.resources)


@pytest.fixture(scope="session")
def sidecar():
    """plugd + plugd-sqlite, started once for the session; SDK env points at them."""
    saved_env = {k: os.environ.get(k) for k in (*SDK_ENV_DEFAULTS, *SDK_ENV_CLEARED, "DAPR_GRPC_PORT", "DAPR_HTTP_PORT")}
    sidecar = _new_sidecar()
    with _env_running(sidecar, "plugd and plugd-sqlite output", every_test=True):
        try:
            with _starting(sidecar, "plugd"):
                _start(sidecar)
            for k in SDK_ENV_CLEARED:
                os.environ.pop(k, None)
            for k, v in SDK_ENV_DEFAULTS.items():
                os.environ.setdefault(k, v)
            os.environ["DAPR_GRPC_PORT"] = str(sidecar.grpc_port)
            os.environ["DAPR_HTTP_PORT"] = str(sidecar.http_port)
            yield sidecar
        finally:
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attaches the output of the environments a failing test uses (and the session sidecar's)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        funcargs = getattr(item, "funcargs", {}).values()
        for env, title, every_test in _ACTIVE_ENVS:
            if every_test or any(v is env for v in funcargs):
                report.sections.append((title, env.logs()))


# ------------------------------------------------------------------------------------- pub/sub
#
# test_pubsub.py runs its own plugd per (app protocol, broker), each with its own temp folder,
# ports, broker process and subscriber app, so it never touches the session `sidecar` above:
#
#   [redis-server]  ->  plugd-<broker> (socket <tmp>/sockets/<broker>.sock)
#   subscriber app (tests/python/apps/<protocol>_subscriber.py on a free port)
#   plugd --app-port <app> --app-protocol <protocol>  (Component `pubsub` of type pubsub.<broker>)
#
# then publishes a warm-up event to every subscribed topic (again, until the app has it) so a
# test starts only once every subscription stream is live. Adding a broker = one entry in
# BROKERS plus its branch in `_start_broker`.

PUBSUB = "pubsub"
APPS_DIR = Path(__file__).resolve().parent / "apps"
APP_WAIT_S = 20.0
WARMUP_WAIT_S = 30.0
REDIS_SERVER = os.environ.get("PLUGD_REDIS_SERVER", shutil.which("redis-server") or "/usr/bin/redis-server")

# Topics each subscriber app subscribes to (see apps/*_subscriber.py).
_COMMON_TOPICS = ("orders", "bulk", "count", "routed", "dlq-src", "dlq-dead", "retry", "raw")
GRPC_APP_TOPICS = _COMMON_TOPICS + ("raise",)
HTTP_APP_TOPICS = _COMMON_TOPICS + ("http-500", "http-404", "declared", "declared-v1")

# Declarative subscriptions next to the Component of the HTTP environment (the app does not list
# these topics in GET /dapr/subscribe; its POST handler accepts any path).
HTTP_DECLARATIVE_SUBSCRIPTIONS = """\
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata:
  name: declared
spec:
  pubsubname: {pubsub}
  topic: declared
  routes:
    rules:
      - match: event.type == "x"
        path: /declared-x
    default: /declared-default
---
apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata:
  name: declared-v1
spec:
  pubsubname: {pubsub}
  topic: declared-v1
  route: /declared-v1
"""


def _broker_missing(broker: str) -> Optional[str]:
    """Why a broker cannot be tested here, or None."""
    if not (BIN_DIR / f"plugd-{broker}").is_file():
        return f"{BIN_DIR / f'plugd-{broker}'} not built"
    if broker == "redis" and not Path(REDIS_SERVER).is_file():
        return f"redis-server not found at {REDIS_SERVER}"
    return None


BROKERS = [
    pytest.param(b, id=b, marks=pytest.mark.skipif(_broker_missing(b) is not None, reason=str(_broker_missing(b))))
    for b in ("memory", "redis")
]

BROKER_COMPONENT_YAML = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {name}
spec:
  type: pubsub.{broker}
  version: v1
  metadata:
{metadata}"""


@dataclass
class PubSubEnv(_Env):
    """One plugd with --app-port, its broker component and its subscriber app."""

    broker: str
    protocol: str
    root: Path
    app_id: str
    events_path: Path
    pubsub: str = PUBSUB
    grpc_port: int = 0
    http_port: int = 0
    app_port: int = 0
    redis_port: int = 0
    procs: List[Proc] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.protocol}-app/{self.broker}"


    def publish_http(self, topic: str, body: bytes, content_type: str, metadata: Dict[str, str]) -> int:
        """POST /v1.0/publish/{pubsub}/{topic} with metadata.* query parameters; the status."""
        query = urllib.parse.urlencode({f"metadata.{k}": v for k, v in metadata.items()})
        req = urllib.request.Request(
            self.http_url(f"/v1.0/publish/{self.pubsub}/{topic}") + (f"?{query}" if query else ""),
            data=body,
            method="POST",
            headers={"Content-Type": content_type},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code


def _start_redis(env: PubSubEnv) -> None:
    data_dir = env.root / "redis"
    data_dir.mkdir()

    def launch() -> List[str]:
        env.redis_port = _free_port()
        return [REDIS_SERVER, "--port", str(env.redis_port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(data_dir)]

    _spawn_retrying(env, "redis-server", launch, lambda proc: _wait_for_tcp(env.redis_port, proc, SOCKET_WAIT_S))
    with socket.create_connection(("127.0.0.1", env.redis_port), timeout=2) as s:
        s.sendall(b"PING\r\n")
        reply = s.recv(64)
    if not reply.startswith(b"+PONG"):
        raise RuntimeError(f"redis-server answered PING with {reply!r}")


def _start_broker(env: PubSubEnv, sockets: Path, resources: Path) -> None:
    """Starts the broker component (and what it needs) and writes its Component YAML."""
    if env.broker == "memory":
        # One delivery in flight per stream: the ordered-delivery checks rely on it.
        metadata = {"maxInFlight": "1"}
    elif env.broker == "redis":
        _start_redis(env)
        metadata = {"redisHost": f"127.0.0.1:{env.redis_port}", "concurrency": "1"}
    else:
        raise ValueError(f"unknown broker {env.broker}")
    _start_component(env, f"plugd-{env.broker}", env.broker, sockets, "PLUGD_BROKER_LOG")
    items = "".join(f"    - name: {k}\n      value: \"{v}\"\n" for k, v in metadata.items())
    (resources / f"{env.pubsub}.yaml").write_text(
        BROKER_COMPONENT_YAML.format(name=env.pubsub, broker=env.broker, metadata=items)
    )


def _start_app(env: _Env, script: str, args: Sequence[str]) -> None:
    """Starts apps/<script> <free port> <env.events_path> <args...> as `<protocol>-app` and waits
    until it accepts on its port (recorded in env.app_port)."""

    def launch() -> List[str]:
        env.app_port = _free_port()
        return [sys.executable, str(APPS_DIR / script), str(env.app_port), str(env.events_path), *args]

    _spawn_retrying(env, f"{env.protocol}-app", launch, lambda proc: _wait_for_tcp(env.app_port, proc, APP_WAIT_S),
                    {"PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning"})


def _warm_up(env: PubSubEnv, topics) -> None:
    """Publishes {"warmup": token} (type "x", which every rule set routes) to each topic until the
    app has seen one on every topic: then each subscription stream is live. A broker may drop
    what is published before its consumer group exists, hence the re-publishing."""
    token = uuid.uuid4().hex
    body = json.dumps({"warmup": token}).encode()
    pending = set(topics)
    deadline = time.monotonic() + WARMUP_WAIT_S
    next_publish = 0.0
    while pending:
        now = time.monotonic()
        if now > deadline:
            raise RuntimeError(f"no warm-up event reached the app within {WARMUP_WAIT_S}s on topics {sorted(pending)}")
        if now >= next_publish:
            for topic in pending:
                status = env.publish_http(topic, body, "application/json", {"cloudevent.type": "x"})
                if status != 204:
                    raise RuntimeError(f"warm-up publish to {topic} answered HTTP {status}")
            next_publish = now + 1.0
        for e in env.events():
            if token in event_text(e):
                pending.discard(e["topic"] if env.protocol == "grpc" else e["body"]["topic"])
        time.sleep(0.02)


def event_text(e: dict) -> str:
    """A recorded event as text, with the payload of raw deliveries (base64) decoded: for
    finding a test's marker in it."""
    text = json.dumps(e)
    body = e.get("body")
    b64 = e.get("raw_data_b64") or (body.get("data_base64") if isinstance(body, dict) else None)
    if b64:
        text += base64.b64decode(b64).decode("utf-8", errors="replace")
    return text


def _pubsub_env(protocol: str, broker: str, topics, extra_resources: Optional[Dict[str, str]] = None):
    root, sockets, resources = _new_root(f"plugd-ps-{protocol}-{broker}-")
    env = PubSubEnv(
        broker=broker,
        protocol=protocol,
        root=root,
        app_id=f"pubsub-py-{protocol}",
        events_path=root / "events.jsonl",
    )
    with _env_running(env, f"pub/sub environment {env.label}"):
        with _starting(env, env.label):
            _start_broker(env, sockets, resources)
            for name, text in (extra_resources or {}).items():
                (resources / name).write_text(text.format(pubsub=env.pubsub))
            _start_app(env, f"{protocol}_subscriber.py", [env.pubsub])
            _start_plugd(env, sockets, resources, extra_args=["--app-port", str(env.app_port), "--app-protocol", protocol])
            _warm_up(env, topics)
        yield env


@pytest.fixture(scope="module", params=BROKERS)
def grpc_env(request):
    """plugd --app-protocol grpc delivering to apps/grpc_subscriber.py (a dapr.ext.grpc.App)."""
    yield from _pubsub_env("grpc", request.param, GRPC_APP_TOPICS)


@pytest.fixture(scope="module", params=BROKERS)
def http_env(request):
    """plugd --app-protocol http delivering to apps/http_subscriber.py (http.server)."""
    yield from _pubsub_env("http", request.param, HTTP_APP_TOPICS,
                           {"subscriptions.yaml": HTTP_DECLARATIVE_SUBSCRIPTIONS})


_THROUGHPUT: List[str] = []


@pytest.fixture
def report_figure():
    """Lets a test add a line to the "pub/sub throughput" section of the terminal summary."""
    return _THROUGHPUT.append


def pytest_terminal_summary(terminalreporter):
    if _THROUGHPUT:
        terminalreporter.section("pub/sub throughput (debug build, one delivery at a time)")
        for line in _THROUGHPUT:
            terminalreporter.write_line(line)


# --------------------------------------------------------------------- bindings and secrets
#
# test_bindings_secrets.py runs its own plugd processes, each in its own /tmp/plugd-bs-<label>-*
# folder, and never touches the session `sidecar` nor the pub/sub environments above:
#
#   files:  plugd-files (socket files.sock: secretstores.files + bindings.files) and plugd without
#           an app; Components `secretstore` (a JSON secrets file), `secretstore-multi` (the same
#           file, multiValued), `files` (rootPath <tmp>/out) and `files-ref`, whose rootPath is
#           a secretKeyRef to `secretstore` (so only plugd's resolution can point it at the
#           folder the test checks);
#   grpc:   plugd-cron (cron.sock) + apps/grpc_bindings_app.py + plugd --app-protocol grpc;
#           Components `ticks` (listed by the app) and `ticks-unlisted` (not listed);
#   http:   plugd-cron + apps/http_bindings_app.py + plugd --app-protocol http; Components
#           `ticks-http` (route metadata HTTP_TICKS_ROUTE, handled by the app) and
#           `ticks-default` (no route, so /ticks-default, which the app answers 404).
#
# Both cron bindings fire every CRON_PERIOD. The apps append what they receive to events.jsonl,
# which the tests poll with a deadline. Processes stop like the pub/sub ones (`_stop_env`).

FILES_SOCKET = "files"  # -> files.sock: type secretstores.files and bindings.files
CRON_SOCKET = "cron"  # -> cron.sock: type bindings.cron
CRON_PERIOD = "@every 200ms"
SECRET_STORE = "secretstore"
SECRET_STORE_MULTI = "secretstore-multi"
FILES_BINDING = "files"
FILES_REF_BINDING = "files-ref"
# The secret (flattened key of FILES_SECRETS' "paths" object) that names files-ref's rootPath.
REF_ROOT_SECRET = "paths:refRoot"
GRPC_TICKS = "ticks"
GRPC_TICKS_UNLISTED = "ticks-unlisted"
HTTP_TICKS = "ticks-http"
HTTP_TICKS_ROUTE = "/custom/cron-route"
HTTP_TICKS_DEFAULT = "ticks-default"

BINDINGS_COMPONENT_YAML = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {name}
spec:
  type: {type}
  version: v1
  metadata:
{metadata}{auth}"""


def _component_yaml(name: str, type_: str, metadata: Dict[str, str],
                    secret_refs: Optional[Dict[str, str]] = None, secret_store: Optional[str] = None) -> str:
    """A Component; `secret_refs` maps a metadata name to the secret whose value (under the same
    key) plugd must put there, from `secret_store`."""
    items = "".join(f"    - name: {k}\n      value: {json.dumps(v)}\n" for k, v in metadata.items())
    items += "".join(
        f"    - name: {k}\n      secretKeyRef:\n        name: {json.dumps(s)}\n        key: {json.dumps(s)}\n"
        for k, s in (secret_refs or {}).items()
    )
    auth = f"auth:\n  secretStore: {secret_store}\n" if secret_store else ""
    return BINDINGS_COMPONENT_YAML.format(name=name, type=type_, metadata=items, auth=auth)


def files_secrets(ref_root: Path) -> dict:
    """The secrets file of the `files` environment (nested objects, an array, a number, a bool)."""
    return {
        "apikey": "k-1f3a9",
        "db": {"user": "admin", "password": "pa:ss w0rd", "opts": {"tls": True, "port": 5432}},
        "hosts": ["a.example", "b.example"],
        "paths": {"refRoot": str(ref_root)},
    }


@dataclass
class BindingsEnv(_Env):
    """One plugd for the bindings/secrets tests, its components and (maybe) its app."""

    label: str
    root: Path
    app_id: str
    protocol: Optional[str] = None  # the app's protocol; None: plugd without --app-port
    events_path: Optional[Path] = None
    grpc_port: int = 0
    http_port: int = 0
    app_port: int = 0
    secrets_path: Optional[Path] = None
    secrets: Optional[dict] = None
    out_dir: Optional[Path] = None  # rootPath of the `files` binding
    ref_dir: Optional[Path] = None  # rootPath of `files-ref`, known only through the secret
    procs: List[Proc] = field(default_factory=list)


def _bindings_env(label: str, protocol: Optional[str] = None):
    root, sockets, resources = _new_root(f"plugd-bs-{label}-")
    env = BindingsEnv(
        label=label,
        root=root,
        app_id=f"bindings-py-{label}",
        protocol=protocol,
        events_path=root / "events.jsonl" if protocol else None,
    )
    with _env_running(env, f"bindings environment {label}"):
        with _starting(env, f"bindings environment {label}"):
            components: Dict[str, str] = {}
            if label == "files":
                env.out_dir = root / "out"
                env.ref_dir = root / "from-secret"  # created by the binding's Init, not here
                env.secrets = files_secrets(env.ref_dir)
                env.secrets_path = root / "secrets.json"
                env.secrets_path.write_text(json.dumps(env.secrets, indent=2))
                _start_component(env, "plugd-files", FILES_SOCKET, sockets)
                store_type, binding_type = f"secretstores.{FILES_SOCKET}", f"bindings.{FILES_SOCKET}"
                components = {
                    SECRET_STORE: _component_yaml(SECRET_STORE, store_type, {"secretsFile": str(env.secrets_path)}),
                    SECRET_STORE_MULTI: _component_yaml(
                        SECRET_STORE_MULTI, store_type, {"secretsFile": str(env.secrets_path), "multiValued": "true"}),
                    FILES_BINDING: _component_yaml(FILES_BINDING, binding_type, {"rootPath": str(env.out_dir)}),
                    FILES_REF_BINDING: _component_yaml(
                        FILES_REF_BINDING, binding_type, {}, {"rootPath": REF_ROOT_SECRET}, SECRET_STORE),
                }
            elif label == "grpc":
                _start_component(env, "plugd-cron", CRON_SOCKET, sockets)
                cron = f"bindings.{CRON_SOCKET}"
                components = {
                    GRPC_TICKS: _component_yaml(GRPC_TICKS, cron, {"schedule": CRON_PERIOD}),
                    GRPC_TICKS_UNLISTED: _component_yaml(GRPC_TICKS_UNLISTED, cron, {"schedule": CRON_PERIOD}),
                }
                _start_app(env, "grpc_bindings_app.py", [GRPC_TICKS])
            elif label == "http":
                _start_component(env, "plugd-cron", CRON_SOCKET, sockets)
                cron = f"bindings.{CRON_SOCKET}"
                components = {
                    HTTP_TICKS: _component_yaml(HTTP_TICKS, cron, {"schedule": CRON_PERIOD, "route": HTTP_TICKS_ROUTE}),
                    HTTP_TICKS_DEFAULT: _component_yaml(HTTP_TICKS_DEFAULT, cron, {"schedule": CRON_PERIOD}),
                }
                _start_app(env, "http_bindings_app.py", [HTTP_TICKS_ROUTE])
            else:
                raise ValueError(f"unknown bindings environment {label}")
            for name, text in components.items():
                (resources / f"{name}.yaml").write_text(text)
            app_args = ["--app-port", str(env.app_port), "--app-protocol", protocol] if protocol else []
            _start_plugd(env, sockets, resources, extra_args=app_args)
        yield env


@pytest.fixture(scope="module")
def files_env():
    """plugd-files (JSON-file secret stores, folder output bindings) behind plugd, no app."""
    yield from _bindings_env("files")


@pytest.fixture(scope="module")
def cron_grpc_env():
    """plugd-cron input bindings delivered to apps/grpc_bindings_app.py (a dapr.ext.grpc.App)."""
    yield from _bindings_env("grpc", "grpc")


@pytest.fixture(scope="module")
def cron_http_env():
    """plugd-cron input bindings delivered to apps/http_bindings_app.py (http.server)."""
    yield from _bindings_env("http", "http")


# ------------------------------------------------------------------------------------ API token
#
# test_api_token_metadata.py runs its own plugd with DAPR_API_TOKEN set, in its own
# /tmp/plugd-tok-* folder, and never touches the session `sidecar` nor the environments above:
#
#   plugd-sqlite (sqlite.sock)  ->  Component `statestore` (state.sqlite, database in the folder)
#   plugd-files  (files.sock)   ->  Components `secretstore` (secretstores.files, a JSON secrets
#                                   file) and `files` (bindings.files, rootPath <tmp>/out)
#   DAPR_API_TOKEN=<random> plugd --app-id token-py   (no app; started once per module)
#
# Readiness is `GET /v1.0/healthz` = 204, which needs no token. Processes stop like the pub/sub
# ones (`_stop_env`); their output is attached to the report of every failing test that uses the
# environment.

TOKEN_APP_ID = "token-py"


@dataclass
class TokenEnv(_Env):
    """One plugd started with DAPR_API_TOKEN, its state store, secret store and binding."""

    root: Path
    token: str
    label: str = "api-token"
    app_id: str = TOKEN_APP_ID
    store: str = STORE
    secret_store: str = SECRET_STORE
    binding: str = FILES_BINDING
    db_path: Optional[Path] = None
    secrets: Optional[dict] = None
    out_dir: Optional[Path] = None
    grpc_port: int = 0
    http_port: int = 0
    procs: List[Proc] = field(default_factory=list)


@pytest.fixture(scope="module")
def token_env():
    """plugd with DAPR_API_TOKEN=<random> in front of plugd-sqlite and plugd-files, no app."""
    root, sockets, resources = _new_root("plugd-tok-")
    env = TokenEnv(root=root, token=f"tok-{uuid.uuid4().hex}")
    with _env_running(env, f"{env.label} environment"):
        with _starting(env, "the API-token environment"):
            env.db_path = root / "state.db"
            env.out_dir = root / "out"
            env.secrets = {"apikey": "k-7c2e1", "db": {"user": "admin", "password": "pa:ss w0rd"}}
            secrets_path = root / "secrets.json"
            secrets_path.write_text(json.dumps(env.secrets))
            _start_component(env, "plugd-sqlite", SOCKET_NAME, sockets)
            _start_component(env, "plugd-files", FILES_SOCKET, sockets)
            (resources / f"{env.store}.yaml").write_text(
                COMPONENT_YAML.format(store=env.store, socket=SOCKET_NAME, db=env.db_path))
            (resources / f"{env.secret_store}.yaml").write_text(_component_yaml(
                env.secret_store, f"secretstores.{FILES_SOCKET}", {"secretsFile": str(secrets_path)}))
            (resources / f"{env.binding}.yaml").write_text(_component_yaml(
                env.binding, f"bindings.{FILES_SOCKET}", {"rootPath": str(env.out_dir)}))
            _start_plugd(env, sockets, resources, extra_env={"DAPR_API_TOKEN": env.token})
        yield env


def wait_for_events(env, what: str, check, within: float):
    """Polls `env.events()` (what the test app recorded) until `check(events)` is truthy, and
    returns it; fails after `within` seconds showing the last events."""
    deadline = time.monotonic() + within
    label = getattr(env, "label", None)
    prefix = f"[{label}] " if label else ""
    while True:
        events = env.events()
        result = check(events)
        if result:
            return result
        if time.monotonic() > deadline:
            tail = "\n".join(json.dumps(e, sort_keys=True) for e in events[-8:])
            pytest.fail(f"{prefix}{what}: not seen within {within}s; the app saw {len(events)} events, the last ones:\n{tail}")
        time.sleep(0.02)
