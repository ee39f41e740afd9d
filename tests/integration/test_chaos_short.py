"""A short chaos run in CI: every service SIGKILLed once under load, and the supervisor too.

The full run (60 s at 200 messages/s) is `python -m bench.chaos`; its figures are in
the README. Here the bar is checked on a smaller scale; recovery times are reported
by the benchmark, not asserted here (shared machines are noisy).
"""

from __future__ import annotations

import asyncio

from bench.chaos import chaos

# The llm and the gateway first: what answers and what sends them.
SERVICES = ["llm", "gateway", "persistence", "heartbeat", "stats", "presence", "scheduler"]


def test_killing_every_service_and_the_supervisor_loses_doubles_and_leaves_unanswered_nothing() -> (
    None
):
    report = asyncio.run(
        chaos(
            duration=18,
            rate=60,
            kill_every=(2.0, 2.5),
            mention_every=1,
            command_every=1,
            kill_order=SERVICES,
            settle_s=40,
        )
    )
    assert report["kills"] and set(report["kills"]) >= {"gateway", "persistence", "llm"}
    assert report["supervisor_kill"] and report["supervisor_kill"]["orphans"] == 0
    assert report["messages"]["missing"] == 0, report["messages"]
    assert report["messages"]["duplicated"] == 0, report["messages"]
    mentions, asks = report["mentions"], report["asks"]
    assert mentions["posted"] and asks["run"], report
    assert mentions["answered_in_full"] == mentions["posted"], mentions
    assert mentions["answered_twice"] == 0, mentions
    assert asks["answered_in_full"] == asks["run"], asks
    assert asks["answered_twice"] == 0, asks
    assert report["slash_commands"]["unanswered"] == 0, report["slash_commands"]
    assert report["not_recovered"] == [], report
