"""The service runtime: connect, register, ready, heartbeat, subscribe, serve, stop.

A service module declares what it listens to and what it does, and nothing
else:

    service = Service("echo")

    @service.request(Ping)
    async def ping(msg: Ping) -> dict:
        return {"text": msg.text}

    @service.event(MessageCreated, batch=True)
    async def store(events: list[MessageCreated]) -> None: ...

    @service.setup            # runs before the service reports ready
    async def connect() -> None: ...

    @service.task             # runs for the service's lifetime
    async def loop() -> None: ...

The runtime owns the sockets and tasks: it binds the service's ROUTER, reports
ready to the supervisor once setup is done, heartbeats from the event loop (so
a blocked loop shows up as a hang), answers `ping`, stops cleanly when the
supervisor asks or on SIGTERM, and exits if the supervisor disappears.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from loguru import logger

from protocol.bus import Bus, Reply, Topology, TransientError
from protocol.clock import Clock
from protocol.envelope import Envelope, Kind
from protocol.messages import (
    AdvanceClock,
    Heartbeat,
    Message,
    MessageError,
    Ping,
    ServiceReady,
    StopService,
    decode,
)
from protocol.quietlog import QuietLog

__all__ = ["Refused", "RuntimeContext", "Service", "TransientError"]


class Refused(Exception):
    """Raised by a request handler to answer with a reason the caller can act on
    (e.g. "rate_limited", "not_found"), rather than a generic handler error."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class RuntimeContext:
    """What a service process is told about its world (built from services.toml)."""

    name: str
    topology: Topology
    data_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    heartbeat_interval_s: float = 1.0
    supervisor_pid: int | None = None
    stop_timeout_s: float = 2.0


RequestFn = Callable[[Any], Awaitable[Message | dict[str, Any] | None]]
EventFn = Callable[[Any], Awaitable[None]]


