"""One channel from this process to one peer: a DEALER socket with a breaker.

Everything this process sends to a peer goes through its Channel, so each
(sender, receiver) pair has its own circuit breaker, counters and retry policy:
- requests wait for a correlated reply until their deadline, retried with
  tenacity's exponential backoff and jitter when asked to; a request to a peer that
  is not connected, or that goes away while the request is out (it crashed or is
  restarting), waits for the peer to be back and is sent again, under the same id,
  until the same deadline (so handlers must be idempotent, as the bus already asks);
- a peer that connects afresh is a new process: its breaker starts closed, so a
  short restart never becomes a long refusal;
- plain events are sent without waiting and counted as dropped if the breaker
  is open or the peer's queue is full;
- durable events go through the outbox: stored first, sent in order within a
  window, retransmitted from the last acknowledged one (go-back-N) when acks
  stop coming, and deleted when acknowledged.
Frames that arrive on the DEALER (replies, acks, and requests from a peer that
talks back on the same connection, such as the supervisor) are read here too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import tenacity
import zmq
import zmq.asyncio
from loguru import logger
from zmq.utils.monitor import parse_monitor_message

from protocol.breaker import BreakerOpen, BreakerState, CircuitBreaker
from protocol.envelope import Delivery, Envelope, FrameError, Kind, pack_delivery, unpack
from protocol.outbox import Outbox
from protocol.quietlog import QuietLog


class RequestTimeout(TimeoutError):
    pass


class PeerGone(RequestTimeout):
    """The peer's connection dropped while the request was out: no answer will come."""


class RemoteError(Exception):
    """The peer answered with an error frame (bad request, unknown type, handler failure)."""

    # Refusals that asking again cannot change (the others: unavailable, not_connected,
    # timeout, rate_limited, a handler failing while a peer restarts...).
    PERMANENT = frozenset({"bad_request", "forbidden", "unauthorized", "unknown_type", "bad_reply"})

    def __init__(self, peer: str, reason: str, detail: str) -> None:
        super().__init__(f"{peer}: {reason}: {detail}")
        self.reason = reason
        self.detail = detail

    @property
    def permanent(self) -> bool:
        return self.reason in self.PERMANENT


# What a call to a peer that is down, restarting or failing raises: the caller's
# "try again later" (Service.patiently does).
UNREACHABLE = (RequestTimeout, BreakerOpen, RemoteError)

# A request whose peer went away this many times while it was out is not sent again:
# it is probably what kills the peer (a poison request must not crash-loop a service).
MAX_PEER_LOSSES = 3


@dataclass
class ChannelCounters:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    dropped: int = 0
    acked: int = 0


@dataclass(frozen=True)
class ChannelPolicy:
    failure_threshold: int = 5
    reset_timeout_s: float = 2.0
    sndhwm: int = 100_000
    durable_window: int = 2_000
    ack_timeout_s: float = 1.0
    retransmit_max_s: float = 5.0


