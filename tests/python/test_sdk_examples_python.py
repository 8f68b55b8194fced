"""The Python example components (sdk-examples/python) end to end, with the official Python SDK.

One plugd for the module, started with managed components and

    --managed-component mystate=<python> sdk-examples/python/state_store.py
    --managed-component mypubsub=<python> sdk-examples/python/pubsub.py

so plugd itself launches both examples (nobody starts them by hand) for the Components
`pystore` (type state.mystate, a SQLite file in the temp folder) and `pypubsub` (type
pubsub.mypubsub), with apps/http_subscriber.py as the app (--app-protocol http). The examples
generate their gRPC stubs at start-up into a fresh folder of the run (PLUGD_PY_STUBS_DIR), so the
run-time generation is exercised, by two processes at once.

The SDK saves, gets, bulk-saves, deletes, runs transactions and hits etag conflicts through
plugd; the checks are on what the SDK returns and on the SQLite file itself. Events published
through plugd reach the app; the app's RETRY reply makes plugd nack, and the example delivers the
message again. The state store, killed with SIGKILL, is started again by plugd and still has
its data. When the module ends, plugd stops on SIGTERM and with it both examples, and no
socket is left.

`test_conformance` runs `plugd conformance --socket … --json` against each example, started by
hand this time (over a stale socket file, which the example must replace), and checks that the
example exits 0 on SIGTERM and removes its own socket.

The `test_direct_*` tests start an example by hand and call it over its socket with plain
grpcio (message classes built from the protos in a private descriptor pool, so nothing clashes
with the SDK's `dapr` package): Pause scoped to the streams it paused (a re-Init and a new
stream after the host restarted deliver again), the nack backoff, the per-group backlog cap,
concurrent Inits of one state store instance, Init metadata values kept out of the logs, and a
socket file replaced by someone else left alone at exit. `test_helpers_*` check the shared
module's socket folder variables and its private stub cache fallback in-process.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.resources
import json
import os
import queue
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Iterator, List, Optional, Tuple

import grpc
import pytest
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType
from dapr.clients.grpc._state import StateItem
from dapr.proto import api_service_v1, api_v1
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from conftest import (
    REPO,
    SOCKET_WAIT_S,
    STOP_WAIT_S,
    PubSubEnv,
    _binary,
    _env_running,
    _new_root,
    _spawn,
    _start_app,
    _start_plugd,
    _starting,
    _wait_for_socket,
    _warm_up,
    wait_for_events,
)

EXAMPLES = REPO / "sdk-examples" / "python"
STATE_SOCKET, PUBSUB_SOCKET = "mystate", "mypubsub"
STORE, PUBSUB = "pystore", "pypubsub"
APP_ID = "sdk-examples-py"
TABLE = "dapr_state"
TOPICS = ("orders", "retry")
DELIVERY_WAIT_S = 20.0
TTL_WAIT_S = 20.0
RESTART_WAIT_S = 20.0
CONFORMANCE_WAIT_S = 180.0

COMPONENTS = f"""\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {STORE}
spec:
  type: state.{STATE_SOCKET}
  version: v1
  metadata:
    - name: connectionString
      value: "{{db}}"
    - name: tableName
      value: {TABLE}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {PUBSUB}
spec:
  type: pubsub.{PUBSUB_SOCKET}
  version: v1
  metadata:
    - name: ackDeadlineSeconds
      value: "30"
