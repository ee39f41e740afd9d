"""What the bot's presence says: rotating activity texts and a status from health.

Discord takes about five presence updates a minute, so updates are at least 15 s
apart (four a minute, with margin): the rotation interval's minimum, and the
spacing of updates that show a change of health. A template whose value is not
known yet (no counts from the gateway) is skipped rather than shown empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from protocol.messages import SupervisorStatus

MIN_INTERVAL_S = 15.0
ACTIVITY_MAX = 128


def presence_status(status: SupervisorStatus) -> str:
    """dnd when a critical service is FATAL, idle when any service is not running."""
    services = status.services
    if any(s.get("state") == "FATAL" and s.get("critical") for s in services):
        return "dnd"
    if any(s.get("state") != "RUNNING" for s in services):
        return "idle"
    return "online"


def uptime_text(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    minutes = int(seconds) // 60
    days, rest = divmod(minutes, 1440)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"


class Rotation:
    """Cycles through the templates, skipping those that cannot be filled in yet."""

    def __init__(self, templates: Sequence[str]) -> None:
        self.templates = list(templates)
        self._next = 0

    def next(self, values: dict[str, Any]) -> str | None:
        known = {k: v for k, v in values.items() if v is not None}
        for _ in range(len(self.templates)):
            template = self.templates[self._next]
            self._next = (self._next + 1) % len(self.templates)
            try:
                text = template.format(**known).strip()
            except (KeyError, ValueError, IndexError):
                continue
            if text:
                return text[:ACTIVITY_MAX]
        return None
