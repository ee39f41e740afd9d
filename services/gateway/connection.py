"""The Discord connection: py-cord's client, with two small additions.

1. Every DISPATCH frame is handed raw, in order and with its sequence number,
   to the client's `on_dispatch` (`GatewaySocket.log_receive` is py-cord's hook
   for the decoded frame), so the service converts Discord's own JSON and never
   depends on py-cord's cache.
2. A new process can RESUME the session its predecessor left (`resume_from`):
   py-cord only resumes within one process, so its first connect is turned
   into a RESUME when a saved session exists.

py-cord keeps doing what it is good at: heartbeats, reconnects, RESUME within
the process, and REST with Discord's rate limits (`client.http`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import discord
import discord.client
from discord.gateway import DiscordWebSocket
from loguru import logger

from services.gateway.session import SavedSession

RawSink = Callable[[dict[str, Any]], None]


class GatewaySocket(DiscordWebSocket):
    sink: RawSink | None = None  # the client's on_dispatch, set in from_client

    def log_receive(self, msg: Any, /) -> None:
        sink = self.sink
        if sink is None:
            return
        try:
            payload = json.loads(msg)
        except (TypeError, ValueError):
            return  # py-cord will report the bad frame itself
        if isinstance(payload, dict) and payload.get("op") == self.DISPATCH:
            sink(payload)

    async def received_message(self, msg: Any, /) -> None:
        """py-cord's parsers trust Discord's payloads; one malformed event must not take
        the connection down (and then crash-loop as RESUME replays it)."""
        try:
            await super().received_message(msg)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            logger.error(
                "py-cord could not parse a gateway event ({}: {}); skipped", type(exc).__name__, exc
            )

    @classmethod
    async def from_client(cls, client: Any, *, initial: bool = False, **params: Any) -> Any:
        saved: SavedSession | None = getattr(client, "resume_from", None)
        if saved is not None:
            logger.info("resuming session {} at seq {}", saved.session_id[:8], saved.seq)
            params.update(session=saved.session_id, sequence=saved.seq, resume=True)
            if saved.resume_url:  # Discord asks for resumes to go to this URL
                params["gateway"] = f"{saved.resume_url}?encoding=json&v=10&compress=zlib-stream"
        ws = await super().from_client(client, initial=initial, **params)
        # Only once a socket is open: a first connect that fails (an outage) tries to RESUME
        # again rather than identifying afresh and losing what was dispatched meanwhile.
        client.resume_from = None
        ws.sink = getattr(client, "on_dispatch", None)
        return ws


# py-cord's Client.connect() builds its socket from this module global.
discord.client.DiscordWebSocket = GatewaySocket  # type: ignore[misc]


def intents() -> discord.Intents:
    i = discord.Intents.default()
    i.members = True
    i.presences = True
    i.message_content = True
    return i


class GatewayClient(discord.Client):
    def __init__(
        self,
        *,
        identify_delay_s: float,
        on_state: Callable[[str], None],
        on_dispatch: RawSink,
        **options: Any,
    ) -> None:
        super().__init__(intents=intents(), cache_default_sounds=False, **options)
        self.identify_delay_s = identify_delay_s
        self.on_dispatch = on_dispatch
        self.resume_from: SavedSession | None = None
        self._on_state = on_state

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        # Discord asks for a pause before re-identifying after an invalid session.
        if not initial:
            await asyncio.sleep(self.identify_delay_s)

    async def on_disconnect(self) -> None:
        self._on_state("disconnected")

    def latency_ms(self) -> float | None:
        lat = self.latency
        return None if lat != lat or lat == float("inf") else round(lat * 1000, 1)