"""


@dataclass
class ExamplesEnv(PubSubEnv):
    sockets: Optional[Path] = None
    db_path: Optional[Path] = None

    def plugd(self):
        return [p for p in self.procs if p.name.startswith("plugd")][-1]


def _example_command(script: str) -> str:
    return shlex.join([sys.executable, str(EXAMPLES / script)])


def _children_running(pid: int, script: str) -> List[int]:
    """Processes started by `pid` whose command line runs `script` (zombies do not count)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and any(a.decode(errors="replace").endswith(script) for a in argv):
                found.append(int(child))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def env():
    root, sockets, resources = _new_root("plugd-sdkex-py-")
    env = ExamplesEnv(broker="python-example", protocol="http", root=root, app_id=APP_ID,
                      events_path=root / "events.jsonl", pubsub=PUBSUB, sockets=sockets,
                      db_path=root / "state.db")
    with _env_running(env, "plugd with the Python example components"):
        with _starting(env, "plugd with the Python example components"):
            (resources / "components.yaml").write_text(COMPONENTS.format(db=env.db_path))
            _start_app(env, "http_subscriber.py", [PUBSUB])
            _start_plugd(env, sockets, resources, managed=True, extra_args=[
                "--managed-component", f"{STATE_SOCKET}={_example_command('state_store.py')}",
                "--managed-component", f"{PUBSUB_SOCKET}={_example_command('pubsub.py')}",
                "--app-port", str(env.app_port), "--app-protocol", "http", "--enable-metrics=false",
            ], extra_env={"PLUGD_PY_STUBS_DIR": str(root / "stubs"), "PYTHONUNBUFFERED": "1"})
            _warm_up(env, TOPICS)
        yield env
        _check_shutdown(env)


def _check_shutdown(env: ExamplesEnv) -> None:
    """plugd stops cleanly on SIGTERM, and so do the examples it launched; no socket is left.
    (plugd also removes a dead managed component's socket, so the examples' own clean-up is
    checked by test_conformance, where nobody else would.)"""
    plugd = env.plugd()
    assert plugd.popen.poll() is None, f"plugd exited early with {plugd.popen.returncode}"
    children = _children_running(plugd.popen.pid, "state_store.py") + _children_running(plugd.popen.pid, "pubsub.py")
    assert len(children) == 2, f"plugd should run both examples, runs {children}"
    rc = plugd.stop()
    assert rc == 0, f"plugd exited with {rc} after SIGTERM (None: killed after {STOP_WAIT_S}s)\n{env.logs()}"
    deadline = time.monotonic() + STOP_WAIT_S
    while True:
        alive = [pid for pid in children if _alive(pid)]
        left = sorted(p.name for p in env.sockets.iterdir())
        if not alive and not left:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"after plugd stopped: examples still running {alive}, sockets left {left}\n{env.logs()}")
        time.sleep(0.02)


