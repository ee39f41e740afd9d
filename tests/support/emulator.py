"""Helpers for the emulator tests: a running emulator, a real py-cord bot on it, event capture.

The bot runs in the test's own event loop. ``running_bot`` waits for on_ready (or fails fast
if start() dies), and on exit closes the bot and swallows py-cord's 'Session is closed'
RuntimeError that awaiting the start task raises after ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import discord
import pytest

from sandbox.discord import DiscordEmulator

TIMEOUT = 5.0


def make_intents() -> discord.Intents:
    intents = discord.Intents.default()
    intents.members = True
    intents.presences = True
    intents.message_content = True
    return intents


def make_bot(**kwargs: Any) -> discord.Bot:
    """A discord.Bot tuned for tests: fast ready, no identify sleep, no default sounds wait."""
    kwargs.setdefault("intents", make_intents())
    kwargs.setdefault("guild_ready_timeout", 0.05)
    bot = discord.Bot(**kwargs)

    async def no_identify_sleep(shard_id: int | None, *, initial: bool = False) -> None:
        return None

    bot.before_identify_hook = no_identify_sleep  # type: ignore[method-assign]
    # on_connect syncs commands concurrently with on_ready; closing the bot mid-sync makes
    # py-cord log "Connector is closed", so running_bot waits for the first sync to end
    synced = asyncio.Event()
    sync = bot.sync_commands

    async def sync_and_flag(*args: Any, **kw: Any) -> None:
        try:
            await sync(*args, **kw)
        finally:
            synced.set()

    bot.sync_commands = sync_and_flag  # type: ignore[method-assign]
    bot.commands_synced = synced  # type: ignore[attr-defined]
    return bot


class Events:
    """Records chosen py-cord events so a test can await one that matches a condition."""

    def __init__(self, bot: discord.Client, *names: str) -> None:
        self.seen: dict[str, list[tuple[Any, ...]]] = {n: [] for n in names}
        self._changed = asyncio.Event()
        for name in names:
            bot.add_listener(self._listener(name), f"on_{name}")

    def _listener(self, name: str) -> Callable[..., Any]:
        async def listener(*args: Any) -> None:
            self.seen[name].append(args)
            self._changed.set()

        return listener

    async def wait(
        self, name: str, check: Callable[..., bool] = lambda *a: True, timeout: float = TIMEOUT
    ) -> tuple[Any, ...]:
        """The first recorded ``name`` event whose args satisfy ``check`` (waits if needed)."""
        async with asyncio.timeout(timeout):
            while True:
                for args in self.seen[name]:
                    if check(*args):
                        return args
                self._changed.clear()
                await self._changed.wait()


class Control:
    """Thin JSON client for /_sandbox/ (answers (status, json))."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self.http = http
        self.base = base_url + "/_sandbox/"

    async def call(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        if body is not None:
            kw["json"] = body
        async with self.http.request(method, self.base + path, **kw) as resp:
            assert resp.headers["Content-Type"] == "application/json"
            return resp.status, await resp.json()

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data = await self.call(method, path, body)
        assert status == 200, (status, data)
        return data

    async def state(self) -> dict[str, Any]:
        return await self.ok("GET", "state")

    async def poll(self, path: str, check: Callable[[Any], bool]) -> Any:
        """GET ``path`` until ``check`` accepts the answer (things the bot does asynchronously)."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                data = await self.ok("GET", path)
                if check(data):
                    return data
                await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def running_emulator(**kwargs: Any) -> AsyncIterator[DiscordEmulator]:
    emu = DiscordEmulator(host="127.0.0.1", port=0, **kwargs)
    await emu.start()
    old_base = discord.http.Route.API_BASE_URL
    discord.http.Route.API_BASE_URL = emu.api_base
    try:
        yield emu
    finally:
        discord.http.Route.API_BASE_URL = old_base
        await emu.stop()


@contextlib.asynccontextmanager
async def running_bot(
    emu: DiscordEmulator, bot: discord.Bot | None = None
) -> AsyncIterator[discord.Bot]:
    """Start ``bot`` against ``emu``, wait for on_ready, close it on exit."""
    bot = bot or make_bot()
    task = asyncio.create_task(bot.start(emu.token))
    ready = asyncio.create_task(bot.wait_until_ready())
    try:
        done, _ = await asyncio.wait({task, ready}, timeout=TIMEOUT, return_when="FIRST_COMPLETED")
        if task in done:
            task.result()  # re-raise why the bot stopped
            pytest.fail("bot.start() returned before on_ready")
        if ready not in done:
            pytest.fail("on_ready did not fire in time")
        synced: asyncio.Event | None = getattr(bot, "commands_synced", None)
        if synced is not None and bot.auto_sync_commands:
            async with asyncio.timeout(TIMEOUT):
                await synced.wait()
        yield bot
    finally:
        ready.cancel()
        await close_bot(bot, task)


async def close_bot(bot: discord.Client, task: asyncio.Task[None]) -> None:
    """bot.close(), then reap the start task ('Session is closed' is expected there)."""
    async with asyncio.timeout(TIMEOUT):
        await bot.close()
        with contextlib.suppress(RuntimeError, asyncio.CancelledError):
            await task


@pytest.fixture(name="emu")
async def emu_fixture() -> AsyncIterator[DiscordEmulator]:
    async with running_emulator() as emulator:
        yield emulator


@pytest.fixture(name="http")
async def http_fixture() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(name="control")
async def control_fixture(emu: DiscordEmulator, http: aiohttp.ClientSession) -> Control:
    return Control(http, emu.base_url)
