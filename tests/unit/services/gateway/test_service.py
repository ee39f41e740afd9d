"""The gateway service in-process, without Discord: built like every service, /help from
the declarations, dispatches queued with their position, the guild state kept across a
restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from protocol.bus import Topology
from protocol.clock import fixed
from protocol.commands import Tier
from protocol.discord import ConnectionState, GuildReady, MemberJoined, MessageCreated
from protocol.messages import Message
from protocol.runtime import RuntimeContext, Service
from services.gateway import build
from services.gateway.service import POSITION_KEY, GatewayService
from services.gateway.session import SavedSession, SessionFile
from services.gateway.state import Position
from supervisor.config import load
from tests.support.fakes import command

pytestmark = pytest.mark.anyio

SERVICES_TOML = Path(__file__).resolve().parents[4] / "services.toml"
T0 = 1_714_550_400.0
GUILD = "100"
BOT = "900"
SESSION = "s-1"
RESUME_URL = "wss://resume.example"


def default_topology() -> Topology:
    return load(SERVICES_TOML).topology()


def gateway(tmp: Path) -> tuple[Service, GatewayService]:
    service, gw = build(fixed(T0))
    service.ctx = RuntimeContext("gateway", default_topology(), tmp)
    return service, gw


def connected(gw: GatewayService) -> GatewayService:
    """As after READY: the session a dispatch's position belongs to, and the bot's id."""
    gw.gw.session_id, gw.gw.resume_url, gw.gw.bot_id = SESSION, RESUME_URL, BOT
    return gw


def dispatch(event: str, seq: int, d: dict[str, Any]) -> dict[str, Any]:
    return {"op": 0, "t": event, "s": seq, "d": d}


GUILD_CREATE = {
    "id": GUILD,
    "name": "Test Guild",
    "member_count": 2,
    "members": [{"user": {"id": "11"}}, {"user": {"id": BOT, "bot": True}}],
    "presences": [{"user": {"id": "11"}, "status": "online"}],
    "channels": [{"id": "200", "name": "general", "type": 0}],
}


def queued(gw: GatewayService) -> list[tuple[Position | None, list[Message]]]:
    return list(gw.gw.queue)


async def test_the_gateway_is_complete_for_the_default_topology() -> None:
    service, _ = build()
    assert service.problems(default_topology()) == []


async def test_two_gateways_built_share_no_state() -> None:
    (_, one), (_, two) = build(), build()
    connected(one).on_dispatch(dispatch("GUILD_CREATE", 1, GUILD_CREATE))
    assert two.gw.guilds.first() is None
    assert not two.gw.queue


async def test_help_answers_a_member_privately_with_the_commands_they_may_run(
    tmp_path: Path,
) -> None:
    service, _ = gateway(tmp_path)
    answer = await service.commands["help"](command("help", tier=Tier.MEMBER))
    assert answer.ephemeral
    assert "(member)" in answer.content
    assert "`/ask prompt:`" in answer.content
    assert "/restart" not in answer.content


async def test_help_shows_an_admin_the_admin_commands(tmp_path: Path) -> None:
    service, _ = gateway(tmp_path)
    answer = await service.commands["help"](command("help", tier=Tier.ADMIN))
    assert "`/restart service:`" in answer.content


async def test_a_message_is_queued_as_its_event_with_the_discord_position(
    tmp_path: Path,
) -> None:
    _, gw = gateway(tmp_path)
    connected(gw).on_dispatch(
        dispatch(
            "MESSAGE_CREATE",
            42,
            {
                "id": "300",
                "channel_id": "200",
                "guild_id": GUILD,
                "author": {"id": "11", "username": "alice"},
                "content": f"hi <@{BOT}>",
                "mentions": [{"id": BOT}],
            },
        )
    )
    ((position, events),) = queued(gw)
    assert position == Position(SESSION, 42, RESUME_URL)
    (created,) = events
    assert isinstance(created, MessageCreated) and created.DURABLE
    assert (created.id, created.author_name, created.mentions_bot) == ("300", "alice", True)
    assert gw.gw.queue_wake.is_set()


async def test_dispatches_are_stamped_with_the_services_clock(tmp_path: Path) -> None:
    service, gw = gateway(tmp_path)
    service.clock.advance(86_400)  # the sandbox moves a day on
    connected(gw).on_dispatch(
        dispatch("GUILD_MEMBER_REMOVE", 7, {"guild_id": GUILD, "user": {"id": "11"}})
    )
    ((_, (left,)),) = queued(gw)
    assert left.at == T0 + 86_400


async def test_a_malformed_dispatch_is_dropped_but_its_position_still_advances(
    tmp_path: Path,
) -> None:
    _, gw = gateway(tmp_path)
    connected(gw).on_dispatch(dispatch("MESSAGE_CREATE", 43, {"content": "no ids"}))
    # Nothing to publish, yet the position moves on: a RESUME must not replay it forever.
    assert queued(gw) == [(Position(SESSION, 43, RESUME_URL), [])]


async def test_a_dispatch_before_ready_has_no_position(tmp_path: Path) -> None:
    _, gw = gateway(tmp_path)
    d = {"guild_id": GUILD, "user": {"id": "12", "username": "bob"}}
    gw.on_dispatch(dispatch("GUILD_MEMBER_ADD", 5, d))
    ((position, (joined,)),) = queued(gw)
    assert position is None
    assert isinstance(joined, MemberJoined)


async def test_a_guild_create_announces_the_guild_and_marks_its_counts_changed(
    tmp_path: Path,
) -> None:
    _, gw = gateway(tmp_path)
    connected(gw).on_dispatch(dispatch("GUILD_CREATE", 2, GUILD_CREATE))
    (announce, (position, events)) = queued(gw)
    assert announce == (
        None,
        [
            GuildReady(
                GUILD, "Test Guild", [{"id": "200", "name": "general", "type": "text"}], 2, BOT
            )
        ],
    )
    assert (position, events) == (Position(SESSION, 2, RESUME_URL), [])
    assert gw.gw.counts_dirty == {GUILD}


class FakeOutbox:
    def __init__(self, meta: dict[str, str]) -> None:
        self.meta = meta

    async def get_meta(self, key: str) -> str | None:
        return self.meta.get(key)


class FakeBus:
    """What `prepare` uses of the bus: the outbox's stored position, publish, channels."""

    def __init__(self, meta: dict[str, str] | None = None) -> None:
        self.outbox = FakeOutbox(meta or {})
        self.published: list[Message] = []
        self.channels: set[str] = set()

    async def publish(self, msg: Message) -> int:
        self.published.append(msg)
        return len(self.published)

    def channel(self, peer: str) -> None:
        self.channels.add(peer)


