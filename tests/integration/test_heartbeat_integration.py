"""The heartbeat service in-process over real ZeroMQ, with fake supervisor, gateway and
persistence services (from test_stats_integration)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from protocol.discord import ConnectionState
from services.heartbeat.service import build
from tests.support.fakes import (
    FakeGateway,
    FakePersistence,
    FakeSupervisor,
    Processes,
    ask,
    command,
    eventually,
)

pytestmark = pytest.mark.anyio

SERVICES = ("gateway", "persistence", "stats", "heartbeat")
SETTINGS = {
    "admin_channel": "admin",
    "interval_s": 0.3,
    "check_s": 0.1,
    "alert_group_s": 0.4,
    "alert_role_id": "4242",
    "owner_ids": ["77"],
    "state_wait_s": 1,
}


def embeds_posted(gateway: FakeGateway) -> list[str]:
    return [mid for mid, m in gateway.messages.items() if m.embeds]


def alerts(gateway: FakeGateway) -> list[str]:
    return [m.content for m in gateway.sent if m.content]


async def test_one_status_embed_is_edited_in_place_reposted_if_deleted_and_kept_across_restarts(
    tmp_path: Path,
) -> None:
    gateway, store, supervisor = FakeGateway(), FakePersistence(), FakeSupervisor(SERVICES)
    async with anyio.create_task_group() as tg:
        procs = Processes(tg, tmp_path)
        for fake in (store, gateway, supervisor):
            await procs.start(fake.service)
        heartbeat = await procs.start(build()[0], SETTINGS)
        await gateway.service.publish(ConnectionState("connected", 42.0, 0.0))
        await eventually(lambda: len(gateway.edits) >= 2, what="edits")
        (first,) = embeds_posted(gateway)
        embed = gateway.edits[-1].embeds[0]
        assert gateway.messages[first].channel_id == "202"
        assert embed["title"] == "Healthy"
        fields = {f["name"]: f["value"] for f in embed["fields"]}
        assert fields["Discord"] == "connected · 42 ms" and fields["Database"] == "2.0MB"
        assert gateway.edits[-1].allowed_mentions == {"parse": []}
        del gateway.messages[first]  # an admin deleted it
        await eventually(lambda: len(embeds_posted(gateway)) == 1 and first not in gateway.messages)
        (second,) = embeds_posted(gateway)
        await procs.stop(heartbeat)
        edits = len(gateway.edits)
        heartbeat = await procs.start(build()[0], SETTINGS)
        await eventually(lambda: len(gateway.edits) > edits + 1)
        assert embeds_posted(gateway) == [second]  # edited again, not posted again
        assert gateway.edits[-1].message_id == second
        for svc in (heartbeat, supervisor.service, gateway.service, store.service):
            await procs.stop(svc)


async def test_a_burst_of_failures_is_one_alert_pinging_only_the_role_then_one_recovery(
    tmp_path: Path,
) -> None:
    gateway, store, supervisor = FakeGateway(), FakePersistence(), FakeSupervisor(SERVICES)
    async with anyio.create_task_group() as tg:
        procs = Processes(tg, tmp_path)
        for fake in (store, gateway, supervisor):
            await procs.start(fake.service)
        heartbeat = await procs.start(build()[0], SETTINGS)
        await eventually(lambda: embeds_posted(gateway), what="the status embed")
        supervisor.set("gateway", state="BACKOFF", restarts=1, last_exit="exit 1")
        await anyio.sleep(0.15)
        supervisor.set("stats", channels=[{"peer": "gateway", "breaker": "open"}])
        supervisor.set("persistence", state="FATAL", last_exit="exit 2; more than 5 restarts")
        await eventually(lambda: alerts(gateway), what="an alert")
        await anyio.sleep(0.5)
        (alert,) = [m for m in gateway.sent if m.content]
        assert alert.content.startswith("<@&4242> **Alert**")
        for text in ("gateway** crashed (exit 1)", "persistence** is FATAL", "stats->gateway"):
            assert text in alert.content
        assert alert.allowed_mentions == {"parse": [], "roles": ["4242"]}
        assert "@everyone" not in alert.content and alert.channel_id == "202"
        for name in ("gateway", "persistence"):
            supervisor.set(name, state="RUNNING")
        supervisor.set("stats", channels=[{"peer": "gateway", "breaker": "closed"}])
        await eventually(lambda: len(alerts(gateway)) == 2, what="the recovery")
        recovery = alerts(gateway)[1]
        assert recovery.startswith("**Recovered**") and "<@&" not in recovery
        # A restarted heartbeat does not alert again about what it already reported.
        await procs.stop(heartbeat)
        supervisor.set("stats", state="BACKOFF", restarts=1, last_exit="killed (memory)")
        heartbeat = await procs.start(build()[0], SETTINGS)
        await eventually(lambda: len(alerts(gateway)) == 3, what="the crash while it was down")
        await anyio.sleep(0.5)
        assert len(alerts(gateway)) == 3
        assert "stats** crashed (killed (memory))" in alerts(gateway)[2]
        for svc in (heartbeat, supervisor.service, gateway.service, store.service):
            await procs.stop(svc)


async def test_status_for_anyone_and_restart_only_for_admins(tmp_path: Path) -> None:
    gateway, store, supervisor = FakeGateway(), FakePersistence(), FakeSupervisor(SERVICES)
    async with anyio.create_task_group() as tg:
        procs = Processes(tg, tmp_path)
        for fake in (store, gateway, supervisor):
            await procs.start(fake.service)
        heartbeat = await procs.start(build()[0], SETTINGS)
        anyone = await ask(tmp_path, "heartbeat", command("status"))
        assert anyone["ephemeral"] and anyone["content"].startswith("Healthy: 4/4 services")
        assert anyone["embeds"] == []
        admin = await ask(tmp_path, "heartbeat", command("status", admin=True))
        assert "heartbeat" in admin["embeds"][0]["description"]
        refused = await ask(tmp_path, "heartbeat", command("restart", service="stats"))
        assert refused["content"] == "Only admins can restart services." and refused["ephemeral"]
        assert supervisor.restarts == []
        owner = await ask(tmp_path, "heartbeat", command("restart", user="77", service="stats"))
        assert owner["content"] == "Restarting: stats is restarting"
        assert supervisor.restarts == ["stats"]
        for svc in (heartbeat, supervisor.service, gateway.service, store.service):
            await procs.stop(svc)
