"""The emulator refuses what Discord refuses, with Discord's error JSON, to the real py-cord
HTTP client: long or empty messages, edits of other users' messages, bad allowed_mentions,
unknown or expired interaction tokens, a second initial response. And it records every
request's body, so end-to-end tests can check the shapes the bot sends."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import discord
import pytest
from discord.http import Route

from sandbox.discord import DiscordEmulator
from tests.support.emulator import (  # noqa: F401 - the emu, http, control fixtures
    TIMEOUT,
    Control,
    control_fixture,
    emu_fixture,
    http_fixture,
    running_bot,
)

pytestmark = pytest.mark.anyio

NO_PINGS = {"parse": []}


async def refused(call: Any) -> discord.HTTPException:
    with pytest.raises(discord.HTTPException) as info:
        await call
    return info.value


async def last_error(control: Control) -> dict[str, Any]:
    """Discord's error JSON of the last REST call, as the request log keeps it."""
    return (await control.ok("GET", "requests"))[-1]["error"]


def followup(bot: discord.Bot, app_id: str, token: str, **fields: Any) -> Any:
    """Create Followup Message through py-cord's multipart helper (it can set flags)."""
    route = Route(
        "POST",
        "/webhooks/{application_id}/{interaction_token}",
        application_id=app_id,
        interaction_token=token,
    )
    return bot.http.send_multipart_helper(route, files=[], **fields)


async def test_messages_over_2000_characters_or_empty_are_refused(
    emu: DiscordEmulator, control: Control
) -> None:
    general = emu.world.channel_id("general")
    async with running_bot(emu) as bot:
        long = await refused(bot.http.send_message(general, "x" * 2001))
        assert (long.status, long.code) == (400, 50035)
        assert "Must be 2000 or fewer in length." in long.text
        error = await last_error(control)
        assert error["message"] == "Invalid Form Body"
        assert error["errors"]["content"]["_errors"][0]["code"] == "BASE_TYPE_MAX_LENGTH"

        empty = await refused(bot.http.send_message(general, None))
        assert (empty.status, empty.code) == (400, 50006)
        assert empty.text == "Cannot send an empty message"

        fits = await bot.http.send_message(general, "x" * 2000, allowed_mentions=NO_PINGS)
        assert len(fits["content"]) == 2000
        mid = fits["id"]
        too_long = await refused(bot.http.edit_message(general, mid, content="y" * 2001))
        assert too_long.code == 50035
        emptied = await refused(bot.http.edit_message(general, mid, content=""))
        assert emptied.code == 50006
        kept = await bot.http.get_message(general, mid)
        assert kept["content"] == "x" * 2000 and kept["edited_timestamp"] is None
        with_embed = await bot.http.edit_message(general, mid, content="", embeds=[{"title": "t"}])
        assert with_embed["content"] == "" and with_embed["embeds"] == [{"title": "t"}]


async def test_embeds_and_allowed_mentions_are_checked_as_discord_checks_them(
    emu: DiscordEmulator, control: Control
) -> None:
    general, bob = emu.world.channel_id("general"), emu.world.user_id("bob")
    async with running_bot(emu) as bot:
        send = bot.http.send_message
        exclusive = await refused(
            send(general, "hi", allowed_mentions={"parse": ["users"], "users": [bob]})
        )
        assert exclusive.code == 50035
        error = await last_error(control)
        kind = error["errors"]["allowed_mentions"]["_errors"][0]["code"]
        assert kind == "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE"

        await refused(send(general, "hi", allowed_mentions={"parse": ["nobody"]}))
        error = await last_error(control)
        assert error["errors"]["allowed_mentions"]["parse"]["0"]["_errors"][0]["code"] == (
            "BASE_TYPE_CHOICES"
        )

        eleven = await refused(send(general, "hi", embeds=[{"title": "t"}] * 11))
        assert eleven.code == 50035
        title = await refused(send(general, None, embeds=[{"title": "t" * 257}]))
        assert "In embeds.0.title" in title.text

        ok = await send(general, f"<@{bob}>", allowed_mentions={"parse": [], "users": [bob]})
        assert ok["mentions"][0]["id"] == bob


