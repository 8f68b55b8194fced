"""The official Python SDK (`dapr[grpc]==1.19.0`, unmodified) against plugd + plugd-sqlite.

Expectations follow what the SDK's own example and integration tests assert against daprd
(see /work/shared/spec/runtime-api-wire.md §1.1, §5): ABORTED / ERR_STATE_SAVE for a wrong
etag on save, ABORTED / ERR_STATE_DELETE on delete, INTERNAL / ERR_STATE_TRANSACTION for a
failing transaction, b'' for missing keys. A `ValueError` instead of `DaprGrpcError` means
the `grpc-status-details-bin` trailer disagrees with the status code or message.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType
from dapr.clients.grpc._state import StateItem

STORE = "statestore"
ARBITRARY_ETAG = "9999"  # what the SDK's examples/state_store/state_store.py sends


@pytest.fixture(scope="module")
def client(sidecar):
    with DaprClient() as c:
        yield c


@pytest.fixture
def key(request):
    """A key unique to the test, so tests never see each other's state."""
    return f"{request.node.name}-{uuid.uuid4().hex[:8]}"


def expect_grpc_error(fn, code, error_code):
    """Runs fn, expects DaprGrpcError with the given status and ErrorInfo.reason."""
    try:
        fn()
    except DaprGrpcError as e:
        assert e.code() == code, f"status {e.code()} ({e.details()!r}), expected {code}"
        assert e.error_code() == error_code, (
            f"ErrorInfo.reason {e.error_code()!r}, expected {error_code!r} "
            f"(status {e.code()}, message {e.details()!r})"
        )
        return e
    except ValueError as e:  # raised by grpc_status.rpc_status.from_call on a bad trailer
        pytest.fail(
            f"SDK raised ValueError instead of DaprGrpcError: the grpc-status-details-bin "
            f"trailer disagrees with grpc-status/grpc-message: {e}"
        )
    pytest.fail(f"no error raised, expected {code} / {error_code}")


# ---------------------------------------------------------------- save / get / delete


def test_save_then_get_round_trip(client, key):
    client.save_state(STORE, key, "hello")
    got = client.get_state(STORE, key)
    assert got.data == b"hello"
    assert got.text() == "hello"
    assert got.etag, "get_state must return a non-empty etag for a stored key"

    # bytes values round-trip exactly, and a new write changes the etag
    client.save_state(STORE, key, b"\x00\xffbin")
    got2 = client.get_state(STORE, key)
    assert got2.data == b"\x00\xffbin"
    assert got2.etag and got2.etag != got.etag


def test_get_missing_key_is_empty(client, key):
    got = client.get_state(STORE, key)
    assert got.data == b""
    assert got.etag == ""


def test_save_with_current_etag_succeeds(client, key):
    client.save_state(STORE, key, "v1")
    etag = client.get_state(STORE, key).etag
    client.save_state(STORE, key, "v2", etag=etag)
    assert client.get_state(STORE, key).data == b"v2"


def wrong_etag(client, key, kind):
    """An etag that does not match `key`'s current value.

    stale:     an etag the store really handed out for this key, before a later write;
    foreign:   a well-formed etag (UUID, the store's format) that was never handed out;
    arbitrary: the kind of literal the SDK's own state_store example sends (etag='9999').
               daprd answers ABORTED for it with Dapr's stores (an etag no row has is a
               mismatch), and SDK users rely on that.
    """
    if kind == "stale":
        stale = client.get_state(STORE, key).etag
        value = client.get_state(STORE, key).data
        client.save_state(STORE, key, value)  # new etag; `stale` no longer matches
        return stale
    if kind == "foreign":
        return str(uuid.uuid4())
    return ARBITRARY_ETAG


ETAG_KINDS = ["stale", "foreign", "arbitrary"]


@pytest.mark.parametrize("kind", ETAG_KINDS)
def test_save_with_wrong_etag_is_aborted(client, key, kind):
    client.save_state(STORE, key, "v1")
    etag = wrong_etag(client, key, kind)
    err = expect_grpc_error(
        lambda: client.save_state(STORE, key, "v2", etag=etag),
        grpc.StatusCode.ABORTED,
        "ERR_STATE_SAVE",
    )
    assert "etag" in err.details().lower()
    assert client.get_state(STORE, key).data == b"v1"


def test_save_bulk_with_stale_etag_is_aborted(client, key):
    k1, k2 = f"{key}-1", f"{key}-2"
    client.save_bulk_state(STORE, [StateItem(k1, "a"), StateItem(k2, "b")])
    assert client.get_state(STORE, k1).data == b"a"
    assert client.get_state(STORE, k2).data == b"b"

    stale = client.get_state(STORE, k1).etag
    client.save_state(STORE, k1, "a2")  # makes `stale` stale
    expect_grpc_error(
        lambda: client.save_bulk_state(STORE, [StateItem(k1, "a3", etag=stale)]),
        grpc.StatusCode.ABORTED,
        "ERR_STATE_SAVE",
    )
    assert client.get_state(STORE, k1).data == b"a2"


@pytest.mark.parametrize("kind", ETAG_KINDS)
def test_delete_with_wrong_etag_is_aborted(client, key, kind):
    client.save_state(STORE, key, "keep")
    etag = wrong_etag(client, key, kind)
    expect_grpc_error(
        lambda: client.delete_state(STORE, key, etag=etag),
        grpc.StatusCode.ABORTED,
        "ERR_STATE_DELETE",
    )
    assert client.get_state(STORE, key).data == b"keep"


