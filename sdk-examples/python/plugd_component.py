"""What the two example components share: stubs generated at run time, the Unix socket server
with gRPC reflection, instance multiplexing, Dapr-shaped errors and a clean shutdown.

Nothing here is specific to plugd: a component built this way works with daprd as well.

* **Stubs.** `load_protos()` runs `grpc_tools.protoc` on the repository's `proto/proto` folder
  (the `dapr/proto/components/v1/*.proto` files, plus the well-known types shipped inside
  grpc_tools) into a cache folder keyed by the protos' contents and the grpcio-tools/protobuf
  versions, then imports the modules. Nothing generated is committed. If the cache folder
  cannot be created, a per-user folder in the temp directory is used instead,
  `plugd-sdk-examples-python-<uid>`, and only if it is a real directory owned by this user
  with mode 0700 (nobody else can plant modules in it).
* **Socket.** `<folder>/<name>.sock`, the folder from `--socket-folder`, else the first set of
  `DAPR_COMPONENTS_SOCKETS_FOLDER` (the variable daprd reads), `DAPR_COMPONENT_SOCKETS_FOLDER`
  and `DAPR_COMPONENT_SOCKET_FOLDER` (the order plugd reads them in), else
  `/tmp/dapr-components-sockets`. daprd sets none of them for a component: start the
  component with the same folder daprd uses. `plugd --managed-component` sets the first two.
  The name from `--socket-name`, else `PLUGD_SOCKET_NAME` (set by `plugd --managed-component`),
  else the component's default. A stale socket file (nobody accepts on it) is removed; a live
  one is left alone and the component exits with code 1.
* **Reflection.** grpcio-reflection serves `grpc.reflection.v1alpha.ServerReflection`, the
  version daprd (and plugd, first) asks for; the same servicer also answers as
  `grpc.reflection.v1.ServerReflection` (the messages are the same on the wire).
* **Instances.** Every call from daprd/plugd carries `x-component-instance: <Component name>`;
  `instance_name(context)` reads it (calls without it use `DEFAULT_INSTANCE`).
* **Errors.** Raise `ComponentError`; the `@rpc` decorator turns it into the gRPC status, with
  a `google.rpc.Status` in the `grpc-status-details-bin` trailer when it has details.
* **Shutdown.** SIGTERM or SIGINT: stop accepting, let calls finish for a short grace period,
  remove the socket (only if it is still the one this process bound: not a file another
  process put at the path meanwhile), exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.resources
import logging
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Awaitable, Callable, Iterable, List, Optional, Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

INSTANCE_HEADER = "x-component-instance"
DEFAULT_INSTANCE = "#default__instance#"
DEFAULT_SOCKETS_FOLDER = "/tmp/dapr-components-sockets"
# Read in this order, as plugd does (src/config.rs); daprd reads the first one.
SOCKETS_FOLDER_ENV = ("DAPR_COMPONENTS_SOCKETS_FOLDER", "DAPR_COMPONENT_SOCKETS_FOLDER", "DAPR_COMPONENT_SOCKET_FOLDER")
PROTO_FILES = ("common", "state", "pubsub", "bindings", "secretstore")
SHUTDOWN_GRACE_S = 2.0

log = logging.getLogger("plugd_component")


# ------------------------------------------------------------------------------------ stubs


def default_proto_root() -> Path:
    """`<repo>/proto/proto`, found from this file (sdk-examples/python/ is two levels down)."""
    return Path(__file__).resolve().parents[2] / "proto" / "proto"


def _cache_base() -> Path:
    explicit = os.environ.get("PLUGD_PY_STUBS_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "plugd-sdk-examples-python"


def _fallback_cache_base() -> Path:
    """The cache folder when the usual one cannot be created: per user, in the temp folder."""
    return Path(tempfile.gettempdir()) / f"plugd-sdk-examples-python-{os.getuid()}"


class UnsafeCacheDir(RuntimeError):
    pass


def _private_dir(path: Path) -> Path:
    """Creates `path` with mode 0700 if missing, and checks that it is a directory (not a
    symlink) owned by this user with mode 0700: in a shared folder such as /tmp, anyone could
    otherwise have created it first and put modules in it for us to import."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) != 0o700:
        raise UnsafeCacheDir(
            f"{path} is not a directory owned by uid {os.getuid()} with mode 0700 "
            f"(uid {st.st_uid}, mode {stat.filemode(st.st_mode)}); not importing stubs from it: "
            "remove it, or set PLUGD_PY_STUBS_DIR")
    return path


