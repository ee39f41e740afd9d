"""DMs, native polls, guild scheduled events and attachments, between the control API and
the real py-cord client: what the scheduler's features need from the emulator."""

from __future__ import annotations

import base64
import datetime as dt
import io

import aiohttp
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


def auth(emu: DiscordEmulator) -> dict[str, str]:
    return {"Authorization": f"Bot {emu.token}"}


async def test_a_bot_dm_opens_one_channel_per_user_and_a_users_dm_reaches_the_bot(
    emu: DiscordEmulator, control: Control
) -> None:
    bot = make_bot()
    events = Events(bot, "message")
    bob = emu.world.user_id("bob")
    async with running_bot(emu, bot):
        user = await bot.fetch_user(int(bob))
        sent = await user.send("psst", allowed_mentions=discord.AllowedMentions.none())
        again = await user.send("again")
        assert isinstance(sent.channel, discord.DMChannel)
        assert sent.channel.id == again.channel.id, "Discord keeps one DM channel per user"
        dms = await control.ok("GET", f"users/{bob}/dms")
        assert [m["content"] for m in dms] == ["psst", "again"]
        assert dms[0]["allowed_mentions"] == {"parse": []}
        state = await control.state()
        assert str(sent.channel.id) not in {c["id"] for c in state["channels"]}, "not a guild one"

        written = await control.ok("POST", "dms", {"author_id": bob, "content": "hello bot"})
        assert written["channel_id"] == str(sent.channel.id)
        (msg,) = await events.wait("message", lambda m: m.id == int(written["id"]))
        assert msg.guild is None and msg.content == "hello bot"
        assert isinstance(msg.channel, discord.DMChannel)
        assert [m["content"] for m in await control.ok("GET", f"users/{bob}/dms")][-1] == (
            "hello bot"
        )
    status, error = await control.call("GET", "users/123/dms")
    assert status == 404 and "Unknown User" in error["error"]


async def test_a_native_poll_takes_votes_ends_early_and_counts(
    emu: DiscordEmulator, control: Control
) -> None:
    bot = make_bot()
    events = Events(bot, "raw_poll_vote_add", "raw_poll_vote_remove", "raw_message_edit")
    w = emu.world
    alice, bob = w.user_id("alice"), w.user_id("bob")
    async with running_bot(emu, bot):
        channel = bot.get_channel(int(w.channel_id("general")))
        assert isinstance(channel, discord.TextChannel)
        poll = discord.Poll(
            "Lunch?",
            answers=[discord.PollAnswer(a) for a in ("pizza", "sushi", "salad")],
            duration=1,
        )
        msg = await channel.send(poll=poll)
        assert msg.poll is not None and [a.text for a in msg.poll.answers] == [
            "pizza",
            "sushi",
            "salad",
        ]
        assert msg.poll.expiry is not None
        await control.ok("POST", f"polls/{msg.id}/votes", {"user_id": alice, "answer": "pizza"})
        await control.ok("POST", f"polls/{msg.id}/votes", {"user_id": bob, "answer": 2})
        (vote,) = await events.wait("raw_poll_vote_add", lambda v: v.user_id == int(bob))
        assert (vote.message_id, vote.answer_id) == (msg.id, 2)
        # a single-choice poll: bob's vote for pizza moves it from sushi
        await control.ok("POST", f"polls/{msg.id}/votes", {"user_id": bob, "answer": "Pizza"})
        (moved,) = await events.wait("raw_poll_vote_remove", lambda v: v.user_id == int(bob))
        assert moved.answer_id == 2

        voters = await msg.poll.get_answer(1).voters().flatten()  # type: ignore[union-attr]
        assert sorted(u.id for u in voters) == sorted([int(alice), int(bob)])

        view = next(m for m in await control.ok("GET", f"channels/{msg.channel.id}/messages"))
        assert [(a["text"], a["votes"]) for a in view["poll"]["answers"]] == [
            ("pizza", 2),
            ("sushi", 0),
            ("salad", 0),
        ]
        assert view["poll"]["finalized"] is False

        await msg.end_poll()
        (edit,) = await events.wait(
            "raw_message_edit",
            lambda e: e.data.get("poll", {}).get("results", {}).get("is_finalized"),
        )
        assert edit.message_id == msg.id and edit.data.get("edited_timestamp") is None
        status, error = await control.call(
            "POST", f"polls/{msg.id}/votes", {"user_id": alice, "answer": 3}
        )
        assert status == 400 and "ended" in error["error"]
        with pytest.raises(discord.HTTPException):
            await msg.end_poll()  # once


async def test_a_poll_ends_by_itself_when_the_clock_passes_its_expiry(
    emu: DiscordEmulator, control: Control
) -> None:
    bot = make_bot()
    events = Events(bot, "raw_message_edit")
    async with running_bot(emu, bot):
        channel = bot.get_channel(int(emu.world.channel_id("general")))
        assert isinstance(channel, discord.TextChannel)
        poll = discord.Poll("Soon?", answers=[discord.PollAnswer("yes")], duration=2)
        msg = await channel.send(poll=poll)
        await control.ok("POST", "clock", {"advance_s": 3600})
        assert not emu.world.messages[str(msg.id)].poll.finalized  # type: ignore[union-attr]
        await control.ok("POST", "clock", {"advance_s": 3601})
        (edit,) = await events.wait("raw_message_edit", lambda e: e.message_id == msg.id)
        assert edit.data["poll"]["results"]["is_finalized"] is True


