"""Whether the store can write, told to whoever subscribes (the heartbeat alerts on it).

While writes fail (a full disk, a database restarting or unreachable), persistence
refuses events with TransientError and their senders keep them in their outboxes:
nothing is lost, but nothing is stored either, and an admin should know. `StorageWatch`
turns the outcome of each write into a `StorageHealth` event only when the state
changes, so that one incident is one alert and one recovery:

- the first outcome: writes work (nothing to say but "ok");
- a failure once failures have gone on for `window_s` (a database locked for a moment
  is not an incident);
- the recovery once a write has worked and none has failed for `window_s`: a nearly
  full disk lets small writes through between failures, and the senders retry only
  every few seconds, so one success alone proves nothing.
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
        window_s: float = 10.0,
    ) -> None:
        self.monotonic = monotonic
        self.wall = wall
        self.window_s = window_s
        self.told: bool | None = None  # what subscribers were last told: ok or not
        self.trouble_since: tuple[float, float] | None = None  # (monotonic, wall)
        self.last_failure: float | None = None
        self.last_success: float | None = None
        self.failures = 0  # refused writes in the current trouble

    def failed(self, detail: str) -> StorageHealth | None:
        now = self.monotonic()
        quiet = self.last_failure is None or now - self.last_failure >= self.window_s
        if self.trouble_since is None or (quiet and self.told is not False):
            self.trouble_since, self.failures = (now, self.wall()), 0
        self.last_failure = now
        self.failures += 1
        started, started_wall = self.trouble_since
        if self.told is False or now - started < self.window_s:
            return None
        self.told = False
        return StorageHealth(ok=False, detail=short(detail), since=started_wall)

    def succeeded(self) -> StorageHealth | None:
        self.last_success = self.monotonic()
        if self.told is None and self.trouble_since is None:
            self.told = True
            return StorageHealth(ok=True, detail="", since=self.wall())
        return self.poll()

    def poll(self) -> StorageHealth | None:
        """What time alone decides: a recovery, or a blip that is over. Call it now and
        then, since writes may stop coming once they work."""
        if self.trouble_since is None or self.last_failure is None:
            return None
        now = self.monotonic()
        if now - self.last_failure < self.window_s:
            return None
        worked = self.last_success is not None and self.last_success > self.last_failure
        if self.told is False and not worked:
            return None  # no failure lately, but no write either: not known to work
        self.trouble_since, self.failures = None, 0
        if self.told is True or not worked:
            return None  # a blip, over before anyone was told
        self.told = True
        return StorageHealth(ok=True, detail="", since=self.wall())
