"""Login against the emulator with the real py-cord client: READY, caches, command sync."""

from __future__ import annotations

from datetime import UTC, datetime

import discord
import pytest

from sandbox.discord import World
from tests.support.emulator import (  # noqa: F401 - the emu, http, control fixtures
    Control,
    control_fixture,
    emu_fixture,
    http_fixture,
    running_bot,
)

pytestmark = pytest.mark.anyio


async def test_login_ready_caches_guild(emu, control: Control) -> None:
    async with running_bot(emu) as bot:
        guild = bot.get_guild(int(emu.world.guild_id))
        assert guild is not None
        assert bot.user is not None and bot.user.id == int(emu.world.bot_user_id)
        names = {c.name for c in guild.channels}
        assert {"general", "admin", "stats", "Members", "Online", "Bans"} <= names
        alice = guild.get_member(int(emu.world.user_id("alice")))
        assert alice is not None and alice.guild_permissions.administrator
        assert guild.owner_id == alice.id
        bob = guild.get_member(int(emu.world.user_id("bob")))
        assert bob is not None and not bob.guild_permissions.administrator
        assert guild.member_count == len(guild.members) == 3
    reqs = await control.ok("GET", "requests")
    routes = [(r["method"], r["route"]) for r in reqs]
    assert ("GET", "/users/@me") in routes
    assert ("GET", "/gateway") in routes
    assert ("GET", "/soundboard-default-sounds") in routes


async def test_world_ids_are_deterministic_snowflakes(emu) -> None:
    """The same world has the same ids on every start, with a fixed creation time."""
    again = World()
    w = emu.world
    assert (again.guild_id, again.bot_user_id) == (w.guild_id, w.bot_user_id)
    assert [c.id for c in again.channels.values()] == [c.id for c in w.channels.values()]
    assert again.user_id("bob") == w.user_id("bob")
    created = discord.utils.snowflake_time(int(w.guild_id))
    assert created == datetime(2024, 1, 1, tzinfo=UTC)
    kinds = {c.name: c.type for c in w.channels.values()}
    assert kinds == {"general": 0, "admin": 0, "stats": 0, "Members": 2, "Online": 2, "Bans": 2}