def _generate(proto_root: Path, out: Path) -> None:
    """Runs protoc (from grpcio-tools) for the component protos into `out`."""
    from grpc_tools import protoc  # imported here: only needed when the cache is cold

    wkt = importlib.resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    files = [f"dapr/proto/components/v1/{name}.proto" for name in PROTO_FILES]
    args = [
        "grpc_tools.protoc",
        f"--proto_path={proto_root}",
        f"--proto_path={wkt}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with {rc}: {' '.join(args)}")
    # Regular packages (with __init__.py), so that `dapr.proto.components.v1` resolves to these
    # files even where the Dapr SDK (which owns a `dapr` package too) is installed. The
    # component process itself never imports the SDK.
    pkg = out
    for part in ("dapr", "proto", "components", "v1"):
        pkg = pkg / part
        (pkg / "__init__.py").touch()


def load_protos(proto_root: Optional[Path] = None) -> SimpleNamespace:
    """Generates (once, cached) and imports the component stubs. Returns a namespace with the
    modules `common_pb2`, `state_pb2`, `state_pb2_grpc`, `pubsub_pb2`, `pubsub_pb2_grpc`, …"""
    root = Path(proto_root) if proto_root else default_proto_root()
    sources = [root / "dapr" / "proto" / "components" / "v1" / f"{n}.proto" for n in PROTO_FILES]
    digest = hashlib.sha256()
    for dist in ("grpcio-tools", "protobuf"):
        digest.update(f"{dist}={importlib.metadata.version(dist)}\n".encode())
    for path in sources:
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (point --proto-path at the repository's proto/proto)")
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    base = _cache_base()
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        base = _private_dir(_fallback_cache_base())
    final = base / digest.hexdigest()[:24]
    if not (final / "dapr" / "proto" / "components" / "v1" / "__init__.py").is_file():
        # Generate beside the final folder and rename: two components starting at once (plugd
        # launches them concurrently) never see a half-written folder.
        tmp = Path(tempfile.mkdtemp(prefix=".gen-", dir=base))
        try:
            _generate(root, tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                # Someone else won the race; theirs is complete (renamed as a whole).
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("generated component stubs from %s into %s", root, final)
    sys.path.insert(0, str(final))
    mods = {}
    for name in PROTO_FILES:
        mods[f"{name}_pb2"] = importlib.import_module(f"dapr.proto.components.v1.{name}_pb2")
        mods[f"{name}_pb2_grpc"] = importlib.import_module(f"dapr.proto.components.v1.{name}_pb2_grpc")
    return SimpleNamespace(**mods)


# ----------------------------------------------------------------------------------- errors


class ComponentError(Exception):
    """An error to send back as a gRPC status; `details` are protobuf messages packed into the
    `google.rpc.Status` of the `grpc-status-details-bin` trailer."""

    def __init__(self, code: grpc.StatusCode, message: str, details: Sequence = ()):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = list(details)

    def trailing_metadata(self):
        if not self.details:
            return ()
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        for d in self.details:
            packed = any_pb2.Any()
            packed.Pack(d)
            status.details.append(packed)
        return (("grpc-status-details-bin", status.SerializeToString()),)


def etag_mismatch(message: str) -> ComponentError:
    """What daprd reads as an etag mismatch (HTTP 409 / gRPC ABORTED to the app):
    FAILED_PRECONDITION with exactly one `BadRequest` violation on field `etag`."""
    return ComponentError(
        grpc.StatusCode.FAILED_PRECONDITION,
        message,
        [error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="etag", description=message)])],
    )


def invalid_argument(message: str) -> ComponentError:
    return ComponentError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_initialised(kind: str, instance: str) -> ComponentError:
    return ComponentError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"the {kind} instance {instance!r} is not initialised: call Init first",
    )


