"""Slash commands: sync on READY, INTERACTION_CREATE from the control API, responses recorded."""
# no "from __future__ import annotations" here: py-cord reads slash option types from
# the live annotations, and string annotations break its option parsing.

import discord
import pytest

from sandbox.discord import DiscordEmulator
from tests.support.emulator import (  # noqa: F401 - the emu, http, control fixtures
    Control,
    control_fixture,
    emu_fixture,
    http_fixture,
    make_bot,
    running_bot,
)

pytestmark = pytest.mark.anyio


def command_bot(guild_id: str) -> tuple[discord.Bot, dict[str, list[object]]]:
    """A bot with three commands: an immediate, a deferred, and an ephemeral admin check."""
    bot = make_bot()
    calls: dict[str, list[object]] = {"echo": [], "slow": [], "whoami": []}

    @bot.slash_command(name="echo", description="say it back")
    async def echo(ctx: discord.ApplicationContext, text: str) -> None:
        calls["echo"].append(text)
        await ctx.respond(f"echo: {text}")

    @bot.slash_command(name="slow", description="defer then follow up", guild_ids=[int(guild_id)])
    async def slow(ctx: discord.ApplicationContext) -> None:
        calls["slow"].append(ctx.author.id)
        await ctx.defer()
        await ctx.followup.send("done")
        await ctx.followup.send("and more")

    @bot.slash_command(name="whoami", description="ephemeral admin check")
    async def whoami(ctx: discord.ApplicationContext) -> None:
        admin = ctx.author.guild_permissions.administrator
        calls["whoami"].append(admin)
        await ctx.respond(f"admin={admin}", ephemeral=True)

    return bot, calls


async def _responses(control: Control, iid: str, count: int) -> list[dict[str, object]]:
    """The first ``count`` responses of an interaction, once the bot has sent them."""
    data = await control.poll(f"interactions/{iid}", lambda d: len(d["responses"]) >= count)
    return data["responses"]


async def test_commands_sync_and_interactions_get_responses(
    emu: DiscordEmulator, control: Control
) -> None:
    w = emu.world
    bot, calls = command_bot(w.guild_id)
    general, alice, bob = w.channel_id("general"), w.user_id("alice"), w.user_id("bob")
    async with running_bot(emu, bot):
        # sync happens in on_connect; wait for both PUTs to have landed
        cmds = await control.poll("commands", lambda c: c["global"] and c["guild"])
        assert sorted(c["name"] for c in cmds["global"]) == ["echo", "whoami"]
        assert [c["name"] for c in cmds["guild"]] == ["slow"]
        reqs = await control.ok("GET", "requests")
        puts = [r["route"] for r in reqs if r["method"] == "PUT"]
        assert "/applications/{app_id}/commands" in puts
        assert "/applications/{app_id}/guilds/{guild_id}/commands" in puts

        echo = await control.ok(
            "POST",
            "interactions",
            {"channel_id": general, "user_id": bob, "name": "echo", "options": {"text": "hey"}},
        )
        (resp,) = await _responses(control, echo["id"], 1)
        assert calls["echo"] == ["hey"]
        assert resp["kind"] == "callback" and resp["type"] == 4
        assert resp["content"] == "echo: hey" and resp["ephemeral"] is False
        listed = await control.ok("GET", f"channels/{general}/messages")
        assert listed[-1]["content"] == "echo: hey"
        assert listed[-1]["interaction_id"] == echo["id"]

        slow = await control.ok(
            "POST", "interactions", {"channel_id": general, "user_id": alice, "name": "slow"}
        )
        deferred, first, second = await _responses(control, slow["id"], 3)
        assert (deferred["kind"], deferred["type"]) == ("callback", 5)
        assert (first["kind"], first["content"]) == ("followup", "done")
        assert (second["kind"], second["content"]) == ("followup", "and more")

        for user, expect in ((alice, True), (bob, False)):
            who = await control.ok(
                "POST", "interactions", {"channel_id": general, "user_id": user, "name": "whoami"}
            )
            (resp,) = await _responses(control, who["id"], 1)
            assert resp["content"] == f"admin={expect}"
            assert resp["ephemeral"] is True and resp["flags"] & 64
        assert calls["whoami"] == [True, False]
        # ephemeral answers are not channel messages
        listed = await control.ok("GET", f"channels/{general}/messages")
        assert not any(m["content"].startswith("admin=") for m in listed)


async def test_interaction_callback_twice_is_refused(emu: DiscordEmulator, http) -> None:
    """The REST side alone: a second callback gets Discord's 40060."""
    w = emu.world
    inter = w.create_interaction(w.channel_id("general"), w.user_id("bob"), "anything", [])
    url = f"{emu.api_base}/interactions/{inter.id}/{inter.token}/callback?with_response=true"
    body = {"type": 4, "data": {"content": "one"}}
    async with http.post(url, json=body) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
        data = await resp.json()
    assert data["resource"]["message"]["content"] == "one"
    async with http.post(url, json=body) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == 40060
    async with http.post(url.replace(inter.token, "wrong"), json=body) as resp:
        assert resp.status == 404
