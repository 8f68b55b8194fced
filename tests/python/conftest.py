"""Fixtures for the Python SDK compatibility tests.

A session fixture starts the real binaries -- `plugd-sqlite` on a Unix socket and `plugd` on
free TCP ports -- and points the official `dapr` SDK at them through DAPR_GRPC_PORT and
DAPR_HTTP_PORT. Every wait is a bounded poll; teardown is SIGTERM, a bounded wait, then kill.

Binaries are taken from $PLUGD_BIN_DIR (default <repo>/target/debug); build them first with
`cargo build --workspace --bins`. plugd's and the component's output go to log files in the
temp dir and are attached to the report of every failing test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

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


@dataclass
class Sidecar:
    root: Path
    sockets: Path
    resources: Path
    db_path: Path
    grpc_port: int
    http_port: int
    app_id: str = APP_ID
    store: str = STORE
    procs: List[Proc] = field(default_factory=list)

    def http_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def logs(self) -> str:
        return "\n".join(
            f"----- {p.name} (pid {p.popen.pid}, rc {p.popen.poll()}) log {p.log_path} -----\n{p.log()}"
            for p in self.procs
        )


_SIDECAR: Optional[Sidecar] = None


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


def _wait_for_healthz(sidecar: Sidecar, proc: Proc, within: float) -> None:
    url = sidecar.http_url("/v1.0/healthz")
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


def _new_sidecar(root: Path) -> Sidecar:
    sockets = root / "sockets"
    resources = root / "resources"
    sockets.mkdir()
    resources.mkdir()
    return Sidecar(root, sockets, resources, root / "state.db", 0, 0)


def _start(sidecar: Sidecar) -> None:
    """Starts the component, then plugd; the processes are recorded in `sidecar.procs`."""
    root, sockets, resources, db_path = sidecar.root, sidecar.sockets, sidecar.resources, sidecar.db_path

    component = _spawn(
        "plugd-sqlite",
        [str(_binary("plugd-sqlite")), "--socket-name", SOCKET_NAME, "--socket-folder", str(sockets)],
        root,
        {"RUST_LOG": os.environ.get("PLUGD_SQLITE_LOG", "info")},
    )
    sidecar.procs.append(component)
    _wait_for_socket(sockets / f"{SOCKET_NAME}.sock", component, SOCKET_WAIT_S)

    (resources / f"{STORE}.yaml").write_text(
        COMPONENT_YAML.format(store=STORE, socket=SOCKET_NAME, db=db_path)
    )

    # A port picked by binding to 0 can be taken again before plugd binds it: retry a few times.
    for attempt in range(3):
        sidecar.grpc_port, sidecar.http_port = _free_port(), _free_port()
        while sidecar.http_port == sidecar.grpc_port:
            sidecar.http_port = _free_port()
        plugd = _spawn(
            "plugd" if attempt == 0 else f"plugd-{attempt}",
            [
                str(_binary("plugd")),
                "--app-id", APP_ID,
                "--resources-path", str(resources),
                "--sockets-folder", str(sockets),
                "--dapr-grpc-port", str(sidecar.grpc_port),
                "--dapr-http-port", str(sidecar.http_port),
                "--log-level", os.environ.get("PLUGD_LOG_LEVEL", "info"),
            ],
            root,
        )
        sidecar.procs.append(plugd)
        try:
            _wait_for_healthz(sidecar, plugd, HEALTH_WAIT_S)
            return
        except RuntimeError:
            if plugd.popen.poll() is None or attempt == 2:
                raise
            # exited early (e.g. port clash): try again with new ports


@pytest.fixture(scope="session")
def sidecar():
    """plugd + plugd-sqlite, started once for the session; SDK env points at them."""
    global _SIDECAR
    root = Path(tempfile.mkdtemp(prefix="plugd-py-", dir="/tmp"))
    saved_env = {k: os.environ.get(k) for k in (*SDK_ENV_DEFAULTS, *SDK_ENV_CLEARED, "DAPR_GRPC_PORT", "DAPR_HTTP_PORT")}
    sidecar = _new_sidecar(root)
    try:
        try:
            _start(sidecar)
        except Exception as e:
            pytest.fail(f"could not start plugd: {e}\n{sidecar.logs()}", pytrace=False)
        _SIDECAR = sidecar
        for k in SDK_ENV_CLEARED:
            os.environ.pop(k, None)
        for k, v in SDK_ENV_DEFAULTS.items():
            os.environ.setdefault(k, v)
        os.environ["DAPR_GRPC_PORT"] = str(sidecar.grpc_port)
        os.environ["DAPR_HTTP_PORT"] = str(sidecar.http_port)
        yield sidecar
    finally:
        _SIDECAR = None
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        problems = []
        for proc in reversed(sidecar.procs):  # plugd first, then the component
            was_running = proc.popen.poll() is None
            rc = proc.stop()
            if was_running and rc is None:
                problems.append(f"{proc.name} ignored SIGTERM for {STOP_WAIT_S}s and was killed")
            elif was_running and rc != 0:
                problems.append(f"{proc.name} exited with {rc} after SIGTERM")
        if problems:
            print(sidecar.logs())
            pytest.fail("; ".join(problems), pytrace=False)
        if os.environ.get("PLUGD_KEEP_TMP"):
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _SIDECAR is not None:
        report.sections.append(("plugd and plugd-sqlite output", _SIDECAR.logs()))
