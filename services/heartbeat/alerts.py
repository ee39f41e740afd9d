"""What deserves an admin's attention, and how to say it in few messages.

`AlertDetector` compares each supervisor status (and host memory and disk)
with the previous one: a service crashed (its restart count went up), went
FATAL, is flapping (several restarts within a window), a breaker opened, memory
or disk crossed a threshold; and the matching recovery when that condition
clears. Persistence's `store.health` says when storage refuses writes and when it
writes again: one alert per incident, one recovery. Its state is a plain dict,
saved in persistence, so a restart of the heartbeat neither forgets a crash that
happened while it was down nor repeats alerts it already sent.

`AlertGroup` collects alerts for a few seconds and releases them as one
message, so an outage that trips ten conditions is one ping, not ten.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protocol.messages import SupervisorStatus
from protocol.store import StorageHealth

FLAP_RESTARTS = 3
FLAP_WINDOW_S = 600.0
HYSTERESIS_PERCENT = 5.0  # memory at 91 % then 89 % is not an alert and a recovery
MAX_LINES = 20
CONTENT_MAX = 1900  # Discord allows 2000 characters; leave room for the mention


@dataclass(frozen=True)
class Alert:
    key: str  # the condition, e.g. "fatal:gateway" (one-shot alerts have unique keys)
    text: str
    recovery: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "text": self.text, "recovery": self.recovery}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        return cls(str(d["key"]), str(d["text"]), bool(d.get("recovery", False)))


@dataclass
class Thresholds:
    memory_percent: float = 90.0
    disk_percent: float = 90.0
    flap_restarts: int = FLAP_RESTARTS
    flap_window_s: float = FLAP_WINDOW_S


@dataclass
class AlertDetector:
    now: Callable[[], float]  # wall seconds: restart times are saved across restarts
    thresholds: Thresholds = field(default_factory=Thresholds)
    supervisor_pid: int | None = None
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> restarts, state
    active: set[str] = field(default_factory=set)
    restart_times: dict[str, list[float]] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return not self.active

    def check(
        self,
        status: SupervisorStatus,
        memory_percent: float | None = None,
        disk_percent: float | None = None,
    ) -> list[Alert]:
        now = self.now()
        alerts: list[Alert] = []
        sup_pid = status.supervisor.get("pid")
        if self.supervisor_pid is not None and sup_pid != self.supervisor_pid:
            # A new supervisor counts restarts from zero: start over, and say so.
            alerts.append(Alert(f"bot-restart:{sup_pid}", "The whole bot restarted."))
            self.seen, self.restart_times = {}, {}
            self.active = {k for k in self.active if k in ("memory", "disk", "storage")}
        self.supervisor_pid = sup_pid
        services = status.services
        for svc in services:
            alerts += self._service(svc, now)
        alerts += self._breakers(services)
        alerts += self._level("memory", "Memory", memory_percent, self.thresholds.memory_percent)
        alerts += self._level("disk", "Disk", disk_percent, self.thresholds.disk_percent)
        return alerts

    def _service(self, svc: dict[str, Any], now: float) -> list[Alert]:
        name, state = str(svc["name"]), str(svc.get("state"))
        restarts = int(svc.get("restarts") or 0)
        before = self.seen.get(name)
        self.seen[name] = {"restarts": restarts, "state": state}
        if before is None:
            before = {"restarts": restarts, "state": state}  # first sight: nothing to compare
        alerts = []
        crashes = restarts - int(before["restarts"])
        exit_reason = svc.get("last_exit") or "unknown"
        if crashes > 0:
            times = self.restart_times.setdefault(name, [])
            times += [now] * crashes
            many = f" {crashes} times" if crashes > 1 else ""
            if state == "RUNNING":
                text = f"**{name}** crashed{many} ({exit_reason}) and is running again"
            else:
                text = f"**{name}** crashed{many} ({exit_reason}); now {state}"
                self.active.add(f"down:{name}")
            alerts.append(Alert(f"crash:{name}:{restarts}", text))
        times = [
            t for t in self.restart_times.get(name, []) if now - t < self.thresholds.flap_window_s
        ]
        self.restart_times[name] = times
        flapping = len(times) >= self.thresholds.flap_restarts
        if flapping and f"flapping:{name}" not in self.active:
            self.active.add(f"flapping:{name}")
            window = self.thresholds.flap_window_s / 60
            alerts.append(
                Alert(
                    f"flapping:{name}",
                    f"**{name}** is flapping: {len(times)} restarts in {window:g} min",
                )
            )
        elif not flapping:
            self.active.discard(f"flapping:{name}")
        if state == "FATAL" and f"fatal:{name}" not in self.active:
            self.active.add(f"fatal:{name}")
            critical = " (critical)" if svc.get("critical") else ""
            alerts.append(
                Alert(
                    f"fatal:{name}", f"**{name}**{critical} is FATAL: {exit_reason}. Use /restart"
                )
            )
        if state == "RUNNING" and {f"down:{name}", f"fatal:{name}"} & self.active:
            self.active -= {f"down:{name}", f"fatal:{name}"}
            alerts.append(Alert(f"up:{name}", f"**{name}** is running again", recovery=True))
        return alerts

    def _breakers(self, services: list[dict[str, Any]]) -> list[Alert]:
        alerts = []
        now_open = set()
        for svc in services:
            for ch in svc.get("channels") or []:
                if ch.get("breaker", "closed") != "closed":
                    now_open.add(f"breaker:{svc['name']}->{ch.get('peer')}")
        for key in sorted(now_open - self.active):
            self.active.add(key)
            alerts.append(Alert(key, f"breaker {key.removeprefix('breaker:')} is open"))
        was_open = {k for k in self.active if k.startswith("breaker:")}
        for key in sorted(was_open - now_open):
            self.active.discard(key)
            text = f"breaker {key.removeprefix('breaker:')} closed again"
            alerts.append(Alert(key, text, recovery=True))
        return alerts

    def storage(self, health: StorageHealth) -> list[Alert]:
        """Storage refusing writes, once per incident (persistence repeats itself when it
        restarts, and the retained event comes again when we do); then its recovery."""
        if not health.ok and "storage" not in self.active:
            self.active.add("storage")
            since = f"<t:{int(health.since)}:T>"  # Discord shows it in the reader's time
            text = (
                f"**storage** refuses writes since {since}: {health.detail}. Nothing is "
                "lost: events wait in their senders' outboxes until it writes again"
            )
            return [Alert("storage", text)]
        if health.ok and "storage" in self.active:
            self.active.discard("storage")
            return [Alert("storage", "**storage** writes again", recovery=True)]
        return []

    def _level(self, key: str, label: str, percent: float | None, limit: float) -> list[Alert]:
        if percent is None:
            return []
        if percent >= limit and key not in self.active:
            self.active.add(key)
            return [Alert(key, f"{label} at {percent:.0f}% (alert at {limit:g}%)")]
        if key in self.active and percent < limit - HYSTERESIS_PERCENT:
            self.active.discard(key)
            return [Alert(key, f"{label} back to {percent:.0f}%", recovery=True)]
        return []

    # --- saved across restarts ------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "supervisor_pid": self.supervisor_pid,
            "seen": self.seen,
            "active": sorted(self.active),
            "restart_times": self.restart_times,
        }

    def restore(self, d: dict[str, Any]) -> None:
        self.supervisor_pid = d.get("supervisor_pid")
        self.seen = dict(d.get("seen") or {})
        self.active = set(d.get("active") or [])
        self.restart_times = {k: list(v) for k, v in (d.get("restart_times") or {}).items()}


@dataclass
class AlertGroup:
    """Alerts wait `group_s` after the first one, then go out together."""

    now: Callable[[], float]
    group_s: float = 5.0
    pending: list[Alert] = field(default_factory=list)
    first_at: float | None = None

    def add(self, alerts: list[Alert]) -> None:
        alerts = [a for a in alerts if a not in self.pending]  # a redelivered event
        if alerts and self.first_at is None:
            self.first_at = self.now()
        self.pending += alerts

    def due(self) -> bool:
        return self.first_at is not None and self.now() - self.first_at >= self.group_s

    def take(self) -> list[Alert]:
        taken, self.pending, self.first_at = self.pending, [], None
        return taken

    def put_back(self, alerts: list[Alert]) -> None:
        """Sending failed: they go out with the next try, ahead of newer ones."""
        self.pending = alerts + [a for a in self.pending if a not in alerts]
        if self.pending and self.first_at is None:
            self.first_at = self.now()


def alert_message(alerts: list[Alert], role_id: str | None) -> tuple[str, dict[str, Any]]:
    """The content and allowed_mentions of one grouped alert message: only the
    configured role is pinged, never @everyone, and no role at all without one."""
    problems = [a for a in alerts if not a.recovery]
    title = "**Alert**" if problems else "**Recovered**"
    lines = [("✅ " if a.recovery else "⚠️ ") + a.text for a in alerts]
    if len(lines) > MAX_LINES:
        lines = [*lines[:MAX_LINES], f"... and {len(lines) - MAX_LINES} more"]
    mention = f"<@&{role_id}> " if role_id and problems else ""
    content = mention + title + "\n" + "\n".join(lines)
    if len(content) > CONTENT_MAX:
        content = content[: CONTENT_MAX - 4] + "\n..."
    allowed = {"parse": [], "roles": [role_id] if mention else []}
    return content, allowed
