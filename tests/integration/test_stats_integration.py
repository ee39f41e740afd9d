"""The stats service in-process over real ZeroMQ, with fake gateway and persistence services.

The fakes are small `Service`s that answer like the real ones and record what they got;
the heartbeat and presence integration tests use them too.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import anyio
import pytest

from protocol.messages import AdvanceClock, ApplySettings
from services.stats import build
from tests.support.fakes import (
    FakeGateway,
    FakePersistence,
    Processes,
    ask,
    command,
    eventually,
)

pytestmark = pytest.mark.anyio

STATS_SETTINGS = {
    "report_channel": "stats",
    "report_time": "09:00",
    "timezone": "UTC",
    "weekly_day": "",
    "refresh_s": 300,
    "allow_clock_control": True,
    "counters": {
        "members": {"channel": "Members", "template": "Members: {members:,}"},
        "online": {"channel": "Online", "template": "Online: {online:,}"},
    },
}


async def test_counters_follow_the_gateway_within_the_rename_limit(tmp_path: Path) -> None:
    gateway, store = FakeGateway(), FakePersistence()
    async with anyio.create_task_group() as tg:
        procs = Processes(tg, tmp_path)
        await procs.start(store.service)
        await procs.start(gateway.service)
        stats = await procs.start(build()[0], STATS_SETTINGS)
        await eventually(lambda: len(gateway.renames) == 2, what="first renames")
        assert sorted(gateway.renames) == [("204", "Members: 10"), ("205", "Online: 4")]

        def members() -> list[str]:
            return [name for cid, name in gateway.renames if cid == "204"]

        await gateway.publish_counts(members=11)
        await eventually(lambda: members() == ["Members: 10", "Members: 11"])
        for n in range(12, 42):  # a burst of joins, with the window used up
            await gateway.publish_counts(members=n)
        await anyio.sleep(0.3)
        assert len(members()) == 2
        await ask(tmp_path, "stats", AdvanceClock(601))
        await eventually(lambda: members()[2:] == ["Members: 41"])
        assert ("stats.counter", "members") in store.kv
        for svc in (stats, gateway.service, store.service):
            await procs.stop(svc)


async def test_a_new_counter_template_applies_on_reload(tmp_path: Path) -> None:
    gateway, store = FakeGateway(), FakePersistence()
    async with anyio.create_task_group() as tg:
        procs = Processes(tg, tmp_path)
        await procs.start(store.service)
        await procs.start(gateway.service)
        stats = await procs.start(build()[0], STATS_SETTINGS)
        await eventually(lambda: len(gateway.renames) == 2, what="first renames")
        people = {"channel": "Members", "template": "People: {members}"}
        counters = {**STATS_SETTINGS["counters"], "members": people}  # type: ignore[dict-item]
        reload = ApplySettings({**STATS_SETTINGS, "counters": counters})
        outcome = await ask(tmp_path, "stats", reload)
        assert outcome.ok and outcome.detail == "applied counters"
        await eventually(lambda: gateway.renames[2:] == [("204", "People: 10")])
        typo = {"members": {"channel": "Members", "template": "People: {membres}"}}
        refused = await ask(tmp_path, "stats", ApplySettings({"counters": typo}))
        assert not refused.ok
        assert "services.stats.settings.counters.members.template" in refused.detail
        for svc in (stats, gateway.service, store.service):
            await procs.stop(svc)


async def test_a_report_is_posted_once_across_a_failed_send_and_a_restart(tmp_path: Path) -> None:
    gateway = FakeGateway()
    store = FakePersistence(gateway)
    now = time.time()
    store.events = [
        {"kind": "joined", "user_id": "1", "username": "alice", "bot": False, "at": now - 1},
        {"kind": "joined", "user_id": "2", "username": "bob", "bot": False, "at": now - 1},
        {"kind": "left", "user_id": "2", "username": "bob", "bot": False, "at": now},
    ]
    today = dt.datetime.fromtimestamp(now, dt.UTC).date().isoformat()
    header = f"**Daily member report for {today}**"
    settings = {**STATS_SETTINGS, "counters": {}}
    async with anyio.create_task_group() as tg:
        procs = Processes(tg, tmp_path)
        await procs.start(store.service)
        await procs.start(gateway.service)
        stats = await procs.start(build()[0], settings)
        await eventually(lambda: ("stats.report", "first_run") in store.kv)
        answer = await ask(tmp_path, "stats", command("stats", date=today))
        joins = {f["name"]: f["value"] for f in answer.embeds[0]["fields"]}["Joins"]
        assert joins.startswith("**2**")
        gateway.fail_sends = "503 Service Unavailable"  # Discord is having a bad day
        await ask(tmp_path, "stats", AdvanceClock(2 * 86400))
        key = ("stats.report", f"daily:{today}")
        await eventually(lambda: (store.kv.get(key) or {}).get("state") == "failed")
        gateway.fail_sends = None
        await ask(tmp_path, "stats", AdvanceClock(31))  # the retry comes 30 s later
        await eventually(lambda: (store.kv.get(key) or {}).get("state") == "posted")
        posted = [m for m in gateway.sent if m.content == header]
        assert len(posted) == 1 and posted[0].allowed_mentions == {"parse": []}
        assert posted[0].channel_id == "203"
        # The stats process restarts, and its clock is moved on as far again.
        await procs.stop(stats)
        claims_before = len(store.kv_sets)
        stats = await procs.start(build()[0], settings)
        await ask(tmp_path, "stats", AdvanceClock(2 * 86400 + 31))
        await eventually(
            lambda: any(
                s.key == key[1] and s.only_if_absent for s in store.kv_sets[claims_before:]
            ),
            what="the restarted run tried to claim the report",
        )
        await anyio.sleep(0.2)
        assert [m.content for m in gateway.sent].count(header) == 1
        for svc in (stats, gateway.service, store.service):
            await procs.stop(svc)
