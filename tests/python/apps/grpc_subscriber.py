"""A `dapr.ext.grpc.App` subscriber used by test_pubsub.py.

    python grpc_subscriber.py <port> <events-file> <pubsub-name>

Every event any handler sees is appended to <events-file> as one JSON line (written and flushed
under a lock, so the test can poll the file while the app runs). A handler's reply depends on
its topic (see the handlers below); events whose data carries `"warmup"` are always accepted, so
the test can find out that every subscription is live before it starts publishing.
"""

from __future__ import annotations

import base64
import json
import sys
import threading

from dapr.ext.grpc import App, Rule, SubscriptionMessage, TopicEventResponse

port, events_path, pubsub = int(sys.argv[1]), sys.argv[2], sys.argv[3]

app = App()
_lock = threading.Lock()
_out = open(events_path, "a", encoding="utf-8")
_seen_retry: set = set()


def _is_warmup(event: SubscriptionMessage) -> bool:
    data = event.data()
    return isinstance(data, dict) and "warmup" in data


def record(handler: str, event: SubscriptionMessage, reply: str) -> None:
    data = event.data()
    line = {
        "handler": handler,
        "reply": reply,
        "id": event.id(),
        "source": event.source(),
        "type": event.type(),
        "spec_version": event.spec_version(),
        "data_content_type": event.data_content_type(),
        "topic": event.topic(),
        "pubsub_name": event.pubsub_name(),
        "data": data if isinstance(data, (dict, list, str, int, float, bool)) or data is None else repr(data),
        "raw_data_b64": base64.b64encode(event.raw_data()).decode(),
        "extensions": event.extensions(),
        "metadata": {k: v if isinstance(v, str) else repr(v) for k, v in event.metadata().items()},
    }
    text = json.dumps(line, sort_keys=True)
    with _lock:
        _out.write(text + "\n")
        _out.flush()


def plain(handler: str):
    """A handler that records the event and accepts it."""

    def on_event(event: SubscriptionMessage) -> TopicEventResponse:
        record(handler, event, "success")
        return TopicEventResponse("success")

    on_event.__name__ = handler
    return on_event


# Plain delivery (JSON and text payloads).
app.subscribe(pubsub_name=pubsub, topic="orders")(plain("orders"))
# Bulk publish and the count test.
app.subscribe(pubsub_name=pubsub, topic="bulk")(plain("bulk"))
app.subscribe(pubsub_name=pubsub, topic="count")(plain("count"))


# rawPayload: the sidecar hands over the broker's bytes as they are (data_base64 of a
# synthesized envelope), without reading them as a CloudEvent.
app.subscribe(pubsub_name=pubsub, topic="raw", metadata={"rawPayload": "true"})(plain("raw"))


# Routing rules: the rule path is the handler's function name (on_type_x, on_type_y). There is
# no default route, so an event of any other type is skipped by the sidecar.
@app.subscribe(pubsub_name=pubsub, topic="routed", rule=Rule('event.type == "x"', 1))
def on_type_x(event: SubscriptionMessage) -> TopicEventResponse:
    record("on_type_x", event, "success")
    return TopicEventResponse("success")


@app.subscribe(pubsub_name=pubsub, topic="routed", rule=Rule('event.type == "y"', 2))
def on_type_y(event: SubscriptionMessage) -> TopicEventResponse:
    record("on_type_y", event, "success")
    return TopicEventResponse("success")


# Dead letters: everything on dlq-src (except warm-ups) is dropped and must reach dlq-dead.
@app.subscribe(pubsub_name=pubsub, topic="dlq-src", dead_letter_topic="dlq-dead")
def on_dlq_src(event: SubscriptionMessage) -> TopicEventResponse:
    if _is_warmup(event):
        record("dlq-src", event, "success")
        return TopicEventResponse("success")
    record("dlq-src", event, "drop")
    return TopicEventResponse("drop")


app.subscribe(pubsub_name=pubsub, topic="dlq-dead")(plain("dlq-dead"))


# Retry: the first delivery of an event id is answered RETRY, any later one SUCCESS.
@app.subscribe(pubsub_name=pubsub, topic="retry")
def on_retry(event: SubscriptionMessage) -> TopicEventResponse:
    if _is_warmup(event):
        record("retry", event, "success")
        return TopicEventResponse("success")
    with _lock:
        first = event.id() not in _seen_retry
        _seen_retry.add(event.id())
    reply = "retry" if first else "success"
    record("retry", event, reply)
    return TopicEventResponse(reply)


# A handler exception (gRPC UNKNOWN) means retry: the first delivery of an event id raises.
@app.subscribe(pubsub_name=pubsub, topic="raise")
def on_raise(event: SubscriptionMessage) -> None:
    if _is_warmup(event):
        record("raise", event, "success")
        return None
    with _lock:
        first = ("raise", event.id()) not in _seen_retry
        _seen_retry.add(("raise", event.id()))
    if first:
        record("raise", event, "exception")
        raise RuntimeError("first delivery fails")
    record("raise", event, "success")
    return None  # an empty reply: SUCCESS


if __name__ == "__main__":
    app.run(port)