@pytest.fixture
def client(env, monkeypatch):
    for k in ("DAPR_GRPC_ENDPOINT", "DAPR_HTTP_ENDPOINT", "DAPR_API_TOKEN", "DAPR_RUNTIME_HOST", "DAPR_API_MAX_RETRIES"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.sdk_env().items():
        monkeypatch.setenv(k, v)
    with DaprClient() as c:
        yield c


@pytest.fixture
def key(request):
    return f"{request.node.name}-{uuid.uuid4().hex[:8]}"


def _expect(fn, code) -> DaprGrpcError:
    with pytest.raises(DaprGrpcError) as info:
        fn()
    assert info.value.code() == code, f"status {info.value.code()} ({info.value.details()!r}), expected {code}"
    return info.value


def _stored(env: ExamplesEnv, key: str):
    """The row of `key` (as the app saved it) in the example's SQLite file: (value, etag)."""
    with sqlite3.connect(env.db_path, timeout=5) as db:
        return db.execute(f"SELECT value, etag FROM {TABLE} WHERE key = ?", (f"{APP_ID}||{key}",)).fetchone()


# ------------------------------------------------------------------------------ both running


def test_plugd_runs_both_examples_with_their_features(env, client):
    with urllib.request.urlopen(env.http_url("/v1.0/metadata"), timeout=5) as resp:
        body = json.loads(resp.read())
    status = {c["name"]: (c["type"], c.get("status")) for c in body["components"]}
    assert status == {STORE: (f"state.{STATE_SOCKET}", "READY"), PUBSUB: (f"pubsub.{PUBSUB_SOCKET}", "READY")}
    caps = {c.name: set(c.capabilities) for c in client.get_metadata().registered_components}
    assert {"ETAG", "TRANSACTIONAL", "TTL"} <= caps[STORE], caps
    assert "QUERY_API" not in caps[STORE], caps
    assert {"BULK_PUBSUB", "MESSAGE_TTL"} <= caps[PUBSUB], caps
    # plugd launched them, and they generated their stubs at run time into the run's folder.
    assert sorted(p.name for p in env.sockets.iterdir()) == [f"{PUBSUB_SOCKET}.sock", f"{STATE_SOCKET}.sock"]
    assert list((env.root / "stubs").glob("*/dapr/proto/components/v1/state_pb2.py"))


# ------------------------------------------------------------------------------------- state


def test_save_get_delete_in_sqlite(env, client, key):
    client.save_state(STORE, key, json.dumps({"n": 1}))
    got = client.get_state(STORE, key)
    assert json.loads(got.data) == {"n": 1} and got.etag
    value, etag = _stored(env, key)
    assert json.loads(value) == {"n": 1} and etag == got.etag
    client.save_state(STORE, key, b"\x00raw\xff")
    got2 = client.get_state(STORE, key)
    assert got2.data == b"\x00raw\xff" and got2.etag and got2.etag != got.etag
    client.delete_state(STORE, key)
    assert client.get_state(STORE, key).data == b"" and _stored(env, key) is None
    assert client.get_state(STORE, f"{key}-never").data == b""


def test_stale_etag_is_a_conflict(env, client, key):
    client.save_state(STORE, key, "v1")
    stale = client.get_state(STORE, key).etag
    client.save_state(STORE, key, "v2", etag=stale)
    current = client.get_state(STORE, key).etag
    for fn in (lambda: client.save_state(STORE, key, "v3", etag=stale),
               lambda: client.delete_state(STORE, key, etag=stale),
               lambda: client.save_state(STORE, f"{key}-missing", "x", etag=current)):
        err = _expect(fn, grpc.StatusCode.ABORTED)
        assert "etag" in err.details().lower()
    got = client.get_state(STORE, key)
    assert (got.data, got.etag) == (b"v2", current), "a conflicting write must change nothing"
    client.delete_state(STORE, key, etag=current)
    assert client.get_state(STORE, key).data == b""


def test_transaction_is_all_or_nothing(env, client, key):
    a, b, c = f"{key}-a", f"{key}-b", f"{key}-c"
    client.save_state(STORE, c, "to-delete")
    upsert, delete = TransactionOperationType.upsert, TransactionOperationType.delete
    client.execute_state_transaction(STORE, [
        TransactionalStateOperation(key=a, data="a1", operation_type=upsert),
        TransactionalStateOperation(key=b, data="b1", operation_type=upsert),
        TransactionalStateOperation(key=c, operation_type=delete),
    ])
    assert [client.get_state(STORE, k).data for k in (a, b, c)] == [b"a1", b"b1", b""]
    b_etag = client.get_state(STORE, b).etag
    client.save_state(STORE, b, "b2")  # b_etag is stale now
    before = {k: (client.get_state(STORE, k).data, client.get_state(STORE, k).etag) for k in (a, b)}
    _expect(lambda: client.execute_state_transaction(STORE, [
        TransactionalStateOperation(key=a, data="a-lost", operation_type=upsert),
        TransactionalStateOperation(key=c, data="c-lost", operation_type=upsert),
        TransactionalStateOperation(key=b, data="b-lost", etag=b_etag, operation_type=upsert),
    ]), grpc.StatusCode.INTERNAL)
    after = {k: (client.get_state(STORE, k).data, client.get_state(STORE, k).etag) for k in (a, b)}
    assert after == before and client.get_state(STORE, c).data == b"", "the failed transaction changed something"
    assert _stored(env, c) is None


def test_bulk_save_get_delete(env, client, key):
    keys = [f"{key}-{i}" for i in range(3)]
    client.save_bulk_state(STORE, [StateItem(k, f"v{i}") for i, k in enumerate(keys)])
    items = {i.key: i for i in client.get_bulk_state(STORE, keys + [f"{key}-missing"]).items}
    assert [items[k].data for k in keys] == [b"v0", b"v1", b"v2"]
    assert all(items[k].etag for k in keys) and items[f"{key}-missing"].data == b""
    # A bulk save with one stale etag changes none of the items.
    stale = items[keys[0]].etag
    client.save_state(STORE, keys[0], "newer")
    _expect(lambda: client.save_bulk_state(STORE, [StateItem(keys[1], "lost"), StateItem(keys[0], "lost", etag=stale)]),
            grpc.StatusCode.ABORTED)
    assert [client.get_state(STORE, k).data for k in keys[:2]] == [b"newer", b"v1"]
    # DeleteBulkState (more than one key: the component's BulkDelete); the SDK has no helper for
    # it, so through the SDK's own generated Dapr stub.
    with grpc.insecure_channel(f"127.0.0.1:{env.grpc_port}") as channel:
        api_service_v1.DaprStub(channel).DeleteBulkState(
            api_v1.DeleteBulkStateRequest(store_name=STORE, states=[{"key": k} for k in keys]), timeout=10)
    assert all(client.get_state(STORE, k).data == b"" for k in keys)
    assert all(_stored(env, k) is None for k in keys)


def test_ttl_expires_the_key(env, client, key):
    client.save_state(STORE, key, "short-lived", state_metadata={"ttlInSeconds": "3"})
    # The SDK's get_state drops the response metadata: ask through its generated stub.
    with grpc.insecure_channel(f"127.0.0.1:{env.grpc_port}") as channel:
        got = api_service_v1.DaprStub(channel).GetState(api_v1.GetStateRequest(store_name=STORE, key=key), timeout=10)
    assert got.data == b"short-lived" and "ttlExpireTime" in got.metadata, got
    deadline = time.monotonic() + TTL_WAIT_S
    while client.get_state(STORE, key).data != b"":
        assert time.monotonic() < deadline, f"{key} still there {TTL_WAIT_S}s after a 3 s TTL"
        time.sleep(0.1)


def test_killed_store_is_restarted_and_keeps_its_data(env, client, key):
    """SIGKILL the state store plugd launched: plugd starts it again and runs Init, and what
    was saved before is still there (it is in the SQLite file)."""
    client.save_state(STORE, key, "survives")
    (old,) = _children_running(env.plugd().popen.pid, "state_store.py")
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + RESTART_WAIT_S
    while True:
        new = [pid for pid in _children_running(env.plugd().popen.pid, "state_store.py") if pid != old]
        if new:
            try:
                if client.get_state(STORE, key).data == b"survives":
                    break
            except DaprGrpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, f"while restarting: {e.code()} {e.details()}"
        assert time.monotonic() < deadline, f"state store not back within {RESTART_WAIT_S}s (pids now {new})"
        time.sleep(0.05)
    client.save_state(STORE, key, "after-restart")
    assert client.get_state(STORE, key).data == b"after-restart"


# ----------------------------------------------------------------------------------- pub/sub


def _mine(events, token: str, path: str) -> List[dict]:
    return [e for e in events if e["path"] == path and isinstance(e["body"], dict)
            and isinstance(e["body"].get("data"), dict) and e["body"]["data"].get("token") == token]


def test_publish_reaches_the_app(env, client):
    token = uuid.uuid4().hex
    client.publish_event(PUBSUB, "orders", json.dumps({"token": token}), data_content_type="application/json")
    (e,) = wait_for_events(env, "the event on /orders", lambda ev: _mine(ev, token, "/orders"), DELIVERY_WAIT_S)
    ce = e["body"]
    assert (ce["topic"], ce["pubsubname"], ce["source"]) == ("orders", PUBSUB, APP_ID), ce


def test_bulk_publish_delivers_every_entry(env, client):
    token = uuid.uuid4().hex
    resp = client.publish_events(PUBSUB, "orders", [json.dumps({"token": token, "n": n}) for n in range(4)],
                                 data_content_type="application/json")
    assert not resp.failed_entries, resp.failed_entries
    got = wait_for_events(env, "four bulk-published events on /orders",
                          lambda ev: (lambda m: m if len(m) >= 4 else None)(_mine(ev, token, "/orders")), DELIVERY_WAIT_S)
    assert sorted(e["body"]["data"]["n"] for e in got) == [0, 1, 2, 3]


def test_nacked_message_is_delivered_again(env, client):
    """The app answers RETRY to the first attempt: plugd acks with an error, and the example
    puts the message back and delivers it again (the same event, same id)."""
    token = uuid.uuid4().hex
    client.publish_event(PUBSUB, "retry", json.dumps({"token": token}), data_content_type="application/json")
    attempts = wait_for_events(env, "the event accepted on /retry after a RETRY",
                               lambda ev: (lambda m: m if len(m) >= 2 else None)(_mine(ev, token, "/retry")),
                               DELIVERY_WAIT_S)
    assert [a["reply"] for a in attempts] == [{"status": "RETRY"}, {"status": "SUCCESS"}], attempts
    assert attempts[0]["body"]["id"] == attempts[1]["body"]["id"]


# ------------------------------------------------------------------------------- conformance


def _leave_stale_socket(path: Path) -> None:
    """Leaves a socket file at `path` that nobody listens on (a crashed component's)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


@pytest.mark.parametrize("script,kind", [("state_store.py", "state"), ("pubsub.py", "pubsub")])
def test_conformance(script, kind, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"conf-{kind}")
    sockets = Path(f"/tmp/plugd-sdkex-conf-{uuid.uuid4().hex[:8]}")  # short: a socket path has ~107 bytes
    sockets.mkdir()
    sock = sockets / f"conf{kind}.sock"
    _leave_stale_socket(sock)
    proc = _spawn(f"example-{kind}", [sys.executable, str(EXAMPLES / script),
                                      "--socket-folder", str(sockets), "--socket-name", sock.stem],
                  root, {"PYTHONUNBUFFERED": "1"})
    try:
        _wait_for_socket(sock, proc, SOCKET_WAIT_S)
        run = subprocess.run([str(_binary("plugd")), "conformance", "--socket", str(sock), "--json"],
                             capture_output=True, text=True, timeout=CONFORMANCE_WAIT_S)
    finally:
        rc = proc.stop()
        sock_left = sock.exists()
        for p in sockets.iterdir():
            p.unlink()
        sockets.rmdir()
    log = proc.log()
    assert rc == 0, f"{script} exited with {rc} after SIGTERM:\n{log}"
    assert not sock_left, f"{script} left its socket behind"
    assert "removing stale socket" in log, log
    try:
        report = json.loads(run.stdout)
    except ValueError:
        pytest.fail(f"conformance printed no JSON (exit {run.returncode}):\n{run.stdout}\n{run.stderr}")
    results = report["results"]
    failed = [r for r in results if r["outcome"] == "fail"]
    table = "\n".join(f"{r['kind']:8} {r['check']:40} {r['outcome']:5} {r['reason']}" for r in results)
    assert run.returncode == 0 and not failed, (
        f"conformance exit {run.returncode}, failed checks:\n{table}\n--- stderr\n{run.stderr}\n--- {script}\n{log}")
    assert any(r["kind"] == kind and r["outcome"] == "pass" for r in results), table


# ------------------------------------------------------------------ direct gRPC, by hand

COMPONENTS_PKG = "dapr.proto.components.v1"
INSTANCE_HEADER = "x-component-instance"
CALL_TIMEOUT_S = 10.0
PROTO_FILES = ("common", "state", "pubsub")


class Wire:
    """The component messages, from the repository's protos, in a private descriptor pool."""

    def __init__(self, out: Path):
        from grpc_tools import protoc

        wkt = importlib.resources.files("grpc_tools") / "_proto"
        descriptors = out / "components.pb"
        args = ["grpc_tools.protoc", f"--proto_path={REPO / 'proto' / 'proto'}", f"--proto_path={wkt}",
                "--include_imports", f"--descriptor_set_out={descriptors}",
                *[f"dapr/proto/components/v1/{n}.proto" for n in PROTO_FILES]]
        assert protoc.main(args) == 0, f"protoc failed: {args}"
        self.pool = descriptor_pool.DescriptorPool()
        for f in descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes()).file:
            self.pool.Add(f)

    def __getattr__(self, name: str):
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(f"{COMPONENTS_PKG}.{name}"))

    def call(self, channel, service: str, method: str, request, response: str, instance: str):
        fn = channel.unary_unary(f"/{COMPONENTS_PKG}.{service}/{method}",
                                 request_serializer=lambda m: m.SerializeToString(),
                                 response_deserializer=getattr(self, response).FromString)
        return fn(request, metadata=((INSTANCE_HEADER, instance),), timeout=CALL_TIMEOUT_S)


