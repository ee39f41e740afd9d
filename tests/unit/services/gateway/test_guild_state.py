"""The gateway's own view of each guild: kept from raw events, counted, saved and loaded."""

from __future__ import annotations

import json
from typing import Any

from protocol.discord import GuildCounts, GuildReady
from services.gateway.guild_state import GuildState

GUILD = "100"
BOT = "900"


def member(uid: str, bot: bool = False) -> dict[str, Any]:
    return {"user": {"id": uid, "username": f"u{uid}", "bot": bot}}


def guild_create(**extra: Any) -> dict[str, Any]:
    d = {
        "id": GUILD,
        "name": "Test Guild",
        "member_count": 3,
        "members": [member("1"), member("2"), member(BOT, bot=True)],
        "presences": [
            {"user": {"id": "1"}, "status": "online"},
            {"user": {"id": "2"}, "status": "offline"},
            {"user": {"id": BOT}, "status": "dnd"},
        ],
        "channels": [
            {"id": "200", "name": "general", "type": 0},
            {"id": "201", "name": "Members: 3", "type": 2},
        ],
    }
    d.update(extra)
    return d


def state() -> GuildState:
    s = GuildState()
    assert s.apply("GUILD_CREATE", guild_create()) == GUILD
    return s


def counts(s: GuildState) -> GuildCounts:
    g = s.get(GUILD)
    assert g is not None
    return g.counts()


def test_guild_create_records_members_bots_presences_and_channels() -> None:
    s = state()
    assert counts(s) == GuildCounts(GUILD, members=3, humans=2, bots=1, online=2, bans=None)
    assert s.channel_names() == {"200": "general", "201": "Members: 3"}


def test_an_unavailable_guild_create_changes_nothing() -> None:
    s = GuildState()
    assert s.apply("GUILD_CREATE", {"id": GUILD, "unavailable": True}) is None
    assert s.first() is None


def test_members_counted_by_discord_beyond_those_received_count_as_members() -> None:
    s = GuildState()
    s.apply("GUILD_CREATE", guild_create(member_count=50))
    assert counts(s).members == 50
    assert counts(s).humans == 49


def test_a_member_joining_and_leaving_changes_the_counts() -> None:
    s = state()
    add = {"guild_id": GUILD, "user": {"id": "3", "username": "c", "bot": True}}
    assert s.apply("GUILD_MEMBER_ADD", add) == GUILD
    assert (counts(s).members, counts(s).bots) == (4, 2)
    assert s.apply("GUILD_MEMBER_REMOVE", {"guild_id": GUILD, "user": {"id": "1"}}) == GUILD
    assert counts(s) == GuildCounts(GUILD, members=3, humans=1, bots=2, online=1, bans=None)


def test_a_member_added_twice_is_counted_once() -> None:
    s = state()
    add = {"guild_id": GUILD, "user": {"id": "3"}}
    s.apply("GUILD_MEMBER_ADD", add)
    s.apply("GUILD_MEMBER_ADD", add)
    assert counts(s).members == 4


def test_presence_reports_the_guild_only_when_the_online_count_changes() -> None:
    s = state()

    def presence(uid: str, status: str) -> str | None:
        return s.apply(
            "PRESENCE_UPDATE", {"guild_id": GUILD, "user": {"id": uid}, "status": status}
        )

    assert presence("2", "online") == GUILD
    assert counts(s).online == 3
    assert presence("2", "idle") is None  # still online: nothing to publish
    assert presence("2", "offline") == GUILD
    assert presence("2", "offline") is None
    assert counts(s).online == 2


def test_events_for_an_unknown_guild_are_ignored() -> None:
    s = state()
    assert s.apply("GUILD_MEMBER_ADD", {"guild_id": "999", "user": {"id": "3"}}) is None
    assert counts(s).members == 3


def test_bans_are_counted_once_known_and_never_below_zero() -> None:
    s = state()
    ban = {"guild_id": GUILD, "user": {"id": "2"}}
    assert s.apply("GUILD_BAN_ADD", ban) == GUILD
    assert counts(s).bans is None  # unknown until fetched: an increment means nothing
    g = s.get(GUILD)
    assert g is not None
    g.bans = 0
    s.apply("GUILD_BAN_ADD", ban)
    assert counts(s).bans == 1
    s.apply("GUILD_BAN_REMOVE", ban)
    s.apply("GUILD_BAN_REMOVE", ban)
    assert counts(s).bans == 0


def test_a_second_guild_create_keeps_the_known_ban_count() -> None:
    s = state()
    g = s.get(GUILD)
    assert g is not None
    g.bans = 4
    s.apply("GUILD_CREATE", guild_create())
    assert counts(s).bans == 4


def test_channels_created_renamed_and_deleted_are_tracked_without_changing_counts() -> None:
    s = state()
    assert s.apply("CHANNEL_CREATE", {"id": "202", "guild_id": GUILD, "name": "news"}) is None
    assert s.apply("CHANNEL_UPDATE", {"id": "200", "guild_id": GUILD, "name": "chat"}) is None
    assert s.apply("CHANNEL_DELETE", {"id": "201", "guild_id": GUILD}) is None
    assert s.channel_names() == {"200": "chat", "202": "news"}


def test_ready_describes_the_guild_with_its_channel_kinds() -> None:
    g = state().get(GUILD)
    assert g is not None
    assert g.ready(BOT) == GuildReady(
        GUILD,
        "Test Guild",
        [
            {"id": "200", "name": "general", "type": "text"},
            {"id": "201", "name": "Members: 3", "type": "voice"},
        ],
        3,
        BOT,
    )


def test_get_without_an_id_answers_the_first_guild() -> None:
    s = state()
    g = s.get(None)
    assert g is not None and g.id == GUILD
    assert s.get("999") is None


def test_the_state_survives_a_json_round_trip() -> None:
    s = state()
    g = s.get(GUILD)
    assert g is not None
    g.bans = 2
    loaded = GuildState()
    loaded.load(json.loads(json.dumps(s.to_json())))  # as the session file does
    assert counts(loaded) == counts(s)
    assert loaded.channel_names() == s.channel_names()
    assert loaded.get(GUILD) == g
