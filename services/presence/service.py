"""The presence service: the bot's activity text and online/idle/dnd status.

Listens to: `discord.guild.counts` (member and online numbers) and
`discord.guild.ready` (a reconnect: the presence must be sent again).
Does: every `interval_s` (at least 15 s) takes the next template with
the newest numbers (rotation.py) and a status from the supervisor's view of the
services: idle while degraded, dnd while a critical service is FATAL. Health is
polled every `health_poll_s`, so a change shows without waiting a whole interval.
Sends: SetPresence to the gateway when it would change anything; a failed one is
simply superseded by the next tick's newer value. Asks the supervisor for its
status and the gateway for counts when no event has brought them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import anyio
from loguru import logger

from protocol.breaker import BreakerOpen
from protocol.channel import RemoteError, RequestTimeout
from protocol.discord import CountsRequest, GuildCounts, GuildReady, SetPresence
from protocol.messages import StatusRequest
from protocol.runtime import Service
from services.presence.rotation import (
    MIN_INTERVAL_S,
    Rotation,
    clamp_interval,
    presence_status,
    uptime_text,
)

GATEWAY = "gateway"
SUPERVISOR = "supervisor"
UNREACHABLE = (RequestTimeout, BreakerOpen, RemoteError)
DEFAULT_TEMPLATES = ["{members:,} members", "{online} online", "/ask me anything", "up {uptime}"]
COUNT_FIELDS = ("members", "humans", "bots", "online", "bans")


class Presence:
    def __init__(self, service: Service, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.monotonic = monotonic
        self.values: dict[str, Any] = {}
        self.counts_at: float | None = None
        self.status = "online"
        self.last_sent: tuple[str, str | None] | None = None
        self.sent_at = -math.inf
        self.configure({})

    def configure(self, settings: dict[str, Any]) -> None:
        self.interval_s = clamp_interval(settings.get("interval_s", 60))
        self.refresh_s = float(settings.get("refresh_s", 300))
        self.rotation = Rotation(settings.get("templates") or DEFAULT_TEMPLATES)
        self.activity_type = str(settings.get("activity_type", "custom"))
        self.health_poll_s = float(settings.get("health_poll_s", 5))

    # --- what it listens to ---------------------------------------------------------

    async def on_counts(self, msg: GuildCounts) -> None:
        self.learn_counts(msg.to_body())

    async def on_guild_ready(self, msg: GuildReady) -> None:
        """A fresh gateway session starts with no presence: send ours again."""
        self.last_sent = None

    def learn_counts(self, body: dict[str, Any]) -> None:
        self.values.update({k: body[k] for k in COUNT_FIELDS if body.get(k) is not None})
        self.counts_at = self.monotonic()

    # --- what it does ---------------------------------------------------------------

    async def rotate(self) -> None:
        """The next template every interval; a change of health (idle at start-up,
        dnd on a FATAL) shows sooner, but never within 15 s of the previous update."""
        last_tick = -math.inf
        while True:
            if self.monotonic() - last_tick >= self.interval_s:
                last_tick = self.monotonic()
                await self.tick()
            else:
                await self.refresh_status()
                shown = self.last_sent[0] if self.last_sent else self.status
                if shown != self.status and self.monotonic() - self.sent_at >= MIN_INTERVAL_S:
                    last_tick = self.monotonic()
                    await self.tick()
            await anyio.sleep(self.health_poll_s)

    async def tick(self) -> SetPresence | None:
        """One step of the rotation; returns what was sent, if anything."""
        await self.refresh_status()
        if self.counts_at is None or self.monotonic() - self.counts_at >= self.refresh_s:
            await self.refresh_counts()
        activity = self.rotation.next(self.values)
        if (self.status, activity) == self.last_sent:
            return None
        return await self.send(SetPresence(self.status, activity, self.activity_type))

    async def refresh_status(self) -> None:
        """online, idle or dnd from the supervisor; unchanged while it does not answer."""
        try:
            status = await self.service.call(SUPERVISOR, StatusRequest(), timeout=2)
        except UNREACHABLE as exc:
            logger.info("supervisor status unavailable: {}", exc)
            return
        self.status = presence_status(status)
        self.values["uptime"] = uptime_text((status.get("supervisor") or {}).get("uptime_s"))

    async def refresh_counts(self) -> None:
        try:
            self.learn_counts(await self.service.call(GATEWAY, CountsRequest(), timeout=10))
        except UNREACHABLE as exc:
            logger.info("counts unavailable: {}", exc)

    # --- what it sends --------------------------------------------------------------

    async def send(self, presence: SetPresence) -> SetPresence | None:
        try:
            await self.service.call(GATEWAY, presence, timeout=5)
        except UNREACHABLE as exc:
            logger.info("presence not sent (the next tick sends a newer one): {}", exc)
            return None
        self.last_sent = (presence.status, presence.activity)
        self.sent_at = self.monotonic()
        return presence


def build(monotonic: Callable[[], float] = time.monotonic) -> tuple[Service, Presence]:
    """A fresh service and its state (tests build one per simulated process run)."""
    service = Service("presence")
    presence = Presence(service, monotonic)
    service.event(GuildCounts)(presence.on_counts)
    service.event(GuildReady)(presence.on_guild_ready)

    @service.setup
    async def configure() -> None:
        presence.configure(service.settings)

    service.task(presence.rotate)
    return service, presence


def create_service() -> Service:
    return build()[0]