@pytest.fixture(scope="module")
def wire(tmp_path_factory):
    return Wire(tmp_path_factory.mktemp("wire"))


@contextlib.contextmanager
def _by_hand(script: str, root: Path) -> Iterator[Tuple[object, Path]]:
    """Starts `script` on a socket of its own; stops it after, and checks it exited 0."""
    sockets = Path(f"/tmp/plugd-sdkex-py-{uuid.uuid4().hex[:8]}")  # short: a socket path has ~107 bytes
    sockets.mkdir()
    sock = sockets / "c.sock"
    proc = _spawn(f"by-hand-{Path(script).stem}", [sys.executable, str(EXAMPLES / script), "--log-level", "debug",
                                                   "--socket-folder", str(sockets), "--socket-name", sock.stem],
                  root, {"PYTHONUNBUFFERED": "1"})
    try:
        _wait_for_socket(sock, proc, SOCKET_WAIT_S)
        yield proc, sock
        rc = proc.stop()
        assert rc == 0, f"{script} exited with {rc} after SIGTERM:\n{proc.log()}"
    finally:
        proc.stop()
        for p in sockets.iterdir():
            p.unlink()
        sockets.rmdir()


class Puller:
    """One PullMessages stream: a thread reads the messages, with the time each arrived."""

    def __init__(self, wire: Wire, channel, instance: str, topic: str):
        self.wire = wire
        self.requests: "queue.Queue" = queue.Queue()
        self.received: "queue.Queue" = queue.Queue()  # (time.monotonic(), PullMessagesResponse)
        self.requests.put(wire.PullMessagesRequest(topic=wire.Topic(name=topic)))
        fn = channel.stream_stream(f"/{COMPONENTS_PKG}.PubSub/PullMessages",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=wire.PullMessagesResponse.FromString)
        self.call = fn(self._send(), metadata=((INSTANCE_HEADER, instance),))
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _send(self):
        while True:
            req = self.requests.get()
            if req is None:
                return
            yield req

    def _read(self):
        try:
            for m in self.call:
                self.received.put((time.monotonic(), m))
        except grpc.RpcError:
            pass

    def next(self, what: str, within: float = DELIVERY_WAIT_S):
        """(arrival time, message): the next message, within `within` seconds."""
        try:
            return self.received.get(timeout=within)
        except queue.Empty:
            pytest.fail(f"{what}: nothing delivered within {within}s")

    def ack(self, did: str, error: Optional[str] = None) -> None:
        err = self.wire.AckMessageError(message=error) if error is not None else None
        self.requests.put(self.wire.PullMessagesRequest(ack_message_id=did, ack_error=err))

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()
        self.thread.join(timeout=STOP_WAIT_S)