async def test_polls_discord_refuses(emu: DiscordEmulator, http: aiohttp.ClientSession) -> None:
    url = f"{emu.api_base}/channels/{emu.world.channel_id('general')}/messages"
    question = {"text": "Q?"}
    bad = {
        "poll.answers": {"question": question, "answers": [], "duration": 1},
        "poll.answers.0.poll_media.text": {
            "question": question,
            "answers": [{"poll_media": {"text": "x" * 56}}],
        },
        "poll.duration": {
            "question": question,
            "answers": [{"poll_media": {"text": "a"}}],
            "duration": 769,
        },
    }
    for field, poll in bad.items():
        async with http.post(url, json={"poll": poll}, headers=auth(emu)) as resp:
            assert resp.status == 400
            body = await resp.json()
            assert body["code"] == 50035
            errors = body["errors"]
            for key in field.split("."):
                errors = errors[key]
            assert errors["_errors"], field
    eleven = {
        "question": question,
        "answers": [{"poll_media": {"text": str(i)}} for i in range(11)],
    }
    async with http.post(url, json={"poll": eleven}, headers=auth(emu)) as resp:
        assert resp.status == 400


async def test_scheduled_events_are_created_listed_and_people_get_interested(
    emu: DiscordEmulator, control: Control
) -> None:
    bot = make_bot()
    events = Events(bot, "scheduled_event_create", "raw_scheduled_event_user_add")
    bob = emu.world.user_id("bob")
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    async with running_bot(emu, bot):
        guild = bot.get_guild(int(emu.world.guild_id))
        assert guild is not None
        made = await guild.create_scheduled_event(
            name="Party",
            start_time=start,
            end_time=start + dt.timedelta(hours=2),
            location="The park",
            description="Bring snacks",
        )
        assert made is not None and made.name == "Party"
        (created,) = await events.wait("scheduled_event_create")
        assert created.id == made.id and str(created.location) == "The park"
        listed = await control.ok("GET", "scheduled-events")
        assert [(e["name"], e["location"], e["description"]) for e in listed] == [
            ("Party", "The park", "Bring snacks")
        ]
        shown = dt.datetime.fromisoformat(listed[0]["start"])
        assert abs(shown - start) < dt.timedelta(seconds=1)
        await control.ok("POST", f"scheduled-events/{made.id}/interested", {"user_id": bob})
        (added,) = await events.wait("raw_scheduled_event_user_add")
        assert (added.event_id, added.user_id) == (made.id, int(bob))
        users = [u async for u in made.subscribers(limit=100)]
        assert [u.id for u in users] == [int(bob)]
        fetched = await guild.fetch_scheduled_events(with_user_count=True)
        assert [e.subscriber_count for e in fetched] == [1]

        with pytest.raises(discord.HTTPException) as past:
            await guild.create_scheduled_event(
                name="Too late",
                start_time=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
                end_time=dt.datetime.now(dt.UTC),
                location="here",
            )
        assert past.value.code == 50035
        await made.delete()
    assert await control.ok("GET", "scheduled-events") == []


async def test_files_the_bot_sends_are_stored_and_served(
    emu: DiscordEmulator, control: Control, http: aiohttp.ClientSession
) -> None:
    general = emu.world.channel_id("general")
    data = b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"
    async with running_bot(emu) as bot:
        channel = bot.get_channel(int(general))
        assert isinstance(channel, discord.TextChannel)
        await channel.send("the file", file=discord.File(io.BytesIO(data), "events.ics"))
    (msg,) = [m for m in await control.ok("GET", f"channels/{general}/messages")]
    (attachment,) = msg["attachments"]
    assert attachment["filename"] == "events.ics" and attachment["size"] == len(data)
    assert attachment["content_type"] == "text/calendar"
    async with http.get(attachment["url"]) as resp:
        assert resp.status == 200 and await resp.read() == data

    uploaded = base64.b64encode(b"hello").decode()
    body = {
        "channel_id": general,
        "author_id": emu.world.user_id("alice"),
        "content": "a note",
        "attachments": [{"filename": "note.txt", "data_b64": uploaded}],
    }
    sent = await control.ok("POST", "messages", body)
    mine = next(
        m for m in await control.ok("GET", f"channels/{general}/messages") if m["id"] == sent["id"]
    )
    async with http.get(mine["attachments"][0]["url"]) as resp:
        assert await resp.read() == b"hello" and resp.content_type == "text/plain"
    status, _ = await control.call(
        "POST", "messages", {**body, "attachments": [{"filename": "x", "data_b64": "%%%"}]}
    )
    assert status == 400


async def test_a_command_named_with_its_subcommand_arrives_as_discord_nests_it(
    emu: DiscordEmulator, control: Control
) -> None:
    bot = make_bot()
    events = Events(bot, "interaction")
    w = emu.world
    async with running_bot(emu, bot):
        body = {
            "channel_id": w.channel_id("general"),
            "user_id": w.user_id("alice"),
            "name": "event create",
            "options": {"name": "Party", "start": "tomorrow 18:00"},
        }
        sent = await control.ok("POST", "interactions", body)
        (interaction,) = await events.wait("interaction", lambda i: i.id == int(sent["id"]))
        assert interaction.data["name"] == "event"
        (sub,) = interaction.data["options"]
        assert (sub["name"], sub["type"]) == ("create", 1)
        assert {o["name"]: o["value"] for o in sub["options"]} == {
            "name": "Party",
            "start": "tomorrow 18:00",
        }
