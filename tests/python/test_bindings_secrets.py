"""Bindings and secret stores with the official Python SDK (`dapr[grpc]==1.19.0`, unmodified).

Output bindings and secrets go through `DaprClient.invoke_binding`, `get_secret` and
`get_bulk_secret` against plugd + plugd-files (`files_env` in conftest.py: a folder binding and a
JSON-file secret store on one socket). Input bindings come from plugd-cron firing every 200 ms,
delivered by plugd to a `dapr.ext.grpc.App` (apps/grpc_bindings_app.py, `--app-protocol grpc`)
and to a bare `http.server` app (apps/http_bindings_app.py, `--app-protocol http`); the apps
write what they receive to a JSON-lines file, which the tests poll with a deadline.

What the components answer is documented in components/files/README.md and
components/cron/README.md; what plugd does in the README's "Bindings" and "Secrets" sections.
Every check here is on what the SDK returns or raises and on the files really on disk.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Dict, List, Set

import grpc
import pytest
from dapr.clients import DaprClient

from conftest import (
    wait_for_events,
    CRON_PERIOD,
    FILES_BINDING,
    FILES_REF_BINDING,
    GRPC_TICKS,
    GRPC_TICKS_UNLISTED,
    HTTP_TICKS,
    HTTP_TICKS_DEFAULT,
    HTTP_TICKS_ROUTE,
    REF_ROOT_SECRET,
    SECRET_STORE,
    SECRET_STORE_MULTI,
    BindingsEnv,
)

DELIVERY_WAIT_S = 15.0
# Events each input-binding test waits for (the cron bindings fire every 200 ms).
EVENTS_N = 5
FILE_OPERATIONS = ("create", "get", "list", "delete")
CRON_PERIOD_MS = 200


# ------------------------------------------------------------------------------------ helpers


def _client(env: BindingsEnv, monkeypatch) -> DaprClient:
    """A DaprClient pointed at this environment's plugd (the SDK reads the env at each access)."""
    for k in ("DAPR_GRPC_ENDPOINT", "DAPR_HTTP_ENDPOINT", "DAPR_API_TOKEN", "DAPR_RUNTIME_HOST", "DAPR_API_MAX_RETRIES"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.sdk_env().items():
        monkeypatch.setenv(k, v)
    return DaprClient()


@pytest.fixture
def client(files_env, monkeypatch):
    with _client(files_env, monkeypatch) as c:
        yield c


@pytest.fixture
def token():
    """A marker unique to the test, used in file names so tests never see each other's files."""
    return uuid.uuid4().hex[:12]


def expect_error(fn, code, *in_message) -> grpc.RpcError:
    """Runs fn, expects a gRPC error with status `code` and every text of `in_message` in its
    message. (The SDK raises DaprGrpcError from some methods; invoke_binding, get_secret and
    get_bulk_secret let grpc's own RpcError through.)"""
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == code, f"status {e.code()} ({e.details()!r}), expected {code}"
        for text in in_message:
            assert text in (e.details() or ""), f"{text!r} not in the message {e.details()!r}"
        return e
    pytest.fail(f"no error raised, expected {code}")


def tree(root: Path) -> Set[str]:
    """Every path under `root` (files and folders), relative; logs excluded (they grow, but no
    new ones appear)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def create(client: DaprClient, data, file_name=None, binding=FILES_BINDING):
    md = {} if file_name is None else {"fileName": file_name}
    return client.invoke_binding(binding, "create", data, binding_metadata=md)


def get(client: DaprClient, file_name, binding=FILES_BINDING):
    return client.invoke_binding(binding, "get", binding_metadata={"fileName": file_name})


def listed(client: DaprClient, binding=FILES_BINDING) -> List[str]:
    resp = client.invoke_binding(binding, "list")
    names = json.loads(resp.data)
    assert isinstance(names, list) and all(isinstance(n, str) for n in names), resp.data
    assert names == sorted(names), f"list is documented as sorted: {names}"
    return names


def wait_for(env: BindingsEnv, what: str, check, within: float = DELIVERY_WAIT_S):
    """Polls the app's events until `check(events)` is truthy (returned), or fails after `within`."""
    return wait_for_events(env, what, check, within)


def at_least(n, select):
    """A `wait_for` check: the selected events once there are at least n of them."""
    def check(events):
        found = select(events)
        return found if len(found) >= n else None
    return check


def parse_fire_time(value) -> datetime:
    """plugd-cron's fire time: RFC 3339, UTC, milliseconds (`2026-11-24T10:00:00.000Z`)."""
    assert isinstance(value, str), f"fire time {value!r} is not a string"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", value), f"not RFC 3339 UTC with ms: {value!r}"
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def assert_fire_times(texts: List[str]) -> List[datetime]:
    """Event data are JSON strings holding the scheduled fire times: strictly increasing, on the
    `@every 200ms` grid (whole multiples of the period apart, skipped ticks allowed), recent."""
    times = [parse_fire_time(json.loads(text)) for text in texts]
    for earlier, later in zip(times, times[1:]):
        assert later > earlier, f"fire times not increasing: {texts}"
        gap_us = (later - earlier) // timedelta(microseconds=1)
        assert gap_us % (CRON_PERIOD_MS * 1000) == 0, f"fire times {earlier} and {later} are off the {CRON_PERIOD_MS} ms grid"
    now = datetime.now(timezone.utc)
    assert now - timedelta(minutes=2) < times[0] and times[-1] < now + timedelta(seconds=5), (
        f"fire times {texts} are not around now ({now.isoformat()})"
    )
    return times


# ----------------------------------------------------------------- 1. output binding (files)


def test_create_get_list_delete(files_env, client, token):
    out = files_env.out_dir
    named = f"named-{token}.txt"
    content = f"hello {token}\n".encode() + bytes([0, 255, 128])  # not UTF-8: bytes kept as they are

    resp = create(client, content, named)
    assert json.loads(resp.data) == {"fileName": named}, resp.data
    assert resp.binding_metadata.get("fileName") == named, resp.binding_metadata
    assert (out / named).read_bytes() == content, "create writes the data under rootPath"

    # No fileName: the binding picks a name and returns it.
    generated_content = f"generated {token}".encode()
    resp = create(client, generated_content)
    generated = json.loads(resp.data)["fileName"]
    assert generated and "/" not in generated and generated != named, resp.data
    assert resp.binding_metadata.get("fileName") == generated, resp.binding_metadata
    assert (out / generated).read_bytes() == generated_content

    # A name with folders creates them.
    nested = f"sub-{token}/deeper/n.txt"
    create(client, b"nested", nested)
    assert (out / nested).read_bytes() == b"nested"

    got = get(client, named)
    assert got.data == content, "get returns exactly what create wrote"
    assert got.binding_metadata.get("fileName") == named, got.binding_metadata
    # A file written behind the binding's back is read as well (get reads the disk).
    (out / f"outside-{token}.txt").write_bytes(b"written directly")
    assert get(client, f"outside-{token}.txt").data == b"written directly"

    names = listed(client)
    for name in (named, generated, nested, f"outside-{token}.txt"):
        assert name in names, f"{name} not listed: {names}"

    for name in (named, generated, nested, f"outside-{token}.txt"):
        resp = client.invoke_binding(FILES_BINDING, "delete", binding_metadata={"fileName": name})
        assert resp.data == b"", resp.data
        assert not (out / name).exists(), f"{name} still on disk after delete"
    names = listed(client)
    assert not {named, generated, nested} & set(names), names

    expect_error(lambda: get(client, named), grpc.StatusCode.INTERNAL, FILES_BINDING, named)
    assert not (out / named).exists(), "a failed get must not create the file"


def test_base64_options(files_env, client, token):
    out = files_env.out_dir
    name = f"b64-{token}.bin"
    raw = bytes(range(256))

    create(client, base64.b64encode(raw), name)
    assert (out / name).read_bytes() == base64.b64encode(raw), "without decodeBase64 the text is written as is"
    client.invoke_binding(FILES_BINDING, "create", base64.b64encode(raw),
                          binding_metadata={"fileName": name, "decodeBase64": "true"})
    assert (out / name).read_bytes() == raw, "decodeBase64: the decoded bytes are written"
    got = client.invoke_binding(FILES_BINDING, "get", binding_metadata={"fileName": name, "encodeBase64": "true"})
    assert base64.b64decode(got.data) == raw, "encodeBase64: get answers base64 text"

    # Invalid base64 is refused and nothing is written.
    bad = f"bad-{token}.bin"
    expect_error(lambda: client.invoke_binding(FILES_BINDING, "create", b"!!not base64",
                                               binding_metadata={"fileName": bad, "decodeBase64": "true"}),
                 grpc.StatusCode.INTERNAL, "base64")
    assert not (out / bad).exists()
    client.invoke_binding(FILES_BINDING, "delete", binding_metadata={"fileName": name})
    assert not (out / name).exists()


ESCAPES = ["../escape-{t}.txt", "sub/../../escape-{t}.txt", "{abs}/abs-{t}.txt"]


@pytest.mark.parametrize("pattern", ESCAPES, ids=["dotdot", "nested-dotdot", "absolute"])
def test_path_traversal_is_refused(files_env, client, token, pattern):
    env, out = files_env, files_env.out_dir
    name = pattern.format(t=token, abs=env.root)
    before = tree(env.root)

    expect_error(lambda: create(client, b"should not be written", name), grpc.StatusCode.INTERNAL,
                 FILES_BINDING, f'fileName "{name}"')

    assert not (env.root / f"escape-{token}.txt").exists()
    assert not (env.root / f"abs-{token}.txt").exists()
    assert not (out / "sub").exists(), "a refused name must not create folders"
    assert tree(env.root) == before, f"files appeared or vanished: {tree(env.root) ^ before}"


@pytest.mark.parametrize("operation", ["get", "delete"])
def test_reading_or_deleting_outside_the_root_is_refused(files_env, client, operation):
    """The secrets file lies next to rootPath: neither its contents come back nor does it go."""
    env = files_env
    secrets_before = env.secrets_path.read_bytes()
    for name in ("../secrets.json", str(env.secrets_path)):
        err = expect_error(
            lambda: client.invoke_binding(FILES_BINDING, operation, binding_metadata={"fileName": name}),
            grpc.StatusCode.INTERNAL, FILES_BINDING,
        )
        assert env.secrets["apikey"] not in (err.details() or ""), "the error leaks the file's contents"
    assert env.secrets_path.read_bytes() == secrets_before


def test_unknown_operation_names_the_valid_ones(files_env, client):
    err = expect_error(lambda: client.invoke_binding(FILES_BINDING, "frobnicate", b"x"),
                       grpc.StatusCode.INTERNAL, "frobnicate", FILES_BINDING)
    for op in FILE_OPERATIONS:
        assert re.search(rf"\b{op}\b", err.details()), f"{op} not named in {err.details()!r}"


def test_unknown_binding_raises(files_env, client):
    expect_error(lambda: client.invoke_binding("no-such-binding", "create", b"x"),
                 grpc.StatusCode.INTERNAL, "no-such-binding")


# ------------------------------------------------------------------------------- 2. secrets


def flatten(value, separator=":", prefix=None) -> Dict[str, str]:
    """The flattening the secret store documents: nested keys (and array indexes) joined with the
    separator; strings as they are, numbers and booleans as JSON text."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: value if isinstance(value, str) else json.dumps(value)}
    out: Dict[str, str] = {}
    for k, v in items:
        out.update(flatten(v, separator, k if prefix is None else f"{prefix}{separator}{k}"))
    return out


def test_get_secret_flattens_nested_values(files_env, client):
    flat = flatten(files_env.secrets)
    assert flat["db:opts:port"] == "5432" and flat["hosts:1"] == "b.example"  # the helper itself
    for key in ("apikey", "db:user", "db:password", "db:opts:tls", "db:opts:port", "hosts:0", "hosts:1"):
        got = client.get_secret(SECRET_STORE, key).secret
        assert got == {key: flat[key]}, f"{key}: {got}"


def test_get_bulk_secret(files_env, client):
    flat = flatten(files_env.secrets)
    got = client.get_bulk_secret(SECRET_STORE).secrets
    assert got == {k: {k: v} for k, v in flat.items()}


def test_multi_valued_store(files_env, client):
    secrets = files_env.secrets
    assert client.get_secret(SECRET_STORE_MULTI, "db").secret == flatten(secrets["db"])
    assert client.get_secret(SECRET_STORE_MULTI, "apikey").secret == {"apikey": secrets["apikey"]}
    # Only top-level keys are secrets there.
    expect_error(lambda: client.get_secret(SECRET_STORE_MULTI, "db:user"), grpc.StatusCode.INTERNAL, "db:user")
    got = client.get_bulk_secret(SECRET_STORE_MULTI).secrets
    assert got == {
        "apikey": {"apikey": secrets["apikey"]},
        "db": flatten(secrets["db"]),
        "hosts": flatten(secrets["hosts"]),
        "paths": flatten(secrets["paths"]),
    }


def test_unknown_secret_key_raises(files_env, client):
    expect_error(lambda: client.get_secret(SECRET_STORE, "no-such-key"), grpc.StatusCode.INTERNAL, "no-such-key")
    # Nested values are reachable only through their flattened key.
    expect_error(lambda: client.get_secret(SECRET_STORE, "db"), grpc.StatusCode.INTERNAL)


def test_unknown_secret_store_raises(files_env, client):
    expect_error(lambda: client.get_secret("no-such-store", "apikey"), grpc.StatusCode.INVALID_ARGUMENT,
                 "failed finding secret store with key no-such-store")
    expect_error(lambda: client.get_bulk_secret("no-such-store"), grpc.StatusCode.INVALID_ARGUMENT, "no-such-store")


# ------------------------------------------------------------------ 3. secretKeyRef before Init


def test_secret_key_ref_reaches_init(files_env, client, token):
    """`files-ref`'s rootPath is only in the secrets file (a secretKeyRef in its Component): a file
    it creates lands in that folder, which its Init created."""
    env = files_env
    ref_dir = Path(env.secrets["paths"]["refRoot"])
    assert REF_ROOT_SECRET == "paths:refRoot" and ref_dir == env.ref_dir
    name = f"via-ref-{token}.txt"
    create(client, f"ref {token}".encode(), name, binding=FILES_REF_BINDING)
    assert (ref_dir / name).read_bytes() == f"ref {token}".encode()
    assert not (env.out_dir / name).exists()
    assert get(client, name, binding=FILES_REF_BINDING).data == f"ref {token}".encode()
    for yaml in (env.root / "resources").glob("*.yaml"):
        assert str(ref_dir) not in yaml.read_text(), f"{yaml.name} names the folder itself"

    # The resolved value is not shown by the metadata API nor written to plugd's log.
    with urllib.request.urlopen(env.http_url("/v1.0/metadata"), timeout=5) as resp:
        metadata = resp.read().decode()
    assert FILES_REF_BINDING in metadata, metadata
    assert str(ref_dir) not in metadata, "the resolved secret shows in /v1.0/metadata"
    for p in env.procs:
        if re.fullmatch(r"plugd(-\d+)?", p.name):
            assert str(ref_dir) not in p.log(), f"the resolved secret is in {p.name}'s log"


# ----------------------------------------------------------- 4. input binding to a gRPC app


def test_grpc_app_receives_cron_events(cron_grpc_env):
    env = cron_grpc_env
    got = wait_for(env, f"{EVENTS_N} events of {GRPC_TICKS}",
                   at_least(EVENTS_N, lambda ev: [e for e in ev if e["binding"] == GRPC_TICKS]))
    assert all(e["handled"] for e in got), "events reached the registered @app.binding handler"
    assert_fire_times([e["data"] for e in got])
    for e in got:
        md = e["metadata"]
        assert md.get("fireTime") == json.loads(e["data"]), md
        assert (md.get("schedule"), md.get("timeZone")) == (CRON_PERIOD, "UTC"), md


def test_grpc_app_gets_only_the_bindings_it_lists(cron_grpc_env, monkeypatch):
    """`ticks-unlisted` fires as often as `ticks` would, but the app's ListInputBindings does not
    name it: none of its events reach the app."""
    env = cron_grpc_env
    with _client(env, monkeypatch) as c:
        registered = {comp.name: comp for comp in c.get_metadata().registered_components}
    assert GRPC_TICKS_UNLISTED in registered, f"the check below would prove nothing: {sorted(registered)}"
    assert "INPUT_BINDING" in registered[GRPC_TICKS_UNLISTED].capabilities, registered[GRPC_TICKS_UNLISTED]
    wait_for(env, f"{EVENTS_N} events of {GRPC_TICKS}",
             at_least(EVENTS_N, lambda ev: [e for e in ev if e["binding"] == GRPC_TICKS]))
    others = [e for e in env.events() if e["binding"] != GRPC_TICKS]
    assert not others, f"events of bindings the app does not list: {others[:3]}"


# ----------------------------------------------------------- 5. input binding to an HTTP app


def test_http_app_receives_cron_events_on_its_route(cron_http_env):
    env = cron_http_env
    posts = wait_for(env, f"{EVENTS_N} POSTs to {HTTP_TICKS_ROUTE}",
                     at_least(EVENTS_N, lambda ev: [e for e in ev if e["method"] == "POST" and e["path"] == HTTP_TICKS_ROUTE]))
    events = env.events()
    probes = [i for i, e in enumerate(events) if e["method"] == "OPTIONS" and e["path"] == HTTP_TICKS_ROUTE]
    first_post = next(i for i, e in enumerate(events) if e["method"] == "POST")
    assert probes and probes[0] < first_post, f"no OPTIONS probe of the route before the first POST: {events[:4]}"
    assert_fire_times([e["body"] for e in posts])
    for e in posts:
        assert e["headers"].get("content-type") == "application/json", e["headers"]
        h = e["headers"]
        assert h.get("firetime") == json.loads(e["body"]), f"event metadata as headers: {h}"
        assert (h.get("schedule"), h.get("timezone")) == (CRON_PERIOD, "UTC"), h
    assert not [e for e in env.events() if e["path"] == f"/{HTTP_TICKS}"], \
        "the route metadata replaces the default /<binding name>"


def test_http_app_not_handling_a_route_gets_no_events(cron_http_env):
    """`ticks-default` has no route: plugd probes /ticks-default, the app answers 404, and no event
    is posted there."""
    env = cron_http_env
    (probe,) = wait_for(env, f"the OPTIONS probe of /{HTTP_TICKS_DEFAULT}", lambda ev: [
        e for e in ev if e["method"] == "OPTIONS" and e["path"] == f"/{HTTP_TICKS_DEFAULT}"])
    assert probe["status"] == 404
    # Both bindings fire every 200 ms: once the handled route has had EVENTS_N events after the
    # probe, an event posted to the other would have shown up too.
    wait_for(env, f"{EVENTS_N} POSTs to {HTTP_TICKS_ROUTE} after the probe", lambda ev: len([
        e for e in ev[ev.index(probe):] if e["method"] == "POST" and e["path"] == HTTP_TICKS_ROUTE]) >= EVENTS_N)
    events = env.events()
    stray = [e for e in events if e["method"] == "POST" and e["path"] != HTTP_TICKS_ROUTE]
    assert not stray, f"POSTs to routes the app does not handle: {stray[:3]}"
