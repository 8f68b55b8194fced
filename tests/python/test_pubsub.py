"""Publish/subscribe with the official Python SDK (`dapr[grpc]==1.19.0`, unmodified).

`DaprClient.publish_event` / `publish_events` publish through plugd's gRPC API; plugd delivers to a
subscriber app in its own process: a `dapr.ext.grpc.App` (apps/grpc_subscriber.py, plugd
`--app-protocol grpc`) or a bare `http.server` app (apps/http_subscriber.py, `--app-protocol
http`). Every test runs against each broker component (`grpc_env` / `http_env` in conftest.py are
parametrized over BROKERS: plugd-memory and plugd-redis). The apps write every event they see to a
JSON-lines file, which the tests poll with a deadline.

Expectations are Dapr's (/work/shared/spec/runtime-api-wire.md §1.1, §1.2, §4): the CloudEvent
envelope (id, source = the publisher's app id, type com.dapr.event.sent, specversion 1.0, topic,
pubsubname), rule routing, RETRY / DROP / dead-letter topics, HTTP 404 = drop, other errors =
retry. Both broker components are configured with one delivery in flight and plugd delivers one
event of a subscription at a time (the default), so delivery is in publish order: the checks that
something did *not* happen (a skipped event, no extra redelivery) publish a later event to the
same topic and look once that one has arrived.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import Counter
from datetime import datetime

import grpc
import pytest
from dapr.clients import BulkPublishEntry, DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.proto import api_v1, connect_dapr

from conftest import PUBSUB, PubSubEnv, event_text, wait_for_events

DELIVERY_WAIT_S = 20.0
COUNT_N = 200
COUNT_WAIT_S = 90.0


# ------------------------------------------------------------------------------------ helpers


@pytest.fixture
def token():
    """A marker unique to the test: every payload carries it, so tests never see each other's
    events (nor the warm-up events) in the shared app."""
    return uuid.uuid4().hex


def _client(env: PubSubEnv, monkeypatch) -> DaprClient:
    """A DaprClient pointed at this environment's plugd (the SDK reads the env at each access)."""
    for k in ("DAPR_GRPC_ENDPOINT", "DAPR_HTTP_ENDPOINT", "DAPR_API_TOKEN", "DAPR_RUNTIME_HOST", "DAPR_API_MAX_RETRIES"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.sdk_env().items():
        monkeypatch.setenv(k, v)
    return DaprClient()


@pytest.fixture
def grpc_client(grpc_env, monkeypatch):
    with _client(grpc_env, monkeypatch) as c:
        yield c


@pytest.fixture
def http_client(http_env, monkeypatch):
    with _client(http_env, monkeypatch) as c:
        yield c


def wait_for(env: PubSubEnv, what: str, check, within: float = DELIVERY_WAIT_S):
    """Polls the app's events until `check(events)` is truthy (returned), or fails after `within`."""
    return wait_for_events(env, what, check, within)


def grpc_mine(events, token, handler=None):
    """Events the gRPC app recorded whose payload carries `token` (optionally: for one handler)."""
    return [e for e in events if (handler is None or e["handler"] == handler) and token in event_text(e)]


def http_mine(events, token, path=None):
    """POSTs the HTTP app recorded whose CloudEvent data carries `token` (optionally: to one path)."""
    return [e for e in events if (path is None or e["path"] == path) and token in event_text(e)]


def at_least(n, select):
    """A `wait_for` check: the selected events once there are at least n of them."""
    def check(events):
        found = select(events)
        return found if len(found) >= n else None
    return check


def assert_rfc3339(value: str):
    assert isinstance(value, str) and value, f"time {value!r}"
    datetime.fromisoformat(value.replace("Z", "+00:00"))


# ----------------------------------------------------------------------- 1. gRPC app: delivery


def test_grpc_app_receives_json_and_text(grpc_env, grpc_client, token):
    env = grpc_env
    payload = {"order": 1, "token": token, "nested": {"n": [1, 2.5, "x"]}}
    grpc_client.publish_event(PUBSUB, "orders", json.dumps(payload), data_content_type="application/json")
    grpc_client.publish_event(PUBSUB, "orders", f"hello {token}")  # no content type: text/plain

    got = wait_for(env, "the JSON and the text event on `orders`", at_least(2, lambda ev: grpc_mine(ev, token, "orders")))
    assert len(got) == 2, got
    by_type = {e["data_content_type"]: e for e in got}
    assert set(by_type) == {"application/json", "text/plain"}, [e["data_content_type"] for e in got]

    js, text = by_type["application/json"], by_type["text/plain"]
    assert js["data"] == payload, "SubscriptionMessage.data() parses application/json"
    assert json.loads(base64.b64decode(js["raw_data_b64"])) == payload
    assert text["data"] == f"hello {token}", "SubscriptionMessage.data() decodes text/plain"
    assert base64.b64decode(text["raw_data_b64"]) == f"hello {token}".encode()

    for e in got:
        uuid.UUID(e["id"])  # a generated UUID
        assert e["source"] == env.app_id, "source is the publisher's app id"
        assert e["type"] == "com.dapr.event.sent"
        assert e["spec_version"] == "1.0"
        assert e["topic"] == "orders"
        assert e["pubsub_name"] == PUBSUB
        ext = e["extensions"]
        assert ext.get("pubsubname") == PUBSUB, ext
        assert ext.get("topic") == "orders", ext
        assert_rfc3339(ext.get("time"))
        for key in ("traceid", "traceparent", "tracestate"):
            assert key in ext, f"extension {key} missing: {ext}"
        for key in ("id", "source", "type", "specversion", "datacontenttype", "data", "data_base64"):
            assert key not in ext, f"{key} must not be an extension: {ext}"
        assert e["metadata"].get("pubsubname") == PUBSUB, f"gRPC metadata: {e['metadata']}"
    assert got[0]["id"] != got[1]["id"]


def test_grpc_app_sees_cloudevent_overrides(grpc_env, grpc_client, token):
    env = grpc_env
    event_id = f"id-{token}"
    grpc_client.publish_event(
        PUBSUB, "orders", json.dumps({"token": token}), data_content_type="application/json",
        publish_metadata={
            "cloudevent.id": event_id,
            "cloudevent.source": "my-source",
            "cloudevent.type": "my.type",
            "cloudevent.subject": "my-subject",
        },
    )
    (e,) = wait_for(env, "the event with cloudevent.* overrides", at_least(1, lambda ev: grpc_mine(ev, token, "orders")))
    assert (e["id"], e["source"], e["type"]) == (event_id, "my-source", "my.type")
    assert e["extensions"].get("subject") == "my-subject", e["extensions"]
    assert e["data"] == {"token": token}


def test_grpc_app_gets_an_app_supplied_cloudevent(grpc_env, grpc_client, token):
    """Publishing application/cloudevents+json: the app's envelope is kept (its id, source, type
    and extension attributes), completed with topic and pubsubname (§4.1)."""
    env = grpc_env
    ce = {
        "specversion": "1.0",
        "id": f"ce-{token}",
        "source": "my-ce-source",
        "type": "my.ce.type",
        "datacontenttype": "application/json",
        "data": {"token": token},
        "myext": "ext-value",
    }
    grpc_client.publish_event(PUBSUB, "orders", json.dumps(ce), data_content_type="application/cloudevents+json")
    (e,) = wait_for(env, "the app's CloudEvent", at_least(1, lambda ev: grpc_mine(ev, token, "orders")))
    assert (e["id"], e["source"], e["type"]) == (f"ce-{token}", "my-ce-source", "my.ce.type")
    assert e["data_content_type"] == "application/json" and e["data"] == {"token": token}
    ext = e["extensions"]
    assert ext.get("myext") == "ext-value", ext
    assert ext.get("topic") == "orders" and ext.get("pubsubname") == PUBSUB, ext


# ------------------------------------------------------------------------------ publish errors


def expect_publish_error(fn, code, reason):
    try:
        fn()
    except DaprGrpcError as e:
        assert (e.code(), e.error_code()) == (code, reason), f"{e.code()} {e.error_code()!r}: {e.details()!r}"
        return
    except ValueError as e:  # grpc_status: the details trailer disagrees with the status
        pytest.fail(f"SDK raised ValueError instead of DaprGrpcError: {e}")
    pytest.fail(f"no error, expected {code} / {reason}")


def test_publish_errors(grpc_env, grpc_client):
    c = grpc_client
    expect_publish_error(lambda: c.publish_event("no-such-pubsub", "orders", "x"),
                         grpc.StatusCode.INVALID_ARGUMENT, "DAPR_PUBSUB_NOT_FOUND")
    expect_publish_error(lambda: c.publish_event(PUBSUB, "", "x"),
                         grpc.StatusCode.INVALID_ARGUMENT, "DAPR_PUBSUB_TOPIC_NAME_EMPTY")
    expect_publish_error(lambda: c.publish_event(PUBSUB, "orders", "x", publish_metadata={"rawPayload": "maybe"}),
                         grpc.StatusCode.INVALID_ARGUMENT, "DAPR_PUBSUB_METADATA_DESERIALIZATION")
    expect_publish_error(
        lambda: c.publish_events(PUBSUB, "bulk", [BulkPublishEntry("a", entry_id="same"), BulkPublishEntry("b", entry_id="same")]),
        grpc.StatusCode.INVALID_ARGUMENT, "DAPR_PUBSUB_MARSHAL_EVENTS")


# ------------------------------------------------------------------- 2. rules and dead letters


def test_grpc_app_rule_routing(grpc_env, grpc_client, token):
    env = grpc_env
    for event_type in ("z", "y", "x"):  # z first: no rule matches it, so it is skipped
        grpc_client.publish_event(
            PUBSUB, "routed", json.dumps({"token": token, "sent_as": event_type}),
            data_content_type="application/json", publish_metadata={"cloudevent.type": event_type},
        )
    got = wait_for(env, "the x and y events on `routed`", at_least(2, lambda ev: grpc_mine(ev, token)))
    routed = {(e["handler"], e["data"]["sent_as"]) for e in got}
    assert routed == {("on_type_x", "x"), ("on_type_y", "y")}, routed
    assert all(e["topic"] == "routed" for e in got)
    # z was published (and, delivery being ordered, handled) before x and y: never delivered.
    assert len(grpc_mine(env.events(), token)) == 2, grpc_mine(env.events(), token)


def test_grpc_app_drop_goes_to_dead_letter_topic(grpc_env, grpc_client, token):
    env = grpc_env
    grpc_client.publish_event(PUBSUB, "dlq-src", json.dumps({"token": token}), data_content_type="application/json")

    (dead,) = wait_for(env, "the dropped event on the dead-letter topic",
                       at_least(1, lambda ev: grpc_mine(ev, token, "dlq-dead")))
    (src,) = grpc_mine(env.events(), token, "dlq-src")
    assert src["reply"] == "drop"
    assert dead["topic"] == "dlq-dead"
    assert dead["id"] == src["id"], "the dead-letter topic gets the same CloudEvent"
    assert dead["data"] == {"token": token}
    assert dead["source"] == env.app_id
    assert dead["pubsub_name"] == PUBSUB


# ---------------------------------------------------------------------------- 3. retry, success


@pytest.mark.parametrize("topic,first_reply", [
    ("retry", "retry"),  # TopicEventResponse('retry')
    ("raise", "exception"),  # the handler raises: gRPC UNKNOWN, which Dapr retries
])
def test_grpc_app_retry_then_success(grpc_env, grpc_client, token, topic, first_reply):
    env = grpc_env
    grpc_client.publish_event(PUBSUB, topic, json.dumps({"token": token, "n": 1}), data_content_type="application/json")
    first = wait_for(env, "the retried event answered SUCCESS",
                     lambda ev: [e for e in grpc_mine(ev, token, topic) if e["reply"] == "success"])
    event_id = first[0]["id"]

    # A second event through the same subscription: once it is done, the first cannot come back.
    grpc_client.publish_event(PUBSUB, topic, json.dumps({"token": token, "n": 2}), data_content_type="application/json")
    wait_for(env, "the second event answered SUCCESS",
             lambda ev: [e for e in grpc_mine(ev, token, topic) if e["data"]["n"] == 2 and e["reply"] == "success"])

    deliveries = [e for e in grpc_mine(env.events(), token, topic) if e["id"] == event_id]
    assert [e["reply"] for e in deliveries] == [first_reply, "success"], deliveries
    assert deliveries[0]["data"] == deliveries[1]["data"] == {"token": token, "n": 1}


# ------------------------------------------------------------------------------- rawPayload


def test_grpc_app_raw_payload(grpc_env, grpc_client, token):
    """rawPayload on both sides: the broker holds the bytes as published, and the subscriber
    (metadata rawPayload=true) gets them unchanged in a synthesized envelope (§4.1)."""
    env = grpc_env
    raw = b"\x00\xffraw " + token.encode()
    grpc_client.publish_event(PUBSUB, "raw", raw, data_content_type="application/octet-stream",
                              publish_metadata={"rawPayload": "true"})
    (e,) = wait_for(env, "the raw event", at_least(1, lambda ev: grpc_mine(ev, token, "raw")))
    assert base64.b64decode(e["raw_data_b64"]) == raw
    assert e["data_content_type"] == "application/octet-stream"
    assert (e["source"], e["type"], e["spec_version"]) == ("Dapr", "com.dapr.event.sent", "1.0")
    assert e["topic"] == "raw" and e["pubsub_name"] == PUBSUB
    uuid.UUID(e["id"])


def test_grpc_app_raw_subscription_gets_the_envelope(grpc_env, grpc_client, token):
    """An ordinary publish to a rawPayload subscription: the app gets the whole CloudEvent."""
    env = grpc_env
    grpc_client.publish_event(PUBSUB, "raw", json.dumps({"token": token}), data_content_type="application/json")
    (e,) = wait_for(env, "the raw event", at_least(1, lambda ev: grpc_mine(ev, token, "raw")))
    envelope = json.loads(base64.b64decode(e["raw_data_b64"]))
    assert envelope["data"] == {"token": token}
    assert envelope["source"] == env.app_id and envelope["topic"] == "raw"
    assert envelope["id"] != e["id"], "the synthesized envelope has its own id"


# ------------------------------------------------------------------------------ 5. bulk publish


def _bulk_entries(token, n):
    entries = [json.dumps({"token": token, "i": i}) for i in range(n)]
    # One entry with its own content type and metadata.
    entries.append(BulkPublishEntry(f"text {token}", content_type="text/plain",
                                    metadata={"cloudevent.type": "bulk.text"}))
    return entries


def test_grpc_app_bulk_publish(grpc_env, grpc_client, token):
    env = grpc_env
    n = 10
    resp = grpc_client.publish_events(PUBSUB, "bulk", _bulk_entries(token, n), data_content_type="application/json")
    assert list(resp.failed_entries) == [], resp.failed_entries

    got = wait_for(env, f"the {n + 1} bulk-published events", at_least(n + 1, lambda ev: grpc_mine(ev, token, "bulk")))
    json_events = [e for e in got if e["data_content_type"] == "application/json"]
    assert sorted(e["data"]["i"] for e in json_events) == list(range(n))
    (text,) = [e for e in got if e["data_content_type"] == "text/plain"]
    assert text["data"] == f"text {token}" and text["type"] == "bulk.text"
    assert all(e["source"] == env.app_id and e["topic"] == "bulk" for e in got)
    assert len({e["id"] for e in got}) == n + 1


def test_grpc_app_bulk_publish_alpha1(grpc_env, token):
    """The RPC `publish_events` falls back to when BulkPublishEvent is UNIMPLEMENTED (daprd before
    1.15), called directly with the SDK's generated stub."""
    env = grpc_env
    entries = [
        api_v1.BulkPublishRequestEntry(
            entry_id=f"e{i}", event=json.dumps({"token": token, "i": i}).encode(),
            content_type="application/json",
        )
        for i in range(3)
    ]
    with connect_dapr(env.grpc_port) as stub:
        resp = stub.BulkPublishEventAlpha1(
            api_v1.BulkPublishRequest(pubsub_name=PUBSUB, topic="bulk", entries=entries), timeout=10
        )
    assert list(resp.failedEntries) == []
    got = wait_for(env, "the 3 events", at_least(3, lambda ev: grpc_mine(ev, token, "bulk")))
    assert sorted(e["data"]["i"] for e in got) == [0, 1, 2]


# ----------------------------------------------------------------------------------- 6. count


def _count(env, client, report_figure, token, mine):
    """Publishes COUNT_N events, then a sentinel (delivered last, delivery being ordered), and
    checks that each arrived exactly once; reports the rate."""
    started = time.monotonic()
    for i in range(COUNT_N):
        client.publish_event(PUBSUB, "count", json.dumps({"token": token, "i": i}), data_content_type="application/json")
    published = time.monotonic()
    client.publish_event(PUBSUB, "count", json.dumps({"token": token, "i": "end"}), data_content_type="application/json")

    def done(events):
        seen = mine(events, token)
        have = {d["i"] for d in seen}
        return seen if "end" in have and len(have) == COUNT_N + 1 else None

    seen = wait_for(env, f"all {COUNT_N} events and the sentinel", done, within=COUNT_WAIT_S)
    received = time.monotonic()
    counts = Counter(d["i"] for d in seen)
    duplicates = {i: c for i, c in counts.items() if c > 1}
    rate = COUNT_N / (received - started)
    report_figure(
        f"{env.label}: {COUNT_N} events published in {published - started:.2f}s "
        f"({COUNT_N / (published - started):.0f}/s), all received after {received - started:.2f}s "
        f"-> {rate:.0f} messages/s end to end; duplicates: {sum(duplicates.values()) - len(duplicates)}"
    )
    assert not duplicates, f"events delivered more than once (i: times): {duplicates}"


def test_grpc_app_count(grpc_env, grpc_client, token, report_figure):
    _count(grpc_env, grpc_client, report_figure, token,
           lambda ev, t: [e["data"] for e in grpc_mine(ev, t, "count")])


# --------------------------------------------------------------------------- 4. HTTP app


def test_http_app_receives_json_and_text(http_env, http_client, token):
    env = http_env
    payload = {"order": 1, "token": token}
    http_client.publish_event(PUBSUB, "orders", json.dumps(payload), data_content_type="application/json")
    http_client.publish_event(PUBSUB, "orders", f"hello {token}")

    got = wait_for(env, "the JSON and the text event on /orders", at_least(2, lambda ev: http_mine(ev, token, "/orders")))
    assert len(got) == 2, got
    by_type = {e["body"]["datacontenttype"]: e["body"] for e in got}
    assert set(by_type) == {"application/json", "text/plain"}
    assert by_type["application/json"]["data"] == payload, "JSON data is embedded as JSON"
    assert by_type["text/plain"]["data"] == f"hello {token}"
    for e in got:
        h, ce = e["headers"], e["body"]
        assert h.get("content-type") == "application/cloudevents+json", h
        assert h.get("pubsubname") == PUBSUB, f"headers carry pubsubName: {h}"
        uuid.UUID(ce["id"])
        assert ce["source"] == env.app_id
        assert ce["type"] == "com.dapr.event.sent"
        assert ce["specversion"] == "1.0"
        assert ce["topic"] == "orders"
        assert ce["pubsubname"] == PUBSUB
        assert_rfc3339(ce["time"])


def test_http_app_routes(http_env, http_client, token):
    env = http_env
    for event_type in ("z", "y", "x"):
        http_client.publish_event(
            PUBSUB, "routed", json.dumps({"token": token, "sent_as": event_type}),
            data_content_type="application/json", publish_metadata={"cloudevent.type": event_type},
        )
    got = wait_for(env, "the three events on `routed`", at_least(3, lambda ev: http_mine(ev, token)))
    routed = {(e["path"], e["body"]["data"]["sent_as"]) for e in got}
    assert routed == {("/routed-default", "z"), ("/routed-y", "y"), ("/routed-x", "x")}, routed


def test_http_app_drop_goes_to_dead_letter_topic(http_env, http_client, token):
    env = http_env
    http_client.publish_event(PUBSUB, "dlq-src", json.dumps({"token": token}), data_content_type="application/json")
    (dead,) = wait_for(env, "the dropped event on /dlq-dead", at_least(1, lambda ev: http_mine(ev, token, "/dlq-dead")))
    (src,) = http_mine(env.events(), token, "/dlq-src")
    assert src["reply"] == {"status": "DROP"}
    assert dead["body"]["id"] == src["body"]["id"]
    assert dead["body"]["data"] == {"token": token}


def accepted(post) -> bool:
    """Whether the HTTP app accepted a delivery (2xx with no status or SUCCESS)."""
    return post["status"] == 200 and post["reply"] in (None, {"status": "SUCCESS"})


@pytest.mark.parametrize("topic,path,first_reply", [
    ("retry", "/retry", (200, {"status": "RETRY"})),
    ("http-500", "/status-500", (500, {"error": "first attempt fails"})),
])
def test_http_app_retry_then_success(http_env, http_client, token, topic, path, first_reply):
    env = http_env
    for n in (1, 2):
        http_client.publish_event(PUBSUB, topic, json.dumps({"token": token, "n": n}), data_content_type="application/json")
    # The second event goes through the same subscription after the first: once it succeeded,
    # the first one cannot come back.
    wait_for(env, f"the second event accepted on {path}",
             lambda ev: [e for e in http_mine(ev, token, path) if e["body"]["data"]["n"] == 2 and accepted(e)])
    for n in (1, 2):
        attempts = [e for e in http_mine(env.events(), token, path) if e["body"]["data"]["n"] == n]
        replies = [(e["status"], e["reply"]) for e in attempts]
        assert len(attempts) == 2 and replies[0] == first_reply and accepted(attempts[1]), f"event {n}: {replies}"
        assert attempts[0]["body"]["id"] == attempts[1]["body"]["id"]


def test_http_app_raw_payload(http_env, http_client, token):
    env = http_env
    raw = b"\x00\xffraw " + token.encode()
    http_client.publish_event(PUBSUB, "raw", raw, data_content_type="application/octet-stream",
                              publish_metadata={"rawPayload": "true"})
    (e,) = wait_for(env, "the raw event on /raw", at_least(1, lambda ev: http_mine(ev, token, "/raw")))
    ce = e["body"]
    assert e["headers"].get("content-type") == "application/cloudevents+json"
    assert base64.b64decode(ce["data_base64"]) == raw and "data" not in ce, ce
    assert ce["datacontenttype"] == "application/octet-stream"
    assert (ce["source"], ce["type"], ce["specversion"]) == ("Dapr", "com.dapr.event.sent", "1.0")
    assert (ce["topic"], ce["pubsubname"]) == ("raw", PUBSUB)


def test_http_app_404_drops_the_event(http_env, http_client, token):
    env = http_env
    http_client.publish_event(PUBSUB, "http-404", json.dumps({"token": token, "n": 1}), data_content_type="application/json")
    http_client.publish_event(PUBSUB, "http-404", json.dumps({"token": token, "n": 2}), data_content_type="application/json",
                              publish_metadata={"cloudevent.type": "follow"})
    wait_for(env, "the follow-up event on /after-404", at_least(1, lambda ev: http_mine(ev, token, "/after-404")))
    attempts = http_mine(env.events(), token, "/not-here")
    assert [e["status"] for e in attempts] == [404], f"a 404 is a drop, never retried: {attempts}"


def test_http_app_declarative_subscriptions(http_env, http_client, token):
    """Subscription YAML (v2alpha1 with rules, v1alpha1 with a route) beside the Component."""
    env = http_env
    for event_type in ("z", "x"):
        http_client.publish_event(PUBSUB, "declared", json.dumps({"token": token, "sent_as": event_type}),
                                  data_content_type="application/json", publish_metadata={"cloudevent.type": event_type})
    http_client.publish_event(PUBSUB, "declared-v1", json.dumps({"token": token, "sent_as": "v1"}),
                              data_content_type="application/json")
    got = wait_for(env, "the three declared deliveries", at_least(3, lambda ev: http_mine(ev, token)))
    routed = {(e["path"], e["body"]["data"]["sent_as"]) for e in got}
    assert routed == {("/declared-default", "z"), ("/declared-x", "x"), ("/declared-v1", "v1")}, routed


def test_http_app_bulk_publish(http_env, http_client, token):
    env = http_env
    n = 10
    resp = http_client.publish_events(PUBSUB, "bulk", _bulk_entries(token, n), data_content_type="application/json")
    assert list(resp.failed_entries) == [], resp.failed_entries
    got = wait_for(env, f"the {n + 1} bulk-published events", at_least(n + 1, lambda ev: http_mine(ev, token, "/bulk")))
    bodies = [e["body"] for e in got]
    assert sorted(b["data"]["i"] for b in bodies if b["datacontenttype"] == "application/json") == list(range(n))
    (text,) = [b for b in bodies if b["datacontenttype"] == "text/plain"]
    assert text["data"] == f"text {token}" and text["type"] == "bulk.text"
    assert len({b["id"] for b in bodies}) == n + 1


def test_http_app_count(http_env, http_client, token, report_figure):
    _count(http_env, http_client, report_figure, token,
           lambda ev, t: [e["body"]["data"] for e in http_mine(ev, t, "/count")])