def rpc(method):
    """Decorates an `async def Method(self, request, context)` servicer method: a
    `ComponentError` becomes its gRPC status, any other exception INTERNAL (and is logged)."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except ComponentError as e:
            await context.abort(e.code, e.message, trailing_metadata=e.trailing_metadata())
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as e:  # noqa: BLE001  (reported to the caller, never swallowed)
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

    return wrapper


def instance_name(context) -> str:
    """The component instance a call is for (`x-component-instance`)."""
    for key, value in context.invocation_metadata() or ():
        if key == INSTANCE_HEADER and value:
            return value
    return DEFAULT_INSTANCE


# ----------------------------------------------------------------------------------- server


def arg_parser(description: str, default_name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--socket-name", default=os.environ.get("PLUGD_SOCKET_NAME") or default_name,
                   help=f"socket file stem = component type name (env PLUGD_SOCKET_NAME; default {default_name})")
    p.add_argument("--socket-folder", default=None,
                   help=f"folder of the socket (env {', then '.join(SOCKETS_FOLDER_ENV)}; "
                        f"default {DEFAULT_SOCKETS_FOLDER})")
    p.add_argument("--proto-path", default=os.environ.get("PLUGD_PROTO_PATH"),
                   help="folder holding dapr/proto/components/v1/*.proto (default: <repo>/proto/proto)")
    p.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"])
    return p


def socket_path(args) -> Path:
    folder = args.socket_folder or next(
        (os.environ[k] for k in SOCKETS_FOLDER_ENV if os.environ.get(k)), DEFAULT_SOCKETS_FOLDER)
    return Path(folder) / f"{args.socket_name}.sock"


def setup_logging(level: str, name: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s %(levelname)s {name}: %(message)s",
    )


class SocketInUse(RuntimeError):
    pass


def _clear_stale_socket(path: Path) -> None:
    """Removes `path` if it is a socket nobody accepts on; refuses to take over a live one."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; not removing it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale socket %s", path)
            path.unlink(missing_ok=True)
            return
        except OSError as e:
            raise SocketInUse(f"{path}: cannot tell whether it is in use ({e})") from e
    raise SocketInUse(f"{path} is served by another process; not replacing it")


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _add_reflection(server: grpc.aio.Server, names: List[str]) -> None:
    """gRPC reflection for `names`: `grpc.reflection.v1alpha` from grpcio-reflection (what daprd
    asks for), and the same servicer under `grpc.reflection.v1`, whose messages are identical
    on the wire (grpcio-reflection has no v1 service of its own)."""
    from grpc_reflection.v1alpha import reflection
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    servicer = reflection.aio.ReflectionServicer([*names, reflection.SERVICE_NAME, REFLECTION_V1])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),))


async def serve(
    path: Path,
    add_services: Callable[[grpc.aio.Server], Iterable[str]],
    on_shutdown: Optional[Callable[[], Awaitable[None]]] = None,
) -> None:
    """Serves on the Unix socket `path` until SIGTERM/SIGINT. `add_services(server)` registers
    the servicers and returns their full service names (for reflection)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale_socket(path)
    server = grpc.aio.server()
    names: List[str] = list(add_services(server))
    _add_reflection(server, names)
    # gRPC core unlinks a Unix socket's path when the server stops, whatever file is there by
    # then. So bind in a private folder beside the socket and rename the socket into place:
    # what gRPC unlinks at the end is the private path, and this process removes `path` itself,
    # only if it is still the file it renamed there (not one another process, a newer instance
    # of the component say, has put there meanwhile). Too long a private path (a socket path
    # has ~107 bytes): bind `path` directly.
    bind_dir = Path(tempfile.mkdtemp(prefix=".b", dir=path.parent))
    bound = bind_dir / "s"
    if len(os.fsencode(bound)) > 100:
        bind_dir.rmdir()
        bind_dir, bound = None, path
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        server.add_insecure_port(f"unix:{bound}")
        await server.start()
        if bound != path:
            os.rename(bound, path)
    finally:
        if bind_dir is not None:
            shutil.rmtree(bind_dir, ignore_errors=True)
    st = path.lstat()
    ours = (st.st_dev, st.st_ino)
    log.info("serving %s on %s", ", ".join(names), path)
    try:
        await stop.wait()
        log.info("shutting down")
        if on_shutdown is not None:
            await on_shutdown()  # e.g. end open streams, so the grace period is not waited out
        await server.stop(SHUTDOWN_GRACE_S)
    finally:
        try:
            st = path.lstat()
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == ours:
            path.unlink(missing_ok=True)
            log.info("stopped; removed %s", path)
        else:
            log.info("stopped; %s is no longer this process's socket, left alone", path)


def main(run: Callable[[argparse.Namespace], Awaitable[None]], args: argparse.Namespace, name: str) -> int:
    """Runs `run(args)` under asyncio; exit code 0 after a clean shutdown, 1 on a start-up error."""
    setup_logging(args.log_level, name)
    try:
        asyncio.run(run(args))
    except (SocketInUse, UnsafeCacheDir) as e:
        log.error("%s", e)
        return 1
    return 0