async def test_editing_a_message_someone_else_wrote_is_forbidden(
    emu: DiscordEmulator, control: Control
) -> None:
    w = emu.world
    general = w.channel_id("general")
    theirs = w.post_message(general, w.user_id("alice"), "mine")
    async with running_bot(emu) as bot:
        forbidden = await refused(bot.http.edit_message(general, theirs.id, content="not yours"))
        assert (forbidden.status, forbidden.code) == (403, 50005)
        assert w.messages[theirs.id].content == "mine"
        # suppressing embeds (flags only) on another user's message is allowed, as on Discord
        await bot.http.edit_message(general, theirs.id, flags=4)


async def test_interaction_tokens_unknown_reused_or_expired_are_refused(
    emu: DiscordEmulator, control: Control
) -> None:
    w = emu.world
    app = w.bot_user_id
    inter = w.create_interaction(w.channel_id("general"), w.user_id("bob"), "ask", [])
    async with running_bot(emu) as bot:
        http = bot.http
        unknown = await refused(http.create_interaction_response("1" * 18, "nope", type=4))
        assert (unknown.status, unknown.code) == (404, 10062)
        early = await refused(followup(bot, app, inter.token, content="too soon"))
        assert (early.status, early.code) == (404, 10015), "nothing to follow up yet"

        await http.create_interaction_response(inter.id, inter.token, type=5)
        again = await refused(
            http.create_interaction_response(inter.id, inter.token, type=4, data={"content": "x"})
        )
        assert (again.status, again.code) == (400, 40060)

        other_app = await refused(followup(bot, "1" * 18, inter.token, content="hi"))
        assert (other_app.status, other_app.code) == (404, 10015)
        invalid = await refused(followup(bot, app, "not-a-token", content="hi"))
        assert (invalid.status, invalid.code) == (401, 50027)

        edited = await http.edit_original_interaction_response(app, inter.token, content="ok")
        assert edited["content"] == "ok"

        await control.ok("POST", "clock", {"advance_s": 901})
        expired = await refused(followup(bot, app, inter.token, content="late"))
        assert (expired.status, expired.code) == (401, 50027)
        late_edit = await refused(
            http.edit_original_interaction_response(app, inter.token, content="late")
        )
        assert late_edit.code == 50027
    assert [r["kind"] for r in inter.responses] == ["callback", "edit"]


async def test_followups_always_return_their_message_and_carry_flags(
    emu: DiscordEmulator, control: Control
) -> None:
    """Create Followup Message is Execute Webhook with `wait` always true; the first
    follow-up of a deferred response takes the deferral's flags, later ones their own."""
    w = emu.world
    app = w.bot_user_id
    inter = w.create_interaction(w.channel_id("general"), w.user_id("bob"), "ask", [])
    async with running_bot(emu) as bot:
        await bot.http.create_interaction_response(inter.id, inter.token, type=5)
        first = await followup(bot, app, inter.token, content="first", flags=64)
        assert first["content"] == "first" and first["flags"] == 0
        secret = await followup(bot, app, inter.token, content="second", flags=64)
        assert secret["flags"] == 64
        plain = await bot.http.create_followup_message(app, inter.token, files=[], content="3rd")
        assert plain["id"] and plain["webhook_id"] == app
    posts = [
        r for r in await control.ok("GET", "requests") if r["route"] == "/webhooks/{app_id}/{token}"
    ]
    assert [r["query"] for r in posts] == ["", "", ""] and all(r["status"] == 200 for r in posts)
    assert [r["kind"] for r in inter.responses] == ["callback", "followup", "followup", "followup"]
    assert [r["ephemeral"] for r in inter.responses[1:]] == [False, True, False]


