"""The presence service in-process over real ZeroMQ, with fake supervisor and gateway."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from protocol.discord import SetPresence
from services.presence.service import build
from tests.support.fakes import FakeGateway, FakeSupervisor, Processes, eventually

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


async def test_presence_shows_counts_and_health_and_follows_both(tmp_path: Path) -> None:
    gateway, supervisor = FakeGateway(), FakeSupervisor(("gateway", "llm"))
    supervisor.set("llm", state="STARTING")
    clock = Clock()
    settings = {
        "interval_s": 60,
        "health_poll_s": 0.05,
        "templates": ["{members:,} members", "up {uptime}"],
    }
    async with anyio.create_task_group() as tg:
        procs = Processes(tg, tmp_path)
        await procs.start(gateway.service)
        await procs.start(supervisor.service)
        service, presence = build(clock)
        await procs.start(service, settings)
        await eventually(lambda: gateway.presences, what="the first presence")
        assert gateway.presences == [SetPresence("idle", "10 members", "custom")]
        await gateway.publish_counts(members=1234)
        await eventually(lambda: presence.values.get("members") == 1234)
        supervisor.set("llm", state="RUNNING")  # start-up is over
        clock.t += 14
        await anyio.sleep(0.3)
        assert len(gateway.presences) == 1  # healthy now, but 14 s is too soon to say so
        clock.t += 1
        await eventually(lambda: len(gateway.presences) == 2, what="the health change")
        assert gateway.presences[1] == SetPresence("online", "up 1h 1m", "custom")
        supervisor.set("gateway", state="FATAL")
        clock.t += 15
        await eventually(lambda: len(gateway.presences) == 3, what="dnd")
        assert gateway.presences[2] == SetPresence("dnd", "1,234 members", "custom")
        clock.t += 60  # a full interval since the last update: the next template
        await eventually(lambda: len(gateway.presences) == 4, what="the rotation")
        assert gateway.presences[3] == SetPresence("dnd", "up 1h 1m", "custom")
        await anyio.sleep(0.3)
        assert len(gateway.presences) == 4
        for svc in (service, supervisor.service, gateway.service):
            await procs.stop(svc)
