"""Whether the store can write, told to whoever subscribes (the heartbeat alerts on it).

While writes fail (a full disk, a database restarting or unreachable), persistence
refuses events with TransientError and their senders keep them in their outboxes:
nothing is lost, but nothing is stored either, and an admin should know. `StorageWatch`
turns the outcome of each write into a `StorageHealth` event only when the state
changes: the first outcome, a failure once it has lasted `alert_after_s` (a database
locked for a moment is not an incident), and the first success after it.
"""

from __future__ import annotations

from collections.abc import Callable

from protocol.store import StorageHealth

DETAIL_MAX = 200


def short(detail: str) -> str:
    """The first line of an error, briefly (a driver's messages run to several lines)."""
    line = detail.strip().splitlines()[0] if detail.strip() else "unknown error"
    return line if len(line) <= DETAIL_MAX else line[: DETAIL_MAX - 1] + "…"


class StorageWatch:
    def __init__(
        self,
        monotonic: Callable[[], float],
        wall: Callable[[], float],
        alert_after_s: float = 10.0,
    ) -> None:
        self.monotonic = monotonic
        self.wall = wall
        self.alert_after_s = alert_after_s
        self.told: bool | None = None  # what subscribers were last told: ok or not
        self.failing_since: tuple[float, float] | None = None  # (monotonic, wall)
        self.failures = 0  # refused writes in the current failure

    def succeeded(self) -> StorageHealth | None:
        self.failing_since, self.failures = None, 0
        if self.told is True:
            return None
        self.told = True
        return StorageHealth(ok=True, detail="", since=self.wall())

    def failed(self, detail: str) -> StorageHealth | None:
        if self.failing_since is None:
            self.failing_since = (self.monotonic(), self.wall())
        self.failures += 1
        started, started_wall = self.failing_since
        if self.told is False or self.monotonic() - started < self.alert_after_s:
            return None
        self.told = False
        return StorageHealth(ok=False, detail=short(detail), since=started_wall)
