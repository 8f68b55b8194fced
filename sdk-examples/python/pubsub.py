#!/usr/bin/env python3
"""A pluggable pub/sub broker for Dapr / plugd, written with grpcio (in memory, asyncio).

    python3 pubsub.py [--socket-name NAME] [--socket-folder DIR]

Serves `PubSub` (dapr.proto.components.v1) on `<folder>/<name>.sock` (default name `pypubsub`,
so `type: pubsub.pypubsub`); see README.md.

* **Publish / BulkPublish** append the message to the topic. Every consumer group of the topic
  gets every message; the streams of one group share its messages (competing consumers).
  Messages published to a topic that no group has subscribed to yet are kept (up to
  `maxBacklog`) for the first group.
* **PullMessages** (one bidirectional stream per subscription): the first request names the
  topic; the component sends messages, each with a fresh delivery `id`, in publish order, at most
  `maxInFlight` unacked at once per stream. An ack without `ack_error` settles the message. A
  message is delivered again (before newer ones) when it is **nacked** (ack with `ack_error`),
  when it is **not acked** within `ackDeadlineSeconds`, or when its **stream ends** unacked.
  A nacked message waits before it is delivered again: 100 ms after its first nack, doubling
  with every further nack of it in the group, 5 s at most. An ack for an unknown or expired
  delivery id is ignored.
* **Backlog.** Each consumer group keeps at most `maxBacklog` messages waiting to be delivered
  (and a topic with no group yet keeps at most `maxBacklog` for its first group). When a
  publish finds the group full, the **oldest** waiting message of that group is dropped (with a
  warning); the publish itself always succeeds. Delivered, unacked messages do not count.
* **Features:** BULK_PUBSUB (BulkPublish) and MESSAGE_TTL (`ttlInSeconds` in the publish
  metadata: an expired message is never delivered). Ping answers.
* **Pause / Resume** apply to the streams open when they are called: Pause stops delivery on
  them (daprd and plugd call it at graceful shutdown, then drain and cancel, and never call
  Resume), Resume restarts it. A stream opened later, e.g. by the host after it restarted,
  is not paused.

Init metadata, per instance (`x-component-instance`, the Component's name; instances are
separate brokers):

    consumerID          default consumer group (plugd and daprd set it to the app id); a
                        subscription's own `consumerID` metadata wins      (default: default)
    ackDeadlineSeconds  redeliver what is not acked within this time; 0 = only on nack or end
                        of stream (decimals allowed)                      (default: 60)
    maxInFlight         unacked deliveries per stream                     (default: 10)
    maxBacklog          messages waiting per consumer group, and per topic before its
                        first group; the oldest is dropped when full       (default: 1000)

A second Init of an instance with the same metadata keeps it (and its messages); with other
metadata, the instance is replaced and its open streams end (the host subscribes again).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import time
import uuid
from collections import deque
from typing import Deque, Dict, List, Optional, Set

import grpc

from plugd_component import (
    ComponentError,
    arg_parser,
    instance_name,
    invalid_argument,
    load_protos,
    main,
    not_initialised,
    rpc,
    serve,
    socket_path,
)

FEATURES = ["BULK_PUBSUB", "MESSAGE_TTL"]
TTL_KEY = "ttlInSeconds"
NACK_BACKOFF_FIRST_S = 0.1  # delay before a nacked message is delivered again, doubling per nack
NACK_BACKOFF_MAX_S = 5.0

log = logging.getLogger("pubsub")
pb = None  # the generated modules, set by run()
_seq = itertools.count(1)


class Message:
    __slots__ = ("seq", "topic", "data", "content_type", "metadata", "expires_at")

    def __init__(self, topic: str, data: bytes, content_type: str, metadata: Dict[str, str]):
        self.seq = next(_seq)
        self.topic = topic
        self.data = data
        self.content_type = content_type
        self.metadata = metadata
        ttl = metadata.get(TTL_KEY)
        self.expires_at = None
        if ttl:
            try:
                seconds = int(ttl)
            except ValueError:
                raise invalid_argument(f"metadata {TTL_KEY}={ttl!r} is not an integer") from None
            if seconds > 0:
                self.expires_at = time.monotonic() + seconds

    def expired(self) -> bool:
        return self.expires_at is not None and time.monotonic() >= self.expires_at


class Stream:
    """One PullMessages call: its unacked deliveries (id -> message)."""

    def __init__(self, topic: str, group: str):
        self.topic = topic
        self.group_name = group
        self.inflight: Dict[str, Message] = {}
        self.ended = False
        self.paused = False  # by Pause while this stream was open


class Group:
    """A consumer group on one topic: messages ready to deliver, deliveries awaiting an ack."""

    def __init__(self, broker: "Broker", topic: str, name: str):
        self.broker = broker
        self.topic = topic
        self.name = name
        self.ready: Deque[Message] = deque()
        self.inflight: Dict[str, tuple] = {}  # delivery id -> (message, stream, deadline timer)
        self.nacks: Dict[int, int] = {}  # message seq -> times nacked in this group
        self.backing_off: Dict[int, asyncio.TimerHandle] = {}  # message seq -> redelivery timer
        self.dropped = 0
        self._waiters: Set[asyncio.Future] = set()

    def add(self, msg: Message) -> None:
        """A published message: queued for the group, dropping the oldest waiting one when the
        group already holds `maxBacklog`."""
        limit = self.broker.max_backlog
        while len(self.ready) >= limit:
            old = self.ready.popleft()
            self.nacks.pop(old.seq, None)
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("group %r on %r holds maxBacklog=%d waiting messages: dropped the oldest "
                            "(%d dropped so far)", self.name, self.topic, limit, self.dropped)
        self.ready.append(msg)
        self.wake()

    def wake(self) -> None:
        """Wakes every stream waiting for something to change (synchronous: callable from
        timers and cleanup code)."""
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    async def _changed(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        await fut

    async def next_delivery(self, stream: Stream):
        """Waits until `stream` may take a message and returns (delivery id, message), or None
        once the stream or the broker has ended."""
        while True:
            if stream.ended or self.broker.closed:
                return None
            while self.ready and self.ready[0].expired():
                self.nacks.pop(self.ready.popleft().seq, None)
            if self.ready and not stream.paused and len(stream.inflight) < self.broker.max_in_flight:
                msg = self.ready.popleft()
                did = uuid.uuid4().hex
                timer = None
                if self.broker.ack_deadline > 0:
                    timer = asyncio.get_running_loop().call_later(self.broker.ack_deadline, self._expire, did)
                self.inflight[did] = (msg, stream, timer)
                stream.inflight[did] = msg
                return did, msg
            await self._changed()

    def _requeue(self, messages: List[Message]) -> None:
        """Puts messages back in front of the queue, oldest first."""
        for msg in sorted(messages, key=lambda m: m.seq, reverse=True):
            self.ready.appendleft(msg)
        self.wake()

    def _settle(self, did: str) -> Optional[Message]:
        entry = self.inflight.pop(did, None)
        if entry is None:
            return None
        msg, stream, timer = entry
        if timer is not None:
            timer.cancel()
        stream.inflight.pop(did, None)
        self.wake()  # a slot is free
        return msg

    def ack(self, did: str, error: Optional[str]) -> None:
        msg = self._settle(did)
        if msg is None:
            log.debug("ack for unknown or expired delivery %s ignored", did)
        elif error is None:
            self.nacks.pop(msg.seq, None)
        else:
            n = self.nacks[msg.seq] = self.nacks.get(msg.seq, 0) + 1
            delay = min(NACK_BACKOFF_FIRST_S * 2 ** (n - 1), NACK_BACKOFF_MAX_S)
            log.debug("message %d on %r nacked (%s), %d time(s): redelivering in %.1fs",
                      msg.seq, self.topic, error or "no reason", n, delay)
            self.backing_off[msg.seq] = asyncio.get_running_loop().call_later(delay, self._back_off_done, msg)

    def _back_off_done(self, msg: Message) -> None:
        if self.backing_off.pop(msg.seq, None) is not None and not self.broker.closed:
            self._requeue([msg])

    def close(self) -> None:
        for timer in self.backing_off.values():
            timer.cancel()
        self.backing_off.clear()
        self.wake()

    def _expire(self, did: str) -> None:
        msg = self._settle(did)
        if msg is not None:
            log.info("message %d on %r not acked within %ss: redelivering", msg.seq, self.topic, self.broker.ack_deadline)
            self._requeue([msg])

    def end(self, stream: Stream) -> None:
        """The stream is gone: what it did not ack is delivered again."""
        stream.ended = True
        unacked = [self._settle(did) for did in list(stream.inflight)]
        unacked = [m for m in unacked if m is not None]
        if unacked:
            log.info("%d unacked message(s) on %r back in the queue", len(unacked), self.topic)
            self._requeue(unacked)
        self.wake()


class Broker:
    """One instance: topics -> consumer groups."""

    def __init__(self, name: str, props: Dict[str, str]):
        self.name = name
        self.props = dict(props)
        self.consumer_id = props.get("consumerID") or "default"
        self.ack_deadline = self._number(props, "ackDeadlineSeconds", 60.0, float, 0)
        self.max_in_flight = self._number(props, "maxInFlight", 10, int, 1)
        self.max_backlog = self._number(props, "maxBacklog", 1000, int, 1)
        self.groups: Dict[str, Dict[str, Group]] = {}  # topic -> group name -> group
        self.backlog: Dict[str, Deque[Message]] = {}  # topic -> messages before any group
        self.streams: Set[Stream] = set()  # open PullMessages streams
        self.closed = False

    @staticmethod
    def _number(props, key, default, kind, minimum):
        raw = props.get(key)
        if raw is None or raw == "":
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise invalid_argument(f"metadata {key}={raw!r} is not a number") from None
        if value < minimum:
            raise invalid_argument(f"metadata {key}={raw!r} must be at least {minimum}")
        return value

    def publish(self, topic: str, data: bytes, content_type: str, metadata: Dict[str, str]) -> None:
        if not topic:
            raise invalid_argument("a topic is required")
        msg = Message(topic, data, content_type, metadata)
        groups = self.groups.get(topic)
        if not groups:
            self.backlog.setdefault(topic, deque(maxlen=self.max_backlog)).append(msg)
            return
        for group in groups.values():
            group.add(msg)

    def group(self, topic: str, name: str) -> Group:
        groups = self.groups.setdefault(topic, {})
        group = groups.get(name)
        if group is None:
            group = groups[name] = Group(self, topic, name)
            if len(groups) == 1:
                group.ready.extend(self.backlog.pop(topic, ()))
        return group

    def open_stream(self, stream: Stream) -> None:
        self.streams.add(stream)

    def close_stream(self, stream: Stream) -> None:
        self.streams.discard(stream)

    def all_groups(self):
        for groups in self.groups.values():
            yield from groups.values()

    def set_paused(self, paused: bool) -> None:
        """Pause / Resume: the streams open now; a stream opened later starts unpaused."""
        for stream in self.streams:
            stream.paused = paused
        for g in self.all_groups():
            g.wake()

    def close(self) -> None:
        self.closed = True
        for g in self.all_groups():
            g.close()


class PubSubServicer:
    def __init__(self):
        self.brokers: Dict[str, Broker] = {}

    def broker(self, context) -> Broker:
        name = instance_name(context)
        broker = self.brokers.get(name)
        if broker is None:
            raise not_initialised("pub/sub", name)
        return broker

    @rpc
    async def Init(self, request, context):
        name = instance_name(context)
        props = dict(request.metadata.properties)
        old = self.brokers.get(name)
        if old is not None and old.props == props:
            return pb.pubsub_pb2.PubSubInitResponse()
        self.brokers[name] = Broker(name, props)
        if old is not None:
            old.close()
        # Key names only: the values may be secrets the host resolved.
        log.info("instance %r initialised (metadata keys: %s)", name, ", ".join(sorted(props)) or "none")
        return pb.pubsub_pb2.PubSubInitResponse()

    @rpc
    async def Features(self, request, context):
        return pb.common_pb2.FeaturesResponse(features=FEATURES)

    @rpc
    async def Ping(self, request, context):
        return pb.common_pb2.PingResponse()

    @rpc
    async def Publish(self, request, context):
        self.broker(context).publish(request.topic, bytes(request.data), request.content_type, dict(request.metadata))
        return pb.pubsub_pb2.PublishResponse()

    @rpc
    async def BulkPublish(self, request, context):
        broker = self.broker(context)
        if not request.topic:
            raise invalid_argument("a topic is required")
        failed = []
        for entry in request.entries:
            try:
                broker.publish(request.topic, bytes(entry.event), entry.content_type,
                               {**request.metadata, **entry.metadata})
            except ComponentError as e:
                failed.append(pb.pubsub_pb2.BulkPublishResponseFailedEntry(entry_id=entry.entry_id, error=e.message))
        return pb.pubsub_pb2.BulkPublishResponse(failed_entries=failed)

    @rpc
    async def Pause(self, request, context):
        self.broker(context).set_paused(True)
        return pb.pubsub_pb2.PauseResponse()

    @rpc
    async def Resume(self, request, context):
        self.broker(context).set_paused(False)
        return pb.pubsub_pb2.ResumeResponse()

    async def PullMessages(self, request_iterator, context):
        """Reads the topic, then sends messages while a reader task takes the acks."""
        try:
            broker = self.broker(context)
            first = await context.read()
            if first is grpc.aio.EOF:
                return
            if not first.HasField("topic") or not first.topic.name:
                raise invalid_argument("the first PullMessagesRequest must name the topic")
        except ComponentError as e:
            await context.abort(e.code, e.message, trailing_metadata=e.trailing_metadata())
        topic = first.topic.name
        group = broker.group(topic, first.topic.metadata.get("consumerID") or broker.consumer_id)
        stream = Stream(topic, group.name)
        broker.open_stream(stream)
        log.info("stream opened on %r (instance %r, group %r)", topic, broker.name, group.name)

        async def read_acks():
            # Until the host half-closes; delivery goes on until the call ends (unacked
            # messages are then delivered again by the ack deadline or at the end of the call).
            while True:
                req = await context.read()
                if req is grpc.aio.EOF:
                    return
                if req.ack_message_id:
                    group.ack(req.ack_message_id, req.ack_error.message if req.HasField("ack_error") else None)

        reader = asyncio.create_task(read_acks())
        try:
            while True:
                nxt = await group.next_delivery(stream)
                if nxt is None:
                    break
                did, msg = nxt
                await context.write(pb.pubsub_pb2.PullMessagesResponse(
                    data=msg.data, topic_name=topic, metadata=msg.metadata,
                    content_type=msg.content_type, id=did))
        finally:
            reader.cancel()
            broker.close_stream(stream)
            group.end(stream)
            log.info("stream on %r ended (instance %r, group %r)", topic, broker.name, group.name)


async def run(args) -> None:
    global pb
    pb = load_protos(args.proto_path)
    servicer = PubSubServicer()

    def add_services(server):
        pb.pubsub_pb2_grpc.add_PubSubServicer_to_server(servicer, server)
        return [pb.pubsub_pb2.DESCRIPTOR.services_by_name["PubSub"].full_name]

    async def end_streams():
        for broker in servicer.brokers.values():
            broker.close()

    await serve(socket_path(args), add_services, end_streams)


if __name__ == "__main__":
    sys.exit(main(run, arg_parser("A pluggable pub/sub broker (in memory) for Dapr and plugd.", "pypubsub").parse_args(), "pubsub"))
