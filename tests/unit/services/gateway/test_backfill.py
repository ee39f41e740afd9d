"""The gateway's backfill after a gap, in-process with plain fakes for Discord's REST
(paged newest first, as Discord pages) and for persistence's answers: what it feeds,
in what order, where it starts and stops, its limits, members and bans, and that a
successor finishes a backfill its predecessor left half done."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from protocol.clock import fixed
from protocol.discord import (
    GapBackfilled,
    MemberBanned,
    MemberJoined,
    MemberLeft,
    MemberUnbanned,
    MessageCreated,
    MessageEdited,
)
from protocol.messages import Message, Request
from protocol.runtime import Refused
from protocol.store import MemberEventList, MemberEvents, NewestMessages, NewestStored
from services.gateway.actions import Actions
from services.gateway.backfill import BASELINE_KEY, PROGRESS_KEY, Backfill
from services.gateway.guild_state import Guild
from services.gateway.settings import Settings
from services.gateway.state import Gateway
from tests.support.fakes import eventually

pytestmark = pytest.mark.anyio

T0 = 1_714_550_400.0  # the READY that ends the gap
START = T0 - 300  # the last event stored before it
G, BOT, GENERAL, QUIET, VOICE, SECRET, DM = "100", "900", "200", "201", "202", "203", "800"


def iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat()


class FakeDiscord:
    """Channel histories and bans as Discord's REST serves them: every page newest first."""

    def __init__(self) -> None:
        self.history: dict[str, list[dict[str, Any]]] = {}
        self.bans: dict[str, str] = {}
        self.names: dict[str, str] = {}
        self.forbidden: set[str] = set()
        self.reads: list[tuple[str, str | None, str | None]] = []  # (channel, before, after)
        self.hold_after_reads: int | None = None  # block once this many reads were made
        self.released = anyio.Event()

    def post(self, channel: str, mid: int, at: float, **extra: Any) -> None:
        self.history.setdefault(channel, []).append(
            {
                "id": str(mid),
                "channel_id": channel,
                "author": {"id": "11", "username": "alice"},
                "content": f"message {mid}",
                "timestamp": iso(at),
                "edited_timestamp": None,
                "mentions": [],
                **extra,
            }
        )

    async def logs_from(
        self,
        channel_id: str,
        limit: int,
        before: str | None = None,
        after: str | None = None,
        around: str | None = None,
    ) -> list[dict[str, Any]]:
        if self.hold_after_reads is not None and len(self.reads) >= self.hold_after_reads:
            await self.released.wait()
        self.reads.append((channel_id, before, after))
        if channel_id in self.forbidden:
            raise Refused("forbidden", "403 (code 50001) Missing Access")
        msgs = sorted(self.history.get(channel_id, []), key=lambda m: int(m["id"]))
        if after is not None:
            msgs = [m for m in msgs if int(m["id"]) > int(after)][:limit]
        elif before is not None:
            msgs = [m for m in msgs if int(m["id"]) < int(before)][-limit:]
        else:
            msgs = msgs[-limit:]
        return list(reversed(msgs))

    async def get_bans(
        self, guild_id: str, limit: int = 1000, before: str | None = None, after: str | None = None
    ) -> list[dict[str, Any]]:
        ids = sorted((u for u in self.bans if after is None or int(u) > int(after)), key=int)
        return [{"user": {"id": u, "username": self.bans[u]}, "reason": None} for u in ids[:limit]]

    async def get_user(self, user_id: str) -> dict[str, Any]:
        return {"id": user_id, "username": self.names.get(user_id, f"user{user_id}")}


@dataclass
class FakeStore:
    newest: dict[str, str] = field(default_factory=dict)
    dms: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    asked: list[Request[Any]] = field(default_factory=list)

    def answer(self, request: Request[Any]) -> Message:
        self.asked.append(request)
        if isinstance(request, NewestMessages):
            newest = {
                c: mid
                for c, mid in self.newest.items()
                if c not in request.below or int(mid) < int(request.below[c])
            }
            return NewestStored(newest, [c for c in self.dms if c in newest])
        assert isinstance(request, MemberEvents)
        return MemberEventList(self.events)


class FakeService:
    """What the backfill uses of its service: settings, clock, calls, the outbox."""

    def __init__(self, store: FakeStore, settings: Settings, meta: dict[str, str]) -> None:
        self.settings = settings
        self.clock = fixed(T0)
        self.store = store
        self.meta = meta  # the outbox's meta table: shared with a successor
        self.published: list[Message] = []
        self.bus = SimpleNamespace(outbox=self)

    async def get_meta(self, key: str) -> str | None:
        return self.meta.get(key)

    async def publish_many(self, msgs: list[Message], meta: dict[str, str] | None = None) -> None:
        self.published += msgs
        self.meta.update(meta or {})

    async def call(self, peer: str, request: Request[Any], timeout: float = 5.0) -> Message:
        assert peer == "persistence"
        return self.store.answer(request)

    async def patiently(self, call: Any, what: str, **_: Any) -> Any:
        return await call()

    def of(self, kind: type[Message]) -> list[Any]:
        return [m for m in self.published if isinstance(m, kind)]


