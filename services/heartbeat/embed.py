"""The status embed (edited in place) and the short /status summary.

Built from one `Snapshot` of everything the heartbeat gathered, so the same
picture shows in the admin channel and in an admin's /status.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from protocol.discord import ConnectionState, GapBackfilled
from protocol.messages import SupervisorStatus
from protocol.store import Usage
from services.heartbeat.health import HostSample, duration

GREEN, YELLOW, RED = 0x57F287, 0xFEE75C, 0xED4245
DESCRIPTION_MAX = 4000
STALE_CONNECTION_S = 60.0
# LLM outcomes that are not the model failing: answers, and limits the user ran into.
NOT_ERRORS = {"ok", "cache_hit", "rate_limited_user", "prompt_too_long", "context_too_long"}


@dataclass
class Snapshot:
    at: float  # wall seconds
    status: SupervisorStatus | None  # the supervisor's latest; None when it fell silent
    host: HostSample | None = None
    cpu: dict[int, float | None] = field(default_factory=dict)
    connection: ConnectionState | None = None  # the gateway's latest
    gap: GapBackfilled | None = None  # the gateway's latest backfill after a gap
    db_bytes: int | None = None
    llm: Usage | None = None  # the model usage of the last hour

    @property
    def services(self) -> list[dict[str, Any]]:
        return [] if self.status is None else list(self.status.services)

    def open_breakers(self) -> list[str]:
        return [
            f"{s['name']}→{ch.get('peer')}: {ch.get('breaker')}"
            for s in self.services
            for ch in s.get("channels") or []
            if ch.get("breaker", "closed") != "closed"
        ]

    def level(self) -> str:
        """ok, degraded (something not running) or down (FATAL, or no supervisor)."""
        if self.status is None or any(s.get("state") == "FATAL" for s in self.services):
            return "down"
        if any(s.get("state") != "RUNNING" for s in self.services) or self.open_breakers():
            return "degraded"
        return "ok"


def llm_numbers(usage: Usage | None) -> tuple[int, float | None, float | None]:
    """(exchanges, p50 latency ms, error rate) from the model usage."""
    if usage is None:
        return 0, None, None
    n = usage.exchanges
    errors = sum(v for k, v in usage.by_outcome.items() if k not in NOT_ERRORS)
    rate = errors / n if n and usage.by_outcome else None
    return n, usage.latency_p50_ms, rate


def connection_text(snap: Snapshot) -> str:
    """State and latency; the gateway repeats it every 15 s, so silence is news too."""
    conn = snap.connection
    if conn is None:
        return "unknown"
    latency = conn.latency_ms
    text = conn.state + ("" if latency is None else f" · {latency:.0f} ms")
    silent = snap.at - (conn.at or snap.at)
    return text + (f"\n(last heard {duration(silent)} ago)" if silent > STALE_CONNECTION_S else "")


def discord_text(snap: Snapshot) -> str:
    """The connection, and the latest gap (with when) if there was one."""
    text = connection_text(snap)
    gap = snap.gap
    if gap is not None:
        ago = f" ({duration(snap.at - gap.at)} ago)" if gap.at else ""
        text += "\n" + gap.line() + ago
    return text


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}MB"


def _table(snap: Snapshot) -> str:
    rows = [("service", "state", "pid", "rst", "rss", "cpu", "last exit")]
    for s in snap.services:
        pid = s.get("pid")
        cpu = snap.cpu.get(int(pid)) if pid else None
        rows.append(
            (
                str(s.get("name")),
                str(s.get("state")) + ("*" if s.get("critical") else ""),
                str(pid or "-"),
                str(s.get("restarts", 0)),
                _mb(s.get("rss_mb")),
                "-" if cpu is None else f"{cpu:.0f}%",
                str(s.get("last_exit") or "-")[:28],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "```\n" + "\n".join(lines) + "\n```"


def status_embed(snap: Snapshot) -> dict[str, Any]:
    level = snap.level()
    fields = []
    if snap.status is not None:
        sup = snap.status.supervisor
        fields.append(
            {
                "name": "Bot",
                "value": f"up {duration(sup.get('uptime_s'))}\n{sup.get('summary', '')}",
                "inline": True,
            }
        )
    if snap.host is not None:
        h = snap.host
        fields.append(
            {
                "name": "Host",
                "value": (
                    f"up {duration(h.uptime_s)} · CPU {h.cpu_percent:.0f}%\n"
                    f"memory {h.memory_percent:.0f}% ({h.memory_used_mb:.0f}"
                    f"/{h.memory_total_mb:.0f}MB)\n"
                    f"disk {h.disk_percent:.0f}% ({h.disk_free_gb:.1f}GB free)\n"
                    f"load {h.load[0]:.2f} {h.load[1]:.2f} {h.load[2]:.2f}"
                ),
                "inline": True,
            }
        )
    fields.append({"name": "Discord", "value": discord_text(snap), "inline": True})
    fields.append(
        {
            "name": "Database",
            "value": "unavailable" if snap.db_bytes is None else f"{snap.db_bytes / 1e6:.1f}MB",
            "inline": True,
        }
    )
    n, p50, rate = llm_numbers(snap.llm)
    llm = "unavailable" if snap.llm is None else f"{n} answers in the last hour"
    if p50 is not None:
        llm += f"\np50 {p50:.0f} ms"
    if rate is not None:
        llm += f" · errors {rate:.0%}"
    if snap.llm is not None and snap.llm.by_provider:  # which provider answered
        by = sorted(snap.llm.by_provider.items(), key=lambda kv: (-kv[1], kv[0]))
        llm += "\nby " + ", ".join(f"{name} {count}" for name, count in by)
    fields.append({"name": "LLM", "value": llm, "inline": True})
    breakers = snap.open_breakers()
    fields.append({"name": "Breakers", "value": "\n".join(breakers)[:1000] or "all closed"})
    description = (
        _table(snap) if snap.status is not None else "**The supervisor is not answering.**"
    )
    return {
        "title": {"ok": "Healthy", "degraded": "Degraded", "down": "Down"}[level],
        "description": description[:DESCRIPTION_MAX],
        "color": {"ok": GREEN, "degraded": YELLOW, "down": RED}[level],
        "fields": fields,
        "footer": {"text": "* critical · updated every check"},
        "timestamp": dt.datetime.fromtimestamp(snap.at, dt.UTC).isoformat(),
    }


def summary_text(snap: Snapshot) -> str:
    """One line for anyone: how the bot is, without pids or exit reasons."""
    services = snap.services
    running = sum(1 for s in services if s.get("state") == "RUNNING")
    text = {"ok": "Healthy", "degraded": "Degraded", "down": "Having trouble"}[snap.level()]
    parts = [f"{text}: {running}/{len(services)} services running"]
    if snap.status is not None:
        parts.append(f"up {duration(snap.status.supervisor.get('uptime_s'))}")
    if snap.connection is not None:
        parts.append("Discord " + discord_text(snap).replace("\n", " "))
    return " · ".join(parts)
