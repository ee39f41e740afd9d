"""The heartbeat service in-process over real ZeroMQ, with the fake supervisor (pushing its
status), gateway and persistence services from tests/support/fakes.py."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from protocol.clock import Clock
from protocol.commands import Tier
from protocol.discord import ConnectionState
from protocol.messages import ApplySettings
from services.heartbeat import build
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
    "interval_s": 1,
    "check_s": 0.1,
    "alert_group_s": 0.4,
    "alert_role_id": "4242",
    "state_wait_s": 1,
}


def embeds_posted(gateway: FakeGateway) -> list[str]:
    return [mid for mid, m in gateway.messages.items() if m.embeds]


def alerts(gateway: FakeGateway) -> list[str]:
    return [m.content for m in gateway.sent if m.content]


async def next_embed(clock: Clock, gateway: FakeGateway) -> None:
    """Move the heartbeat's clock one embed interval on: the embed is edited or posted."""
    before = len(gateway.edits) + len(gateway.sent)
    clock.advance(1)
    await eventually(lambda: len(gateway.edits) + len(gateway.sent) > before, what="an embed")


async def test_one_status_embed_is_edited_in_place_reposted_if_deleted_and_kept_across_restarts(
    tmp_path: Path,
) -> None:
    gateway, store, supervisor = FakeGateway(), FakePersistence(), FakeSupervisor(SERVICES)
    clock = Clock()
    async with anyio.create_task_group() as tg:
        procs = Processes(tg, tmp_path)
        for fake in (store, gateway, supervisor):
            await procs.start(fake.service)
        heartbeat = await procs.start(build(clock)[0], SETTINGS)
        await gateway.service.publish(ConnectionState("connected", 42.0, 0.0))
        await eventually(lambda: embeds_posted(gateway), what="the status embed")
        await next_embed(clock, gateway)
        await next_embed(clock, gateway)
        (first,) = embeds_posted(gateway)
        assert len(gateway.edits) == 2
        embed = gateway.edits[-1].embeds[0]
        assert gateway.messages[first].channel_id == "202"
        assert embed["title"] == "Healthy"
        fields = {f["name"]: f["value"] for f in embed["fields"]}
        assert fields["Discord"] == "connected · 42 ms" and fields["Database"] == "2.0MB"
        assert gateway.edits[-1].allowed_mentions == {"parse": []}
        del gateway.messages[first]  # an admin deleted it
        await next_embed(clock, gateway)
        (second,) = embeds_posted(gateway)
        assert second != first
        await procs.stop(heartbeat)
        edits = len(gateway.edits)
        clock = Clock()
        heartbeat = await procs.start(build(clock)[0], SETTINGS)
        await eventually(lambda: len(gateway.edits) > edits, what="the first embed after")
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
        await supervisor.set("gateway", state="BACKOFF", restarts=1, last_exit="exit 1")
        await anyio.sleep(0.15)
        await supervisor.set("stats", channels=[{"peer": "gateway", "breaker": "open"}])
        await supervisor.set("persistence", state="FATAL", last_exit="exit 2; more than 5 restarts")
        await eventually(lambda: alerts(gateway), what="an alert")
        await anyio.sleep(0.5)
        (alert,) = [m for m in gateway.sent if m.content]
        assert alert.content.startswith("<@&4242> **Alert**")
        for text in ("gateway** crashed (exit 1)", "persistence** is FATAL", "stats->gateway"):
            assert text in alert.content
        assert alert.allowed_mentions == {"parse": [], "roles": ["4242"]}
        assert "@everyone" not in alert.content and alert.channel_id == "202"
        for name in ("gateway", "persistence"):
            await supervisor.set(name, state="RUNNING")
        await supervisor.set("stats", channels=[{"peer": "gateway", "breaker": "closed"}])
        await eventually(lambda: len(alerts(gateway)) == 2, what="the recovery")
        recovery = alerts(gateway)[1]
        assert recovery.startswith("**Recovered**") and "<@&" not in recovery
        # A restarted heartbeat does not alert again about what it already reported,
        # and learns from the supervisor's retained status what happened meanwhile.
        await procs.stop(heartbeat)
        await supervisor.set("stats", state="BACKOFF", restarts=1, last_exit="killed (memory)")
        heartbeat = await procs.start(build()[0], SETTINGS)
        await eventually(lambda: len(alerts(gateway)) == 3, what="the crash while it was down")
        await anyio.sleep(0.5)
        assert len(alerts(gateway)) == 3
        assert "stats** crashed (killed (memory))" in alerts(gateway)[2]
        for svc in (heartbeat, supervisor.service, gateway.service, store.service):
            await procs.stop(svc)


async def test_status_is_short_for_anyone_and_the_full_table_for_admins_who_can_restart(
    tmp_path: Path,
) -> None:
    gateway, store, supervisor = FakeGateway(), FakePersistence(), FakeSupervisor(SERVICES)
    async with anyio.create_task_group() as tg:
        procs = Processes(tg, tmp_path)
        for fake in (store, gateway, supervisor):
            await procs.start(fake.service)
        service, heartbeat = build()
        await procs.start(service, SETTINGS)
        await eventually(lambda: heartbeat.status is not None, what="the pushed status")
        anyone = await ask(tmp_path, "heartbeat", command("status", tier=Tier.PUBLIC))
        assert anyone.ephemeral and anyone.content.startswith("Healthy: 4/4 services")
        assert anyone.embeds == []
        admin = await ask(tmp_path, "heartbeat", command("status", tier=Tier.ADMIN))
        assert "heartbeat" in admin.embeds[0]["description"] and admin.ephemeral
        # The gateway lets only admins run /restart (its declared tier); heartbeat asks.
        restart = command("restart", tier=Tier.ADMIN, service="stats")
        answer = await ask(tmp_path, "heartbeat", restart)
        assert answer.content == "Restarting: stats is restarting" and answer.ephemeral
        assert supervisor.restarts == ["stats"]
        for svc in (service, supervisor.service, gateway.service, store.service):
            await procs.stop(svc)


async def test_a_reload_moves_the_embed_and_alerts_to_the_new_admin_channel(
    tmp_path: Path,
) -> None:
    gateway, store, supervisor = FakeGateway(), FakePersistence(), FakeSupervisor(SERVICES)
    clock = Clock()
    async with anyio.create_task_group() as tg:
        procs = Processes(tg, tmp_path)
        for fake in (store, gateway, supervisor):
            await procs.start(fake.service)
        heartbeat = await procs.start(build(clock)[0], SETTINGS)
        await eventually(lambda: embeds_posted(gateway), what="the status embed")
        outcome = await ask(
            tmp_path, "heartbeat", ApplySettings({**SETTINGS, "admin_channel": "general"})
        )
        assert outcome.ok and outcome.detail == "applied admin_channel"
        await next_embed(clock, gateway)
        assert [gateway.messages[m].channel_id for m in embeds_posted(gateway)] == ["202", "201"]
        await supervisor.set("stats", state="FATAL", last_exit="exit 1")
        await eventually(lambda: alerts(gateway), what="an alert")
        assert gateway.sent[-1].channel_id == "201"
        refused = await ask(tmp_path, "heartbeat", ApplySettings({"interval_s": -5}))
        assert not refused.ok and "services.heartbeat.settings.interval_s" in refused.detail
        for svc in (heartbeat, supervisor.service, gateway.service, store.service):
            await procs.stop(svc)
