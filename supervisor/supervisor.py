"""The supervisor: keeps each configured service running as its own process.

Generic over the child specs in services.toml (it never special-cases a
service by name). Per service one task spawns the process, awaits its exit (a
reaction, not a poll) and asks the state machine what to do next. One monitor
task looks for hangs (missed heartbeats), memory over the limit and the
systemd watchdog. Services report on the supervisor's ROUTER; `run.py status`
and `run.py restart` ask on the same socket.
"""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import psutil
from anyio.abc import TaskGroup
from loguru import logger

from protocol.bus import Bus, Reply
from protocol.channel import UNREACHABLE
from protocol.envelope import Envelope, Kind
from protocol.messages import (
    SUPERVISOR,
    AdvanceClock,
    ApplySettings,
    Heartbeat,
    MessageError,
    Outcome,
    ReloadRequest,
    RestartRequest,
    ServiceReady,
    StatusRequest,
    StopService,
    SupervisorStatus,
    decode,
)
from protocol.runtime import EXIT_CONFIG
from supervisor.config import CLOCK_OFFSET_ENV, Config, ConfigError, load
from supervisor.effects import Child, Effects, OSEffects, child_argv, child_env
from supervisor.notify import Notifier
from supervisor.process import ServiceProcess, State

if TYPE_CHECKING:
    from supervisor.metrics import Metrics, MetricsServer

MONITOR_TICK_S = 0.25
STATUS_EVERY_S = 5.0  # besides every state change: RSS and breakers move too
HISTORY = 1000  # state changes kept for watchers (the sandbox's web page)


