"""One supervised service: its state machine and restart policy, free of side effects.

States follow supervisord's, and every change goes through `transition()`, which
refuses a move the table does not allow and logs each one. The methods are
called by the supervisor when something happens (spawned, ready, heartbeat,
exited, hang detected) and answer what to do next, so unit tests drive the
whole policy with a fake clock and no processes.
"""

from __future__ import annotations

import enum
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

from protocol.runtime import EXIT_CONFIG
from supervisor.config import RestartPolicy, ServiceSpec


class State(enum.Enum):
    STOPPED = "STOPPED"  # not running, not wanted (initial, or stopped on request)
    STARTING = "STARTING"  # spawned, has not reported ready yet
    RUNNING = "RUNNING"  # reported ready over the bus
    BACKOFF = "BACKOFF"  # exited, waiting out the backoff before the next start
    STOPPING = "STOPPING"  # asked to stop, waiting for the exit
    EXITED = "EXITED"  # exited and its restart type says leave it
    FATAL = "FATAL"  # restarted too often: given up until restarted by hand


ALLOWED: dict[State, set[State]] = {
    State.STOPPED: {State.STARTING},
    State.STARTING: {State.RUNNING, State.STOPPING, State.BACKOFF, State.EXITED, State.FATAL},
    State.RUNNING: {State.STOPPING, State.BACKOFF, State.EXITED, State.FATAL},
    State.STOPPING: {State.STOPPED, State.BACKOFF, State.EXITED, State.FATAL},
    State.BACKOFF: {State.STARTING, State.STOPPED},
    State.EXITED: {State.STARTING, State.STOPPED},
    State.FATAL: {State.STARTING, State.STOPPED},
}


class IllegalTransition(RuntimeError):
    pass


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def backoff_delay(attempt: int, policy: RestartPolicy, random: Callable[[], float]) -> float:
    """0 for the first restart, then initial * 2^(n-1) capped at max, with +-jitter."""
    if attempt <= 0:
        return 0.0
    base = min(policy.backoff_max_s, policy.backoff_initial_s * 2 ** (attempt - 1))
    return max(0.0, base * (1 + policy.backoff_jitter * (2 * random() - 1)))


@dataclass
class Restart:
    """The supervisor's next step after an exit: start again after `delay_s`."""

    delay_s: float