async def restarted(
    tmp: Path, meta: dict[str, str] | None = None
) -> tuple[GatewayService, FakeBus]:
    """A new gateway process preparing from what its predecessor left in `tmp`."""
    service, gw = gateway(tmp)
    bus = FakeBus(meta)
    service.bus = bus  # type: ignore[assignment]
    await gw.prepare()
    return gw, bus


async def save(gw: GatewayService, tmp: Path, seq: int) -> None:
    """What the predecessor's session saver writes."""
    await SessionFile(tmp / "gateway-session.json").save(
        SavedSession(SESSION, seq, RESUME_URL, gw.gw.bot_id, gw.gw.guilds.to_json())
    )


async def test_the_guild_state_survives_a_restart_through_the_saved_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISCORD_API_BASE", raising=False)
    _, before = gateway(tmp_path)
    connected(before).on_dispatch(dispatch("GUILD_CREATE", 2, GUILD_CREATE))
    await save(before, tmp_path, 2)

    after, bus = await restarted(tmp_path)
    guild = after.gw.guilds.get(GUILD)
    assert guild is not None
    assert guild.counts() == before.gw.guilds.guilds[GUILD].counts()
    assert after.gw.guilds.channel_names() == {"200": "general"}
    assert after.gw.bot_id == BOT
    assert after.gw.committed == Position(SESSION, 2, RESUME_URL)
    # Retained: services that start after this restart still learn the guild.
    assert bus.published == [guild.ready(BOT)]
    assert {"llm", "stats", "heartbeat"} <= bus.channels  # command owners, connected early


async def test_the_position_stored_with_the_events_wins_over_the_session_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISCORD_API_BASE", raising=False)
    _, before = gateway(tmp_path)
    connected(before).on_dispatch(dispatch("GUILD_CREATE", 2, GUILD_CREATE))
    await save(before, tmp_path, 2)
    stored = {POSITION_KEY: json.dumps({"session_id": SESSION, "seq": 9, "resume_url": None})}

    after, _ = await restarted(tmp_path, stored)
    assert after.gw.committed == Position(SESSION, 9, None)
    assert after.gw.resumed_from is not None and after.gw.resumed_from.seq == 9


READY = {"session_id": "s-2", "resume_gateway_url": RESUME_URL, "user": {"id": BOT}, "guilds": []}


def connection_states(gw: GatewayService) -> list[str]:
    return [m.state for _, events in queued(gw) for m in events if isinstance(m, ConnectionState)]


async def test_the_first_session_ever_is_no_gap_but_a_fresh_one_after_it_is(
    tmp_path: Path,
) -> None:
    _, gw = gateway(tmp_path)
    gw.on_dispatch(dispatch("READY", 1, READY))
    assert gw.backfill.gap is None and connection_states(gw) == ["connected"]
    gw.on_dispatch(dispatch("MESSAGE_CREATE", 2, {"id": "5", "channel_id": "200"}))
    # Discord invalidates the session; py-cord identifies afresh within the process.
    gw.on_dispatch(dispatch("READY", 1, {**READY, "session_id": "s-3"}))
    assert gw.backfill.gap is not None and gw.backfill.gap.start == T0
    assert connection_states(gw) == ["connected", "identified_after_gap"]


async def test_a_fresh_session_after_a_stored_position_is_a_gap_from_when_it_was_reached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISCORD_API_BASE", raising=False)
    at = {"session_id": SESSION, "seq": 9, "resume_url": None, "at": T0 - 120}
    after, _ = await restarted(tmp_path, {POSITION_KEY: json.dumps(at)})
    assert after.gw.committed is None  # no session file: nothing to RESUME
    after.on_dispatch(dispatch("READY", 1, READY))
    gap = after.backfill.gap
    assert gap is not None and (gap.start, gap.end, gap.seconds) == (T0 - 120, T0, 120.0)
    assert connection_states(after) == ["identified_after_gap"]
    assert after._position_meta(Position("s-2", 1, RESUME_URL)) == {
        POSITION_KEY: json.dumps(
            {"session_id": "s-2", "seq": 1, "resume_url": RESUME_URL, "at": T0}
        )
    }
