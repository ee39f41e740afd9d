"""Per-user and per-guild token buckets, checked before any API call is made.

A question costs one token from the asker's bucket and one from the guild's; both must
have one, so a busy guild cannot be drained by one user and one user cannot hide behind
a quiet guild. Time is an injected monotonic clock so tests drive it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from services.llm.settings import Rate


class TokenBucket:
    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.level = rate.tokens
        self.updated = now

    def _refill(self, now: float) -> None:
        per_token_s = self.rate.per_s / self.rate.tokens
        self.level = min(self.rate.tokens, self.level + (now - self.updated) / per_token_s)
        self.updated = now

    def wait_s(self, now: float) -> float:
        """0 if a token is there now, else how long until one is."""
        self._refill(now)
        if self.level >= 1:
            return 0.0
        return (1 - self.level) * self.rate.per_s / self.rate.tokens

    def take(self) -> None:
        self.level -= 1

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.level >= self.rate.tokens


class RateLimiter:
    """Answers `check(user, guild)`: 0 (go ahead, tokens taken) or seconds to wait."""

    MAX_BUCKETS = 10_000  # past this, buckets that are full again are forgotten

    def __init__(
        self, user_rate: Rate, guild_rate: Rate, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.user_rate = user_rate
        self.guild_rate = guild_rate
        self._clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def configure(self, user_rate: Rate, guild_rate: Rate) -> None:
        """New rates (settings reloaded): existing buckets keep their level, capped."""
        self.user_rate, self.guild_rate = user_rate, guild_rate
        for (kind, _), bucket in self._buckets.items():
            bucket.rate = user_rate if kind == "user" else guild_rate
            bucket.level = min(bucket.level, bucket.rate.tokens)

    def _bucket(self, kind: str, key: str, rate: Rate, now: float) -> TokenBucket:
        bucket = self._buckets.get((kind, key))
        if bucket is None:
            if len(self._buckets) >= self.MAX_BUCKETS:
                self._buckets = {k: b for k, b in self._buckets.items() if not b.full(now)}
            bucket = self._buckets[(kind, key)] = TokenBucket(rate, now)
        return bucket

    def check(self, user_id: str, guild_id: str | None) -> float:
        now = self._clock()
        buckets = [self._bucket("user", user_id, self.user_rate, now)]
        if guild_id is not None:
            buckets.append(self._bucket("guild", guild_id, self.guild_rate, now))
        wait = max(b.wait_s(now) for b in buckets)
        if wait > 0:
            return wait  # nothing taken: a refused question costs nothing
        for b in buckets:
            b.take()
        return 0.0
