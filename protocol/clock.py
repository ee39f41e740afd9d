"""The one place a service reads time from, so tests can move it.

Every service has one (`service.clock`); a service that schedules by time uses it
(stats: monotonic seconds for the rename throttle, wall seconds for reports;
the gateway: its rename guard). Both are the real clocks plus one offset that only grows, the
same model as the Discord emulator's clock, so an end-to-end test can advance
both together. `sleep` wakes early when the clock is advanced: a wait of ten
minutes ends as soon as a test moves time ten minutes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio


class Clock:
    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._offset = 0.0
        self._advanced = anyio.Event()

    def monotonic(self) -> float:
        return self._monotonic() + self._offset

    def wall(self) -> float:
        return self._wall() + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._offset += seconds
        self._advanced.set()
        self._advanced = anyio.Event()

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` of this clock's time (real time passing, or advances)."""
        until = self.monotonic() + seconds
        while (left := until - self.monotonic()) > 0:
            with anyio.move_on_after(left):
                await self._advanced.wait()


class Wakeup:
    """Lets a loop that sleeps on the clock be woken as soon as there is something new to
    do (a counter changed, a health change): `set()` from anywhere, `sleep()` in the loop."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def sleep(self, seconds: float) -> None:
        """Until `seconds` pass on the clock, or `set()` is called."""
        woken = self._event
        async with anyio.create_task_group() as tg:

            async def on_wakeup() -> None:
                await woken.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(on_wakeup)
            await self.clock.sleep(seconds)
            tg.cancel_scope.cancel()


def fixed(wall: float, monotonic: float = 1000.0) -> Clock:
    """A clock that stands still except through `advance`: for unit tests."""
    return Clock(monotonic=lambda: monotonic, wall=lambda: wall)
