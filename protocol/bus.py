"""A process's place on the bus: its ROUTER, its channels to peers, its inbox.

Each service binds one ROUTER (ipc:// in the runtime dir, or tcp://) where
peers' DEALERs connect with the peer's name as identity. ROUTER_MANDATORY makes
a send to a vanished peer an error instead of a silent drop; ROUTER_HANDOVER
lets a restarted peer take its name back at once.

Inbound events are handled in order per sender ("lanes"); requests run
concurrently. Durable events are accepted strictly in sequence: a duplicate is
re-acknowledged and dropped, anything after a gap is dropped until the sender
goes back to it, and the ack is sent only after the handler has returned.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import zmq
import zmq.asyncio
from anyio.abc import TaskGroup
from loguru import logger

from protocol.channel import Channel, ChannelPolicy, RemoteError, configure_socket, send_nowait
from protocol.envelope import (
    Delivery,
    Envelope,
    FrameError,
    Kind,
    error_frame,
    unpack,
    unpack_delivery,
)
from protocol.messages import Message, MessageError, Request, decode
from protocol.outbox import Outbox
from protocol.quietlog import QuietLog

R = TypeVar("R", bound=Message)


@dataclass(frozen=True)
class Topology:
    """Who is where and who wants what: derived from services.toml in one place."""

    endpoints: dict[str, str]
    subscribers: dict[str, list[str]] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)  # slash command -> owning service


class Reply:
    """Where a reply to an inbound frame goes: back through the ROUTER or the channel."""

    def __init__(self, send: Callable[[Envelope], bool]) -> None:
        self._send = send

    def __call__(self, env: Envelope) -> bool:
        return self._send(env)


class TransientError(Exception):
    """Raised by a durable handler to refuse an event for now; it will be redelivered."""


# The service runtime supplies these two.
RequestHandler = Callable[[Envelope, Reply], Awaitable[None]]
EventHandler = Callable[[list[Envelope]], Awaitable[None]]


@dataclass
class _Lane:
    """In-order processing of one sender's events."""

    items: deque[tuple[Envelope, Delivery | None]] = field(default_factory=deque)
    wake: anyio.Event = field(default_factory=anyio.Event)
    epoch: str | None = None
    expected: int = 0  # next durable seq to accept
    processed: int = 0  # last durable seq whose handler returned: what we acknowledge
    ident: bytes = b""
    duplicates: int = 0
    last_gap_report: float = 0.0


