#!/usr/bin/env python3
"""A pluggable state store for Dapr / plugd, written with grpcio, backed by SQLite (stdlib).

    python3 state_store.py [--socket-name NAME] [--socket-folder DIR]

Serves `StateStore` and `TransactionalStateStore` (dapr.proto.components.v1) on
`<folder>/<name>.sock` (default name `pystate`, so `type: state.pystate`); see README.md.

Features: ETAG, TRANSACTIONAL, TTL -- and nothing it does not do:

* **ETAG.** Every write gives the key a new random etag. A Set or Delete whose etag does not
  match the stored one (or names a key that does not exist) fails with FAILED_PRECONDITION and
  one `google.rpc.BadRequest` violation on field `etag` -- what daprd turns into ABORTED / 409.
  With first-write concurrency and no etag, a Set on an existing key is a mismatch too.
* **TRANSACTIONAL.** `Transact` applies its operations in order inside one SQLite transaction:
  all of them or none (a conflict in the last one undoes the first ones).
* **TTL.** `ttlInSeconds` in a Set's metadata: the key disappears after that many seconds
  (<= 0: never); Get returns `ttlExpireTime` (RFC 3339, UTC) in its metadata.
* Bulk Get / Set / Delete (Set and Delete all-or-nothing as well), Ping (a query on the
  database), not-found = an empty GetResponse.

Init metadata, per instance (`x-component-instance`, the Component's name):

    connectionString | databasePath   SQLite file, or a `file:` URI   (default: in memory,
                                       private to the instance)
    tableName                          table to use                    (default: state)
    busyTimeoutMs                      wait for a locked database      (default: 5000)

A second Init of an instance with the same metadata keeps it (plugd and daprd re-run Init after
a reconnect); with other metadata, the instance is replaced.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import sqlite3
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

import grpc

from plugd_component import (
    ComponentError,
    arg_parser,
    etag_mismatch,
    instance_name,
    invalid_argument,
    load_protos,
    main,
    not_initialised,
    rpc,
    serve,
    socket_path,
)

FEATURES = ["ETAG", "TRANSACTIONAL", "TTL"]
TTL_KEY = "ttlInSeconds"
TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

log = logging.getLogger("state_store")
pb = None  # the generated modules, set by run()


def _etag_of(req) -> str:
    """The etag a Set/Delete carries ('' = none: message absent or empty)."""
    return req.etag.value if req.HasField("etag") else ""


def _ttl_of(metadata) -> Optional[float]:
    """Seconds to live from `ttlInSeconds`, None = never expires."""
    raw = metadata.get(TTL_KEY)
    if raw is None or raw == "":
        return None
    try:
        ttl = int(raw)
    except ValueError:
        raise invalid_argument(f"metadata {TTL_KEY}={raw!r} is not an integer") from None
    return float(ttl) if ttl > 0 else None


def _redact(path: str) -> str:
    """A database path fit for logs: a `file:` URI without its query (which may hold options
    such as a key), a plain path as is."""
    return path.split("?", 1)[0] if path.startswith("file:") else path


def _rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    """One instance: its own SQLite connection, used only from its own single thread, so
    calls never block the event loop and never run at the same time."""

    def __init__(self, name: str, props: Dict[str, str]):
        self.name = name
        self.props = dict(props)
        self.path = props.get("connectionString") or props.get("databasePath") or ":memory:"
        self.table = props.get("tableName") or "state"
        if not TABLE_NAME.match(self.table):
            raise invalid_argument(f"metadata tableName={self.table!r}: letters, digits and _ only")
        raw_busy = props.get("busyTimeoutMs") or "5000"
        try:
            self.busy_s = int(raw_busy) / 1000.0
        except ValueError:
            raise invalid_argument(f"metadata busyTimeoutMs={raw_busy!r} is not an integer") from None
        self.db: Optional[sqlite3.Connection] = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{name}")
        self._closed = False

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def close(self) -> None:
        """Closes the connection (on its thread, after the calls already queued) and ends the
        thread. Idempotent: a second call does nothing."""
        if self._closed:
            return
        self._closed = True

        def _close():
            if self.db is not None:
                self.db.close()
                self.db = None
        self._thread.submit(_close)
        self._thread.shutdown(wait=False)

    # Everything below runs on the instance's thread.

    def open(self) -> None:
        self.db = sqlite3.connect(
            self.path, timeout=self.busy_s, isolation_level=None,  # autocommit; BEGIN by hand
            uri=self.path.startswith("file:"), check_same_thread=False,
        )
        t = self.table
        self.db.execute(
            f"CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
            f"etag TEXT NOT NULL, content_type TEXT NOT NULL DEFAULT '', expires_at REAL)")
        self.db.execute(f"CREATE INDEX IF NOT EXISTS {t}_expires ON {t} (expires_at)")

    def ping(self) -> None:
        self.db.execute("SELECT 1").fetchone()

    def _row(self, key: str, now: float) -> Optional[Tuple[bytes, str, str, Optional[float]]]:
        return self.db.execute(
            f"SELECT value, etag, content_type, expires_at FROM {self.table} "
            "WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)", (key, now)).fetchone()

    def get(self, keys: List[str]) -> List[Optional[tuple]]:
        now = time.time()
        return [self._row(k, now) for k in keys]

    def write(self, ops: List[Tuple[str, object]]) -> None:
        """Applies ("set", SetRequest) / ("delete", DeleteRequest) operations in order, in one
        transaction: all or nothing."""
        now = time.time()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(f"DELETE FROM {self.table} WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
            for kind, req in ops:
                if kind == "set":
                    self._set(req, now)
                else:
                    self._delete(req, now)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def _check_etag(self, key: str, etag: str, now: float, what: str) -> Optional[tuple]:
        row = self._row(key, now)
        if etag and (row is None or row[1] != etag):
            found = "the key does not exist" if row is None else "the stored etag differs"
            raise etag_mismatch(f"{what} {key!r}: etag {etag!r} does not match ({found})")
        return row

    def _set(self, req, now: float) -> None:
        if not req.key:
            raise invalid_argument("a key is required")
        etag = _etag_of(req)
        ttl = _ttl_of(req.metadata)
        row = self._check_etag(req.key, etag, now, "set")
        first_write = req.HasField("options") and \
            req.options.concurrency == pb.state_pb2.StateOptions.CONCURRENCY_FIRST_WRITE
        if not etag and first_write and row is not None:
            raise etag_mismatch(f"set {req.key!r}: first-write concurrency without an etag, and the key exists")
        self.db.execute(
            f"INSERT OR REPLACE INTO {self.table} (key, value, etag, content_type, expires_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (req.key, bytes(req.value), uuid.uuid4().hex, req.content_type, now + ttl if ttl else None))

    def _delete(self, req, now: float) -> None:
        if not req.key:
            raise invalid_argument("a key is required")
        self._check_etag(req.key, _etag_of(req), now, "delete")
        self.db.execute(f"DELETE FROM {self.table} WHERE key = ?", (req.key,))


class StateStoreServicer:
    """StateStore + TransactionalStateStore over one `Store` per instance."""

    def __init__(self):
        self.instances: Dict[str, Store] = {}
        self._init_locks: Dict[str, asyncio.Lock] = {}  # one per instance: Inits never overlap

    def store(self, context) -> Store:
        name = instance_name(context)
        store = self.instances.get(name)
        if store is None:
            raise not_initialised("state store", name)
        return store

    @rpc
    async def Init(self, request, context):
        name = instance_name(context)
        props = dict(request.metadata.properties)
        # Concurrent Inits of one instance (a host reconnecting while another Init is still
        # opening the database) run one after the other: each sees what the previous one left,
        # so no store is opened and then lost, and none is closed twice.
        async with self._init_locks.setdefault(name, asyncio.Lock()):
            current = self.instances.get(name)
            if current is not None and current.props == props:
                return pb.state_pb2.InitResponse()
            store = Store(name, props)
            try:
                await store.run(store.open)
            except sqlite3.Error as e:
                store.close()
                raise ComponentError(grpc.StatusCode.INTERNAL, f"cannot open {_redact(store.path)!r}: {e}") from e
            old = self.instances.get(name)  # re-read after the await
            self.instances[name] = store
            if old is not None:
                old.close()
        # Not the connection string itself: it may carry credentials the host resolved.
        log.info("instance %r initialised: database %s, table %s (metadata keys: %s)",
                 name, _redact(store.path), store.table, ", ".join(sorted(props)) or "none")
        return pb.state_pb2.InitResponse()

    @rpc
    async def Features(self, request, context):
        return pb.common_pb2.FeaturesResponse(features=FEATURES)

    @rpc
    async def Ping(self, request, context):
        store = self.instances.get(instance_name(context))
        if store is not None:
            await store.run(store.ping)
        return pb.common_pb2.PingResponse()

    @staticmethod
    def _item(row):
        """(data, etag, metadata, content_type) of a stored row."""
        value, etag, content_type, expires_at = row
        metadata = {"ttlExpireTime": _rfc3339(expires_at)} if expires_at is not None else {}
        return bytes(value), pb.state_pb2.Etag(value=etag), metadata, content_type

    @rpc
    async def Get(self, request, context):
        store = self.store(context)
        (row,) = await store.run(store.get, [request.key])
        if row is None:
            return pb.state_pb2.GetResponse()
        data, etag, metadata, content_type = self._item(row)
        return pb.state_pb2.GetResponse(data=data, etag=etag, metadata=metadata, content_type=content_type)

    @rpc
    async def BulkGet(self, request, context):
        store = self.store(context)
        keys = [item.key for item in request.items]
        rows = await store.run(store.get, keys)
        items = []
        for key, row in zip(keys, rows):
            if row is None:
                items.append(pb.state_pb2.BulkStateItem(key=key))
            else:
                data, etag, metadata, content_type = self._item(row)
                items.append(pb.state_pb2.BulkStateItem(
                    key=key, data=data, etag=etag, metadata=metadata, content_type=content_type))
        return pb.state_pb2.BulkGetResponse(items=items)

    @rpc
    async def Set(self, request, context):
        store = self.store(context)
        await store.run(store.write, [("set", request)])
        return pb.state_pb2.SetResponse()

    @rpc
    async def BulkSet(self, request, context):
        store = self.store(context)
        await store.run(store.write, [("set", item) for item in request.items])
        return pb.state_pb2.BulkSetResponse()

    @rpc
    async def Delete(self, request, context):
        store = self.store(context)
        await store.run(store.write, [("delete", request)])
        return pb.state_pb2.DeleteResponse()

    @rpc
    async def BulkDelete(self, request, context):
        store = self.store(context)
        await store.run(store.write, [("delete", item) for item in request.items])
        return pb.state_pb2.BulkDeleteResponse()

    @rpc
    async def Transact(self, request, context):
        store = self.store(context)
        ops = []
        for i, op in enumerate(request.operations):
            which = op.WhichOneof("request")
            if which is None:
                raise invalid_argument(f"operation {i} is neither a set nor a delete")
            ops.append((which, getattr(op, which)))
        await store.run(store.write, ops)
        return pb.state_pb2.TransactionalStateResponse()


async def run(args) -> None:
    global pb
    pb = load_protos(args.proto_path)
    servicer = StateStoreServicer()

    def add_services(server):
        pb.state_pb2_grpc.add_StateStoreServicer_to_server(servicer, server)
        pb.state_pb2_grpc.add_TransactionalStateStoreServicer_to_server(servicer, server)
        services = pb.state_pb2.DESCRIPTOR.services_by_name
        return [services["StateStore"].full_name, services["TransactionalStateStore"].full_name]

    try:
        await serve(socket_path(args), add_services)
    finally:
        for store in servicer.instances.values():
            store.close()


if __name__ == "__main__":
    sys.exit(main(run, arg_parser("A pluggable state store (SQLite) for Dapr and plugd.", "pystate").parse_args(), "state_store"))
