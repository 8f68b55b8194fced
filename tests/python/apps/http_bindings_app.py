"""A plain `http.server` app receiving input bindings, used by test_bindings_secrets.py (plugd
with --app-protocol http).

    python http_bindings_app.py <port> <events-file> <route> [<route> ...]

Each <route> (a path such as `/custom/ticks`) is one the app handles: `OPTIONS <route>` answers
200 (plugd's probe: "the app wants this binding") and `POST <route>` answers 200 with a small
JSON body. Any other path answers 404 to both. Every request is appended to <events-file> as one
JSON line, written and flushed under a lock:

    {"method": "OPTIONS"|"POST", "path", "status", "headers" (lower-cased), "body" (text)}
"""

from __future__ import annotations

import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, events_path, routes = int(sys.argv[1]), sys.argv[2], set(sys.argv[3:])

_lock = threading.Lock()
_out = open(events_path, "a", encoding="utf-8")


def record(method: str, path: str, status: int, headers, body: bytes) -> None:
    line = {
        "method": method,
        "path": path,
        "status": status,
        "headers": {k.lower(): v for k, v in headers.items()},
        "body": body.decode("utf-8", errors="replace"),
        "body_b64": base64.b64encode(body).decode(),
    }
    with _lock:
        _out.write(json.dumps(line, sort_keys=True) + "\n")
        _out.flush()


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

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_OPTIONS(self):
        body = self._body()
        status = 200 if self.path in routes else 404
        record("OPTIONS", self.path, status, self.headers, body)
        self._send(status, None)

    def do_POST(self):
        body = self._body()
        status = 200 if self.path in routes else 404
        record("POST", self.path, status, self.headers, body)
        self._send(status, {"received": True} if status == 200 else None)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()