def guild(members: dict[str, bool] | None = None, banned: set[str] | None = None) -> Guild:
    members = members if members is not None else {"11": False, BOT: True}
    return Guild(
        G,
        "Test",
        dict(members),
        channels={
            GENERAL: {"id": GENERAL, "name": "general", "type": "text"},
            QUIET: {"id": QUIET, "name": "quiet", "type": "text"},
            VOICE: {"id": VOICE, "name": "Members: 3", "type": "voice"},
            "204": {"id": "204", "name": "logs", "type": "category"},
        },
        member_count=len(members),
        banned=banned,
    )


def backfill(
    discord: FakeDiscord,
    store: FakeStore,
    meta: dict[str, str] | None = None,
    before_gap: Guild | None = None,
    **settings: Any,
) -> tuple[Backfill, FakeService]:
    service = FakeService(
        store, Settings(backfill_page_pause_s=0, **settings), {} if meta is None else meta
    )
    gw = Gateway(fixed(T0))
    gw.client = SimpleNamespace(http=discord)  # type: ignore[assignment]
    gw.logged_in, gw.bot_id = True, BOT
    gw.guilds.guilds[G] = before_gap or guild()
    return Backfill(service, gw, Actions(gw)), service  # type: ignore[arg-type]


def dispatch(bf: Backfill, event: str, d: dict[str, Any]) -> None:
    """As the gateway's on_dispatch does: the backfill looks, then the guild state."""
    bf.observe(event, d)
    bf.gw.guilds.apply(event, d)


def guild_create(members: dict[str, tuple[bool, float]]) -> dict[str, Any]:
    """GUILD_CREATE after the READY: these members, with when they joined."""
    return {
        "id": G,
        "name": "Test",
        "member_count": len(members),
        "members": [
            {"user": {"id": uid, "username": f"user{uid}", "bot": bot}, "joined_at": iso(at)}
            for uid, (bot, at) in members.items()
        ],
        "channels": [
            {"id": GENERAL, "name": "general", "type": 0},
            {"id": QUIET, "name": "quiet", "type": 0},
            {"id": VOICE, "name": "Members: 3", "type": 2},
            {"id": "204", "name": "logs", "type": 4},
        ],
        "threads": [{"id": "205", "name": "a thread", "type": 11, "parent_id": GENERAL}],
    }


