"""A circuit breaker for one channel (sender to receiver).

CLOSED lets calls through and counts consecutive failures; at the threshold it
OPENs and fails calls at once for `reset_timeout_s`; then HALF_OPEN lets exactly
one probe through (concurrent callers still fail fast, which is what makes it
safe under asyncio where pybreaker is not), and the probe's outcome closes or
re-opens it. Time is a monotonic clock passed in, so tests drive it.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerOpen(Exception):
    """Raised instead of calling a peer whose breaker is open."""

    def __init__(self, name: str, retry_in_s: float) -> None:
        super().__init__(f"breaker for {name} is open, retry in {retry_in_s:.1f}s")
        self.retry_in_s = retry_in_s


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._on_change = on_change
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._probe_out = False

    def _set(self, new: BreakerState) -> None:
        old, self.state = self.state, new
        if old is not new and self._on_change:
            self._on_change(self.name, old, new)

    def retry_in(self) -> float:
        return max(0.0, self._opened_at + self.reset_timeout_s - self._clock())

    def before_call(self) -> None:
        """Raise BreakerOpen unless this call may go ahead (and mark a probe out)."""
        if self.state is BreakerState.OPEN:
            if self.retry_in() > 0:
                raise BreakerOpen(self.name, self.retry_in())
            self._set(BreakerState.HALF_OPEN)
        if self.state is BreakerState.HALF_OPEN:
            if self._probe_out:
                raise BreakerOpen(self.name, self.reset_timeout_s)
            self._probe_out = True

    def allows(self) -> bool:
        """Whether a call would go ahead now, without taking the probe."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            return self.retry_in() <= 0
        return not self._probe_out

    def record_success(self) -> None:
        self.failures = 0
        self._probe_out = False
        self._set(BreakerState.CLOSED)

    def release_probe(self) -> None:
        """A call that ended with no verdict on the peer (it went away): counts neither
        way, but a half-open probe it held is free for the next call."""
        self._probe_out = False

    def record_failure(self) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.failure_threshold:
            self._probe_out = False
            self._opened_at = self._clock()
            self._set(BreakerState.OPEN)