class PubSubClient:
    def __init__(self, wire: Wire, channel, instance: str):
        self.wire, self.channel, self.instance = wire, channel, instance

    def init(self, props: Dict[str, str]) -> None:
        req = self.wire.PubSubInitRequest(metadata=self.wire.MetadataRequest(properties=props))
        self.wire.call(self.channel, "PubSub", "Init", req, "PubSubInitResponse", self.instance)

    def publish(self, topic: str, data: bytes) -> None:
        req = self.wire.PublishRequest(topic=topic, data=data, pubsub_name=self.instance)
        self.wire.call(self.channel, "PubSub", "Publish", req, "PublishResponse", self.instance)

    def pause(self) -> None:
        self.wire.call(self.channel, "PubSub", "Pause", self.wire.PauseRequest(), "PauseResponse", self.instance)

    def pull(self, topic: str) -> Puller:
        return Puller(self.wire, self.channel, self.instance, topic)


def _secret() -> str:
    return f"s3cret-{uuid.uuid4().hex}"


def test_direct_pause_does_not_outlive_a_host_restart(wire, tmp_path_factory):
    """daprd and plugd Pause at graceful shutdown and never Resume. After the host comes back
    (Init again with the same metadata, a new stream), delivery works; the old paused stream
    gets nothing."""
    with _by_hand("pubsub.py", tmp_path_factory.mktemp("pause")) as (proc, sock), \
            grpc.insecure_channel(f"unix:{sock}") as channel:
        ps = PubSubClient(wire, channel, "paused")
        meta = {"consumerID": "app", "ackDeadlineSeconds": "0"}
        ps.init(meta)
        old = ps.pull("t")
        try:
            ps.publish("t", b"m0")
            _, m0 = old.next("m0 on the first stream")
            assert m0.data == b"m0"
            old.ack(m0.id)
            ps.pause()
            ps.pause()  # idempotent: daprd calls it once per subscription
            ps.publish("t", b"m1")  # held: the only stream is paused
            ps.init(meta)  # the host restarted and runs Init again
            new = ps.pull("t")
            try:
                ps.publish("t", b"m2")
                got = []
                for _ in range(2):
                    _, m = new.next("delivery on the stream opened after Pause and re-Init")
                    got.append(m.data)
                    new.ack(m.id)
                assert got == [b"m1", b"m2"]
            finally:
                new.close()
            assert old.received.empty(), "the paused stream received a message"
        finally:
            old.close()