def configure_socket(sock: zmq.Socket, identity: str | None, hwm: int) -> None:
    """Options every project socket gets: no hang on close, bounded queues, size guard."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    # Far above the envelope limit: protects memory from a hostile peer, while
    # frames between the two limits still get a proper error reply.
    sock.setsockopt(zmq.MAXMSGSIZE, 16 << 20)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity.encode())


def send_nowait(sock: zmq.asyncio.Socket, frames: list[bytes]) -> None:
    """Send without waiting, raising zmq.Again (queue full) or ZMQError (e.g. a vanished
    peer under ROUTER_MANDATORY) here and now.

    An asyncio socket's send returns a Future even with NOBLOCK, resolved at once (no
    send ever waits here); its error must be read from it, or it is silently lost.
    """
    future = sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
    if future.done() and future.exception() is not None:
        raise future.exception()  # type: ignore[misc]


# Handles frames the peer sends us unasked on this connection (requests, events, control).
InboundHandler = Callable[[Envelope, "Channel"], Awaitable[None]]


class Channel:
    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        owner: str,
        peer: str,
        endpoint: str,
        *,
        policy: ChannelPolicy = ChannelPolicy(),
        outbox: Outbox | None = None,
        inbound: InboundHandler | None = None,
        on_connected: Callable[[Channel], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.owner = owner
        self.peer = peer
        self.endpoint = endpoint
        self.policy = policy
        self.counters = ChannelCounters()
        self.breaker = CircuitBreaker(
            f"{owner}->{peer}",
            failure_threshold=policy.failure_threshold,
            reset_timeout_s=policy.reset_timeout_s,
            clock=clock,
            on_change=self._breaker_changed,
        )
        self._outbox = outbox
        self._inbound = inbound
        self._on_connected = on_connected
        self._clock = clock
        # Waiting requests; a None in the box means the peer went away.
        self._pending: dict[str, tuple[anyio.Event, list[Envelope | None]]] = {}
        self.sock = ctx.socket(zmq.DEALER)
        configure_socket(self.sock, owner, policy.sndhwm)
        # Whether the peer is there right now: lets a caller that must answer a
        # user within seconds (slash commands) say "restarting" at once.
        self.connected = False
        self._connection_changed = anyio.Event()
        self._monitor = self.sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self.sock.connect(endpoint)
        # Durable state, loaded from the outbox in run().
        self._last_seq = 0
        self._acked = 0
        self._sent_through = 0
        self._last_progress = clock()
        self._wake = anyio.Event()
        self._closed = False
        self._quiet = QuietLog()

    @staticmethod
    def _breaker_changed(name: str, old: BreakerState, new: BreakerState) -> None:
        logger.warning("breaker {} {} -> {}", name, old.value, new.value)

    # --- lifecycle ------------------------------------------------------------------

    async def run(self) -> None:
        """Read the socket, and pump durable events if this channel has an outbox."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read_loop)
            tg.start_soon(self._watch_connection)
            if self._outbox is not None:
                self._last_seq, self._acked = await self._outbox.state(self.peer)
                self._sent_through = self._acked
                tg.start_soon(self._durable_pump)

    def close(self) -> None:
        self._closed = True
        self._monitor.close(linger=0)
        self.sock.close(linger=0)

    async def _watch_connection(self) -> None:
        while True:
            try:
                frames = await self._monitor.recv_multipart()
            except zmq.ZMQError:
                return  # closed
            event = parse_monitor_message(frames)["event"]
            self.connected = event == zmq.EVENT_CONNECTED
            if self.connected and self.breaker.state is not BreakerState.CLOSED:
                # A new connection is a new peer process: judge it afresh.
                self.breaker.record_success()
            self._wake.set()  # the durable pump waits differently for an absent peer
            if not self.connected:
                for done, box in self._pending.values():
                    box.append(None)
                    done.set()
            self._connection_changed.set()
            self._connection_changed = anyio.Event()
            if self.connected and self._on_connected is not None:
                self._on_connected(self)

    async def wait_connected(self, timeout: float) -> bool:
        """True once the peer is connected, False if it is not within `timeout`."""
        with anyio.move_on_after(timeout):
            while not self.connected:
                await self._connection_changed.wait()
        return self.connected

    def snapshot(self) -> dict[str, Any]:
        c = self.counters
        return {
            "peer": self.peer,
            "breaker": self.breaker.state.value,
            "sent": c.sent,
            "failed": c.failed,
            "retried": c.retried,
            "dropped": c.dropped,
            "acked": c.acked,
            "unacked": self._last_seq - self._acked,
            "connected": self.connected,
        }

    # --- sending --------------------------------------------------------------------

    def _send_now(self, frames: list[bytes]) -> bool:
        try:
            send_nowait(self.sock, frames)
        except zmq.Again:
            return False
        self.counters.sent += 1
        return True

    def send(self, env: Envelope, past_breaker: bool = False) -> bool:
        """Fire-and-forget (events, replies on this connection). False if dropped.
        `past_breaker`: the peer has just connected, whatever the breaker still says."""
        allowed = past_breaker or self.breaker.allows()
        if not allowed or not self._send_now([env.pack()]):
            self.counters.dropped += 1
            return False
        return True

    async def request(
        self,
        env: Envelope,
        timeout: float = 5.0,
        retries: int = 0,
    ) -> Envelope:
        """Send a request and wait for its reply; retries reuse the message id (idempotent).

        Within each attempt's `timeout`, a peer that is not connected is waited for, and
        one that goes away before answering (PeerGone) is waited for and asked again.
        `retries` more attempts follow a peer that is there but does not answer.
        """
        if retries <= 0:
            return await self._request_patiently(env, timeout)
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(retries + 1),
            wait=tenacity.wait_exponential_jitter(initial=0.05, max=2.0, jitter=0.05),
            retry=tenacity.retry_if_exception_type(RequestTimeout),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self.counters.retried += 1
                return await self._request_patiently(env, timeout)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _request_patiently(self, env: Envelope, timeout: float) -> Envelope:
        """One attempt until `timeout`, riding out the peer's restarts on the way."""
        deadline = anyio.current_time() + timeout
        env.deadline = time.time() + timeout  # the peer drops it once we have given up
        losses = 0
        while True:
            remaining = deadline - anyio.current_time()
            if not self.connected and not await self.wait_connected(max(remaining, 0.0)):
                # Down for longer than this caller could wait: that counts against it.
                self.counters.failed += 1
                self.breaker.record_failure()
                raise RequestTimeout(f"{self.peer} not connected: {env.type} waited {timeout}s")
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                self.counters.failed += 1
                raise RequestTimeout(f"{self.peer} did not answer {env.type} within {timeout}s")
            try:
                return await self._request_once(env, remaining)
            except PeerGone:
                losses += 1
                if losses >= MAX_PEER_LOSSES:
                    raise
                self.counters.retried += 1
                logger.info(
                    "{} went away during {}: asking again once it is back", self.peer, env.type
                )

    async def _request_once(self, env: Envelope, timeout: float) -> Envelope:
        self.breaker.before_call()
        env.kind = Kind.REQUEST
        done = anyio.Event()
        box: list[Envelope | None] = []
        self._pending[env.id] = (done, box)
        answered = gone = False
        try:
            if not self._send_now([env.pack()]):
                self.counters.dropped += 1
                raise RequestTimeout(f"{self.peer}: send queue full")
            with anyio.move_on_after(timeout):
                await done.wait()
            if not box:
                self.counters.failed += 1
                raise RequestTimeout(f"{self.peer} did not answer {env.type} within {timeout}s")
            reply = box[0]
            if reply is None:
                self.counters.failed += 1
                gone = True
                raise PeerGone(f"{self.peer} went away before answering {env.type}")
            answered = True
        finally:
            self._pending.pop(env.id, None)
            # Exactly one outcome per call, also when the caller is cancelled or the
            # send fails: a half-open probe must never stay out for ever. A peer that
            # went away did not fail this call: its successor will be judged on its own.
            if answered:
                self.breaker.record_success()
            elif gone:
                self.breaker.release_probe()
            else:
                self.breaker.record_failure()
        if reply.kind is Kind.ERROR:
            raise RemoteError(
                self.peer, str(reply.body.get("reason")), str(reply.body.get("detail"))
            )
        return reply

    async def send_durable(self, envs: list[Envelope]) -> None:
        """Store events for this peer alone (Bus.publish_many stores for all at once)."""
        assert self._outbox is not None, "durable send on a channel without outbox"
        self.committed(await self._outbox.append(self.peer, [e.pack() for e in envs]))

    def committed(self, last_seq: int) -> None:
        """Events up to `last_seq` are in the outbox: the pump may send them."""
        self._last_seq = max(self._last_seq, last_seq)
        self._wake.set()

    # --- receiving ------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            try:
                frames = await self.sock.recv_multipart(copy=True)
            except zmq.ZMQError:
                if self._closed:
                    return
                raise
            try:
                env = unpack(frames[0])
            except FrameError as exc:
                self._quiet.warning(exc.reason, "bad frame from {} ({}): dropped", self.peer, exc)
                continue
            if env.kind in (Kind.REPLY, Kind.ERROR):
                waiter = self._pending.get(env.corr or "")
                if waiter is not None:
                    waiter[1].append(env)
                    waiter[0].set()
            elif env.kind is Kind.ACK:
                self._on_ack(env.body)
            elif self._inbound is not None:
                await self._inbound(env, self)

    def _on_ack(self, body: dict[str, Any]) -> None:
        seq = body.get("seq")
        if body.get("epoch") != getattr(self._outbox, "epoch", None) or not isinstance(seq, int):
            return
        self.breaker.record_success()  # any ack, even one reporting a gap, shows a live peer
        if seq > self._acked:
            self.counters.acked += seq - self._acked
            self._acked = seq
            self._last_progress = self._clock()
            self._wake.set()
        if body.get("gap") and self._sent_through > seq:
            # The receiver lost what followed `seq` (it restarted): go back now.
            self.counters.retried += self._sent_through - self._acked
            self._sent_through = self._acked
            self._wake.set()

    # --- durable pump ---------------------------------------------------------------

    async def _durable_pump(self) -> None:
        """Send stored events in order inside the window; go back to the last ack on silence."""
        assert self._outbox is not None
        outbox = self._outbox
        deleted_through = self._acked
        attempt = 0
        while True:
            # A fresh event before looking at the state, so no wake-up is missed.
            self._wake = anyio.Event()
            if self._acked > deleted_through:
                attempt = 0  # progress: the retransmit timer starts over
                deleted_through = self._acked
                await outbox.ack(self.peer, deleted_through)
            window_end = min(self._last_seq, self._acked + self.policy.durable_window)
            if self._sent_through < window_end and self.breaker.allows():
                if self.breaker.state is not BreakerState.CLOSED:
                    self.breaker.before_call()  # this batch is the half-open probe
                rows = await outbox.load(
                    self.peer, self._sent_through, window_end - self._sent_through
                )
                for seq, frame in rows:
                    header = pack_delivery(Delivery(outbox.epoch, seq, self._acked))
                    if not self._send_now([frame, header]):
                        break
                    self._sent_through = seq
                continue
            waiting_for_ack = self._acked < self._sent_through
            if waiting_for_ack and not self.connected:
                # The peer is not there: resending would only pile frames into its queue.
                # Once it is back, its gap report (or this timer) brings the go-back.
                self._last_progress = self._clock()
                timeout = self.policy.ack_timeout_s
            elif waiting_for_ack:
                silent = self._clock() - self._last_progress
                rto = min(
                    self.policy.retransmit_max_s,
                    self.policy.ack_timeout_s * math.pow(2, min(attempt, 10)),
                )
                if silent >= rto:
                    # Go back N: the receiver drops anything past a gap, so resend from the ack.
                    self.counters.retried += self._sent_through - self._acked
                    self.counters.failed += 1
                    self.breaker.record_failure()
                    self._sent_through = self._acked
                    self._last_progress = self._clock()
                    attempt += 1
                    continue
                timeout = rto - silent
            else:
                attempt = 0
                timeout = self.breaker.retry_in() if not self.breaker.allows() else math.inf
                if self._sent_through < self._last_seq and timeout == math.inf:
                    timeout = 0.01  # window full or socket full: look again shortly
            with anyio.move_on_after(max(timeout, 0.001)):
                await self._wake.wait()
            if self._sent_through < self._acked:
                self._sent_through = self._acked  # acked past what this process sent: resync
