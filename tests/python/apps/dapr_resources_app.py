"""A `dapr.ext.grpc.App` used by test_dapr_resources.py (plugd running a Dapr components folder).

    python dapr_resources_app.py <port> <events-file> <topic> <binding> <pubsub> [<pubsub> ...]

Subscribes to <topic> on every <pubsub> given and receives the input binding <binding>
(`@app.binding`). Every delivery is appended to <events-file> as one JSON line, written and
flushed under a lock so the test can poll the file while the app runs:

    {"kind": "topic", "pubsub": name, "topic": topic, "id": ..., "source": ..., "type": ..., "data": ...}
    {"kind": "binding", "binding": name, "data": text, "metadata": {...}}

Every event is accepted (SUCCESS; an empty reply for bindings).
"""

from __future__ import annotations

import json
import sys
import threading
from concurrent import futures

from dapr.clients.grpc._request import BindingRequest
from dapr.ext.grpc import App, SubscriptionMessage, TopicEventResponse

port, events_path, topic, binding, pubsubs = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]

app = App(thread_pool=futures.ThreadPoolExecutor(max_workers=10))
_lock = threading.Lock()
_out = open(events_path, "a", encoding="utf-8")


def _write(line: dict) -> None:
    text = json.dumps(line, sort_keys=True)
    with _lock:
        _out.write(text + "\n")
        _out.flush()


def topic_handler(pubsub: str):
    def on_event(event: SubscriptionMessage) -> TopicEventResponse:
        data = event.data()
        _write({
            "kind": "topic",
            "pubsub": event.pubsub_name(),
            "subscribed_pubsub": pubsub,
            "topic": event.topic(),
            "id": event.id(),
            "source": event.source(),
            "type": event.type(),
            "data": data if isinstance(data, (dict, list, str, int, float, bool)) or data is None else repr(data),
        })
        return TopicEventResponse("success")

    on_event.__name__ = f"on_{pubsub.replace('-', '_')}_{topic.replace('-', '_')}"
    return on_event


for name in pubsubs:
    app.subscribe(pubsub_name=name, topic=topic)(topic_handler(name))


@app.binding(binding)
def on_binding(request: BindingRequest) -> None:
    _write({
        "kind": "binding",
        "binding": binding,
        "data": request.data.decode("utf-8", errors="replace"),
        "metadata": {k: v if isinstance(v, str) else repr(v) for k, v in request.binding_metadata.items()},
    })


if __name__ == "__main__":
    app.run(port, listen_address="127.0.0.1")