def test_direct_nack_backs_off(wire, tmp_path_factory):
    """A nacked message comes back only after a delay that grows with each nack; the Init
    metadata values never reach the log."""
    secret = _secret()
    with _by_hand("pubsub.py", tmp_path_factory.mktemp("nack")) as (proc, sock), \
            grpc.insecure_channel(f"unix:{sock}") as channel:
        ps = PubSubClient(wire, channel, "nacks")
        ps.init({"ackDeadlineSeconds": "0", "password": secret})
        sub = ps.pull("t")
        try:
            ps.publish("t", b"again")
            _, m = sub.next("the first delivery")
            for n, backoff in enumerate((0.1, 0.2), start=1):
                nacked = time.monotonic()
                sub.ack(m.id, f"nack {n}")
                arrived, m = sub.next(f"redelivery after nack {n}")
                assert m.data == b"again"
                assert arrived - nacked >= backoff, f"redelivered {arrived - nacked:.3f}s after nack {n}, backoff {backoff}s"
            sub.ack(m.id)
        finally:
            sub.close()
    log = proc.log()
    assert secret not in log, log
    assert "password" in log, "the Init log line names the metadata keys"


def test_direct_backlog_is_capped_per_group(wire, tmp_path_factory):
    """A group holds at most maxBacklog waiting messages: the oldest are dropped."""
    with _by_hand("pubsub.py", tmp_path_factory.mktemp("backlog")) as (proc, sock), \
            grpc.insecure_channel(f"unix:{sock}") as channel:
        ps = PubSubClient(wire, channel, "capped")
        ps.init({"ackDeadlineSeconds": "0", "maxInFlight": "1", "maxBacklog": "3"})
        sub = ps.pull("t")
        try:
            ps.publish("t", b"m0")
            _, m = sub.next("m0")  # the group exists; m0 is in flight
            for i in range(1, 6):
                ps.publish("t", f"m{i}".encode())  # m1, m2 dropped: m3..m5 wait
            got = [m.data]
            sub.ack(m.id)
            for _ in range(3):
                _, m = sub.next("a waiting message")
                got.append(m.data)
                sub.ack(m.id)
            ps.publish("t", b"last")
            _, m = sub.next("the message published last")
            got.append(m.data)
            sub.ack(m.id)
            assert got == [b"m0", b"m3", b"m4", b"m5", b"last"]
        finally:
            sub.close()
    assert "dropped the oldest" in proc.log()


