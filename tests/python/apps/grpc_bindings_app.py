"""A `dapr.ext.grpc.App` receiving input bindings, used by test_bindings_secrets.py.

    python grpc_bindings_app.py <port> <events-file> <binding> [<binding> ...]

Registers `@app.binding(<binding>)` for every name given (so `ListInputBindings` lists exactly
those). Every `OnBindingEvent` call that reaches the app is appended to <events-file> as one JSON
line, written and flushed under a lock so the test can poll the file while the app runs:

    {"binding": name, "handled": true|false, "data": text, "data_b64": ..., "metadata": {...}}

`handled` is false for a binding the app did not register: the SDK answers those UNIMPLEMENTED
before any handler runs, so they are seen by a server interceptor instead (plugd must not
deliver them at all, since the app does not list them).
"""

from __future__ import annotations

import base64
import json
import sys
import threading
from concurrent import futures

import grpc
from dapr.clients.grpc._request import BindingRequest
from dapr.ext.grpc import App

port, events_path, bindings = int(sys.argv[1]), sys.argv[2], sys.argv[3:]

_lock = threading.Lock()
_out = open(events_path, "a", encoding="utf-8")

ON_BINDING_EVENT = "/dapr.proto.runtime.v1.AppCallback/OnBindingEvent"


def record(binding: str, handled: bool, data: bytes, metadata: dict) -> None:
    line = {
        "binding": binding,
        "handled": handled,
        "data": data.decode("utf-8", errors="replace"),
        "data_b64": base64.b64encode(data).decode(),
        "metadata": {k: v if isinstance(v, str) else repr(v) for k, v in metadata.items()},
    }
    text = json.dumps(line, sort_keys=True)
    with _lock:
        _out.write(text + "\n")
        _out.flush()


class UnregisteredBindingRecorder(grpc.ServerInterceptor):
    """Records OnBindingEvent calls for bindings the app did not register, then lets the SDK
    answer them (UNIMPLEMENTED)."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler_call_details.method != ON_BINDING_EVENT or handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        def on_binding_event(request, context):
            if request.name not in bindings:
                record(request.name, False, request.data, dict(request.metadata))
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            on_binding_event,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


app = App(
    thread_pool=futures.ThreadPoolExecutor(max_workers=10),
    interceptors=[UnregisteredBindingRecorder()],
)


def handler_for(name: str):
    def on_event(request: BindingRequest) -> None:
        # binding_metadata is the event's metadata; request.metadata holds the gRPC headers.
        record(name, True, request.data, request.binding_metadata)

    on_event.__name__ = f"on_{name.replace('-', '_')}"
    return on_event


for name in bindings:
    app.binding(name)(handler_for(name))


if __name__ == "__main__":
    app.run(port, listen_address="127.0.0.1")
