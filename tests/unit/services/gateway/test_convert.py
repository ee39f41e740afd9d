"""Discord's raw dispatch payloads become protocol events, read from Discord's own JSON."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.discord import (
    MemberBanned,
    MemberJoined,
    MemberLeft,
    MemberUnbanned,
    MessageCreated,
    MessageDeleted,
    MessageEdited,
)
from services.gateway.convert import convert

BOT = "900"
NOW = 1_714_550_400.0
GUILD = "100"
CHANNELS = {"200": "general"}
ALICE = {"id": "11", "username": "alice", "global_name": "Alice"}


def message(**extra: Any) -> dict[str, Any]:
    d = {
        "id": "300",
        "channel_id": "200",
        "guild_id": GUILD,
        "author": ALICE,
        "content": "hello",
        "timestamp": "2024-05-01T08:00:00+00:00",
    }
    d.update(extra)
    return d


def one(event: str, d: dict[str, Any]) -> Any:
    events = convert(event, d, BOT, NOW, CHANNELS)
    assert len(events) == 1
    return events[0]


def test_a_guild_message_becomes_message_created_with_author_channel_and_time() -> None:
    ev = one("MESSAGE_CREATE", message())
    assert isinstance(ev, MessageCreated)
    assert (ev.id, ev.channel_id, ev.guild_id) == ("300", "200", GUILD)
    assert (ev.author_id, ev.author_name, ev.author_bot) == ("11", "Alice", False)
    assert ev.content == "hello"
    assert ev.created_at == NOW
    assert ev.channel_name == "general"
    assert not ev.is_dm and not ev.mentions_bot


def test_a_message_mentioning_the_bot_is_flagged_mentions_bot() -> None:
    mentions = [{"id": BOT, "username": "bot"}, {"id": "12", "username": "bob"}]
    ev = one("MESSAGE_CREATE", message(mentions=mentions, mention_roles=[77]))
    assert ev.mentions == [BOT, "12"]
    assert ev.mention_roles == ["77"]
    assert ev.mentions_bot


def test_mentioning_others_only_does_not_set_mentions_bot() -> None:
    ev = one("MESSAGE_CREATE", message(mentions=[{"id": "12"}]))
    assert not ev.mentions_bot


def test_mentions_bot_stays_false_before_the_bot_id_is_known() -> None:
    (ev,) = convert("MESSAGE_CREATE", message(mentions=[{"id": BOT}]), None, NOW, CHANNELS)
    assert not ev.mentions_bot


def test_a_bot_author_is_flagged_author_bot() -> None:
    ev = one("MESSAGE_CREATE", message(author={"id": "13", "username": "robo", "bot": True}))
    assert ev.author_bot
    assert ev.author_name == "robo"


def test_a_reply_names_the_message_and_author_it_answers() -> None:
    ev = one(
        "MESSAGE_CREATE",
        message(
            message_reference={"message_id": "299", "channel_id": "200"},
            referenced_message={"id": "299", "author": {"id": BOT, "username": "bot"}},
        ),
    )
    assert (ev.reply_to_id, ev.reply_to_author_id) == ("299", BOT)


def test_a_message_without_guild_is_a_dm() -> None:
    d = message(channel_id="555")
    del d["guild_id"]
    ev = one("MESSAGE_CREATE", d)
    assert ev.is_dm
    assert ev.guild_id is None
    assert ev.channel_name is None


def test_attachments_keep_url_filename_and_size() -> None:
    files = [{"url": "https://cdn/x.png", "filename": "x.png", "size": "42"}]
    ev = one("MESSAGE_CREATE", message(attachments=files))
    assert ev.attachments == [{"url": "https://cdn/x.png", "filename": "x.png", "size": 42}]


def test_a_missing_timestamp_uses_now() -> None:
    ev = one("MESSAGE_CREATE", message(timestamp=None))
    assert ev.created_at == NOW


def test_an_edit_of_the_text_becomes_message_edited() -> None:
    d = {
        "id": "300",
        "channel_id": "200",
        "guild_id": GUILD,
        "content": "hello again",
        "edited_timestamp": "2024-05-01T08:01:00+00:00",
    }
    ev = one("MESSAGE_UPDATE", d)
    assert ev == MessageEdited("300", "200", GUILD, "hello again", NOW + 60)


def test_an_update_without_content_is_an_unfurl_and_gives_nothing() -> None:
    assert convert("MESSAGE_UPDATE", {"id": "300", "channel_id": "200"}, BOT, NOW, {}) == []


def test_a_deletion_becomes_message_deleted_at_now() -> None:
    ev = one("MESSAGE_DELETE", {"id": "300", "channel_id": "200", "guild_id": GUILD})
    assert ev == MessageDeleted("300", "200", GUILD, NOW)


def test_a_bulk_deletion_gives_one_event_per_message() -> None:
    d = {"ids": ["1", "2"], "channel_id": "200", "guild_id": GUILD}
    events = convert("MESSAGE_DELETE_BULK", d, BOT, NOW, {})
    assert [e.id for e in events] == ["1", "2"]
    assert all(isinstance(e, MessageDeleted) for e in events)


def test_a_member_joining_becomes_member_joined_at_their_join_time() -> None:
    d = {"guild_id": GUILD, "user": ALICE, "joined_at": "2024-05-01T07:00:00+00:00"}
    assert one("GUILD_MEMBER_ADD", d) == MemberJoined(GUILD, "11", "Alice", False, NOW - 3600)


def test_a_bot_leaving_becomes_member_left_flagged_bot() -> None:
    d = {"guild_id": GUILD, "user": {"id": "13", "username": "robo", "bot": True}}
    assert one("GUILD_MEMBER_REMOVE", d) == MemberLeft(GUILD, "13", "robo", True, NOW)


def test_bans_and_unbans_become_member_banned_and_unbanned() -> None:
    d = {"guild_id": GUILD, "user": ALICE}
    assert one("GUILD_BAN_ADD", d) == MemberBanned(GUILD, "11", "Alice", NOW)
    assert one("GUILD_BAN_REMOVE", d) == MemberUnbanned(GUILD, "11", "Alice", NOW)


def test_an_event_nobody_subscribes_to_gives_nothing() -> None:
    assert convert("TYPING_START", {"channel_id": "200"}, BOT, NOW, {}) == []


@pytest.mark.parametrize(
    ("event", "d"),
    [
        ("MESSAGE_CREATE", {"channel_id": "200"}),  # no id
        ("MESSAGE_UPDATE", {"content": "x"}),
        ("MESSAGE_DELETE", {"id": "300"}),
        ("GUILD_MEMBER_ADD", {"guild_id": GUILD, "user": {"username": "no id"}}),
        ("GUILD_BAN_ADD", {"user": ALICE}),  # no guild
        ("MESSAGE_CREATE", message(attachments=[{"size": "big"}])),
        ("MESSAGE_DELETE_BULK", {"channel_id": "200", "ids": None}),
    ],
)
def test_a_malformed_payload_raises_what_the_service_catches(event: str, d: dict[str, Any]) -> None:
    with pytest.raises((KeyError, TypeError, ValueError)):
        convert(event, d, BOT, NOW, CHANNELS)