class Bus:
    def __init__(
        self,
        name: str,
        topology: Topology,
        *,
        bind: bool = True,
        outbox_path: Path | None = None,
        policy: ChannelPolicy = ChannelPolicy(),
        on_request: RequestHandler | None = None,
        on_events: EventHandler | None = None,
    ) -> None:
        self.name = name
        self.topology = topology
        self.policy = policy
        self.ctx = zmq.asyncio.Context()
        self.channels: dict[str, Channel] = {}
        self.outbox = Outbox(outbox_path) if outbox_path else None
        self._on_request = on_request
        self._on_events = on_events
        self._lanes: dict[str, _Lane] = {}
        # The latest retained event of each (type, key): given again to a subscriber
        # whenever its channel (re)connects (Message.RETAIN_BY).
        self._retained: dict[tuple[str, str], Message] = {}
        self._tg: TaskGroup | None = None
        self.router: zmq.asyncio.Socket | None = None
        self.rejected = 0
        self.expired = 0
        self._quiet = QuietLog()
        if bind:
            self.router = self.ctx.socket(zmq.ROUTER)
            configure_socket(self.router, None, policy.sndhwm)
            self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
            self.router.bind(topology.endpoints[name])

    async def run(self) -> None:
        """Serve until cancelled; closes every socket on the way out."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for ch in self.channels.values():
                    tg.start_soon(ch.run)
                if self.outbox is not None:
                    for peer in await self.outbox.pending_channels():
                        if peer in self.topology.endpoints:
                            self.channel(peer)  # replay what a previous process left unacked
                if self.router is not None:
                    tg.start_soon(self._router_loop)
                # A client with nothing to do yet (no ROUTER, no channel) still serves
                # until cancelled: channels it opens later need a running bus.
                await anyio.sleep_forever()
        finally:
            self._tg = None
            self.close()

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()
        if self.router is not None:
            self.router.close(linger=0)
        if self.outbox is not None:
            self.outbox.close()
        self.ctx.term()

    # --- outbound -------------------------------------------------------------------

    def channel(self, peer: str) -> Channel:
        ch = self.channels.get(peer)
        if ch is None:
            endpoint = self.topology.endpoints.get(peer)
            if endpoint is None:
                raise KeyError(f"no endpoint for service {peer!r}")
            ch = Channel(
                self.ctx,
                self.name,
                peer,
                endpoint,
                policy=self.policy,
                outbox=self.outbox,
                inbound=self._channel_inbound,
                on_connected=self._give_retained,
            )
            self.channels[peer] = ch
            if self._tg is not None:
                self._tg.start_soon(ch.run)
        return ch

    def envelope(self, msg: Message, kind: Kind, dst: str = "") -> Envelope:
        return Envelope(kind, msg.TYPE, self.name, dst, msg.to_body())

    async def publish(self, msg: Message) -> int:
        """Send an event to every subscriber; durable ones are on disk when this returns."""
        await self.publish_many([msg])
        return len(self.topology.subscribers.get(msg.TYPE, ()))

    async def publish_many(self, msgs: list[Message], meta: dict[str, str] | None = None) -> None:
        """Send events to their subscribers, in order. Durable events are stored in one
        outbox transaction for all subscribers before this returns, together with `meta`
        (the sender's own bookkeeping that must be on disk exactly when they are)."""
        durable: dict[str, list[Envelope]] = {}
        for msg in msgs:
            if msg.RETAIN_BY is not None:
                key = str(getattr(msg, msg.RETAIN_BY)) if msg.RETAIN_BY else ""
                self._retained[(msg.TYPE, key)] = msg
            for peer in self.topology.subscribers.get(msg.TYPE, ()):
                env = self.envelope(msg, Kind.EVENT, peer)
                if msg.DURABLE and self.outbox is not None:
                    durable.setdefault(peer, []).append(env)
                elif msg.RETAIN_BY is None or self.channel(peer).connected:
                    self.channel(peer).send(env)
                # (a retained event for an absent subscriber waits for its connection)
        if durable or meta:
            assert self.outbox is not None, "meta needs an outbox"
            lasts = await self.outbox.append_many(
                {peer: [e.pack() for e in envs] for peer, envs in durable.items()}, meta
            )
            for peer, last in lasts.items():
                self.channel(peer).committed(last)

    def _give_retained(self, ch: Channel) -> None:
        """A subscriber (re)connected: it may have missed the latest retained events."""
        for (msg_type, _), msg in self._retained.items():
            if ch.peer in self.topology.subscribers.get(msg_type, ()):
                ch.send(self.envelope(msg, Kind.EVENT, ch.peer), past_breaker=True)

    async def request(
        self, peer: str, msg: Message, timeout: float = 5.0, retries: int = 0
    ) -> Envelope:
        env = self.envelope(msg, Kind.REQUEST, peer)
        return await self.channel(peer).request(env, timeout=timeout, retries=retries)

    async def call(self, peer: str, msg: Request[R], timeout: float = 5.0, retries: int = 0) -> R:
        """Request/reply: the request's declared reply, or RequestTimeout, BreakerOpen or
        RemoteError (also for a reply of another type than the declared one)."""
        reply = await self.request(peer, msg, timeout=timeout, retries=retries)
        if reply.type != msg.REPLY.TYPE:
            raise RemoteError(peer, "bad_reply", f"{reply.type!r}, not {msg.REPLY.TYPE!r}")
        try:
            return decode(msg.REPLY.TYPE, reply.body)  # type: ignore[return-value]
        except MessageError as exc:
            raise RemoteError(peer, "bad_reply", str(exc)) from None

    # --- inbound --------------------------------------------------------------------

    async def _channel_inbound(self, env: Envelope, ch: Channel) -> None:
        """A peer (the supervisor, typically) sent us something on our own DEALER."""
        self._accept(env, None, ch.peer, b"", Reply(ch.send))

    async def _router_loop(self) -> None:
        assert self.router is not None
        router = self.router
        while True:
            frames = await router.recv_multipart(copy=True)
            ident = frames[0]
            sender = ident.decode("utf-8", "replace")
            reply = Reply(lambda env, ident=ident: self._router_send(ident, env))
            if len(frames) not in (2, 3):
                self._reject(reply, sender, FrameError("malformed", f"{len(frames) - 1} frames"))
                continue
            try:
                env = unpack(frames[1])
                delivery = unpack_delivery(frames[2]) if len(frames) == 3 else None
            except FrameError as exc:
                self._reject(reply, sender, exc)
                continue
            self._accept(env, delivery, sender, ident, reply)

    def send_to_connection(self, peer: str, env: Envelope) -> bool:
        """Send to a peer over the connection it opened to our ROUTER (the supervisor
        telling a service to stop), rather than over a channel of our own."""
        return self._router_send(peer.encode(), env)

    def _router_send(self, ident: bytes, env: Envelope) -> bool:
        assert self.router is not None
        try:
            send_nowait(self.router, [ident, env.pack()])
            return True
        except zmq.ZMQError:  # EHOSTUNREACH (peer gone, ROUTER_MANDATORY) or queue full
            return False

    def _reject(self, reply: Reply, sender: str, exc: FrameError) -> None:
        self.rejected += 1
        self._quiet.warning((sender, exc.reason), "rejected frame from {}: {}", sender, exc)
        reply(error_frame(self.name, sender, exc.reason, exc.detail, exc.corr))

    def _accept(
        self, env: Envelope, delivery: Delivery | None, sender: str, ident: bytes, reply: Reply
    ) -> None:
        if env.deadline is not None and env.deadline < time.time():
            self.expired += 1  # the caller has given up; answering would be wasted work
            return
        if env.kind in (Kind.REQUEST, Kind.CONTROL):
            if self._on_request is not None and self._tg is not None:
                self._tg.start_soon(self._on_request, env, reply)
            return
        if env.kind not in (Kind.EVENT, Kind.HEARTBEAT):
            self._reject(reply, sender, FrameError("malformed", f"unexpected kind {env.kind.name}"))
            return
        lane = self._lanes.get(sender)
        if lane is None:
            lane = self._lanes[sender] = _Lane()
            assert self._tg is not None
            self._tg.start_soon(self._lane_worker, sender, lane)
        if delivery is not None:
            lane.ident = ident
            if lane.epoch != delivery.epoch:
                lane.epoch, lane.expected = delivery.epoch, delivery.acked + 1
                lane.processed = delivery.acked
            elif delivery.acked >= lane.expected:
                # The sender knows more was handled than this lane does (it started on a
                # stale frame after a restart): skip ahead, or it would wait for ever for
                # events the sender has already deleted.
                lane.expected = delivery.acked + 1
                lane.processed = max(lane.processed, delivery.acked)
            if delivery.seq < lane.expected:
                lane.duplicates += 1
                self._ack(lane)  # the sender missed our ack: say it again
                return
            if delivery.seq > lane.expected:
                # A gap (we restarted, and lost what was in flight): ask the sender to
                # go back now rather than after its retransmit timeout.
                now = time.monotonic()
                if now - lane.last_gap_report > 0.05:
                    lane.last_gap_report = now
                    self._ack(lane, gap=True)
                return
            lane.expected += 1
        lane.items.append((env, delivery))
        lane.wake.set()

    def _ack(self, lane: _Lane, gap: bool = False) -> None:
        body = {"epoch": lane.epoch, "seq": lane.processed, "gap": gap}
        ack = Envelope(Kind.ACK, "ack", self.name, "", body)
        self._router_send(lane.ident, ack)

    async def _lane_worker(self, sender: str, lane: _Lane) -> None:
        while True:
            await lane.wake.wait()
            lane.wake = anyio.Event()
            while lane.items:
                batch: list[Envelope] = []
                last: Delivery | None = None
                first_type = lane.items[0][0].type
                while lane.items and lane.items[0][0].type == first_type and len(batch) < 500:
                    env, delivery = lane.items.popleft()
                    batch.append(env)
                    last = delivery or last
                try:
                    if self._on_events is not None:
                        await self._on_events(batch)
                except TransientError as exc:
                    logger.warning("{} events from {} refused for now: {}", len(batch), sender, exc)
                    if last is not None:
                        # Forget what was queued after the batch: it is redelivered in order.
                        lane.items.clear()
                        lane.expected = lane.processed + 1
                    await anyio.sleep(0.2)
                    continue
                except Exception:
                    # A handler bug must not wedge the lane or loop on a poison event.
                    logger.exception(
                        "handler failed on {} {} from {}", len(batch), first_type, sender
                    )
                if last is not None and lane.epoch == last.epoch:
                    lane.processed = last.seq
                    self._ack(lane)

    def stats(self) -> dict[str, Any]:
        return {
            "channels": [ch.snapshot() for ch in self.channels.values()],
            "rejected": self.rejected,
            "expired": self.expired,
            "duplicates": sum(lane.duplicates for lane in self._lanes.values()),
        }


async def request_once(
    name: str, topology: Topology, peer: str, msg: Request[R], timeout: float = 5.0
) -> R:
    """One request from a short-lived client (the CLI, tests) that owns no ROUTER; the
    request's declared reply, or RequestTimeout or RemoteError."""
    bus = Bus(name, topology, bind=False)
    outcome: list[Any] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(bus.run)  # reads the reply; closes the sockets when cancelled
        try:
            outcome.append(await bus.call(peer, msg, timeout=timeout))
        except Exception as exc:  # re-raised below, outside the task group's exception group
            outcome.append(exc)
        tg.cancel_scope.cancel()
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]
