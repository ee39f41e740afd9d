"""``DiscordEmulator``: one aiohttp server for REST, the gateway websocket and ``/_sandbox/``.

Usage::

    emu = DiscordEmulator(host="127.0.0.1", port=0)   # port 0 picks a free port
    await emu.start()
    discord.http.Route.API_BASE_URL = emu.api_base
    ...
    await emu.stop()

``stop()`` closes every websocket with 1001 before the server goes away: an aiohttp server
that just stops leaves py-cord waiting up to 60 s for a frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from .control import ControlApi
from .gateway import Gateway
from .ratelimit import Clock
from .rest import RestApi
from .world import World

log = logging.getLogger(__name__)

GATEWAY_PATH = "/gateway"


class DiscordEmulator:
    """A local stand-in for Discord that the real py-cord client can log in to."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
        *,
        token: str = "sandbox-token",
        llm_url: str | None = None,
        global_limit: int | None = 50,
    ) -> None:
        self.host = host
        self.port = port
        self.clock = clock or Clock()
        self.token = token
        #: Shown in ``GET /_sandbox/state``; the sandbox runner fills it in.
        self.llm_url = llm_url
        self.world = World()
        self.world.now = self.clock.now
        self.world.wall = self.clock.wall
        #: Called with the seconds after each ``POST /_sandbox/clock``: the sandbox moves
        #: every service's clock with the emulator's (``Supervisor.advance_clocks``).
        self.on_clock_advance: Callable[[float], Awaitable[None]] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.gateway = Gateway(self.world, self.clock, lambda: self.token)
        self.world.dispatch = self.gateway.dispatch
        self.rest = RestApi(
            self.world,
            self.gateway,
            self.clock,
            lambda: self.token,
            lambda: self.gateway_url,
            global_limit=global_limit,
        )
        self.control = ControlApi(self)
        #: More routes on the same server (the sandbox's web page), added at ``start()``.
        self.extra_routes: list[Callable[[web.Application], None]] = []
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}{GATEWAY_PATH}"

    def _make_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self.control.middleware, self.rest.middleware],
            client_max_size=32 * 1024 * 1024,
        )
        app.router.add_get(GATEWAY_PATH, self.gateway.handle)
        self.control.add_routes(app)
        self.rest.add_routes(app)
        for add_routes in self.extra_routes:
            add_routes(app)
        return app

    async def start(self) -> None:
        """Bind and serve; with port 0 the chosen port is in ``self.port`` afterwards."""
        if self._runner is not None:
            raise RuntimeError("emulator already started")
        runner = web.AppRunner(self._make_app(), handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        self.gateway.url = self.gateway_url
        self.rest.cdn_base = self.base_url
        self._ticker = asyncio.create_task(self._tick())
        log.info("discord emulator on %s", self.base_url)

    async def _tick(self) -> None:
        """What Discord does as time passes by itself: polls end at their expiry."""
        while True:
            await asyncio.sleep(0.5)
            try:
                self.world.finalize_due_polls()
            except Exception:  # a bug here must not stop time
                log.exception("finalizing polls failed")

    async def advance(self, seconds: float) -> None:
        """Move the emulator's clock, end what is due, and tell the bot's clocks."""
        self.clock.advance(seconds)
        self.world.finalize_due_polls()
        if self.on_clock_advance is not None:
            await self.on_clock_advance(seconds)

    async def stop(self) -> None:
        """Close websockets with 1001 first, then the server. Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.gateway.close_all(1001)
        await runner.cleanup()

    async def __aenter__(self) -> DiscordEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
