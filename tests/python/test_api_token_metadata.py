"""Metadata API, API token and "query state if supported" with the official Python SDK
(`dapr[grpc]==1.19.0`, unmodified) and over plain HTTP (urllib).

* Metadata: `DaprClient.get_metadata` / `set_metadata`, `GET /v1.0/metadata` and
  `PUT /v1.0/metadata/{key}` against the session `sidecar` (plugd + plugd-sqlite).
* API token: `token_env` in conftest.py, a plugd started with `DAPR_API_TOKEN=<random>` in front
  of plugd-sqlite and plugd-files. The SDK sends the token (metadata / header `dapr-api-token`)
  when `DAPR_API_TOKEN` is set when a `DaprClient` is built; without it, or with a wrong one,
  every call is refused: gRPC UNAUTHENTICATED "Unauthorized" with Dapr's ErrorInfo (reason
  `Unauthorized`, metadata `http.code` / `http.error_message`), HTTP 401 with the plain-text body
  `invalid api token`; `/v1.0/healthz` and `/v1.0/healthz/outbound` stay open
  (/work/shared/spec/runtime-api-wire.md §3 and its error table).
* Query: plugd-sqlite does not report QUERY_API, so `query_state` must fail at once with
  INTERNAL / `DAPR_STATE_QUERYING_NOT_SUPPORTED` (HTTP 500 `ERR_STATE_STORE_NOT_SUPPORTED`), as
  daprd answers for a store that is not a querier.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
import warnings
from typing import Dict, Optional, Tuple

import grpc
import pytest
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType

from conftest import APP_ID, SDK_ENV_CLEARED, TOKEN_APP_ID, TokenEnv

STORE = "statestore"
HTTP_TIMEOUT_S = 5.0
# A refusal or a "not supported" answer needs no component work: it must come back at once.
PROMPT_S = 3.0
QUERY = '{"filter": {"EQ": {"state": "CA"}}, "sort": [{"key": "state", "order": "DESC"}], "page": {"limit": 10}}'
MISSING_TOKEN = "missing api token in request metadata"
WRONG_TOKEN = "authentication error: api token mismatch"


# ------------------------------------------------------------------------------------ helpers


@pytest.fixture
def key(request):
    """A name unique to the test, so tests never see each other's state or metadata."""
    return f"{request.node.name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(sidecar):
    """A DaprClient on the session sidecar (no token: that plugd has none)."""
    with DaprClient() as c:
        yield c


