"""Discord-style rate limits: fixed-window buckets on a Clock that tests can move forward.

A bucket opens its window at its first request and refills when the window ends, which is
what Discord's ``X-RateLimit-Reset-After`` describes. Everything reads time from a
:class:`Clock`, so a test can advance ten minutes instead of waiting them out.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass


class Clock:
    """Monotonic seconds for rate limits: real time plus an offset that only grows.

    With ``frozen=True`` time stands still except through :meth:`advance`, for tests that
    want exact numbers.
    """

    def __init__(self, *, frozen: bool = False) -> None:
        self._frozen_at: float | None = time.monotonic() if frozen else None
        self._offset = 0.0

    def now(self) -> float:
        base = self._frozen_at if self._frozen_at is not None else time.monotonic()
        return base + self._offset

    def wall(self) -> float:
        """Epoch seconds as this clock sees them (for ``X-RateLimit-Reset``)."""
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._offset += seconds


@dataclass
class Decision:
    """The outcome of one request against a bucket, enough to render the headers."""

    allowed: bool
    bucket: str
    limit: int
    remaining: int
    reset_after: float
    scope: str = "user"

    def headers(self, clock: Clock) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": f"{clock.wall() + self.reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{self.reset_after:.3f}",
            "X-RateLimit-Bucket": hashlib.sha1(self.bucket.encode()).hexdigest()[:16],
        }


class _Window:
    __slots__ = ("remaining", "reset_at")

    def __init__(self) -> None:
        self.remaining = 0
        self.reset_at = float("-inf")


class RateLimiter:
    """Named fixed-window buckets; ``hit`` consumes one request if the bucket allows it."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._windows: dict[str, _Window] = {}

    def hit(self, bucket: str, limit: int, period: float, *, scope: str = "user") -> Decision:
        now = self.clock.now()
        window = self._windows.setdefault(bucket, _Window())
        if now >= window.reset_at:
            window.remaining = limit
            window.reset_at = now + period
        reset_after = max(window.reset_at - now, 0.0)
        if window.remaining <= 0:
            return Decision(False, bucket, limit, 0, reset_after, scope)
        window.remaining -= 1
        return Decision(True, bucket, limit, window.remaining, reset_after, scope)

    def reset(self) -> None:
        self._windows.clear()
