"""Messages, members, bans, presences and channels between the control API and real py-cord."""

from __future__ import annotations

import io

import discord
import pytest

from sandbox.discord import DiscordEmulator
from tests.support.emulator import (  # noqa: F401 - the emu, http, control fixtures
    Control,
    Events,
    control_fixture,
    emu_fixture,
    http_fixture,
    make_bot,
    running_bot,
)

pytestmark = pytest.mark.anyio


async def test_user_message_reaches_on_message_with_mentions(
    emu: DiscordEmulator, control: Control
) -> None:
    bot = make_bot()
    events = Events(bot, "message")
    w = emu.world
    general, alice, bob = w.channel_id("general"), w.user_id("alice"), w.user_id("bob")
    async with running_bot(emu, bot):
        sent = await control.ok(
            "POST",
            "messages",
            {
                "channel_id": general,
                "author_id": alice,
                "content": f"hi <@{bob}> and <@{w.bot_user_id}>",
            },
        )
        (msg,) = await events.wait("message", lambda m: m.id == int(sent["id"]))
        assert msg.content == f"hi <@{bob}> and <@{w.bot_user_id}>"
        assert msg.author.id == int(alice) and isinstance(msg.author, discord.Member)
        assert msg.channel.name == "general"
        assert {u.id for u in msg.mentions} == {int(bob), int(w.bot_user_id)}
        assert msg.guild is not None and msg.guild.id == int(w.guild_id)


async def test_bot_send_keeps_allowed_mentions_and_reply(
    emu: DiscordEmulator, control: Control
) -> None:
    bot = make_bot()
    events = Events(bot, "message")
    w = emu.world
    general = w.channel_id("general")
    async with running_bot(emu, bot):
        channel = bot.get_channel(int(general))
        assert isinstance(channel, discord.TextChannel)
        first = await channel.send(
            "hello @everyone", allowed_mentions=discord.AllowedMentions.none()
        )
        # the bot sees its own message, as on real Discord
        await events.wait("message", lambda m: m.id == first.id)
        user_msg = await control.ok(
            "POST",
            "messages",
            {"channel_id": general, "author_id": w.user_id("bob"), "content": "q?"},
        )
        (incoming,) = await events.wait("message", lambda m: m.id == int(user_msg["id"]))
        reply = await incoming.reply("answer")
        assert reply.reference is not None and reply.reference.message_id == incoming.id
        (seen_reply,) = await events.wait("message", lambda m: m.id == reply.id)
        assert seen_reply.type == discord.MessageType.reply

        msgs = await control.ok("GET", f"channels/{general}/messages")
        assert [m["id"] for m in msgs] == [str(first.id), user_msg["id"], str(reply.id)]
        assert msgs[0]["content"] == "hello @everyone"
        assert msgs[0]["allowed_mentions"] == discord.AllowedMentions.none().to_dict()
        assert msgs[0]["author_id"] == w.bot_user_id
        assert msgs[1]["allowed_mentions"] is None
        assert msgs[2]["reply_to_id"] == user_msg["id"]

        with_file = await channel.send("report", file=discord.File(io.BytesIO(b"abc"), "r.txt"))
        assert with_file.attachments[0].filename == "r.txt"
        assert with_file.attachments[0].size == 3

        history = [m.id async for m in channel.history(limit=3)][1:]
        assert history == [reply.id, int(user_msg["id"])]
        fetched = await channel.fetch_message(first.id)
        assert fetched.content == "hello @everyone"


async def test_edit_and_delete_reach_raw_handlers(emu: DiscordEmulator, control: Control) -> None:
    bot = make_bot()
    events = Events(bot, "raw_message_edit", "raw_message_delete", "message")
    w = emu.world
    general = w.channel_id("general")
    async with running_bot(emu, bot):
        sent = await control.ok(
            "POST",
            "messages",
            {"channel_id": general, "author_id": w.user_id("alice"), "content": "v1"},
        )
        mid = sent["id"]
        await control.ok("PATCH", f"messages/{mid}", {"content": "v2"})
        (edit,) = await events.wait("raw_message_edit", lambda e: e.message_id == int(mid))
        assert edit.data["content"] == "v2"
        await control.ok("DELETE", f"messages/{mid}")
        (gone,) = await events.wait("raw_message_delete", lambda e: e.message_id == int(mid))
        assert gone.channel_id == int(general)
        assert await control.ok("GET", f"channels/{general}/messages") == []

        # and the bot's own edit/delete go through REST
        channel = bot.get_channel(int(general))
        own = await channel.send("draft")
        await own.edit(content="final")
        await events.wait("raw_message_edit", lambda e: e.message_id == own.id)
        listed = await control.ok("GET", f"channels/{general}/messages")
        assert listed[0]["content"] == "final" and listed[0]["edited_at"] is not None
        await own.delete()
        await events.wait("raw_message_delete", lambda e: e.message_id == own.id)
        assert await control.ok("GET", f"channels/{general}/messages") == []


