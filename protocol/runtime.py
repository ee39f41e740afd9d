"""The service runtime: connect, register, ready, heartbeat, subscribe, serve, stop.

A service module declares what it listens to and what it does, and nothing
else:

    service = Service("echo", EchoSettings)   # settings: protocol/settings.py

    @service.request(Echo)                    # Echo is a Request[Echoed]
    async def echo(msg: Echo) -> Echoed:
        return Echoed(msg.text)

    @service.event(MessageCreated, batch=True)
    async def store(events: list[MessageCreated]) -> None: ...

    @service.command("ask")                   # declared in protocol/commands.py
    async def ask(msg: CommandInvoked) -> CommandAnswer: ...

    @service.setup            # runs before the service reports ready
    async def connect() -> None: ...

    @service.task             # runs for the service's lifetime
    async def loop() -> None: ...

The runtime owns the sockets and tasks: it checks the settings and that every
command and subscribed event has its handler (else the process exits
EXIT_CONFIG with one line per problem, and the supervisor stops start-up),
binds the service's ROUTER, reports ready to the supervisor once setup is
done, heartbeats from the event loop (so a blocked loop shows up as a hang),
answers `ping`, applies new settings when the supervisor reloads, stops cleanly
when the supervisor asks or on SIGTERM, and exits if the supervisor disappears.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
from loguru import logger

from protocol.bus import Bus, Reply, Topology, TransientError
from protocol.channel import UNREACHABLE, RemoteError
from protocol.clock import Clock
from protocol.commands import CATALOGUE
from protocol.discord import CommandAnswer, CommandInvoked
from protocol.envelope import Envelope, Kind
from protocol.messages import (
    SUPERVISOR,
    AdvanceClock,
    ApplySettings,
    ClockReading,
    Heartbeat,
    Message,
    MessageError,
    Outcome,
    Ping,
    Pong,
    Request,
    ServiceReady,
    StopService,
    decode,
)
from protocol.quietlog import QuietLog
from protocol.settings import ServiceSettings, live_and_restart_changes, parse_settings

__all__ = [
    "EXIT_CONFIG",
    "ConfigurationError",
    "Refused",
    "RuntimeContext",
    "Service",
    "TransientError",
    "caller_time_left",
]

# When the caller of the request being handled gives up (wall clock), if it said.
_caller_deadline: ContextVar[float | None] = ContextVar("caller_deadline", default=None)


def caller_time_left() -> float:
    """Seconds the caller of the request being handled still waits for its answer (0
    outside a request, or if it did not say): what a handler may spend waiting for
    something it needs (the gateway, for its Discord login) instead of refusing."""
    deadline = _caller_deadline.get()
    return max(0.0, deadline - time.time()) if deadline is not None else 0.0


# A service that cannot start because of its configuration exits with this (sysexits'
# EX_CONFIG): restarting it would not help, so the supervisor stops start-up instead.
EXIT_CONFIG = 78
R = TypeVar("R", bound=Message)
T = TypeVar("T")


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
    # How far the sandbox has moved every clock before this process started: applied
    # when the service allows clock control (a restarted service keeps the sandbox's time).
    clock_offset_s: float = 0.0


RequestFn = Callable[[Any], Awaitable[Message]]
EventFn = Callable[[Any], Awaitable[None]]
CommandFn = Callable[[CommandInvoked], Awaitable[CommandAnswer]]
SettingsFn = Callable[[Any], None]


class ConfigurationError(Exception):
    """What stops a service from starting: one line per problem."""


class Service:
    def __init__(
        self,
        name: str,
        settings: type[ServiceSettings] = ServiceSettings,
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.settings_type = settings
        self._settings: Any = settings()
        self._on_settings: list[SettingsFn] = []
        self._requests: dict[str, RequestFn] = {}
        self._events: dict[str, tuple[EventFn, bool]] = {}
        self.commands: dict[str, CommandFn] = {}
        self._setup: list[Callable[[], Awaitable[None]]] = []
        self._tasks: list[Callable[[], Awaitable[None]]] = []
        self._teardown: list[Callable[[], Awaitable[None]]] = []
        self._stopping = anyio.Event()
        self.ready = anyio.Event()  # set once setup is done (in-process tests wait on it)
        self.ctx: RuntimeContext | None = None
        self.clock = clock or Clock()
        self._quiet = QuietLog()
        self.bus: Bus | None = None
        # Counters and gauges about the service's own work, sent with each heartbeat and
        # exported by the supervisor as Prometheus metrics `bot_NAME{service=...}` (a name
        # ending in _total is a counter). Lower-case names; a new process starts from zero.
        self.figures: dict[str, float] = {}
        self.request(Ping)(self._ping)
        self.request(AdvanceClock)(self._advance_clock)
        self.request(ApplySettings)(self._apply_settings)

    # --- declarations ---------------------------------------------------------------

    def request(self, msg_type: type[Request[R]]) -> Callable[[RequestFn], RequestFn]:
        """Answer a request type; the handler returns the type's declared reply."""

        def register(fn: RequestFn) -> RequestFn:
            self._requests[msg_type.TYPE] = fn
            return fn

        return register

    def command(self, name: str) -> Callable[[CommandFn], CommandFn]:
        """Answer the slash command declared as `name` in protocol/commands.py."""

        def register(fn: CommandFn) -> CommandFn:
            self.commands[name] = fn
            if CommandInvoked.TYPE not in self._requests:
                self.request(CommandInvoked)(self._on_command)
            return fn

        return register

    def on_settings(self, fn: SettingsFn) -> SettingsFn:
        """Called with the settings at start and after each reload that changed them."""
        self._on_settings.append(fn)
        return fn

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
    def settings(self) -> Any:
        """The settings in force, typed as the service declared them."""
        return self._settings

    async def publish(self, msg: Message) -> int:
        assert self.bus is not None, "publish before the service runs"
        return await self.bus.publish(msg)

    async def publish_many(self, msgs: list[Message], meta: dict[str, str] | None = None) -> None:
        assert self.bus is not None, "publish before the service runs"
        await self.bus.publish_many(msgs, meta)

    async def call(self, peer: str, msg: Request[R], timeout: float = 5.0, retries: int = 0) -> R:
        """Request/reply: the request's declared reply, or RequestTimeout, BreakerOpen or
        RemoteError (also for a reply that is not of the declared type)."""
        assert self.bus is not None, "call before the service runs"
        return await self.bus.call(peer, msg, timeout=timeout, retries=retries)

    async def patiently(
        self,
        call: Callable[[], Awaitable[T]],
        what: str,
        give_up_after_s: float | None = None,
        until: anyio.Event | None = None,
    ) -> T | None:
        """Retry with backoff (on this service's clock) while a peer is unreachable: it
        may be starting or restarting. None if given up (a refusal that asking again
        cannot change, e.g. bad_request, gives up at once), or once `until` is set."""
        delay, waited = 0.5, 0.0
        while until is None or not until.is_set():
            try:
                return await call()
            except UNREACHABLE as exc:
                if isinstance(exc, RemoteError) and exc.permanent:
                    logger.warning("{}: refused ({}); not asked again", what, exc)
                    return None
                if give_up_after_s is not None and waited >= give_up_after_s:
                    logger.warning("{}: giving up for now ({})", what, exc)
                    return None
                logger.info("{}: retrying in {:.1f}s ({})", what, delay, exc)
            await self.clock.sleep(delay)
            waited += delay
            delay = min(delay * 2, 10.0)
        return None

    def stop(self) -> None:
        self._stopping.set()

    # --- start-up checks --------------------------------------------------------------

    def problems(self, topology: Topology) -> list[str]:
        """What would make this service misbehave in this topology: a command it owns
        without a handler, a handler for no declared command of its, or an event it is
        subscribed to without a handler. One line each."""
        found = []
        for name, cmd in sorted(CATALOGUE.items()):
            if cmd.owner == self.name and name not in self.commands:
                found.append(f"{self.name}: /{name} is declared for it but has no handler")
        for name in sorted(self.commands):
            cmd = CATALOGUE.get(name)
            if cmd is None:
                found.append(f"{self.name}: handler for /{name}, which is not declared")
            elif cmd.owner != self.name:
                found.append(f"{self.name}: handler for /{name}, which {cmd.owner} owns")
        for event_type, subscribers in sorted(topology.subscribers.items()):
            if self.name in subscribers and event_type not in self._events:
                found.append(f"{self.name}: subscribes to {event_type} but has no handler for it")
        return found

    def configure(self, raw: dict[str, Any]) -> None:
        """Take the settings from services.toml, or raise ConfigurationError."""
        settings, problems = parse_settings(
            self.settings_type, raw, f"services.{self.name}.settings"
        )
        if problems:
            raise ConfigurationError("\n".join(str(p) for p in problems))
        try:
            self._take(settings)
        except Exception as exc:
            raise ConfigurationError(
                f"services.{self.name}.settings: not usable ({type(exc).__name__}: {exc})"
            ) from exc

    def _take(self, settings: Any) -> None:
        """Put settings in force: every on_settings callback sees them."""
        self._settings = settings
        for fn in self._on_settings:
            fn(settings)

    # --- dispatch -------------------------------------------------------------------

    async def _advance_clock(self, msg: AdvanceClock) -> ClockReading:
        if not self.settings.allow_clock_control:
            raise Refused("forbidden", f"{self.name} does not allow clock control")
        try:
            self.clock.advance(msg.seconds)
        except ValueError as exc:
            raise Refused("bad_request", str(exc)) from None
        return ClockReading(self.clock.monotonic(), self.clock.wall())

    async def _ping(self, msg: Ping) -> Pong:
        return Pong(self.name, os.getpid(), msg.text)

    async def _on_command(self, msg: CommandInvoked) -> CommandAnswer:
        handler = self.commands.get(msg.command)
        if handler is None:
            return CommandAnswer(f"{self.name} does not answer /{msg.command}", ephemeral=True)
        return await handler(msg)

    async def _apply_settings(self, msg: ApplySettings) -> Outcome:
        """A reload: apply what changed live, name what waits for a restart."""
        old = self._settings
        new, problems = parse_settings(
            self.settings_type, msg.settings, f"services.{self.name}.settings"
        )
        if problems:
            for problem in problems:
                logger.error("reload refused: {}", problem)
            return Outcome(False, "; ".join(str(p) for p in problems))
        live, restart = live_and_restart_changes(old, new)
        if not live and not restart:
            return Outcome(True, "unchanged")
        # Fields that wait for a restart keep their running values.
        kept = {name: getattr(old, name) for name in restart}
        try:
            self._take(dataclasses.replace(new, **kept))
        except Exception as exc:
            logger.exception("reload refused: the new settings could not be applied")
            self._take(old)
            return Outcome(False, f"not applied ({type(exc).__name__}: {exc})")
        detail = f"applied {', '.join(live)}" if live else "nothing applied live"
        if restart:
            detail += f"; {', '.join(restart)} change on restart"
            logger.warning("{}: {} change on the next restart", self.name, ", ".join(restart))
        logger.info("settings reloaded: {}", detail)
        return Outcome(True, detail)

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
        _caller_deadline.set(env.deadline)  # this task's own context: no reset needed
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
        declared = type(msg).REPLY  # type: ignore[attr-defined]
        if not isinstance(result, declared):
            logger.error(
                "{} handler returned {}, not its declared {}",
                env.type,
                type(result).__name__,
                declared.__name__,
            )
            reply(env.error("handler_error", f"answered {type(result).__name__}"))
            return
        reply(env.reply(result.to_body(), result.TYPE))

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

    def check(self, topology: Topology, settings: dict[str, Any]) -> None:
        """Everything that must hold before the service starts; ConfigurationError (one
        line per problem) if not. Takes the settings when they are right."""
        problems = self.problems(topology)
        if problems:
            raise ConfigurationError("\n".join(problems))
        self.configure(settings)

    async def run(self, ctx: RuntimeContext) -> None:
        """Serve until stopped; every socket and task is closed on the way out. Raises
        ConfigurationError before anything starts if the configuration is wrong."""
        self.ctx = ctx
        self.name = ctx.name  # services.toml names the process (tests run one module twice)
        self.check(ctx.topology, ctx.settings)
        if ctx.clock_offset_s > 0 and self.settings.allow_clock_control:
            self.clock.advance(ctx.clock_offset_s)
        self._stopping = anyio.Event()  # a fresh one per run: a Service can run again
        if self.ready.is_set():  # (kept otherwise: a test may be waiting on it already)
            self.ready = anyio.Event()
        outbox_dir = ctx.data_dir / "outbox"
        outbox_dir.mkdir(parents=True, exist_ok=True)
        self.bus = Bus(
            ctx.name,
            ctx.topology,
            outbox_path=outbox_dir / f"{ctx.name}.sqlite3",
            on_request=self._on_request,
            on_events=self._on_events,
        )
        supervised = SUPERVISOR in ctx.topology.endpoints and ctx.supervisor_pid is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.bus.run)
            tg.start_soon(self._watch_signals)
            if supervised:
                self.bus.channel(SUPERVISOR)
            for fn in self._setup:
                await fn()
            for fn in self._tasks:
                tg.start_soon(self._guard, fn)
            if supervised:
                self._report(ServiceReady(ctx.name, os.getpid()))
                tg.start_soon(self._heartbeat)
            logger.info("{} ready", ctx.name)
            self.ready.set()
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
        self.bus.channel(SUPERVISOR).send(self.bus.envelope(msg, Kind.EVENT, SUPERVISOR))

    async def _heartbeat(self) -> None:
        assert self.ctx is not None and self.bus is not None
        while True:
            if self.ctx.supervisor_pid is not None and os.getppid() != self.ctx.supervisor_pid:
                logger.error("supervisor {} is gone: exiting", self.ctx.supervisor_pid)
                os._exit(1)
            env = self.bus.envelope(
                Heartbeat(os.getpid(), self.bus.stats()["channels"], dict(self.figures)),
                Kind.HEARTBEAT,
                SUPERVISOR,
            )
            self.bus.channel(SUPERVISOR).send(env)
            await anyio.sleep(self.ctx.heartbeat_interval_s)

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                logger.info("{} received: stopping", signal.Signals(signum).name)
                self.stop()
