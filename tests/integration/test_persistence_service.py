"""The persistence service in-process over real ZeroMQ: durable events in, rows out,
queries answered, and a locked database that makes the sender redeliver until every
event is stored (and journaled) exactly once."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import anyio
import pytest

from protocol.envelope import Kind
from protocol.messages import Message
from protocol.store import (
    KvGet,
    KvSet,
    KvStored,
    KvValue,
    RecentMessages,
    ReplyChain,
    StoreCounts,
    UsageRequest,
)
from services.persistence.journal import journal_files, read_journal
from tests.support.harness import Running
from tests.support.persistence import (
    ODD_TEXTS,
    C,
    ask,
    created,
    deleted,
    edited,
    exchange,
    publish_and_wait,
    running_persistence,
)

pytestmark = pytest.mark.anyio


def messages_table(data_dir: Path) -> list[tuple]:
    """The spec's `messages` columns, read as an outside check would: plain sqlite3."""
    with sqlite3.connect(data_dir / "bot.sqlite3") as db:
        return db.execute(
            "SELECT id, channel_id, author_id, content FROM messages ORDER BY created_at"
        ).fetchall()


async def test_events_over_the_bus_are_stored_and_queries_answered(tmp_path: Path) -> None:
    events: list[Message] = [edited(3, "edited before created", 9.0)]
    events += [created(i, reply_to_id=str(i - 1) if i > 1 else None) for i in range(1, 6)]
    events += [created(10 + i, text) for i, text in enumerate(ODD_TEXTS)]
    events += [deleted(5, 10.0), exchange("x1", 100.0, latency=40.0)]
    async with running_persistence(tmp_path) as (_, client):
        await publish_and_wait(client, events)
        recent = (await ask(client, RecentMessages(C, limit=50))).messages
        assert [m["id"] for m in recent] == ["1", "2", "3", "4"] + [
            str(10 + i) for i in range(len(ODD_TEXTS))
        ]
        assert recent[2]["content"] == "edited before created"
        assert [m["content"] for m in recent[4:]] == ODD_TEXTS  # msgpack and back, intact
        chain = (await ask(client, ReplyChain("4", limit=3))).messages
        assert [m["id"] for m in chain] == ["2", "3", "4"]
        claim = KvSet("llm", "claim:1", {"by": "a"}, only_if_absent=True)
        assert await ask(client, claim) == KvStored(True)
        again = KvSet("llm", "claim:1", {"by": "b"}, only_if_absent=True)
        assert await ask(client, again) == KvStored(False)
        assert await ask(client, KvGet("llm", "claim:1")) == KvValue({"by": "a"})
        usage = await ask(client, UsageRequest(since=0))
        assert (usage.exchanges, usage.latency_p50_ms, usage.by_outcome) == (1, 40.0, {"ok": 1})
        counts = await ask(client, StoreCounts())
        assert (counts.messages, counts.deleted, counts.edits) == (11, 1, 1)
    rows = messages_table(tmp_path)
    assert rows[0] == ("1", C, "7", "message 1")
    assert ("14", C, "7", "nul\x00byte") in rows and len(rows) == 11


async def test_redelivered_events_change_nothing(tmp_path: Path) -> None:
    events = [created(i) for i in range(1, 200)] + [edited(7, "seven", 500.0)]
    async with running_persistence(tmp_path) as (_, client):
        await publish_and_wait(client, events)
        before = messages_table(tmp_path)
        await publish_and_wait(client, events)  # the gateway replays after a RESUME
        assert messages_table(tmp_path) == before
        assert (await ask(client, StoreCounts())).edits == 1
    assert len(list(read_journal(tmp_path / "journal"))) == 2 * len(events)


async def test_a_locked_database_refuses_events_until_it_frees_then_stores_each_once(
    tmp_path: Path,
) -> None:
    settings = {"sqlite_busy_timeout_ms": 20}
    events = [created(i) for i in range(1, 1201)]
    async with running_persistence(tmp_path, settings) as (_, client):
        await publish_and_wait(client, [created(0)])  # the database exists, in WAL mode
        blocker = sqlite3.connect(tmp_path / "bot.sqlite3", isolation_level=None)
        try:
            blocker.execute("BEGIN EXCLUSIVE")
            for i in range(0, len(events), 500):
                await client.publish_many(events[i : i + 500])
            with anyio.fail_after(5):  # refused (TransientError): redelivered again and again
                while client.channel("persistence").snapshot()["retried"] < 2 * len(events):
                    await anyio.sleep(0.05)
            assert client.channel("persistence").snapshot()["unacked"] == len(events)
            assert len(messages_table(tmp_path)) == 1
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await publish_and_wait(client, [])
        counts = await ask(client, StoreCounts())
    assert counts.messages == len(events) + 1
    rows = messages_table(tmp_path)
    assert [r[0] for r in rows] == [str(i) for i in range(len(events) + 1)]  # once each
    journaled = [r.body["id"] for r in read_journal(tmp_path / "journal")]
    assert journaled == [r[0] for r in rows]  # redelivered again and again, journaled once


async def test_a_body_the_runtime_cannot_decode_is_dropped_and_the_rest_stored(
    tmp_path: Path,
) -> None:
    async with running_persistence(tmp_path) as (_, client):
        good = client.envelope(created(1), kind=Kind.EVENT, dst="persistence")
        bad = client.envelope(created(2), kind=Kind.EVENT, dst="persistence")
        bad.body = {**bad.body, "created_at": "yesterday"}
        await client.channel("persistence").send_durable([bad, good])
        await publish_and_wait(client, [])
        assert [r[0] for r in messages_table(tmp_path)] == ["1"]
        assert (await ask(client, KvGet("x", "y"))) == KvValue(None)  # still serving


async def test_requests_that_arrive_while_the_database_opens_wait_for_it(tmp_path: Path) -> None:
    async with running_persistence(tmp_path) as (_, client):
        # No sleep: the service may still be in setup when this arrives.
        assert (await ask(client, StoreCounts())).messages == 0
        await publish_and_wait(client, [created(1)])
        assert (await ask(client, StoreCounts())).messages == 1


SUPERVISED = """
[supervisor]
heartbeat_interval_s = 0.2

[defaults]
backoff_initial_s = 0.05
backoff_max_s = 0.2

[services.persistence]
module = "services.persistence"
critical = true
subscribes = ["discord.message.created", "discord.message.edited", "discord.message.deleted",
              "discord.member.joined", "discord.member.left", "discord.member.banned",
              "discord.member.unbanned", "llm.exchange"]
[services.persistence.settings]
journal_max_mb = 64
"""


def test_under_the_supervisor_what_it_stored_survives_a_kill(tmp_path: Path) -> None:
    bot = Running(tmp_path, SUPERVISED)
    try:
        bot.wait_all_running()
        assert bot.call("persistence", KvSet("heartbeat", "last", 1.5)) == {"stored": True}
        pid = bot.service("persistence")["pid"]
        os.kill(pid, signal.SIGKILL)
        bot.wait_state("persistence", "RUNNING", pid_not=pid)
        assert bot.call("persistence", KvGet("heartbeat", "last")) == {"value": 1.5}
        assert (tmp_path / "data" / "bot.sqlite3").exists()
        assert journal_files(tmp_path / "data" / "journal")
    finally:
        bot.cleanup()
