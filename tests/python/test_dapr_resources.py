"""A Dapr user's components folder, unchanged, run by plugd with the official Python SDK.

tests/python/dapr_resources/ holds Component YAML written as Dapr's documentation shows each
component (each file names the docs page it follows), under Dapr's own type names:
`state.redis` / `pubsub.redis` (password through a `secretKeyRef` to the local file secret store,
as the docs' tutorial does), `secretstores.local.file`, `secretstores.local.env`, `state.sqlite`,
`bindings.localstorage`, `bindings.cron`, `state.in-memory` and `pubsub.in-memory`. The test fills
in only what must be local to the run (the Redis address, the secrets file, the database file and
the storage folder) and starts:

    redis-server --requirepass <the password in dapr_resources/secrets.json>   (free port)
    apps/dapr_resources_app.py   (a dapr.ext.grpc.App: a topic on both pub/subs, the cron binding)
    plugd --app-port <app> --app-protocol grpc   with managed components on (the default)

and **no component process**: plugd launches the reference components itself (plugd-redis,
plugd-sqlite, plugd-memory, plugd-files twice, plugd-env, plugd-cron) for the sockets no process
serves. The checks are on what the SDK returns and on the real backends (the Redis hash, the
SQLite row, the files on disk, the app's deliveries), and, when the module ends, on plugd
stopping every process it started and removing their sockets.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import sqlite3
import string
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import grpc
import pytest
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType

from conftest import (
    wait_for_events,
    REDIS_SERVER,
    SDK_ENV_CLEARED,
    SDK_ENV_DEFAULTS,
    SOCKET_WAIT_S,
    STOP_WAIT_S,
    Proc,
    _Env,
    _env_running,
    _free_port,
    _new_root,
    _spawn_retrying,
    _start_app,
    _start_plugd,
    _starting,
    _wait_for_tcp,
)

RESOURCES_DIR = Path(__file__).resolve().parent / "dapr_resources"
APP_ID = "dapr-resources-py"
TOPIC = "orders"
DELIVERY_WAIT_S = 20.0
WARMUP_WAIT_S = 30.0

# Component name -> Dapr type, as written in dapr_resources/.
REDIS_STORE = "statestore"
REDIS_PUBSUB = "pubsub"
SQLITE_STORE = "sqlitestore"
MEMORY_STORE = "inmemorystore"
MEMORY_PUBSUB = "inmemorypubsub"
LOCALSTORAGE = "localstorage"
FILE_SECRETS = "local-secret-store"
ENV_SECRETS = "envvar-secret-store"
CRON = "scheduled"
EXPECTED_TYPES = {
    REDIS_STORE: "state.redis",
    REDIS_PUBSUB: "pubsub.redis",
    SQLITE_STORE: "state.sqlite",
    MEMORY_STORE: "state.in-memory",
    MEMORY_PUBSUB: "pubsub.in-memory",
    LOCALSTORAGE: "bindings.localstorage",
    FILE_SECRETS: "secretstores.local.file",
    ENV_SECRETS: "secretstores.local.env",
    CRON: "bindings.cron",
}
PUBSUBS = (REDIS_PUBSUB, MEMORY_PUBSUB)

# What plugd must launch: socket name (the type without its category) -> program.
EXPECTED_MANAGED = {
    "redis": "plugd-redis",
    "sqlite": "plugd-sqlite",
    "in-memory": "plugd-memory",
    "localstorage": "plugd-files",
    "local.file": "plugd-files",
    "local.env": "plugd-env",
    "cron": "plugd-cron",
}

# plugd's environment (passed on to the components it launches): the env secret store has the
# prefix MYAPP_, so it sees API_KEY and DB_PASSWORD, never the unprefixed DB_PASSWORD.
ENV_PREFIX = "MYAPP_"
ENV_SECRETS_VALUES = {"API_KEY": "k-" + uuid.uuid4().hex[:10], "DB_PASSWORD": "pw with spaces & :colons:"}
UNPREFIXED_DB_PASSWORD = "the-unprefixed-one"


@dataclass
class DaprResourcesEnv(_Env):
    root: Path
    sockets: Path
    resources: Path
    events_path: Path
    secrets: dict
    storage_root: Path
    sqlite_db: Path
    label: str = "dapr-resources"
    app_id: str = APP_ID
    protocol: str = "grpc"  # the app's (names its process `grpc-app`)
    grpc_port: int = 0
    http_port: int = 0
    app_port: int = 0
    redis_port: int = 0
    # socket name -> (pid, program) of the processes plugd launched, read once it was healthy.
    managed: Dict[str, tuple] = field(default_factory=dict)
    procs: List[Proc] = field(default_factory=list)

    @property
    def redis_password(self) -> str:
        return self.secrets["redisPassword"]

    def plugd(self) -> Proc:
        return [p for p in self.procs if p.name.startswith("plugd")][-1]


# ---------------------------------------------------------------------------------- Redis (RESP)


def _resp_encode(*args) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _resp_read(f):
    line = f.readline()
    if not line:
        raise RuntimeError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(f"redis error: {rest.decode()}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise RuntimeError(f"unexpected redis reply {line!r}")


def redis(env: DaprResourcesEnv, *command):
    """Runs one command on the test's redis-server (after AUTH) and returns the reply."""
    with socket.create_connection(("127.0.0.1", env.redis_port), timeout=5) as s:
        f = s.makefile("rb")
        s.sendall(_resp_encode("AUTH", env.redis_password) + _resp_encode(*command))
        assert _resp_read(f) == "OK"
        return _resp_read(f)