def test_delete_then_read_is_empty(client, key):
    client.save_state(STORE, key, "gone soon")
    etag = client.get_state(STORE, key).etag
    client.delete_state(STORE, key, etag=etag)
    assert client.get_state(STORE, key).data == b""
    # deleting again (no etag) is not an error
    client.delete_state(STORE, key)
    assert client.get_state(STORE, key).data == b""


# ---------------------------------------------------------------- bulk get


def test_get_bulk_state_includes_missing_keys(client, key):
    k1, k2, missing = f"{key}-1", f"{key}-2", f"{key}-missing"
    client.save_state(STORE, k1, "one")
    client.save_state(STORE, k2, "two")
    items = client.get_bulk_state(STORE, [k1, k2, missing]).items
    by_key = {i.key: i for i in items}
    assert set(by_key) == {k1, k2, missing}
    assert by_key[k1].data == b"one" and by_key[k1].etag
    assert by_key[k2].data == b"two" and by_key[k2].etag
    assert by_key[missing].data == b""
    assert by_key[missing].etag == ""
    assert all(i.error == "" for i in items)

    # parallelism > 1 gives the same answer
    items = client.get_bulk_state(STORE, [k1, k2, missing], parallelism=3).items
    assert {i.key: i.data for i in items} == {k1: b"one", k2: b"two", missing: b""}


# ---------------------------------------------------------------- transactions


def test_transaction_upserts_and_deletes(client, key):
    a, b, c = f"{key}-a", f"{key}-b", f"{key}-c"
    client.save_state(STORE, c, "to delete")
    client.execute_state_transaction(
        STORE,
        [
            TransactionalStateOperation(key=a, data="A"),
            TransactionalStateOperation(key=b, data=b"B"),
            TransactionalStateOperation(key=c, operation_type=TransactionOperationType.delete),
        ],
    )
    assert client.get_state(STORE, a).data == b"A"
    assert client.get_state(STORE, b).data == b"B"
    assert client.get_state(STORE, c).data == b""


def test_transaction_with_stale_etag_changes_nothing(client, key):
    a, b = f"{key}-a", f"{key}-b"
    client.save_state(STORE, a, "a0")
    client.save_state(STORE, b, "b0")
    stale = client.get_state(STORE, b).etag
    client.save_state(STORE, b, "b1")
    etag_b = client.get_state(STORE, b).etag

    # daprd: a failing transaction (etag mismatch included) is INTERNAL / ERR_STATE_TRANSACTION
    expect_grpc_error(
        lambda: client.execute_state_transaction(
            STORE,
            [
                TransactionalStateOperation(key=a, data="a1"),
                TransactionalStateOperation(key=b, data="b2", etag=stale),
            ],
        ),
        grpc.StatusCode.INTERNAL,
        "ERR_STATE_TRANSACTION",
    )
    assert client.get_state(STORE, a).data == b"a0", "first op must be rolled back"
    got_b = client.get_state(STORE, b)
    assert got_b.data == b"b1"
    assert got_b.etag == etag_b


def test_transaction_with_current_etag_succeeds(client, key):
    client.save_state(STORE, key, "v0")
    etag = client.get_state(STORE, key).etag
    client.execute_state_transaction(
        STORE, [TransactionalStateOperation(key=key, data="v1", etag=etag)]
    )
    assert client.get_state(STORE, key).data == b"v1"


# ---------------------------------------------------------------- metadata / TTL


def test_get_metadata(client, sidecar):
    md = client.get_metadata()
    assert md.application_id == sidecar.app_id
    components = {c.name: c for c in md.registered_components}
    assert STORE in components, f"registered components: {md.registered_components}"
    store = components[STORE]
    assert store.type == "state.sqlite"
    assert store.version == "v1"
    caps = set(store.capabilities)
    assert {"ETAG", "TRANSACTIONAL"} <= caps, f"capabilities: {sorted(caps)}"


def test_state_with_ttl_expires(client, key):
    forever = f"{key}-forever"
    client.save_state(STORE, key, "short-lived", state_metadata={"ttlInSeconds": "1"})
    client.save_state(STORE, forever, "stays")
    assert client.get_state(STORE, key).data == b"short-lived"

    deadline = time.monotonic() + 10
    while client.get_state(STORE, key).data != b"":
        assert time.monotonic() < deadline, "key with ttlInSeconds=1 still readable after 10 s"
        time.sleep(0.1)
    assert client.get_state(STORE, forever).data == b"stays"


def test_invalid_ttl_is_a_save_error(client, key):
    err = None
    try:
        client.save_state(STORE, key, "v", state_metadata={"ttlInSeconds": "ten"})
    except DaprGrpcError as e:
        err = e
    except ValueError as e:
        pytest.fail(f"ValueError (status/details trailer mismatch): {e}")
    assert err is not None, "an unparsable ttlInSeconds must be rejected"
    assert err.error_code() == "ERR_STATE_SAVE"
    assert client.get_state(STORE, key).data == b""


def test_unknown_store_is_invalid_argument(client, key):
    expect_grpc_error(
        lambda: client.get_state("no-such-store", key),
        grpc.StatusCode.INVALID_ARGUMENT,
        "DAPR_STATE_NOT_FOUND",
    )


# ---------------------------------------------------------------- aio client


def test_aio_client_save_and_get(sidecar, key):
    from dapr.aio.clients import DaprClient as AioDaprClient

    async def run():
        async with AioDaprClient() as c:
            await c.save_state(STORE, key, "async value")
            got = await c.get_state(STORE, key)
            missing = await c.get_state(STORE, f"{key}-missing")
            return got, missing

    got, missing = asyncio.run(run())
    assert got.data == b"async value"
    assert got.etag
    assert missing.data == b""

    # and the sync client sees the same state
    with DaprClient() as c:
        assert c.get_state(STORE, key).data == b"async value"
