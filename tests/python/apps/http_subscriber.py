"""A plain `http.server` subscriber app used by test_pubsub.py (plugd with --app-protocol http).

    python http_subscriber.py <port> <events-file> <pubsub-name>

Serves `GET /dapr/subscribe` and one POST route per behaviour. Every POST is appended to
<events-file> as one JSON line (`path`, lower-cased `headers`, the parsed `body`, the `reply`),
written and flushed under a lock. Events whose data carries `"warmup"` are always accepted
(except on the 404 route, which never accepts anything), so the test can find out that every
subscription is live before it publishes.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, events_path, pubsub = int(sys.argv[1]), sys.argv[2], sys.argv[3]

_lock = threading.Lock()
_out = open(events_path, "a", encoding="utf-8")
_attempts: dict = {}

SUBSCRIPTIONS = [
    {"pubsubname": pubsub, "topic": "orders", "route": "/orders"},
    {"pubsubname": pubsub, "topic": "bulk", "route": "/bulk"},
    {"pubsubname": pubsub, "topic": "count", "route": "/count"},
    {
        "pubsubname": pubsub,
        "topic": "routed",
        "routes": {
            "rules": [
                {"match": 'event.type == "x"', "path": "/routed-x"},
                {"match": 'event.type == "y"', "path": "/routed-y"},
            ],
            "default": "/routed-default",
        },
    },
    {"pubsubname": pubsub, "topic": "dlq-src", "route": "/dlq-src", "deadLetterTopic": "dlq-dead"},
    {"pubsubname": pubsub, "topic": "dlq-dead", "route": "/dlq-dead"},
    {"pubsubname": pubsub, "topic": "retry", "route": "/retry"},
    {"pubsubname": pubsub, "topic": "raw", "route": "/raw", "metadata": {"rawPayload": "true"}},
    {"pubsubname": pubsub, "topic": "http-500", "route": "/status-500"},
    {
        "pubsubname": pubsub,
        "topic": "http-404",
        "routes": {
            "rules": [{"match": 'event.type == "follow"', "path": "/after-404"}],
            "default": "/not-here",
        },
    },
]


def _first_attempt(path: str, event_id: str) -> bool:
    with _lock:
        n = _attempts.get((path, event_id), 0)
        _attempts[(path, event_id)] = n + 1
        return n == 0


def _reply_for(path: str, body) -> tuple:
    """(HTTP status, JSON reply or None) for one delivery."""
    data = body.get("data") if isinstance(body, dict) else None
    warmup = isinstance(data, dict) and "warmup" in data
    event_id = body.get("id", "") if isinstance(body, dict) else ""
    if path == "/not-here":
        return 404, None
    if warmup:
        return 200, {"status": "SUCCESS"}
    if path == "/dlq-src":
        return 200, {"status": "DROP"}
    if path == "/retry":
        return 200, {"status": "RETRY" if _first_attempt(path, event_id) else "SUCCESS"}
    if path == "/status-500":
        return (500, {"error": "first attempt fails"}) if _first_attempt(path, event_id) else (200, None)
    return 200, {"status": "SUCCESS"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as plugd's client expects
    # Headers and body are written separately: without TCP_NODELAY each reply waits ~40 ms for
    # the client's delayed ACK.
    disable_nagle_algorithm = True

    def log_message(self, *args):  # keep stderr quiet
        pass

    def _send(self, status: int, reply) -> None:
        payload = b"" if reply is None else json.dumps(reply).encode()
        self.send_response(status)
        if reply is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):
        if self.path == "/dapr/subscribe":
            self._send(200, SUBSCRIPTIONS)
        else:
            self._send(404, None)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        status, reply = _reply_for(self.path, body)
        line = {
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
            "status": status,
            "reply": reply,
        }
        with _lock:
            _out.write(json.dumps(line, sort_keys=True) + "\n")
            _out.flush()
        self._send(status, reply)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()