async def test_the_request_log_keeps_bodies_forms_files_and_errors(
    emu: DiscordEmulator, control: Control
) -> None:
    general = emu.world.channel_id("general")
    async with running_bot(emu) as bot:
        await bot.http.send_message(general, "json body", allowed_mentions=NO_PINGS)
        await bot.http.send_files(
            general, files=[discord.File(__file__, filename="proof.py")], content="with a file"
        )
        await refused(bot.http.send_message(general, None))
    log = await control.ok("GET", "requests?method=post&route=/channels/{channel_id}/messages")
    plain, upload, empty = log
    assert plain["body"] == {"content": "json body", "allowed_mentions": NO_PINGS}
    assert plain["form"] is False and plain["files"] == [] and plain["error"] is None
    assert upload["form"] is True and upload["files"] == ["proof.py"]
    assert upload["body"]["content"] == "with a file"
    assert empty["status"] == 400 and empty["error"] == {
        "message": "Cannot send an empty message",
        "code": 50006,
    }
    assert all(set(r) >= {"t", "method", "path", "status"} for r in log)


async def test_an_invalid_presence_update_closes_the_socket_with_4002(
    emu: DiscordEmulator, http: aiohttp.ClientSession, control: Control
) -> None:
    async with http.ws_connect(emu.gateway_url) as ws:
        await ws.receive()  # HELLO
        await ws.send_json({"op": 2, "d": {"token": emu.token, "intents": 0}})
        await ws.receive()  # READY
        await ws.receive()  # GUILD_CREATE
        valid = {
            "since": None,
            "activities": [{"type": 0, "name": "chess"}],
            "status": "dnd",
            "afk": False,
        }
        await ws.send_json({"op": 3, "d": valid})
        await control.poll("presence", lambda p: p["status"] == "dnd")
        await ws.send_json({"op": 3, "d": {"status": "asleep"}})
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4002
    sessions = await control.ok("GET", "gateway/sessions")
    assert sessions["presence_updates"] == 2
    assert (await control.ok("GET", "presence"))["status"] == "dnd", "the invalid one is ignored"


async def test_an_outage_refuses_new_gateway_connections_until_it_ends(
    emu: DiscordEmulator, http: aiohttp.ClientSession, control: Control
) -> None:
    async with running_bot(emu):
        closed = await control.ok("POST", "gateway/disconnect", {"code": 4000, "refuse_s": 60})
        assert closed == {"closed": 1}
        await control.poll("gateway/sessions", lambda s: s["refused_connections"] >= 1)
        async with http.get(emu.gateway_url) as resp:
            assert resp.status == 503
        await control.ok("POST", "clock", {"advance_s": 61})
        await control.poll("gateway/sessions", lambda s: any(x["connected"] for x in s["sessions"]))
    status, error = await control.call("POST", "gateway/disconnect", {"refuse_s": -1})
    assert status == 400 and "refuse_s" in error["error"]


async def test_redeliver_sends_the_same_interaction_again(
    emu: DiscordEmulator, http: aiohttp.ClientSession, control: Control
) -> None:
    w = emu.world
    async with http.ws_connect(emu.gateway_url) as ws:
        await ws.receive()  # HELLO
        await ws.send_json({"op": 2, "d": {"token": emu.token, "intents": 0}})
        await ws.receive()  # READY
        await ws.receive()  # GUILD_CREATE
        inter = w.create_interaction(w.channel_id("general"), w.user_id("bob"), "ask", [])
        await control.ok("POST", f"interactions/{inter.id}/redeliver", {})
        frames = [json.loads((await asyncio.wait_for(ws.receive(), TIMEOUT)).data) for _ in "12"]
    assert [f["t"] for f in frames] == ["INTERACTION_CREATE"] * 2
    assert frames[0]["d"] == frames[1]["d"] and frames[1]["s"] == frames[0]["s"] + 1
    status, _ = await control.call("POST", "interactions/999/redeliver", {})
    assert status == 404
