"""Gateway behaviour: RESUME with replay, invalid sessions, bad tokens, shutdown."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import discord
import pytest

from sandbox.discord import DiscordEmulator
from tests.support.emulator import (  # noqa: F401 - the emu, http, control fixtures
    TIMEOUT,
    Control,
    Events,
    close_bot,
    control_fixture,
    emu_fixture,
    http_fixture,
    make_bot,
    running_bot,
    running_emulator,
)

pytestmark = pytest.mark.anyio


async def test_disconnect_4000_resumes_and_replays_exactly_once(
    emu: DiscordEmulator, control: Control
) -> None:
    bot = make_bot()
    events = Events(bot, "message", "resumed")
    w = emu.world
    general, alice = w.channel_id("general"), w.user_id("alice")
    async with running_bot(emu, bot):
        before = await control.ok("GET", "gateway/sessions")
        assert before["identifies"] == 1 and before["resumes"] == 0
        assert (await control.ok("POST", "gateway/disconnect", {"code": 4000}))["closed"] == 1
        # these land in the session buffer only if the client has not resumed yet, so to be
        # sure the replay path is exercised, disconnect again and post in the same loop tick
        await control.poll("gateway/sessions", lambda d: d["resumes"] == 1)
        emu.gateway.disconnect(4000)
        ids = [
            int(w.post_message(general, alice, f"m{i}").id)  # before the client can react
            for i in range(3)
        ]
        await events.wait("resumed")
        for mid in ids:
            await events.wait("message", lambda m, mid=mid: m.id == mid)
        after = await control.poll("gateway/sessions", lambda d: d["resumes"] == 2)
        assert after["identifies"] == 1 and after["replayed"] >= 3
        # one more after the resume, then check nothing arrived twice
        late = await control.ok(
            "POST", "messages", {"channel_id": general, "author_id": alice, "content": "late"}
        )
        await events.wait("message", lambda m: m.id == int(late["id"]))
        got = [m.id for (m,) in events.seen["message"]]
        assert got == [*ids, int(late["id"])]


async def test_invalidate_makes_the_client_identify_again(
    emu: DiscordEmulator, control: Control
) -> None:
    bot = make_bot()
    events = Events(bot, "ready")
    async with running_bot(emu, bot):
        bot.commands_synced.clear()  # the re-IDENTIFY runs on_connect (a sync) again
        assert (await control.ok("POST", "gateway/invalidate"))["sessions"] == 1
        await control.ok("POST", "gateway/disconnect", {"code": 4000})
        data = await control.poll("gateway/sessions", lambda d: d["identifies"] == 2)
        assert data["refused_resumes"] == 1 and data["resumes"] == 0
        await events.wait("ready")  # a fresh READY after the re-IDENTIFY
        async with asyncio.timeout(TIMEOUT):
            await bot.commands_synced.wait()
        assert bot.get_guild(int(emu.world.guild_id)) is not None


async def _recv(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def test_resume_from_a_new_process_replays_missed_events(
    emu: DiscordEmulator, http: aiohttp.ClientSession
) -> None:
    """A raw client stands in for a restarted process that kept session_id and seq."""
    w = emu.world
    url = emu.gateway_url + "?encoding=json&v=10&compress=zlib-stream"
    async with http.ws_connect(url) as ws:
        assert (await _recv(ws))["op"] == 10
        await ws.send_json({"op": 2, "d": {"token": emu.token, "intents": 1 << 9 | 1 << 15}})
        ready = await _recv(ws)
        assert ready["t"] == "READY" and ready["s"] == 1
        guild = await _recv(ws)
        assert guild["t"] == "GUILD_CREATE"
        assert guild["d"]["member_count"] == len(guild["d"]["members"]) == 3
        session_id, seq = ready["d"]["session_id"], guild["s"]
    # the "process" is gone; a user keeps talking
    posted = [
        w.post_message(w.channel_id("general"), w.user_id("bob"), f"while away {i}").id
        for i in range(2)
    ]
    async with http.ws_connect(url) as ws:
        assert (await _recv(ws))["op"] == 10
        resume = {"session_id": session_id, "seq": seq, "token": emu.token}
        await ws.send_json({"op": 6, "d": resume})
        replayed = [await _recv(ws), await _recv(ws)]
        assert [e["t"] for e in replayed] == ["MESSAGE_CREATE"] * 2
        assert [e["d"]["id"] for e in replayed] == posted
        assert [e["s"] for e in replayed] == [seq + 1, seq + 2]
        assert (await _recv(ws))["t"] == "RESUMED"
        await ws.send_json({"op": 1, "d": seq + 3})
        assert (await _recv(ws))["op"] == 11
    async with http.ws_connect(url) as ws:
        await _recv(ws)
        await ws.send_json({"op": 6, "d": {**resume, "session_id": "nope"}})
        assert await _recv(ws) == {"op": 9, "d": False}


async def test_bad_token_gets_401_and_close_4004(
    emu: DiscordEmulator, http: aiohttp.ClientSession
) -> None:
    async with http.get(
        f"{emu.api_base}/users/@me", headers={"Authorization": "Bot wrong"}
    ) as resp:
        assert resp.status == 401
        assert await resp.json() == {"message": "401: Unauthorized", "code": 0}
    async with http.ws_connect(emu.gateway_url) as ws:
        await _recv(ws)
        await ws.send_json({"op": 2, "d": {"token": "wrong", "intents": 0}})
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4004
    bot = make_bot()
    with pytest.raises(discord.LoginFailure):
        async with asyncio.timeout(TIMEOUT):
            await bot.login("wrong")
    await bot.close()


async def test_presence_op3_is_recorded(emu: DiscordEmulator, control: Control) -> None:
    async with running_bot(emu) as bot:
        await bot.change_presence(status=discord.Status.idle, activity=discord.Game("chess"))
        presence = await control.poll("presence", lambda p: p["status"] == "idle")
        assert presence["activities"][0]["name"] == "chess"


async def test_stop_with_a_connected_bot_does_not_hang() -> None:
    """stop() closes sockets with 1001 first, so the client notices at once; close() is quick."""
    async with running_emulator() as emulator:
        bot = make_bot()
        task = asyncio.create_task(bot.start(emulator.token))
        async with asyncio.timeout(TIMEOUT):
            await bot.wait_until_ready()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await emulator.stop()
        await close_bot(bot, task)
        assert loop.time() - started < 3
        assert bot.is_closed()