class Supervisor:
    def __init__(
        self,
        config: Config,
        effects: Effects | None = None,
        notifier: Notifier | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.effects: Effects = effects or OSEffects()
        self.notifier = notifier or Notifier()
        self.extra_env = extra_env or {}
        self.procs = {s.name: ServiceProcess(s, self.effects.random) for s in config.enabled}
        # Every state change, newest last: {seq, t (Unix time), service, from, to, why}.
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.watchers: list[Callable[[dict[str, Any]], None]] = []
        for proc in self.procs.values():
            proc.on_transition = self._transitioned
        self.metrics: Metrics | None = None
        self.metrics_server: MetricsServer | None = None
        address = config.supervisor.metrics_address
        if address:  # prometheus_client and aiohttp are imported only when served
            from supervisor.metrics import Metrics, MetricsServer

            self.metrics = Metrics(self.status)
            self.metrics_server = MetricsServer(self.metrics, address)
        self.exit_code = 0
        self._children: dict[str, Child] = {}
        self._gone: dict[str, anyio.Event] = {}
        self._restart_wanted = {name: anyio.Event() for name in self.procs}
        self._changed = anyio.Event()
        self._stop = anyio.Event()
        self._shutting_down = False
        self._ready_sent = False
        self._status_due = True  # publish SupervisorStatus at the next monitor tick
        self._started_at = time.monotonic()
        self.bus: Bus | None = None
        self._tg: TaskGroup | None = None
        # How far the sandbox moved time (advance_clocks), and how much of it each
        # running process has been given.
        self.clock_offset_s = 0.0
        self._clock_given: dict[str, float] = {}

    # --- main -----------------------------------------------------------------------

    async def run(self) -> int:
        runtime = self.config.supervisor.runtime_dir
        runtime.mkdir(parents=True, exist_ok=True)
        runtime.chmod(0o700)  # the control socket: only this user may steer the bot
        self.bus = Bus(
            SUPERVISOR,
            self.config.topology(),
            on_request=self._on_request,
            on_events=self._on_events,
        )
        url = await self.serve_metrics()
        logger.info(
            "supervisor {} starting {} services{}",
            os.getpid(),
            len(self.procs),
            f" (metrics: {url}, /healthz beside it)" if url else "",
        )
        try:
            await self._run()
        finally:
            if self.metrics_server is not None:
                with anyio.CancelScope(shield=True):
                    await self.metrics_server.stop()
        self.notifier.close()
        logger.info("supervisor stopped (exit {})", self.exit_code)
        return self.exit_code

    async def serve_metrics(self) -> str | None:
        """Start serving /metrics and /healthz if configured (run() does it too); the
        /metrics URL, or None."""
        if self.metrics_server is None:
            return None
        return await self.metrics_server.start()

    @property
    def metrics_url(self) -> str | None:
        return self.metrics_server.url if self.metrics_server is not None else None

    async def _run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self.bus.run)
            tg.start_soon(self._signals)
            tg.start_soon(self._monitor)
            for proc in self.procs.values():
                tg.start_soon(self._keep_alive, proc)
            await self._stop.wait()
            self._shutting_down = True
            self.notifier.stopping()
            with anyio.CancelScope(shield=True):
                await self._stop_all()
            tg.cancel_scope.cancel()

    def stop(self, exit_code: int = 0) -> None:
        self.exit_code = self.exit_code or exit_code
        self._stop.set()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    logger.info("SIGHUP received: reloading settings")
                    assert self._tg is not None
                    self._tg.start_soon(self.reload)
                    continue
                logger.info("{} received: stopping services", signal.Signals(signum).name)
                self.stop(0)

    def _note_change(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
        self._status_due = True
        if self._shutting_down:
            return
        summary = self.summary()
        if not self._ready_sent and all(p.state is State.RUNNING for p in self.procs.values()):
            self._ready_sent = True
            logger.info("all services running")
            self.notifier.ready(summary)
        else:
            self.notifier.status(summary)

    def _transitioned(self, proc: ServiceProcess, old: State, why: str) -> None:
        seq = self.history[-1]["seq"] + 1 if self.history else 1
        change = {
            "seq": seq,
            "t": time.time(),
            "service": proc.name,
            "from": old.value,
            "to": proc.state.value,
            "why": why,
        }
        self.history.append(change)
        for watch in list(self.watchers):
            try:
                watch(change)
            except Exception:
                logger.exception("a watcher of state changes failed; it is dropped")
                self.watchers.remove(watch)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for p in self.procs.values():
            counts[p.state.value] = counts.get(p.state.value, 0) + 1
        return ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))

    # --- one task per service -------------------------------------------------------

    async def _wait_for_dependencies(self, proc: ServiceProcess) -> None:
        deps = [self.procs[d] for d in proc.spec.after if d in self.procs]
        while not all(d.state is State.RUNNING for d in deps):
            await self._changed.wait()

    async def _keep_alive(self, proc: ServiceProcess) -> None:
        await self._wait_for_dependencies(proc)
        name = proc.name
        env = child_env(
            {
                **self.extra_env,
                "BOT_CONFIG": str(self.config.path.resolve()),
                "BOT_DATA_DIR": str(self.config.supervisor.data_dir.resolve()),
                "BOT_SUPERVISOR_PID": str(os.getpid()),
            }
        )
        while not self._shutting_down:
            given = self.clock_offset_s
            if given:
                env[CLOCK_OFFSET_ENV] = repr(given)
            try:
                child = await self.effects.spawn(child_argv(name), env, Path.cwd())
            except OSError as exc:
                logger.error("{}: cannot start ({})", name, exc)
                child = None
            if child is not None:
                self._children[name] = child
                self._clock_given[name] = given
                if self.clock_offset_s > given and self._tg is not None:
                    self._tg.start_soon(self._sync_clock, name)  # moved while spawning
                self._gone[name] = anyio.Event()
                proc.spawned(child.pid, self.effects.now())
                self._note_change()
                returncode = await child.wait()
                del self._children[name]
                self.effects.forget(child.pid)
                self._gone[name].set()
                decision = proc.exited(returncode, self.effects.now())
                if proc.state is State.FATAL and returncode == EXIT_CONFIG and not self._ready_sent:
                    # It said what is wrong, one line per problem: start-up stops here. (Later,
                    # a bad edit met at a respawn makes only that service FATAL, alerted.)
                    logger.error("{}: configuration problem (see above): stopping", name)
                    self._note_change()
                    self.stop(2)
                    return
            else:
                proc.spawned(0, self.effects.now())
                decision = proc.exited(127, self.effects.now())
            self._note_change()
            if self._shutting_down:
                return
            if decision is None:
                if proc.state is State.FATAL:
                    logger.error("{} is FATAL: {}", name, proc.last_exit)
                    if proc.spec.critical:
                        logger.error("{} is critical: stopping everything", name)
                        self.stop(1)
                        return
                await self._restart_wanted[name].wait()
                self._restart_wanted[name] = anyio.Event()
                proc.reset_after_manual_start()
                continue
            with anyio.move_on_after(decision.delay_s):
                await self._stop.wait()

    async def _stop_child(self, proc: ServiceProcess, reason: str) -> None:
        """Ask over the bus, then SIGTERM after the grace, then SIGKILL at the timeout."""
        child = self._children.get(proc.name)
        if child is None:
            proc.stopping(reason)
            return
        gone = self._gone[proc.name]
        proc.stopping(reason)
        self._note_change()
        spec = proc.spec
        assert self.bus is not None
        stop = Envelope(
            Kind.CONTROL, StopService.TYPE, "supervisor", proc.name, StopService(reason).to_body()
        )
        self.bus.send_to_connection(proc.name, stop)
        with anyio.move_on_after(spec.stop_grace_s):
            await gone.wait()
        if not gone.is_set():
            logger.warning("{} did not stop within {}s: SIGTERM", proc.name, spec.stop_grace_s)
            child.signal(signal.SIGTERM)
            with anyio.move_on_after(spec.shutdown_timeout_s - spec.stop_grace_s):
                await gone.wait()
        if not gone.is_set():
            logger.warning(
                "{} did not stop within {}s: SIGKILL", proc.name, spec.shutdown_timeout_s
            )
            child.signal(signal.SIGKILL)
            await gone.wait()

    async def _stop_all(self) -> None:
        for proc in reversed(list(self.procs.values())):
            await self._stop_child(proc, "shutdown")

    # --- monitor: hangs, memory, watchdog -------------------------------------------

    async def _monitor(self) -> None:
        next_memory = next_watchdog = next_status = 0.0
        poll = self.config.supervisor.memory_poll_s
        watchdog = self.notifier.watchdog_interval_s
        async with anyio.create_task_group() as tg:
            while True:
                now = self.effects.now()
                for proc in self.procs.values():
                    child = self._children.get(proc.name)
                    if child is None or proc.state is State.STOPPING:
                        continue
                    hung = proc.hung(now)
                    if hung:
                        logger.error("{} {}: SIGKILL", proc.name, hung)
                        proc.stopping("hung")
                        self._note_change()
                        child.signal(signal.SIGKILL)
                    elif now >= next_memory and proc.over_memory(self.effects.rss_mb(child.pid)):
                        logger.error(
                            "{} uses {:.0f} MB > limit {:g} MB: restarting",
                            proc.name,
                            proc.rss_mb,
                            proc.spec.memory_limit_mb,
                        )
                        tg.start_soon(self._stop_child, proc, "memory")
                if now >= next_memory:
                    next_memory = now + poll
                if watchdog is not None and now >= next_watchdog:
                    self.notifier.watchdog()
                    next_watchdog = now + watchdog
                if self._status_due or now >= next_status:
                    next_status = now + STATUS_EVERY_S
                    await self._publish_status()
                await anyio.sleep(MONITOR_TICK_S)

    # --- the bus: reports from services, requests from the CLI and services ----------

    async def _on_events(self, batch: list[Envelope]) -> None:
        now = self.effects.now()
        for env in batch:
            proc = self.procs.get(env.src)
            if proc is None:
                continue
            try:
                msg = decode(env.type, env.body)
            except MessageError as exc:
                logger.warning("bad report from {}: {}", env.src, exc)
                continue
            if isinstance(msg, ServiceReady | Heartbeat) and msg.pid != proc.pid:
                continue  # a report from a previous incarnation still in flight
            if isinstance(msg, ServiceReady):
                proc.ready(now)
                self._note_change()
            elif isinstance(msg, Heartbeat):
                proc.heartbeat(now)
                proc.channels = msg.channels
                proc.figures = msg.figures
            elif self.metrics is not None:
                self.metrics.observe(msg)  # what [supervisor] subscribes brings

    async def _on_request(self, env: Envelope, reply: Reply) -> None:
        try:
            msg = decode(env.type, env.body)
        except MessageError as exc:
            reply(env.error("bad_request", str(exc)))
            return
        answer: SupervisorStatus | Outcome
        if isinstance(msg, StatusRequest):
            answer = self.status()
        elif isinstance(msg, RestartRequest):
            answer = Outcome(*self.restart(msg.service))
        elif isinstance(msg, ReloadRequest):
            answer = await self.reload()
        else:
            answer = None  # type: ignore[assignment]
        if answer is not None:
            reply(env.reply(answer.to_body(), answer.TYPE))
        else:
            reply(env.error("unknown_type", f"the supervisor does not serve {env.type!r}"))

    async def advance_clocks(self, seconds: float) -> None:
        """Time moved on in the sandbox: move the clock of every service that allows it
        (`allow_clock_control`) by as much. A process that starts later is given the
        whole offset when it starts (BOT_CLOCK_OFFSET_S)."""
        self.clock_offset_s += seconds
        async with anyio.create_task_group() as tg:
            for name in list(self._children):
                tg.start_soon(self._sync_clock, name)

    async def _sync_clock(self, name: str) -> None:
        """Give a running process the part of the offset it has not had yet."""
        behind = self.clock_offset_s - self._clock_given.get(name, 0.0)
        if behind <= 0 or not self._clock_controlled(name):
            return
        assert self.bus is not None
        self._clock_given[name] = self.clock_offset_s
        try:
            await self.bus.call(name, AdvanceClock(behind), timeout=2)
        except UNREACHABLE as exc:
            # It is going away: its successor is given the whole offset when it starts.
            logger.info("{}: its clock was not moved ({})", name, exc)

    def _clock_controlled(self, name: str) -> bool:
        try:
            return self.config.service(name).settings.get("allow_clock_control") is True
        except KeyError:
            return False

    def restart(self, name: str) -> tuple[bool, str]:
        proc = self.procs.get(name)
        if proc is None:
            return False, f"no service named {name!r}; known: {', '.join(self.procs)}"
        if self._shutting_down:
            return False, "the supervisor is stopping"
        if proc.state in (State.STARTING, State.RUNNING):
            assert self._tg is not None
            logger.info("{}: restart requested", name)
            self._tg.start_soon(self._stop_child, proc, "restart")
            return True, f"{name} is restarting"
        if proc.state in (State.FATAL, State.EXITED):
            self._restart_wanted[name].set()
            return True, f"{name} is starting"
        return False, f"{name} is {proc.state.value}; try again shortly"

    async def reload(self) -> Outcome:
        """Re-read services.toml and give each running service its settings (SIGHUP,
        `run.py reload`): each applies what can change live and names the rest. What
        is not a setting (services, restart policies) changes on the next start. A
        reload any service refuses leaves the configuration in force as it was."""
        try:
            fresh = await anyio.to_thread.run_sync(
                load, self.config.path, self.config.supervisor.data_dir
            )
        except ConfigError as exc:
            for problem in exc.problems:
                logger.error("reload refused: {}", problem)
            return Outcome(False, "; ".join(str(p) for p in exc.problems))
        outcomes: dict[str, Outcome] = {}

        async def apply(proc: ServiceProcess) -> None:
            try:
                spec = fresh.service(proc.name)
            except KeyError:
                outcomes[proc.name] = Outcome(True, "removed from the file (on the next start)")
                return
            if proc.state is not State.RUNNING:
                outcomes[proc.name] = Outcome(True, f"{proc.state.value}: takes them at start")
                return
            assert self.bus is not None
            try:
                outcomes[proc.name] = await self.bus.call(
                    proc.name, ApplySettings(spec.settings), timeout=5
                )
            except Exception as exc:  # unreachable, refused, or a value msgpack cannot carry
                outcomes[proc.name] = Outcome(False, f"{type(exc).__name__}: {exc}")

        async with anyio.create_task_group() as tg:
            for proc in self.procs.values():
                tg.start_soon(apply, proc)
        ok = all(o.ok for o in outcomes.values())
        if ok:
            self.config = fresh
        details = [f"{name}: {outcomes[name].detail}" for name in self.procs]
        logger.info("reload: {}", "; ".join(details))
        return Outcome(ok, "\n".join(details))

    async def _publish_status(self) -> None:
        """Each state change, pushed to the services that subscribe (heartbeat, presence)."""
        self._status_due = False
        assert self.bus is not None
        await self.bus.publish(self.status())

    def status(self) -> SupervisorStatus:
        now = self.effects.now()
        me = psutil.Process()
        return SupervisorStatus(
            supervisor={
                "pid": os.getpid(),
                "uptime_s": round(time.monotonic() - self._started_at, 1),
                "rss_mb": round(me.memory_info().rss / 1e6, 1),
                "summary": self.summary(),
            },
            services=[p.status(now) for p in self.procs.values()],
            metrics_url=self.metrics_url,
        )