def _start_redis(env: DaprResourcesEnv) -> None:
    data_dir = env.root / "redis"
    data_dir.mkdir()

    def launch() -> List[str]:
        env.redis_port = _free_port()
        return [REDIS_SERVER, "--port", str(env.redis_port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(data_dir), "--requirepass", env.redis_password]

    _spawn_retrying(env, "redis-server", launch, lambda proc: _wait_for_tcp(env.redis_port, proc, SOCKET_WAIT_S))
    if redis(env, "PING") != "PONG":
        raise RuntimeError("redis-server did not answer PING after AUTH")


# ------------------------------------------------------------------------------------- fixture


def _render_resources(env: DaprResourcesEnv) -> None:
    """Copies every YAML of dapr_resources/ into env.resources with the run's values filled in
    (string.Template placeholders; a placeholder left unfilled is an error)."""
    values = {
        "REDIS_HOST": f"localhost:{env.redis_port}",
        "SECRETS_FILE": str(env.root / "secrets.json"),
        "SQLITE_DB": str(env.sqlite_db),
        "ROOT_PATH": str(env.storage_root),
    }
    for src in sorted(RESOURCES_DIR.glob("*.yaml")):
        (env.resources / src.name).write_text(string.Template(src.read_text()).substitute(values))


def _managed_children(pid: int) -> Dict[str, tuple]:
    """The children of process `pid`, by the `--socket-name` they were started with:
    {socket name: (pid, program name)}."""
    children = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children.update(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    found = {}
    for child in children:
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if "--socket-name" in args:
            found[args[args.index("--socket-name") + 1]] = (child, Path(args[0]).name)
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie, exited but not reaped, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _warm_up(env: DaprResourcesEnv) -> None:
    """Publishes {"warmup": token} to TOPIC on every pub/sub until the app has one from each
    (a broker may drop what is published before its subscription exists), so tests never sleep."""
    token = uuid.uuid4().hex
    pending = set(PUBSUBS)
    deadline = time.monotonic() + WARMUP_WAIT_S
    next_publish = 0.0
    with DaprClient() as client:
        while pending:
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(f"no warm-up event reached the app within {WARMUP_WAIT_S}s from {sorted(pending)}")
            if now >= next_publish:
                for name in pending:
                    client.publish_event(name, TOPIC, json.dumps({"warmup": token}), data_content_type="application/json")
                next_publish = now + 1.0
            for e in env.events():
                if e.get("kind") == "topic" and e.get("data") == {"warmup": token}:
                    pending.discard(e["subscribed_pubsub"])
            time.sleep(0.02)


@contextlib.contextmanager
def _sdk_pointed_at(env: DaprResourcesEnv):
    """The SDK's environment (read at each access: the ports, its health check's timeout)
    pointed at this plugd while the module runs; restored afterwards."""
    names = (*SDK_ENV_DEFAULTS, *SDK_ENV_CLEARED, "DAPR_GRPC_PORT", "DAPR_HTTP_PORT")
    saved = {k: os.environ.get(k) for k in names}
    try:
        for k in SDK_ENV_CLEARED:
            os.environ.pop(k, None)
        os.environ.update(env.sdk_env())
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def dapr_env():
    root, sockets, resources = _new_root("plugd-dr-")
    secrets = json.loads((RESOURCES_DIR / "secrets.json").read_text())
    env = DaprResourcesEnv(
        root=root, sockets=sockets, resources=resources, events_path=root / "events.jsonl",
        secrets=secrets, storage_root=root / "files", sqlite_db=root / "data.db",
    )
    with _env_running(env, "plugd running dapr_resources/ (managed components)"):
        with _starting(env, "plugd with the Dapr resources folder"):
            (root / "secrets.json").write_text((RESOURCES_DIR / "secrets.json").read_text())
            _start_redis(env)
            _render_resources(env)
            _start_app(env, "dapr_resources_app.py", [TOPIC, CRON, *PUBSUBS])
            env_vars = {ENV_PREFIX + k: v for k, v in ENV_SECRETS_VALUES.items()}
            env_vars["DB_PASSWORD"] = UNPREFIXED_DB_PASSWORD
            _start_plugd(env, sockets, resources, managed=True, extra_env=env_vars, extra_args=[
                "--app-port", str(env.app_port), "--app-protocol", "grpc", "--enable-metrics=false"])
            env.managed = _managed_children(env.plugd().popen.pid)
        with _sdk_pointed_at(env):
            with _starting(env, "the subscriptions (warm-up)"):
                _warm_up(env)
            yield env
        _check_shutdown(env)


def _check_shutdown(env: DaprResourcesEnv) -> None:
    """plugd stops cleanly on SIGTERM, and with it every component process it launched, whose
    sockets it removes."""
    plugd = env.plugd()
    assert plugd.popen.poll() is None, f"plugd exited early with {plugd.popen.returncode}"
    rc = plugd.stop()
    assert rc == 0, f"plugd exited with {rc} after SIGTERM (None: killed after {STOP_WAIT_S}s)"
    deadline = time.monotonic() + STOP_WAIT_S
    while True:
        alive = {name: pid for name, (pid, _) in env.managed.items() if _alive(pid)}
        left = sorted(p.name for p in env.sockets.iterdir())
        if not alive and not left:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"after plugd stopped: managed processes still running {alive}, sockets left {left}\n{env.logs()}")
        time.sleep(0.02)


# ------------------------------------------------------------------------------------ helpers


@pytest.fixture
def client(dapr_env):
    with DaprClient() as c:
        yield c


@pytest.fixture
def token():
    return uuid.uuid4().hex[:12]


def expect_error(fn, code, error_code: Optional[str] = None, *in_message: str):
    """Runs fn and expects a gRPC error with `code` (and, when the SDK gives one, the ErrorInfo
    reason `error_code`) and every text of `in_message` in its message."""
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == code, f"status {e.code()} ({e.details()!r}), expected {code}"
        if error_code is not None and isinstance(e, DaprGrpcError):
            assert e.error_code() == error_code, f"reason {e.error_code()!r}, expected {error_code!r} ({e.details()!r})"
        for text in in_message:
            assert text in (e.details() or ""), f"{text!r} not in {e.details()!r}"
        return e
    except ValueError as e:
        pytest.fail(f"the SDK raised ValueError (status and details trailer disagree): {e}")
    pytest.fail(f"no error raised, expected {code}")


def wait_for(env: DaprResourcesEnv, what: str, check, within: float = DELIVERY_WAIT_S):
    """Polls the app's events until `check(events)` is truthy (returned), or fails after `within`."""
    return wait_for_events(env, what, check, within)


def stored_key(key: str) -> str:
    """The key a state store receives from the runtime (Dapr's default prefix: the app id)."""
    return f"{APP_ID}||{key}"


def backend_value(env: DaprResourcesEnv, store: str, key: str) -> Optional[bytes]:
    """The value as the backend really holds it (None: not there); in-memory has no outside view."""
    if store == REDIS_STORE:
        return redis(env, "HGET", stored_key(key), "data")
    if store == SQLITE_STORE:
        with sqlite3.connect(f"file:{env.sqlite_db}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute("SELECT value FROM state WHERE key = ?", (stored_key(key),)).fetchone()
        return None if row is None else bytes(row[0])
    raise ValueError(store)


def upsert(key: str, value: str, etag: Optional[str] = None) -> TransactionalStateOperation:
    return TransactionalStateOperation(key=key, data=value, etag=etag, operation_type=TransactionOperationType.upsert)


def delete(key: str, etag: Optional[str] = None) -> TransactionalStateOperation:
    return TransactionalStateOperation(key=key, data="", etag=etag, operation_type=TransactionOperationType.delete)


# ------------------------------------------------------------------- managed components, metadata


def test_plugd_launched_every_component_itself(dapr_env):
    programs = {name: program for name, (_, program) in dapr_env.managed.items()}
    assert programs == EXPECTED_MANAGED, f"plugd's children by socket name: {dapr_env.managed}"
    sockets = sorted(p.name for p in dapr_env.sockets.iterdir())
    assert sockets == sorted(f"{name}.sock" for name in EXPECTED_MANAGED)
    # Only plugd, the app and redis-server were started by the test.
    # (a name can repeat only when a start was retried on new ports)
    assert {p.name.split("-")[0] for p in dapr_env.procs} == {"redis", "grpc", "plugd"}


def test_get_metadata_lists_every_component_with_its_dapr_type(client):
    md = client.get_metadata()
    assert md.application_id == APP_ID
    found = {c.name: c.type for c in md.registered_components}
    assert found == EXPECTED_TYPES
    by_name = {c.name: c for c in md.registered_components}
    assert all(c.version == "v1" for c in md.registered_components), [(c.name, c.version) for c in md.registered_components]
    for store in (REDIS_STORE, SQLITE_STORE, MEMORY_STORE):
        assert {"ETAG", "TRANSACTIONAL"} <= set(by_name[store].capabilities), (store, by_name[store].capabilities)
    assert "OUTPUT_BINDING" in by_name[LOCALSTORAGE].capabilities
    assert "INPUT_BINDING" in by_name[CRON].capabilities


def test_http_metadata_shows_every_component_ready(dapr_env):
    with urllib.request.urlopen(dapr_env.http_url("/v1.0/metadata"), timeout=5) as resp:
        body = json.loads(resp.read())
    status = {c["name"]: (c["type"], c.get("status")) for c in body["components"]}
    assert status == {name: (type_, "READY") for name, type_ in EXPECTED_TYPES.items()}
    # The app's programmatic subscriptions, one per pub/sub.
    assert {(s["pubsubname"], s["topic"]) for s in body["subscriptions"]} == {(p, TOPIC) for p in PUBSUBS}


def test_secret_values_are_not_logged(dapr_env):
    log = dapr_env.plugd().log()
    assert dapr_env.redis_password not in log
    assert ENV_SECRETS_VALUES["DB_PASSWORD"] not in log


# ------------------------------------------------------------------------------------ state


STATE_STORES = [REDIS_STORE, SQLITE_STORE, MEMORY_STORE]


@pytest.mark.parametrize("store", STATE_STORES)
def test_state_save_get_and_stale_etag(client, dapr_env, store, token):
    key = f"order-{token}"
    client.save_state(store, key, "v1")
    first = client.get_state(store, key)
    assert first.data == b"v1" and first.etag
    if store != MEMORY_STORE:
        assert backend_value(dapr_env, store, key) == b"v1"

    client.save_state(store, key, "v2", etag=first.etag)
    second = client.get_state(store, key)
    assert second.data == b"v2" and second.etag and second.etag != first.etag

    # The first etag is stale now: the save is refused and the value stays.
    err = expect_error(lambda: client.save_state(store, key, "v3", etag=first.etag),
                       grpc.StatusCode.ABORTED, "ERR_STATE_SAVE")
    assert "etag" in err.details().lower()
    assert client.get_state(store, key).data == b"v2"
    if store != MEMORY_STORE:
        assert backend_value(dapr_env, store, key) == b"v2"

    expect_error(lambda: client.delete_state(store, key, etag=first.etag), grpc.StatusCode.ABORTED, "ERR_STATE_DELETE")
    client.delete_state(store, key, etag=second.etag)
    assert client.get_state(store, key).data == b""
    if store != MEMORY_STORE:
        assert backend_value(dapr_env, store, key) is None


@pytest.mark.parametrize("store", STATE_STORES)
def test_state_transaction_is_applied_whole(client, dapr_env, store, token):
    a, b, gone = f"tx-a-{token}", f"tx-b-{token}", f"tx-gone-{token}"
    client.save_state(store, gone, "to be deleted")
    client.save_state(store, a, "a0")
    etag_a = client.get_state(store, a).etag

    client.execute_state_transaction(store, [upsert(a, "a1", etag_a), upsert(b, "b1"), delete(gone)])
    items = {i.key: i.data for i in client.get_bulk_state(store, [a, b, gone]).items}
    assert items == {a: b"a1", b: b"b1", gone: b""}
    if store != MEMORY_STORE:
        assert [backend_value(dapr_env, store, k) for k in (a, b, gone)] == [b"a1", b"b1", None]

    # A stale etag anywhere in a transaction fails all of it: nothing is written or deleted.
    expect_error(lambda: client.execute_state_transaction(store, [upsert(b, "b2"), upsert(a, "a2", etag_a), delete(b)]),
                 grpc.StatusCode.INTERNAL, "ERR_STATE_TRANSACTION")
    items = {i.key: i.data for i in client.get_bulk_state(store, [a, b]).items}
    assert items == {a: b"a1", b: b"b1"}
    if store != MEMORY_STORE:
        assert [backend_value(dapr_env, store, k) for k in (a, b)] == [b"a1", b"b1"]


def test_redis_state_is_a_hash_under_the_app_id_prefix(client, dapr_env, token):
    key = f"layout-{token}"
    client.save_state(REDIS_STORE, key, '{"qty": 3}', state_metadata={"contentType": "application/json"})
    fields = redis(dapr_env, "HGETALL", stored_key(key))
    as_dict = {fields[i].decode(): fields[i + 1] for i in range(0, len(fields), 2)}
    assert as_dict["data"] == b'{"qty": 3}'
    assert client.get_state(REDIS_STORE, key).etag == as_dict["version"].decode()


# ---------------------------------------------------------------------------------- pub/sub


@pytest.mark.parametrize("pubsub", PUBSUBS)
def test_publish_reaches_the_subscribed_app(client, dapr_env, pubsub, token):
    client.publish_event(pubsub, TOPIC, json.dumps({"orderId": token}), data_content_type="application/json")
    [event] = wait_for(dapr_env, f"the event published to {pubsub}", lambda events: [
        e for e in events if e.get("kind") == "topic" and e.get("data") == {"orderId": token}])
    assert event["subscribed_pubsub"] == pubsub and event["pubsub"] == pubsub
    assert event["topic"] == TOPIC
    assert event["source"] == APP_ID
    assert event["type"] == "com.dapr.event.sent"


def test_redis_pubsub_keeps_the_stream_in_redis(client, dapr_env, token):
    client.publish_event(REDIS_PUBSUB, TOPIC, json.dumps({"orderId": token}), data_content_type="application/json")
    wait_for(dapr_env, "the event", lambda events: [e for e in events if e.get("data") == {"orderId": token}])
    # pubsub.redis is Redis Streams: the topic is a stream with a consumer group for the app id.
    assert redis(dapr_env, "TYPE", TOPIC) == "stream"
    groups = redis(dapr_env, "XINFO", "GROUPS", TOPIC)
    names = [g[g.index(b"name") + 1].decode() for g in groups]
    assert APP_ID in names, names


# ------------------------------------------------------------------------------ input binding


def test_cron_binding_fires_into_the_app(dapr_env):
    wait_for(dapr_env, f"two events of the cron binding {CRON!r}", lambda events: len(
        [e for e in events if e.get("kind") == "binding" and e.get("binding") == CRON]) >= 2)


# ------------------------------------------------------------------------ bindings.localstorage


def in_root(env: DaprResourcesEnv, name: str) -> Path:
    """A file name answered by the binding (relative to rootPath, or absolute) as a path."""
    return env.storage_root / name


def test_localstorage_create_get_list_delete(client, dapr_env, token):
    name = f"report-{token}.txt"
    created = client.invoke_binding(LOCALSTORAGE, "create", "Hello, World!", binding_metadata={"fileName": name})
    assert json.loads(created.data) == {"fileName": name}
    assert (dapr_env.storage_root / name).read_bytes() == b"Hello, World!"

    got = client.invoke_binding(LOCALSTORAGE, "get", binding_metadata={"fileName": name})
    assert got.data == b"Hello, World!"

    listed = json.loads(client.invoke_binding(LOCALSTORAGE, "list").data)
    assert isinstance(listed, list)
    assert (dapr_env.storage_root / name).resolve() in {in_root(dapr_env, n).resolve() for n in listed}, listed

    deleted = client.invoke_binding(LOCALSTORAGE, "delete", binding_metadata={"fileName": name})
    assert deleted.data == b""
    assert not (dapr_env.storage_root / name).exists()
    expect_error(lambda: client.invoke_binding(LOCALSTORAGE, "get", binding_metadata={"fileName": name}),
                 grpc.StatusCode.INTERNAL)


def http_binding(env: DaprResourcesEnv, name: str, body: dict):
    """POST /v1.0/bindings/<name> with a JSON body, as the docs' curl examples do: (status, body)."""
    req = urllib.request.Request(env.http_url(f"/v1.0/bindings/{name}"), data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_localstorage_docs_http_requests(dapr_env, token):
    # The requests of the docs page, over HTTP: the JSON string "Hello World" is stored as its
    # text (no quotes), get answers it, delete answers 204 with no body.
    name = f"my-test-file-{token}.txt"
    status, body = http_binding(dapr_env, LOCALSTORAGE,
                                {"operation": "create", "data": "Hello World", "metadata": {"fileName": name}})
    assert status == 200 and json.loads(body) == {"fileName": name}, (status, body)
    assert (dapr_env.storage_root / name).read_bytes() == b"Hello World"
    assert http_binding(dapr_env, LOCALSTORAGE, {"operation": "get", "metadata": {"fileName": name}}) == (200, b"Hello World")
    status, body = http_binding(dapr_env, LOCALSTORAGE, {"operation": "list"})
    assert status == 200 and (dapr_env.storage_root / name).resolve() in {
        in_root(dapr_env, n).resolve() for n in json.loads(body)}, body
    status, body = http_binding(dapr_env, LOCALSTORAGE, {"operation": "delete", "metadata": {"fileName": name}})
    assert (status, body) == (204, b""), (status, body)
    assert not (dapr_env.storage_root / name).exists()


def test_localstorage_http_delete_answers_204_as_documented(dapr_env, token):
    name = f"to-delete-{token}.txt"
    assert http_binding(dapr_env, LOCALSTORAGE, {"operation": "create", "data": "x y", "metadata": {"fileName": name}})[0] == 200
    assert http_binding(dapr_env, LOCALSTORAGE, {"operation": "delete", "metadata": {"fileName": name}}) == (204, b"")


def test_localstorage_detects_base64_and_names_files_itself(client, dapr_env):
    # The docs: binary content is sent as base64, which the binding detects and decodes; without
    # fileName, a UUID names the file.
    binary = b"\x89PNG\r\n\x1a\n\x00\xff\xfe" + os.urandom(16)
    created = client.invoke_binding(LOCALSTORAGE, "create", base64.b64encode(binary).decode())
    path = in_root(dapr_env, json.loads(created.data)["fileName"])
    uuid.UUID(path.name)  # a UUID, or ValueError
    assert path.read_bytes() == binary
    assert client.invoke_binding(LOCALSTORAGE, "get", binding_metadata={"fileName": path.name}).data == binary
    client.invoke_binding(LOCALSTORAGE, "delete", binding_metadata={"fileName": path.name})
    assert not path.exists()


def test_localstorage_lists_one_directory(client, dapr_env, token):
    folder = f"my/cool/directory-{token}"
    inside = [f"{folder}/a.txt", f"{folder}/sub/b.txt"]
    outside = f"elsewhere-{token}.txt"
    for n in (*inside, outside):
        client.invoke_binding(LOCALSTORAGE, "create", f"content of {n}", binding_metadata={"fileName": n})
    listed = json.loads(client.invoke_binding(LOCALSTORAGE, "list", binding_metadata={"fileName": folder}).data)
    assert {in_root(dapr_env, n).resolve() for n in listed} == {(dapr_env.storage_root / n).resolve() for n in inside}
    for n in (*inside, outside):
        client.invoke_binding(LOCALSTORAGE, "delete", binding_metadata={"fileName": n})


# ----------------------------------------------------------------------- secretstores.local.file


def test_local_file_secret_store_flattens_nested_keys(client, dapr_env):
    s = dapr_env.secrets
    assert client.get_secret(FILE_SECRETS, "redisPassword").secret == {"redisPassword": s["redisPassword"]}
    sql = s["connectionStrings"]["sql"]
    assert client.get_secret(FILE_SECRETS, "connectionStrings:sql").secret == {"connectionStrings:sql": sql}
    bulk = client.get_bulk_secret(FILE_SECRETS).secrets
    assert bulk == {
        "redisPassword": {"redisPassword": s["redisPassword"]},
        "connectionStrings:sql": {"connectionStrings:sql": sql},
        "connectionStrings:mysql": {"connectionStrings:mysql": s["connectionStrings"]["mysql"]},
    }
    # Not flattened: the parent object is no secret.
    expect_error(lambda: client.get_secret(FILE_SECRETS, "connectionStrings"), grpc.StatusCode.INTERNAL)


# ------------------------------------------------------------------------ secretstores.local.env


def test_local_env_secret_store_reads_prefixed_variables(client):
    for name, value in ENV_SECRETS_VALUES.items():
        assert client.get_secret(ENV_SECRETS, name).secret == {name: value}
    # DB_PASSWORD is read as MYAPP_DB_PASSWORD, never the unprefixed variable.
    assert client.get_secret(ENV_SECRETS, "DB_PASSWORD").secret["DB_PASSWORD"] != UNPREFIXED_DB_PASSWORD
    # The bulk answer has exactly the prefixed variables, named without the prefix.
    assert client.get_bulk_secret(ENV_SECRETS).secrets == {k: {k: v} for k, v in ENV_SECRETS_VALUES.items()}


def test_local_env_secret_store_unset_variable_is_empty(client):
    name = f"NOT_SET_{uuid.uuid4().hex[:6].upper()}"
    assert client.get_secret(ENV_SECRETS, name).secret == {name: ""}