def http(method: str, url: str, body: Optional[bytes] = None,
         headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
    """One request; (status, headers with lower-case names, body), errors included."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def http_json(method: str, url: str, headers: Optional[Dict[str, str]] = None):
    status, hdrs, body = http(method, url, headers=headers)
    assert status == 200, f"{method} {url}: HTTP {status} {body[:300]!r}"
    assert hdrs.get("content-type", "").startswith("application/json"), hdrs
    return json.loads(body)


def grpc_error(fn) -> DaprGrpcError:
    """Runs fn, expects a gRPC error; returns it as DaprGrpcError (some SDK methods let grpc's
    own RpcError through: its status details are parsed the same way)."""
    try:
        fn()
    except DaprGrpcError as e:
        return e
    except grpc.RpcError as e:
        try:
            return DaprGrpcError(e)
        except ValueError as bad:  # grpc_status.rpc_status.from_call on a bad trailer
            pytest.fail(f"the grpc-status-details-bin trailer disagrees with the status: {bad}")
    except ValueError as e:
        pytest.fail(f"SDK raised ValueError instead of DaprGrpcError (status/details trailer mismatch): {e}")
    pytest.fail("the call succeeded; an error was expected")


def sdk_client(env: TokenEnv, monkeypatch, token: Optional[str]) -> DaprClient:
    """A DaprClient pointed at `env`'s plugd sending `token` (None: no DAPR_API_TOKEN at all).
    The SDK reads DAPR_API_TOKEN when the client is built."""
    for k in SDK_ENV_CLEARED:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.sdk_env().items():
        monkeypatch.setenv(k, v)
    # The constructor polls /v1.0/healthz/outbound: if that wrongly needed the token, fail in 3 s.
    monkeypatch.setenv("DAPR_HEALTH_TIMEOUT", "3")
    if token is not None:
        monkeypatch.setenv("DAPR_API_TOKEN", token)
    return DaprClient()


def components_of(md) -> Dict[str, object]:
    return {c.name: c for c in md.registered_components}


# ---------------------------------------------------------------- 1. metadata (session sidecar)


def test_sdk_get_metadata(client, sidecar):
    md = client.get_metadata()
    assert md.application_id == sidecar.app_id == APP_ID
    components = components_of(md)
    assert STORE in components, f"registered components: {md.registered_components}"
    store = components[STORE]
    assert (store.type, store.version) == ("state.sqlite", "v1"), store
    caps = set(store.capabilities)
    assert {"ETAG", "TRANSACTIONAL", "TTL"} <= caps, f"capabilities: {sorted(caps)}"
    assert "QUERY_API" not in caps, f"plugd-sqlite serves no queries: {sorted(caps)}"
    assert isinstance(md.extended_metadata, dict)
    assert md.extended_metadata.get("daprRuntimeVersion"), f"extended: {md.extended_metadata}"


def test_sdk_set_metadata_shows_in_later_get(client, sidecar, key):
    assert key not in client.get_metadata().extended_metadata
    client.set_metadata(key, "first value")
    assert client.get_metadata().extended_metadata.get(key) == "first value"
    client.set_metadata(key, "second: é ✓")  # set again: replaced, non-ASCII kept
    extended = client.get_metadata().extended_metadata
    assert extended.get(key) == "second: é ✓", extended
    assert extended.get("daprRuntimeVersion"), "setting a key must not drop the others"
    # The same store behind both transports.
    body = http_json("GET", sidecar.http_url("/v1.0/metadata"))
    assert body["extended"].get(key) == "second: é ✓", body["extended"]
    # A new client (new channel) sees it too: it lives in the sidecar.
    with DaprClient() as other:
        assert other.get_metadata().extended_metadata.get(key) == "second: é ✓"


def test_http_get_metadata(sidecar):
    body = http_json("GET", sidecar.http_url("/v1.0/metadata"))
    assert isinstance(body, dict) and body, body
    assert body["id"] == APP_ID
    comps = {c["name"]: c for c in body["components"]}
    assert STORE in comps, body["components"]
    store = comps[STORE]
    assert (store["type"], store["version"]) == ("state.sqlite", "v1"), store
    assert {"ETAG", "TRANSACTIONAL"} <= set(store["capabilities"]), store
    assert isinstance(body["extended"], dict) and body["extended"].get("daprRuntimeVersion"), body["extended"]


def test_http_put_metadata(sidecar, client, key):
    status, _, resp = http("PUT", sidecar.http_url(f"/v1.0/metadata/{key}"), b"from http")
    assert (status, resp) == (204, b""), f"PUT /v1.0/metadata/{key}: HTTP {status} {resp!r}"
    assert http_json("GET", sidecar.http_url("/v1.0/metadata"))["extended"].get(key) == "from http"
    assert client.get_metadata().extended_metadata.get(key) == "from http", "HTTP write seen over gRPC"
    status, _, _ = http("PUT", sidecar.http_url(f"/v1.0/metadata/{key}"), b"again")
    assert status == 204
    assert client.get_metadata().extended_metadata.get(key) == "again"


# ------------------------------------------------------------------------ 2. API token (SDK)


def test_token_state_with_sdk(token_env, monkeypatch, key):
    with sdk_client(token_env, monkeypatch, token_env.token) as c:
        store = token_env.store
        c.save_state(store, key, "v1")
        got = c.get_state(store, key)
        assert got.data == b"v1" and got.etag, (got.data, got.etag)

        # An etag conflict still answers ABORTED / ERR_STATE_SAVE and changes nothing.
        stale = got.etag
        c.save_state(store, key, "v2", etag=stale)
        err = grpc_error(lambda: c.save_state(store, key, "v3", etag=stale))
        assert (err.code(), err.error_code()) == (grpc.StatusCode.ABORTED, "ERR_STATE_SAVE"), err.details()
        assert c.get_state(store, key).data == b"v2"

        # A transaction: two upserts and a delete, all applied.
        a, b = f"{key}-a", f"{key}-b"
        c.execute_state_transaction(store, [
            TransactionalStateOperation(key=a, data="A"),
            TransactionalStateOperation(key=b, data=b"B"),
            TransactionalStateOperation(key=key, operation_type=TransactionOperationType.delete),
        ])
        missing = f"{key}-missing"
        items = {i.key: i for i in c.get_bulk_state(store, [a, b, key, missing]).items}
        assert {k: i.data for k, i in items.items()} == {a: b"A", b: b"B", key: b"", missing: b""}
        assert items[a].etag and items[b].etag and all(i.error == "" for i in items.values())

        c.delete_state(store, a, etag=items[a].etag)
        assert c.get_state(store, a).data == b""


def test_token_binding_and_secret_with_sdk(token_env, monkeypatch, key):
    name = f"{key}.txt"
    with sdk_client(token_env, monkeypatch, token_env.token) as c:
        resp = c.invoke_binding(token_env.binding, "create", b"through the token\n",
                                binding_metadata={"fileName": name})
        assert json.loads(resp.data) == {"fileName": name}, resp.data
        assert (token_env.out_dir / name).read_bytes() == b"through the token\n"
        got = c.invoke_binding(token_env.binding, "get", binding_metadata={"fileName": name})
        assert got.data == b"through the token\n"

        assert c.get_secret(token_env.secret_store, "apikey").secret == {"apikey": token_env.secrets["apikey"]}
        assert c.get_secret(token_env.secret_store, "db:password").secret == {
            "db:password": token_env.secrets["db"]["password"]}


def test_token_metadata_with_sdk(token_env, monkeypatch, key):
    with sdk_client(token_env, monkeypatch, token_env.token) as c:
        md = c.get_metadata()
        assert md.application_id == TOKEN_APP_ID
        types = {n: comp.type for n, comp in components_of(md).items()}
        assert types == {
            token_env.store: "state.sqlite",
            token_env.secret_store: "secretstores.files",
            token_env.binding: "bindings.files",
        }, md.registered_components
        c.set_metadata(key, "with token")
        assert c.get_metadata().extended_metadata.get(key) == "with token"


@pytest.mark.parametrize("token, why", [(None, MISSING_TOKEN), ("wrong-token", WRONG_TOKEN)],
                         ids=["missing", "wrong"])
def test_sdk_without_the_token_is_unauthenticated(token_env, monkeypatch, key, token, why):
    # The right token, then the same calls without it (or with a wrong one).
    with sdk_client(token_env, monkeypatch, token_env.token) as good:
        good.save_state(token_env.store, key, "kept")
    name = f"{key}.txt"
    with sdk_client(token_env, monkeypatch, token) as bad:  # the constructor's health poll is open
        calls = {
            "get_metadata": bad.get_metadata,
            "set_metadata": lambda: bad.set_metadata(key, "should not be set"),
            "get_state": lambda: bad.get_state(token_env.store, key),
            "save_state": lambda: bad.save_state(token_env.store, key, "overwritten"),
            "delete_state": lambda: bad.delete_state(token_env.store, key),
            "get_bulk_state": lambda: bad.get_bulk_state(token_env.store, [key]),
            "invoke_binding": lambda: bad.invoke_binding(
                token_env.binding, "create", b"x", binding_metadata={"fileName": name}),
            "get_secret": lambda: bad.get_secret(token_env.secret_store, "apikey"),
        }
        for what, call in calls.items():
            started = time.monotonic()
            err = grpc_error(call)
            elapsed = time.monotonic() - started
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, f"{what}: {err.code()} {err.details()!r}"
            assert err.details() == "Unauthorized", f"{what}: {err.details()!r}"
            info = err.status_details().error_info
            assert info is not None, f"{what}: no ErrorInfo"
            assert (info.get("reason"), info.get("domain")) == ("Unauthorized", "dapr.io"), f"{what}: {info}"
            assert info.get("metadata", {}).get("http.error_message") == why, f"{what}: {info}"
            assert info.get("metadata", {}).get("http.code") == "401", f"{what}: {info}"
            assert elapsed < PROMPT_S, f"{what}: refused only after {elapsed:.1f}s"
    # Nothing the refused calls asked for happened.
    with sdk_client(token_env, monkeypatch, token_env.token) as good:
        assert good.get_state(token_env.store, key).data == b"kept"
        assert key not in good.get_metadata().extended_metadata
    assert not (token_env.out_dir / name).exists()


# ----------------------------------------------------------------------- 2. API token (HTTP)


def test_http_token(token_env, key):
    url = token_env.http_url
    good = {"dapr-api-token": token_env.token}
    for path in ("/v1.0/healthz", "/v1.0/healthz/outbound"):
        for headers in ({}, {"dapr-api-token": "wrong"}, good):
            status, _, _ = http("GET", url(path), headers=headers)
            assert status == 204, f"GET {path} with {headers}: HTTP {status}"

    refused = [
        ("GET", "/v1.0/metadata", None),
        ("PUT", f"/v1.0/metadata/{key}", b"should not be set"),
        ("POST", f"/v1.0/state/{token_env.store}", json.dumps([{"key": key, "value": "no"}]).encode()),
        ("GET", f"/v1.0/state/{token_env.store}/{key}", None),
        ("GET", f"/v1.0/secrets/{token_env.secret_store}/apikey", None),
    ]
    for headers in ({}, {"dapr-api-token": "wrong"}, {"dapr-api-token": token_env.token + "x"}):
        for method, path, body in refused:
            status, hdrs, resp = http(method, url(path), body, headers)
            assert (status, resp) == (401, b"invalid api token"), f"{method} {path} with {headers}: {status} {resp!r}"
            assert hdrs.get("content-type", "").startswith("text/plain"), f"{method} {path}: {hdrs}"

    body = http_json("GET", url("/v1.0/metadata"), good)
    assert body["id"] == TOKEN_APP_ID
    assert key not in body["extended"], "a refused PUT must not set the key"
    assert {c["name"] for c in body["components"]} == {token_env.store, token_env.secret_store, token_env.binding}

    status, _, resp = http("GET", url(f"/v1.0/state/{token_env.store}/{key}"), headers=good)
    assert status == 204, f"a refused POST must not store the key: HTTP {status} {resp!r}"
    status, _, resp = http("POST", url(f"/v1.0/state/{token_env.store}"),
                           json.dumps([{"key": key, "value": "yes"}]).encode(),
                           {**good, "Content-Type": "application/json"})
    assert status == 204, f"HTTP {status} {resp!r}"
    status, _, resp = http("GET", url(f"/v1.0/state/{token_env.store}/{key}"), headers=good)
    assert (status, json.loads(resp)) == (200, "yes"), resp
    status, _, resp = http("PUT", url(f"/v1.0/metadata/{key}"), b"with token", good)
    assert status == 204, resp
    assert http_json("GET", url("/v1.0/metadata"), good)["extended"].get(key) == "with token"


# ------------------------------------------------------------- 3. query state "if supported"


def test_query_state_on_a_store_without_queries_fails_at_once(client, sidecar, monkeypatch):
    # "If supported": the store does not advertise QUERY_API ...
    caps = components_of(client.get_metadata())[STORE].capabilities
    assert "QUERY_API" not in caps, caps
    # ... and a query anyway is refused at once, not left to a deadline (5 s here, not 15).
    monkeypatch.setenv("DAPR_API_TIMEOUT_SECONDS", "5")
    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The State Store Query API is an Alpha version"
        err = grpc_error(lambda: client.query_state(STORE, QUERY))
    elapsed = time.monotonic() - started
    assert err.code() == grpc.StatusCode.INTERNAL, f"{err.code()} {err.details()!r}"
    assert err.error_code() == "DAPR_STATE_QUERYING_NOT_SUPPORTED", (err.error_code(), err.details())
    assert "does not support querying" in err.details(), err.details()
    assert elapsed < PROMPT_S, f"the refusal took {elapsed:.1f}s"

    started = time.monotonic()
    status, _, resp = http("POST", sidecar.http_url(f"/v1.0-alpha1/state/{STORE}/query"), QUERY.encode(),
                           {"Content-Type": "application/json"})
    elapsed = time.monotonic() - started
    assert status == 500, f"HTTP {status} {resp!r}"
    body = json.loads(resp)
    assert body["errorCode"] == "ERR_STATE_STORE_NOT_SUPPORTED", body
    assert "does not support querying" in body["message"], body
    assert elapsed < PROMPT_S, f"the HTTP refusal took {elapsed:.1f}s"
