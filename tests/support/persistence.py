"""Builders of the events persistence stores, and the persistence service run in-process
with a gateway-like client: shared by the persistence tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from protocol.bus import Bus, Topology
from protocol.channel import ChannelPolicy
from protocol.discord import (
    MemberBanned,
    MemberJoined,
    MemberLeft,
    MemberUnbanned,
    MessageCreated,
    MessageDeleted,
    MessageEdited,
)
from protocol.messages import Message, R, Request, decode
from protocol.runtime import RuntimeContext, Service
from protocol.store import LlmExchange
from services.persistence.service import STORED_EVENTS, build

G, C = "100", "200"  # guild, channel

# --- event builders shared by the persistence tests -------------------------------------


def created(
    mid: int | str, content: str | None = None, at: float | None = None, **kw: Any
) -> MessageCreated:
    fields: dict[str, Any] = {
        "id": str(mid),
        "channel_id": C,
        "guild_id": G,
        "author_id": "7",
        "author_name": "alice",
        "author_bot": False,
        "content": f"message {mid}" if content is None else content,
        "created_at": float(mid) if at is None else at,
        "channel_name": "general",
    }
    fields.update(kw)
    return MessageCreated(**fields)


def edited(mid: int | str, content: str, at: float) -> MessageEdited:
    return MessageEdited(str(mid), C, G, content, at)


def deleted(mid: int | str, at: float) -> MessageDeleted:
    return MessageDeleted(str(mid), C, G, at)


def exchange(xid: str, at: float, latency: float = 100.0, **kw: Any) -> LlmExchange:
    fields: dict[str, Any] = {
        "id": xid,
        "guild_id": G,
        "channel_id": C,
        "user_id": "7",
        "model": "m",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "latency_ms": latency,
        "outcome": "ok",
        "at": at,
    }
    fields.update(kw)
    return LlmExchange(**fields)


def workload() -> list[Message]:
    """A day in a guild, out of order in places: the same sequence must always give the
    same rows, however it is batched."""
    events: list[Message] = [edited(5, "five, edited before its create", 50.5)]
    events += [created(i, reply_to_id=str(i - 1) if i % 3 == 0 else None) for i in range(1, 30)]
    events += [edited(i, f"edit of {i}", 100.0 + i) for i in range(1, 8)]
    events += [edited(2, "second edit of 2", 200.0), edited(2, "late, older edit of 2", 150.0)]
    events += [deleted(i, 300.0 + i) for i in (3, 4, 40)]  # 40: deleted, never created
    events += [created(40)]
    events += [MemberJoined(G, "8", "bob", False, 10.0), MemberLeft(G, "8", "bob", False, 20.0)]
    events += [MemberBanned(G, "8", "bob", 21.0), MemberUnbanned(G, "8", "bob", 30.0)]
    events += [MemberJoined(G, "9", "carol", True, 11.0), MemberJoined(G, "8", "bob2", False, 31.0)]
    events += [exchange(f"x{i}", 1000.0 + i, latency=10.0 * i) for i in range(10)]
    events += [created(50, "a DM", guild_id=None, channel_id="300", is_dm=True, channel_name=None)]
    return events


ODD_TEXTS = [
    "x" * 4000,
    "emoji 😀 👍🏽 👩‍👩‍👧‍👦 🏳️‍🌈",
    "RTL שלום עולם مرحبا \u202eoverride\u202c",
    "combining e\u0301\u0300\u0302\u0303 Z\u0351\u0352\u0353",
    "nul\x00byte",
    "",
]


# Retransmit soon and never open the breaker: the tests refuse events on purpose.
FAST_RETRY = ChannelPolicy(ack_timeout_s=0.1, retransmit_max_s=0.3, failure_threshold=10_000)


def topology(tmp: Path) -> Topology:
    return Topology(
        {"persistence": f"ipc://{tmp}/persistence.sock"},
        {t.TYPE: ["persistence"] for t in STORED_EVENTS},
    )


@asynccontextmanager
async def running_persistence(
    data_dir: Path, settings: dict[str, Any] | None = None
) -> AsyncIterator[tuple[Service, Bus]]:
    """The service, and a gateway-like client that publishes durable events to it."""
    await anyio.Path(data_dir).mkdir(parents=True, exist_ok=True)
    service, _ = build()
    ctx = RuntimeContext("persistence", topology(data_dir), data_dir, settings or {})
    client = Bus(
        "gateway",
        topology(data_dir),
        bind=False,
        outbox_path=data_dir / "gateway-outbox.sqlite3",
        policy=FAST_RETRY,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(service.run, ctx)
        tg.start_soon(client.run)
        try:
            yield service, client
        finally:
            service.stop()
            await anyio.sleep(0.05)  # let teardown close the database and the journal
            tg.cancel_scope.cancel()


async def publish_and_wait(client: Bus, events: list[Message], timeout: float = 10) -> None:
    """Publish durably and wait until the service acknowledged all: stored by then."""
    for i in range(0, len(events), 500):
        await client.publish_many(events[i : i + 500])
    with anyio.fail_after(timeout):
        while client.channel("persistence").snapshot()["unacked"]:
            await anyio.sleep(0.02)


async def ask(client: Bus, msg: Request[R]) -> R:
    """The service's reply, as its declared type (a reply of another shape fails here)."""
    reply = await client.request("persistence", msg, timeout=5)
    return decode(msg.REPLY.TYPE, reply.body)  # type: ignore[return-value]
