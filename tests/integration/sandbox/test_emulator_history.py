"""The emulator's message history and ban list, paged as Discord pages them, through the
real py-cord HTTP client: newest first on every page (`after` pages too), limit 1-100,
one anchor at a time, no guild_id in REST message objects; bans sorted and paged by id."""

from __future__ import annotations

import discord
import pytest

from sandbox.discord import DiscordEmulator
from tests.support.emulator import (  # noqa: F401 - the emu, http, control fixtures
    Control,
    control_fixture,
    emu_fixture,
    http_fixture,
    running_bot,
)

pytestmark = pytest.mark.anyio


def ids(page: list[dict]) -> list[int]:
    return [int(m["id"]) for m in page]


async def test_history_pages_are_newest_first_whatever_the_anchor(emu: DiscordEmulator) -> None:
    w = emu.world
    general, alice = w.channel_id("general"), w.user_id("alice")
    posted = [int(w.post_message(general, alice, f"m{i}").id) for i in range(250)]
    async with running_bot(emu) as bot:
        http = bot.http
        assert ids(await http.logs_from(general, 100)) == posted[-100:][::-1]
        default = await http.request(
            discord.http.Route("GET", "/channels/{channel_id}/messages", channel_id=general)
        )
        assert ids(default) == posted[-50:][::-1]  # limit defaults to 50
        after = await http.logs_from(general, 100, after=posted[9])
        assert ids(after) == posted[10:110][::-1]  # the 100 right after, newest first
        before = await http.logs_from(general, 5, before=posted[100])
        assert ids(before) == posted[95:100][::-1]
        around = await http.logs_from(general, 4, around=posted[50])
        assert sorted(ids(around)) == posted[48:52]
        # Paging forward, sorting each page by id, reaches every message exactly once.
        seen: list[int] = []
        cursor = 0
        while True:
            page = sorted(ids(await http.logs_from(general, 100, after=cursor)))
            seen += page
            if len(page) < 100:
                break
            cursor = page[-1]
        assert seen == posted
        assert await http.logs_from(general, 100, after=posted[-1]) == []
        one = (await http.logs_from(general, 1))[0]
        assert "guild_id" not in one and "member" not in one  # REST message objects
        assert one["content"] == "m249" and one["author"]["id"] == alice


async def test_history_limits_and_anchors_are_checked_as_discord_checks_them(
    emu: DiscordEmulator,
) -> None:
    general = emu.world.channel_id("general")
    async with running_bot(emu) as bot:
        for bad in (0, 101):
            with pytest.raises(discord.HTTPException) as info:
                await bot.http.logs_from(general, bad)
            assert (info.value.status, info.value.code) == (400, 50035)
        with pytest.raises(discord.HTTPException) as info:
            await bot.http.logs_from(general, 10, after="yesterday")
        assert info.value.status == 400
        with pytest.raises(discord.NotFound):
            await bot.http.logs_from("1", 10)


async def test_bans_are_listed_by_user_id_and_paged_with_after(
    emu: DiscordEmulator, control: Control
) -> None:
    w = emu.world
    users = [w.add_member(f"spammer{i}").id for i in range(5)]
    for uid in reversed(users):
        w.ban(uid)
    async with running_bot(emu) as bot:
        everyone = await bot.http.get_bans(w.guild_id, limit=1000)
        assert [b["user"]["id"] for b in everyone] == users
        page = await bot.http.get_bans(w.guild_id, limit=2, after=users[1])
        assert [b["user"]["id"] for b in page] == users[2:4]
        page = await bot.http.get_bans(w.guild_id, limit=2, before=users[3])
        assert [b["user"]["id"] for b in page] == users[1:3]
