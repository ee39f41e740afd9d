"""The presence service in-process over real ZeroMQ, with the fake supervisor (pushing its
status) and gateway (publishing its counts) from tests/support/fakes.py."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from protocol.clock import Clock
from protocol.discord import SetPresence
from protocol.messages import ApplySettings
from services.presence import build
from tests.support.fakes import FakeGateway, FakeSupervisor, Processes, ask, eventually

pytestmark = pytest.mark.anyio

SETTINGS = {"interval_s": 60, "templates": ["{members:,} members", "up {uptime}"]}


def stopped_clock() -> Clock:
    """A clock that moves only when the test advances it."""
    return Clock(monotonic=lambda: 100.0, wall=lambda: 1_714_550_400.0)


async def test_presence_shows_counts_and_health_and_follows_both(tmp_path: Path) -> None:
    gateway, supervisor = FakeGateway(), FakeSupervisor(("gateway", "llm"))
    supervisor.change("llm", state="STARTING")
    clock = stopped_clock()
    async with anyio.create_task_group() as tg:
        procs = Processes(tg, tmp_path)
        await procs.start(gateway.service)
        await procs.start(supervisor.service)
        service, presence = build(clock)
        await procs.start(service, SETTINGS)
        await eventually(lambda: gateway.presences, what="the first presence")
        assert gateway.presences == [SetPresence("idle", "10 members", "custom")]
        await gateway.publish_counts(members=1234)
        await eventually(lambda: presence.values.get("members") == 1234)
        await supervisor.set("llm", state="RUNNING")  # start-up is over
        await eventually(lambda: presence.status == "online")
        clock.advance(14)
        await anyio.sleep(0.3)
        assert len(gateway.presences) == 1  # healthy now, but 14 s is too soon to say so
        clock.advance(1)
        await eventually(lambda: len(gateway.presences) == 2, what="the health change")
        assert gateway.presences[1] == SetPresence("online", "up 1h 1m", "custom")
        await supervisor.set("gateway", state="FATAL")
        await eventually(lambda: presence.status == "dnd")
        clock.advance(15)
        await eventually(lambda: len(gateway.presences) == 3, what="dnd")
        assert gateway.presences[2] == SetPresence("dnd", "1,234 members", "custom")
        clock.advance(60)  # a full interval since the last update: the next template
        await eventually(lambda: len(gateway.presences) == 4, what="the rotation")
        assert gateway.presences[3] == SetPresence("dnd", "up 1h 1m", "custom")
        await anyio.sleep(0.3)
        assert len(gateway.presences) == 4
        for svc in (service, supervisor.service, gateway.service):
            await procs.stop(svc)


async def test_new_templates_and_interval_apply_on_reload(tmp_path: Path) -> None:
    gateway, supervisor = FakeGateway(), FakeSupervisor(("gateway",))
    clock = stopped_clock()
    async with anyio.create_task_group() as tg:
        procs = Processes(tg, tmp_path)
        await procs.start(gateway.service)
        await procs.start(supervisor.service)
        service = await procs.start(build(clock)[0], SETTINGS)
        await eventually(lambda: gateway.presences, what="the first presence")
        reload = ApplySettings({"interval_s": 20, "templates": ["{online} online"]})
        outcome = await ask(tmp_path, "presence", reload)
        assert outcome.ok and outcome.detail == "applied interval_s, templates"
        clock.advance(20)
        await eventually(lambda: len(gateway.presences) == 2, what="the new template")
        assert gateway.presences[1] == SetPresence("online", "4 online", "custom")
        for svc in (service, supervisor.service, gateway.service):
            await procs.stop(svc)