def test_direct_concurrent_inits_of_one_state_instance(wire, tmp_path_factory):
    """Inits of one instance at the same time, with different metadata: all succeed, the last
    one's store serves, the process exits cleanly, and no metadata value is logged."""
    secret = _secret()
    with _by_hand("state_store.py", tmp_path_factory.mktemp("inits")) as (proc, sock), \
            grpc.insecure_channel(f"unix:{sock}") as channel:
        def init(i: int):
            props = {"tableName": f"t{i % 3}", "password": secret}
            req = wire.InitRequest(metadata=wire.MetadataRequest(properties=props))
            return wire.call(channel, "StateStore", "Init", req, "InitResponse", "raced")

        errors: List[str] = []

        def run(i: int) -> None:
            try:
                init(i)
            except grpc.RpcError as e:
                errors.append(f"{e.code()}: {e.details()}")

        threads = [threading.Thread(target=run, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=CALL_TIMEOUT_S * 2)
        assert not errors, errors
        init(0)
        wire.call(channel, "StateStore", "Set", wire.SetRequest(key="k", value=b"v"), "SetResponse", "raced")
        got = wire.call(channel, "StateStore", "Get", wire.GetRequest(key="k"), "GetResponse", "raced")
        assert got.data == b"v"
    log = proc.log()
    assert "Traceback" not in log and secret not in log, log


def test_direct_replaced_socket_is_left_alone(tmp_path_factory):
    """At exit the example removes its socket only if the file is still the one it bound."""
    with _by_hand("state_store.py", tmp_path_factory.mktemp("replaced")) as (proc, sock):
        sock.unlink()
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            other.bind(str(sock))
            other.listen()
            ino = sock.stat().st_ino
            assert proc.stop() == 0, proc.log()
            assert sock.exists() and sock.stat().st_ino == ino, "the example removed a socket that was not its own"
        finally:
            other.close()
    assert "left alone" in proc.log(), proc.log()


# -------------------------------------------------------------------- shared module, in-process


@pytest.fixture
def helpers(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module("plugd_component")


def test_helpers_socket_folder_variables(helpers, monkeypatch):
    args = SimpleNamespace(socket_folder=None, socket_name="x")
    names = ("DAPR_COMPONENTS_SOCKETS_FOLDER", "DAPR_COMPONENT_SOCKETS_FOLDER", "DAPR_COMPONENT_SOCKET_FOLDER")
    for k in names:
        monkeypatch.delenv(k, raising=False)
    assert helpers.socket_path(args) == Path(helpers.DEFAULT_SOCKETS_FOLDER) / "x.sock"
    for i, k in reversed(list(enumerate(names))):
        monkeypatch.setenv(k, f"/f{i}")
        assert helpers.socket_path(args) == Path(f"/f{i}/x.sock"), k  # the earlier name wins
    monkeypatch.setenv(names[0], "")  # empty = not set
    assert helpers.socket_path(args) == Path("/f1/x.sock")
    assert helpers.socket_path(SimpleNamespace(socket_folder="/flag", socket_name="x")) == Path("/flag/x.sock")


def test_helpers_stub_cache_fallback_is_private(helpers, monkeypatch, tmp_path):
    monkeypatch.setattr(helpers.tempfile, "tempdir", str(tmp_path))
    fallback = helpers._fallback_cache_base()
    assert fallback.parent == tmp_path and str(os.getuid()) in fallback.name
    assert helpers._private_dir(fallback) == fallback
    assert (fallback.stat().st_mode & 0o777) == 0o700
    fallback.chmod(0o755)
    with pytest.raises(helpers.UnsafeCacheDir):
        helpers._private_dir(fallback)
    fallback.rmdir()
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    fallback.symlink_to(real)
    with pytest.raises(helpers.UnsafeCacheDir):
        helpers._private_dir(fallback)
    # load_protos falls back to it when the cache folder cannot be made, and refuses it.
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("PLUGD_PY_STUBS_DIR", str(blocker / "stubs"))
    with pytest.raises(helpers.UnsafeCacheDir):
        helpers.load_protos()