class ServiceProcess:
    def __init__(self, spec: ServiceSpec, random: Callable[[], float]) -> None:
        self.spec = spec
        self.state = State.STOPPED
        self.pid: int | None = None
        self.restarts = 0
        self.last_exit: str | None = None
        self.reason: str | None = None  # why it is in its current state
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.last_heartbeat = 0.0
        self.rss_mb: float | None = None
        self.channels: list[dict] = []
        self.figures: dict[str, float] = {}  # what the service reports of itself
        # Told of every state change (the supervisor keeps a history for its watchers).
        self.on_transition: Callable[[ServiceProcess, State, str], None] | None = None
        self._random = random
        self._backoff_attempt = 0
        self._restart_times: deque[float] = deque()
        # Why the current stop was asked for; a planned restart follows a stop for
        # "hung", "memory" or "restart", and no restart follows "shutdown".
        self._stop_reason: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def transition(self, new: State, why: str) -> None:
        if new not in ALLOWED[self.state]:
            raise IllegalTransition(f"{self.name}: {self.state.value} -> {new.value} ({why})")
        logger.info("{} {} -> {} ({})", self.name, self.state.value, new.value, why)
        old, self.state = self.state, new
        self.reason = why
        if self.on_transition is not None:
            self.on_transition(self, old, why)

    def uptime(self, now: float) -> float:
        return now - self.ready_at if self.state is State.RUNNING and self.ready_at else 0.0

    # --- events ---------------------------------------------------------------------

    def spawned(self, pid: int, now: float) -> None:
        self.transition(State.STARTING, f"pid {pid}")
        self.pid = pid
        self.started_at = now
        self.ready_at = None
        self.last_heartbeat = now
        self._stop_reason = None

    def ready(self, now: float) -> None:
        if self.state is State.STARTING:
            self.transition(State.RUNNING, f"ready after {now - (self.started_at or now):.2f}s")
            self.ready_at = now
            self.last_heartbeat = now

    def heartbeat(self, now: float) -> None:
        self.last_heartbeat = now

    def stopping(self, reason: str) -> None:
        """Ask for a stop; reason 'shutdown' means no restart afterwards."""
        self._stop_reason = reason
        if self.state in (State.STARTING, State.RUNNING):
            self.transition(State.STOPPING, reason)
        elif self.state in (State.BACKOFF, State.EXITED, State.FATAL) and reason == "shutdown":
            self.transition(State.STOPPED, reason)

    def exited(self, returncode: int, now: float) -> Restart | None:
        """The process is gone. Answer when to start it again, or None to leave it."""
        how = describe_exit(returncode)
        reason, self._stop_reason = self._stop_reason, None
        self.last_exit = how if reason in (None, "shutdown") else f"{how} ({reason})"
        self.pid = None
        self.figures = {}  # a new process counts from zero
        ran_for = now - self.ready_at if self.ready_at is not None else 0.0
        if reason == "shutdown":
            self.transition(State.STOPPED, self.last_exit)
            return None
        if returncode == EXIT_CONFIG and self.state is State.STARTING:
            # It said what is wrong with its configuration: restarting cannot help.
            self.transition(State.FATAL, f"{self.last_exit}: configuration problem")
            return None
        if reason == "restart":  # asked for by an operator: not a failure
            self._backoff_attempt = 0
            self.transition(State.BACKOFF, "restart requested")
            return Restart(0.0)
        clean = returncode == 0 and reason is None
        policy = self.spec.policy
        if policy.restart == "temporary" or (policy.restart == "transient" and clean):
            self.transition(State.EXITED, self.last_exit)
            return None
        if ran_for >= policy.stable_after_s:
            self._backoff_attempt = 0
        if self.restart_intensity_exceeded(now):
            self.transition(
                State.FATAL,
                f"{self.last_exit}; more than {policy.max_restarts} restarts"
                f" in {policy.within_s:g}s",
            )
            return None
        delay = backoff_delay(self._backoff_attempt, policy, self._random)
        self._backoff_attempt += 1
        self.restarts += 1
        self.transition(State.BACKOFF, f"{self.last_exit}; restart in {delay:.2f}s")
        return Restart(delay)

    def restart_intensity_exceeded(self, now: float) -> bool:
        """OTP's rule: one more restart would make more than MaxR within MaxT."""
        window = self.spec.policy.within_s
        times = self._restart_times
        while times and now - times[0] > window:
            times.popleft()
        if len(times) >= self.spec.policy.max_restarts:
            return True
        times.append(now)
        return False

    def reset_after_manual_start(self) -> None:
        """An operator restarting a FATAL service gives it a fresh restart budget."""
        self._restart_times.clear()
        self._backoff_attempt = 0

    # --- checks the supervisor runs periodically ------------------------------------

    def hung(self, now: float) -> str | None:
        """A reason to kill the process, or None while it is healthy."""
        if (
            self.state is State.RUNNING
            and now - self.last_heartbeat > self.spec.heartbeat_timeout_s
        ):
            return f"hung: no heartbeat for {now - self.last_heartbeat:.1f}s"
        if (
            self.state is State.STARTING
            and self.started_at is not None
            and now - self.started_at > self.spec.start_timeout_s
        ):
            return f"hung: not ready after {now - self.started_at:.1f}s"
        return None

    def over_memory(self, rss_mb: float | None) -> bool:
        self.rss_mb = rss_mb
        limit = self.spec.memory_limit_mb
        return (
            limit is not None
            and rss_mb is not None
            and rss_mb > limit
            and self.state is State.RUNNING
        )

    def status(self, now: float) -> dict:
        return {
            "name": self.name,
            "pid": self.pid,
            "state": self.state.value,
            "restarts": self.restarts,
            "uptime_s": round(self.uptime(now), 1),
            "rss_mb": None if self.rss_mb is None else round(self.rss_mb, 1),
            "last_exit": self.last_exit,
            "reason": self.reason,
            "critical": self.spec.critical,
            "channels": self.channels,
            "figures": self.figures,
        }
