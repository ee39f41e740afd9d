"""The presence service: the bot's activity text and online/idle/dnd status.

Listens to: `supervisor.status` (every service's state, pushed at each change),
`discord.guild.counts` (member and online numbers) and `discord.guild.ready` (a new
gateway session starts without a presence: it must be sent again). All three are
retained, so they arrive at start too.
Does: every `interval_s` (at least 15 s) takes the next template with the newest
numbers (rotation.py) and a status from the services' health: idle while
degraded, dnd while a critical service is FATAL. A change of health shows at
once, but never within 15 s of the previous update.
Sends: SetPresence to the gateway when it would change anything; a failed one is
simply superseded by the next update's newer value.
"""

from __future__ import annotations

import math

import anyio
from loguru import logger

from protocol.channel import UNREACHABLE
from protocol.clock import Clock, Wakeup
from protocol.discord import COUNT_FIELDS, GATEWAY, GuildCounts, GuildReady, SetPresence
from protocol.messages import SupervisorStatus
from protocol.runtime import Service
from services.presence.rotation import MIN_INTERVAL_S, Rotation, presence_status, uptime_text
from services.presence.settings import Settings

# The first update waits this long at most for the health and the numbers to show.
STARTUP_WAIT_S = 10.0


class Presence:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.clock = service.clock
        self.values: dict[str, object] = {}
        self.status = "online"
        self.health_known = anyio.Event()
        self.counts_known = anyio.Event()
        self.last_sent: tuple[str, str | None] | None = None  # (status, activity) shown
        self.tried_at = -math.inf  # the last update sent (or tried): Discord's pace
        self.rotated_at = -math.inf  # the last step of the rotation
        self.wakeup = Wakeup(self.clock)
        self.rotation = Rotation(())
        self.configure(service.settings)

    @property
    def settings(self) -> Settings:
        return self.service.settings

    def configure(self, settings: Settings) -> None:
        if tuple(self.rotation.templates) != settings.templates:
            self.rotation = Rotation(settings.templates)
        self.wakeup.set()  # the interval may have changed

    # --- what it listens to ---------------------------------------------------------

    async def on_status(self, msg: SupervisorStatus) -> None:
        self.status = presence_status(msg)
        self.values["uptime"] = uptime_text(msg.supervisor.get("uptime_s"))
        self.health_known.set()
        self.wakeup.set()

    async def on_counts(self, msg: GuildCounts) -> None:
        self.values.update(
            {k: getattr(msg, k) for k in COUNT_FIELDS if getattr(msg, k) is not None}
        )
        self.counts_known.set()

    async def on_guild_ready(self, msg: GuildReady) -> None:
        """A fresh gateway session starts with no presence: send ours again."""
        self.last_sent = None
        self.wakeup.set()

    # --- what it does ---------------------------------------------------------------

    def next_update_at(self) -> float:
        """The next step of the rotation, or sooner when what Discord shows is out of
        date (the health changed, or a new session shows nothing), but never within
        15 s of the previous update."""
        due = self.rotated_at + self.settings.interval_s
        if self.last_sent is None or self.last_sent[0] != self.status:
            due = min(due, self.tried_at + MIN_INTERVAL_S)
        return due

    async def rotate(self) -> None:
        started = self.clock.monotonic()
        while not (self.health_known.is_set() and self.counts_known.is_set()):
            left = STARTUP_WAIT_S - (self.clock.monotonic() - started)
            if left <= 0:
                break
            await self.wakeup.sleep(left)
        while True:
            now = self.clock.monotonic()
            due = self.next_update_at()
            if now >= due:
                self.rotated_at = now
                await self.tick()
            else:
                await self.wakeup.sleep(due - now)

    async def tick(self) -> SetPresence | None:
        """One step of the rotation; returns what was sent, if anything."""
        activity = self.rotation.next(self.values)
        if (self.status, activity) == self.last_sent:
            return None
        return await self.send(SetPresence(self.status, activity, self.settings.activity_type))

    # --- what it sends --------------------------------------------------------------

    async def send(self, presence: SetPresence) -> SetPresence | None:
        self.tried_at = self.clock.monotonic()
        try:
            await self.service.call(GATEWAY, presence, timeout=5)
        except UNREACHABLE as exc:
            logger.info("presence not sent (the next update sends a newer one): {}", exc)
            return None
        self.last_sent = (presence.status, presence.activity)
        return presence


def build(clock: Clock | None = None) -> tuple[Service, Presence]:
    """A fresh service and its state (tests build one per simulated process run)."""
    service = Service("presence", Settings, clock)
    presence = Presence(service)
    service.on_settings(presence.configure)

    service.event(SupervisorStatus)(presence.on_status)
    service.event(GuildCounts)(presence.on_counts)
    service.event(GuildReady)(presence.on_guild_ready)

    service.task(presence.rotate)
    return service, presence
