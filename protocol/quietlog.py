"""Log a kind of problem once, then count: a flood of bad input is one line a minute."""

from __future__ import annotations

import time
from typing import Any

from loguru import logger


class QuietLog:
    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._last: dict[Any, tuple[float, int]] = {}  # key -> (logged at, suppressed since)

    def warning(self, key: Any, message: str, *args: Any) -> None:
        now = time.monotonic()
        logged_at, suppressed = self._last.get(key, (-self.interval_s, 0))
        if now - logged_at < self.interval_s:
            self._last[key] = (logged_at, suppressed + 1)
            return
        if suppressed:
            message += f" (and {suppressed} more like it since the last report)"
        logger.opt(depth=1).warning(message, *args)
        self._last[key] = (now, 0)