async def finished(bf: Backfill, service: FakeService) -> GapBackfilled:
    """Run the backfill task until it reports the gap done."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(bf.run)
        await eventually(lambda: [r for r in service.of(GapBackfilled) if r.done], 5, "the end")
        tg.cancel_scope.cancel()
    (report,) = [r for r in service.of(GapBackfilled) if r.done]
    return report


def ids(events: list[Any]) -> list[int]:
    return [int(e.id) for e in events]


async def test_history_after_the_newest_stored_message_is_fed_oldest_first_until_live() -> None:
    discord, store = FakeDiscord(), FakeStore(newest={GENERAL: "1005"})
    for mid in range(1001, 1301):
        edited = {"edited_timestamp": iso(START + 60)} if mid == 1150 else {}
        discord.post(GENERAL, mid, START + (mid - 1000) / 10, **edited)
    bf, service = backfill(discord, store)
    bf.gap_found(START, T0, "session-2", [])
    dispatch(bf, "MESSAGE_CREATE", {**discord.history[GENERAL][-11], "guild_id": G})  # 1290
    report = await finished(bf, service)

    created = service.of(MessageCreated)
    assert ids(created) == list(range(1006, 1290))  # oldest first, none twice, no live one
    assert all(m.backfilled and m.guild_id == G and m.channel_name == "general" for m in created)
    assert created[0].content == "message 1006" and created[0].author_name == "alice"
    (edit,) = service.of(MessageEdited)
    assert edit.id == "1150" and edit.edited_at == START + 60
    # Paged with `after`, each page sorted by id before the next `after`.
    general_reads = [r for r in discord.reads if r[0] == GENERAL]
    assert general_reads == [
        (GENERAL, None, "1005"),
        (GENERAL, None, "1105"),
        (GENERAL, None, "1205"),
    ]
    assert (report.messages, report.truncated, report.gap_s) == (284, False, 300.0)
    assert report.line() == "gap of 300 s: 284 messages recovered"
    assert service.meta[PROGRESS_KEY] == "" and service.meta[BASELINE_KEY] == ""  # done


async def test_the_newest_stored_message_is_asked_below_the_first_live_one() -> None:
    # 2000 came live after the READY and is stored already: it must not be the place the
    # history is read from, or 1001 and 1002 (in the gap) would be skipped.
    discord, store = FakeDiscord(), FakeStore(newest={GENERAL: "2000"})
    for mid in (1001, 1002, 2000):
        discord.post(GENERAL, mid, START + 1)
    bf, service = backfill(discord, store)
    bf.gap_found(START, T0, "session-2", [])
    dispatch(bf, "MESSAGE_CREATE", {**discord.history[GENERAL][-1], "guild_id": G})
    report = await finished(bf, service)
    (asked,) = [r for r in store.asked if isinstance(r, NewestMessages)]
    assert asked.below == {GENERAL: "2000"}
    assert ids(service.of(MessageCreated)) == [1001, 1002]
    assert report.messages == 2


async def test_unstored_channels_go_back_to_the_gap_and_unreadable_ones_are_skipped() -> None:
    discord = FakeDiscord()
    store = FakeStore(newest={DM: "50"}, dms=[DM])
    for mid in range(1, 251):  # quiet: 250 messages, the last 120 in the gap
        discord.post(QUIET, mid, START - 130 - 60 + mid)
    discord.post(DM, 50, START - 10)
    discord.post(DM, 51, START + 10)
    discord.post("205", 7, START + 5)  # in the thread GUILD_CREATE lists
    discord.forbidden.add(GENERAL)
    bf, service = backfill(discord, store)
    bf.gap_found(START, T0, "session-2", [G])
    dispatch(bf, "GUILD_CREATE", guild_create({"11": (False, START - 9999), BOT: (True, 0)}))
    report = await finished(bf, service)

    created = service.of(MessageCreated)
    quiet = [m for m in created if m.channel_id == QUIET]
    # From the gap's start, less a minute for clocks that differ: 130 on.
    assert ids(quiet) == list(range(130, 251))
    assert [m.id for m in created if m.channel_id == DM] == ["51"]
    assert [m.guild_id for m in created if m.channel_id == DM] == [None]
    assert [(m.id, m.guild_id) for m in created if m.channel_id == "205"] == [("7", G)]
    assert (VOICE, None, None) in discord.reads  # voice channels have a text chat
    assert not [r for r in discord.reads if r[0] == "204"]  # a category has none
    assert report.truncated is False  # a channel the bot may not read is not "left out"
    quiet_reads = [r for r in discord.reads if r[0] == QUIET]
    assert quiet_reads == [(QUIET, None, None), (QUIET, "151", None)]


async def test_limits_per_channel_and_in_all_stop_the_backfill_and_say_so() -> None:
    discord, store = FakeDiscord(), FakeStore(newest={GENERAL: "1000", QUIET: "5000"})
    for mid in range(1001, 1401):
        discord.post(GENERAL, mid, START + 1)
    for mid in range(5001, 5101):
        discord.post(QUIET, mid, START + 1)
    bf, service = backfill(discord, store, backfill_channel_limit=250, backfill_total_limit=300)
    bf.gap_found(START, T0, "session-2", [])
    report = await finished(bf, service)

    created = service.of(MessageCreated)
    assert ids([m for m in created if m.channel_id == GENERAL]) == list(range(1001, 1251))
    assert ids([m for m in created if m.channel_id == QUIET]) == list(range(5001, 5051))
    assert report.truncated and report.messages == 300
    assert report.line().endswith("(not all: a limit was reached or a channel failed)")


async def test_a_successor_finishes_a_backfill_its_predecessor_left_half_done() -> None:
    discord, store = FakeDiscord(), FakeStore(newest={GENERAL: "1000"})
    for mid in range(1001, 1351):
        discord.post(GENERAL, mid, START + 1)
    meta: dict[str, str] = {}
    first, service = backfill(discord, store, meta)
    first.gap_found(START, T0, "session-2", [])
    discord.hold_after_reads = 2  # the third page never comes: the gateway dies there
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run)
        await eventually(lambda: len(service.of(MessageCreated)) == 200, 5)
        tg.cancel_scope.cancel()
    assert meta[PROGRESS_KEY]  # the plan and the place, beside the events in the outbox

    discord.hold_after_reads, discord.reads = None, []
    successor, again = backfill(discord, store, meta)
    await successor.load()
    successor.resumed()  # its RESUME worked: no new gap, the old one goes on
    report = await finished(successor, again)
    assert next(r for r in discord.reads if r[0] == GENERAL) == (GENERAL, None, "1200")
    assert ids(again.of(MessageCreated)) == list(range(1201, 1351))
    assert report.messages == 350  # both processes' share, once each


async def test_joins_leaves_bans_and_unbans_of_the_gap_are_found_once() -> None:
    discord, store = FakeDiscord(), FakeStore()
    before = guild({"11": False, "12": False, "13": False, "16": False, BOT: True}, banned={"50"})
    discord.bans = {"12": "mallory", "60": "spammer"}  # 12 was a member; 60 never was
    discord.names["13"] = "carol"
    # 16's leave was stored just before the gap (the saved view had not caught up).
    store.events = [{"user_id": "16", "kind": "left", "username": "dave", "bot": False, "at": 1}]
    bf, service = backfill(discord, store, before_gap=before)
    bf.gap_found(START, T0, "session-2", [G])
    dispatch(
        bf,
        "GUILD_CREATE",
        guild_create(
            {
                "11": (False, START - 9999),
                "14": (False, START + 100),  # joined in the gap
                "15": (False, START - 9999),  # a member all along the saved view lacked
                BOT: (True, 0),
            }
        ),
    )
    live = {"guild_id": G, "user": {"id": "17", "username": "erin"}, "joined_at": iso(T0 + 1)}
    dispatch(bf, "GUILD_MEMBER_ADD", live)  # after the READY: live, stored as ever
    report = await finished(bf, service)

    assert [(e.user_id, e.username, e.at, e.backfilled) for e in service.of(MemberJoined)] == [
        ("14", "user14", START + 100, True)
    ]
    assert sorted((e.user_id, e.username) for e in service.of(MemberBanned)) == [
        ("12", "mallory"),
        ("60", "spammer"),
    ]
    assert sorted((e.user_id, e.username) for e in service.of(MemberLeft)) == [
        ("12", "mallory"),
        ("13", "carol"),
    ]
    assert [(e.user_id, e.backfilled) for e in service.of(MemberUnbanned)] == [("50", True)]
    assert (report.joined, report.left, report.banned, report.unbanned) == (1, 2, 2, 1)
    assert report.line() == (
        "gap of 300 s: 0 messages recovered, 1 join, 2 leaves, 2 bans, 1 unban"
    )
    assert bf.gw.guilds.get(G).banned == {"12", "60"}  # the view the next gap starts from


async def test_without_a_known_ban_list_only_members_who_vanished_banned_count_as_bans() -> None:
    discord, store = FakeDiscord(), FakeStore()
    discord.bans = {"12": "mallory", "60": "banned years ago"}
    bf, service = backfill(discord, store, before_gap=guild({"11": False, "12": False}))
    bf.gap_found(START, T0, "session-2", [G])
    dispatch(bf, "GUILD_CREATE", guild_create({"11": (False, 0)}))
    await finished(bf, service)
    assert [e.user_id for e in service.of(MemberBanned)] == ["12"]
    assert [e.user_id for e in service.of(MemberLeft)] == ["12"]
    assert service.of(MemberUnbanned) == []


async def test_a_message_sent_after_the_ready_is_left_to_its_live_event() -> None:
    discord, store = FakeDiscord(), FakeStore(newest={GENERAL: "1000"})
    for mid, at in ((1001, START + 1), (1002, START + 2), (1003, T0 + 1)):
        discord.post(GENERAL, mid, at)
    bf, service = backfill(discord, store)
    bf.gap_found(START, T0, "session-2", [])
    async with anyio.create_task_group() as tg:
        tg.start_soon(bf.run)
        await eventually(lambda: discord.reads, 5, "the first page")
        # The page came back holding 1003, whose MESSAGE_CREATE arrives a moment later.
        dispatch(bf, "MESSAGE_CREATE", {**discord.history[GENERAL][-1], "guild_id": G})
        await eventually(lambda: [r for r in service.of(GapBackfilled) if r.done], 5)
        tg.cancel_scope.cancel()
    assert ids(service.of(MessageCreated)) == [1001, 1002]  # not 1003: it came live
    assert [r.messages for r in service.of(GapBackfilled) if r.done] == [2]


async def test_a_backfill_that_fails_for_good_is_given_up_not_crash_looped() -> None:
    discord, store = FakeDiscord(), FakeStore(newest={GENERAL: "1000"})

    async def broken(*_: Any, **__: Any) -> list[dict[str, Any]]:
        raise ValueError("a bug, or a payload nobody expected")

    discord.logs_from = broken  # type: ignore[method-assign]
    bf, service = backfill(discord, store)
    bf.gap_found(START, T0, "session-2", [])
    report = await finished(bf, service)
    assert report.truncated and report.messages == 0
    assert service.meta[PROGRESS_KEY] == "" and bf.gap is None