async def test_member_join_leave_ban_and_presence(emu: DiscordEmulator, control: Control) -> None:
    bot = make_bot()
    events = Events(
        bot, "member_join", "member_remove", "member_ban", "member_unban", "presence_update"
    )
    w = emu.world
    async with running_bot(emu, bot):
        guild = bot.get_guild(int(w.guild_id))
        carol = await control.ok("POST", "members", {"username": "carol"})
        (joined,) = await events.wait("member_join", lambda m: m.id == int(carol["id"]))
        assert joined.name == "carol" and guild.member_count == 4

        await control.ok("POST", "presences", {"user_id": carol["id"], "status": "dnd"})
        _, after = await events.wait("presence_update", lambda b, a: a.id == int(carol["id"]))
        assert after.status == discord.Status.dnd
        assert guild.get_member(int(carol["id"])).status == discord.Status.dnd

        await control.ok("DELETE", f"members/{carol['id']}")
        (left,) = await events.wait("member_remove", lambda m: m.id == int(carol["id"]))
        assert left.name == "carol" and guild.get_member(int(carol["id"])) is None

        bob = w.user_id("bob")
        await control.ok("POST", "bans", {"user_id": bob, "reason": "spam"})
        _, banned = await events.wait("member_ban")
        assert banned.id == int(bob)
        await events.wait("member_remove", lambda m: m.id == int(bob))
        bans = [entry async for entry in guild.bans()]
        assert [(b.user.id, b.reason) for b in bans] == [(int(bob), "spam")]
        await control.ok("DELETE", f"bans/{bob}")
        _, unbanned = await events.wait("member_unban")
        assert unbanned.id == int(bob)
        state = await control.state()
        assert bob not in [m["id"] for m in state["members"]]


async def test_rename_and_create_channel_dispatch_events(
    emu: DiscordEmulator, control: Control
) -> None:
    bot = make_bot()
    events = Events(bot, "guild_channel_update", "guild_channel_create")
    w = emu.world
    async with running_bot(emu, bot):
        guild = bot.get_guild(int(w.guild_id))
        members = guild.get_channel(int(w.channel_id("Members")))
        assert isinstance(members, discord.VoiceChannel)
        renamed = await members.edit(name="Members: 3")
        assert renamed is not None and renamed.name == "Members: 3"
        _, after = await events.wait("guild_channel_update", lambda b, a: a.id == members.id)
        assert after.name == "Members: 3"
        created = await guild.create_text_channel("reports", topic="daily")
        (seen,) = await events.wait("guild_channel_create", lambda c: c.id == created.id)
        assert seen.name == "reports" and seen.topic == "daily"
        state = await control.state()
        assert {"id": str(created.id), "name": "reports", "type": 0, "topic": "daily"} in state[
            "channels"
        ]
        alice = await guild.fetch_member(int(w.user_id("alice")))
        assert alice.name == "alice" and [r.id for r in alice.roles][-1] == int(w.admin_role_id)


async def test_a_repeated_nonce_with_enforce_nonce_returns_the_existing_message(
    emu: DiscordEmulator, control: Control
) -> None:
    """As Discord: the same author's nonce within minutes gives back the message already
    created (as it shows now), posts and dispatches nothing; without enforce_nonce, or
    once the nonce is old, a create creates."""
    bot = make_bot()
    events = Events(bot, "message")
    w = emu.world
    general = w.channel_id("general")
    async with running_bot(emu, bot):
        first = await bot.http.send_message(general, "part one", nonce="q1-0", enforce_nonce=True)
        await bot.http.edit_message(general, first["id"], content="part one, edited")
        again = await bot.http.send_message(
            general, "part one, retried", nonce="q1-0", enforce_nonce=True
        )
        assert again["id"] == first["id"]
        assert again["content"] == "part one, edited", "the message as it shows now"
        assert again["nonce"] == "q1-0"
        unenforced = await bot.http.send_message(general, "no enforce", nonce="q1-0")
        assert unenforced["id"] != first["id"]
        await control.ok("POST", "clock", {"advance_s": 600})
        later = await bot.http.send_message(general, "much later", nonce="q9-0", enforce_nonce=True)
        stale = await bot.http.send_message(general, "stale", nonce="q1-0", enforce_nonce=True)
        assert stale["id"] not in (first["id"], unenforced["id"], later["id"])
        msgs = await control.ok("GET", f"channels/{general}/messages")
        assert [m["content"] for m in msgs] == [
            "part one, edited",
            "no enforce",
            "much later",
            "stale",
        ]
        await events.wait("message", lambda m: m.id == int(stale["id"]))
        created = [m.id for (m,) in events.seen["message"]]
        assert created.count(int(first["id"])) == 1, "dispatched once"
        with pytest.raises(discord.HTTPException) as refused:
            await bot.http.send_message(general, "x", nonce="n" * 26, enforce_nonce=True)
        assert (refused.value.status, refused.value.code) == (400, 50035)