class Service:
    def __init__(self, name: str) -> None:
        self.name = name
        self._requests: dict[str, RequestFn] = {}
        self._events: dict[str, tuple[EventFn, bool]] = {}
        self._setup: list[Callable[[], Awaitable[None]]] = []
        self._tasks: list[Callable[[], Awaitable[None]]] = []
        self._teardown: list[Callable[[], Awaitable[None]]] = []
        self._stopping = anyio.Event()
        self.ctx: RuntimeContext | None = None
        self.clock = Clock()
        self._quiet = QuietLog()
        self.bus: Bus | None = None
        self.request(Ping)(self._ping)
        self.request(AdvanceClock)(self._advance_clock)

    # --- declarations ---------------------------------------------------------------

    def request(self, msg_type: type[Message]) -> Callable[[RequestFn], RequestFn]:
        def register(fn: RequestFn) -> RequestFn:
            self._requests[msg_type.TYPE] = fn
            return fn

        return register

    def event(
        self, msg_type: type[Message], *, batch: bool = False
    ) -> Callable[[EventFn], EventFn]:
        """Handle an event type; with batch=True the handler gets a list (group commits)."""

        def register(fn: EventFn) -> EventFn:
            self._events[msg_type.TYPE] = (fn, batch)
            return fn

        return register

    def setup(self, fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        self._setup.append(fn)
        return fn

    def task(self, fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        self._tasks.append(fn)
        return fn

    def teardown(self, fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        self._teardown.append(fn)
        return fn

    # --- what a service calls -------------------------------------------------------

    @property
    def settings(self) -> dict[str, Any]:
        return self.ctx.settings if self.ctx else {}

    async def publish(self, msg: Message) -> int:
        assert self.bus is not None, "publish before the service runs"
        return await self.bus.publish(msg)

    async def publish_many(self, msgs: list[Message], meta: dict[str, str] | None = None) -> None:
        assert self.bus is not None, "publish before the service runs"
        await self.bus.publish_many(msgs, meta)

    async def call(
        self, peer: str, msg: Message, timeout: float = 5.0, retries: int = 0
    ) -> dict[str, Any]:
        """Request/reply; raises RequestTimeout, BreakerOpen or RemoteError."""
        assert self.bus is not None, "call before the service runs"
        reply = await self.bus.request(peer, msg, timeout=timeout, retries=retries)
        return reply.body

    def stop(self) -> None:
        self._stopping.set()

    # --- dispatch -------------------------------------------------------------------

    async def _advance_clock(self, msg: AdvanceClock) -> dict[str, float]:
        if not self.settings.get("allow_clock_control", False):
            raise Refused("forbidden", f"{self.name} does not allow clock control")
        try:
            self.clock.advance(msg.seconds)
        except ValueError as exc:
            raise Refused("bad_request", str(exc)) from None
        return {"monotonic": self.clock.monotonic(), "wall": self.clock.wall()}

    async def _ping(self, msg: Ping) -> dict[str, Any]:
        return {"name": self.name, "pid": os.getpid(), "text": msg.text}

    async def _on_request(self, env: Envelope, reply: Reply) -> None:
        if env.kind is Kind.CONTROL and env.type == StopService.TYPE:
            logger.info("stop requested by {}", env.src)
            self.stop()
            return
        handler = self._requests.get(env.type)
        if handler is None:
            reply(env.error("unknown_type", f"{self.name} does not serve {env.type!r}"))
            return
        try:
            msg = decode(env.type, env.body)
        except MessageError as exc:
            self._quiet.warning((env.src, env.type), "bad request from {}: {}", env.src, exc)
            reply(env.error("bad_request", str(exc)))
            return
        try:
            result = await handler(msg)
        except Refused as exc:
            logger.info("{} from {} refused: {}", env.type, env.src, exc)
            reply(env.error(exc.reason, exc.detail))
            return
        except Exception as exc:
            logger.exception("{} handler failed", env.type)
            reply(env.error("handler_error", f"{type(exc).__name__}: {exc}"))
            return
        if isinstance(result, Message):
            reply(env.reply(result.to_body(), result.TYPE))
        else:
            reply(env.reply(result or {}))

    async def _on_events(self, batch: list[Envelope]) -> None:
        entry = self._events.get(batch[0].type)
        if entry is None:
            self._quiet.warning(
                batch[0].type,
                "{} has no handler for {} (from {})",
                self.name,
                batch[0].type,
                batch[0].src,
            )
            return
        handler, batched = entry
        msgs = []
        for env in batch:
            try:
                msgs.append(decode(env.type, env.body))
            except MessageError as exc:
                self._quiet.warning(
                    (env.src, env.type), "bad event {} from {}: {}", env.id, env.src, exc
                )
        if not msgs:
            return
        if batched:
            await handler(msgs)
        else:
            for msg in msgs:
                await handler(msg)

    # --- lifecycle ------------------------------------------------------------------

    async def run(self, ctx: RuntimeContext) -> None:
        """Serve until stopped; every socket and task is closed on the way out."""
        self.ctx = ctx
        self._stopping = anyio.Event()  # a fresh one per run: a Service can run again
        outbox_dir = ctx.data_dir / "outbox"
        outbox_dir.mkdir(parents=True, exist_ok=True)
        self.bus = Bus(
            ctx.name,
            ctx.topology,
            outbox_path=outbox_dir / f"{ctx.name}.sqlite3",
            on_request=self._on_request,
            on_events=self._on_events,
        )
        supervised = "supervisor" in ctx.topology.endpoints and ctx.supervisor_pid is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.bus.run)
            tg.start_soon(self._watch_signals)
            if supervised:
                self.bus.channel("supervisor")
            for fn in self._setup:
                await fn()
            for fn in self._tasks:
                tg.start_soon(self._guard, fn)
            if supervised:
                self._report(ServiceReady(ctx.name, os.getpid()))
                tg.start_soon(self._heartbeat)
            logger.info("{} ready", ctx.name)
            await self._stopping.wait()
            with anyio.move_on_after(ctx.stop_timeout_s, shield=True):
                for fn in self._teardown:
                    await fn()
            tg.cancel_scope.cancel()
        logger.info("{} stopped", ctx.name)

    async def _guard(self, fn: Callable[[], Awaitable[None]]) -> None:
        """A background task that dies takes the service down: the supervisor restarts it."""
        try:
            await fn()
        except Exception:
            logger.exception("task {} failed: stopping so the supervisor restarts us", fn.__name__)
            os._exit(70)

    def _report(self, msg: Message) -> None:
        assert self.bus is not None
        self.bus.channel("supervisor").send(self.bus.envelope(msg, Kind.EVENT, "supervisor"))

    async def _heartbeat(self) -> None:
        assert self.ctx is not None and self.bus is not None
        while True:
            if self.ctx.supervisor_pid is not None and os.getppid() != self.ctx.supervisor_pid:
                logger.error("supervisor {} is gone: exiting", self.ctx.supervisor_pid)
                os._exit(1)
            env = self.bus.envelope(
                Heartbeat(os.getpid(), self.bus.stats()["channels"]), Kind.HEARTBEAT, "supervisor"
            )
            self.bus.channel("supervisor").send(env)
            await anyio.sleep(self.ctx.heartbeat_interval_s)

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                logger.info("{} received: stopping", signal.Signals(signum).name)
                self.stop()
