"""A short soak in CI: the whole bot under load for a while, RSS sampled every second.

The ten-minute run is `python -m bench.soak`; its figures are in the README. Here the
run is too short to judge a 10 % bar; it checks that nothing restarts under steady
load and that no process balloons (more than doubling would be a gross leak).
"""

from __future__ import annotations

import asyncio

from bench.soak import soak


def test_a_short_soak_restarts_nothing_and_no_process_balloons() -> None:
    report = asyncio.run(soak(duration=20, warmup=5, rate=20, window=5))
    names = set(report["processes"])
    assert {"supervisor", "gateway", "persistence", "llm"} <= names, names
    assert all(n == 0 for n in report["restarts"].values()), report["restarts"]
    assert all(p["growth_percent"] < 100 for p in report["processes"].values()), report
