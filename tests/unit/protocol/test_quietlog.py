"""A flood of the same problem is logged once, then counted."""

from __future__ import annotations

from loguru import logger

from protocol.quietlog import QuietLog


def test_the_same_problem_is_logged_once_per_interval_with_a_count() -> None:
    lines: list[str] = []
    sink = logger.add(lines.append, format="{message}")
    try:
        quiet = QuietLog(interval_s=60)
        for i in range(100):
            quiet.warning("malformed", "bad frame {}", i)
        quiet.warning("oversized", "big frame")
        quiet.interval_s = 0  # the interval has passed
        quiet.warning("malformed", "bad frame again")
    finally:
        logger.remove(sink)
    assert [line.strip() for line in lines] == [
        "bad frame 0",
        "big frame",
        "bad frame again (and 99 more like it since the last report)",
    ]
