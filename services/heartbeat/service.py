"""The heartbeat service: one status embed for admins, alerts when something breaks.

Listens to: `supervisor.status` (every service's state, pushed at each transition
and every few seconds), `discord.connection` (state, latency), `discord.gap.backfilled`
(what the gateway recovered after Discord refused to resume: one line in the admin
channel), `discord.guild.ready` (to find the admin channel; retained, so it arrives at
start too), `store.health` (persistence refusing writes, and writing again; retained
too), and the `/status` and `/restart` commands.
Does: looks at each status it gets, with the host's memory and disk (sampled every
`check_s`, health.py), for crashes, FATAL services, flapping, open breakers, memory
and disk (alerts.py); every `interval_s` edits the status embed in place (embed.py)
and pings the dead-man's switch while healthy. /status is a short line for anyone
and the full table for admins; /restart (admins only: the gateway checks the tier)
asks the supervisor.
Sends: the embed, grouped alert messages (pinging only the configured role) and
presence-free answers to the gateway; restart requests to the supervisor; its
embed's message id and alert state to persistence, so a restart neither
reposts the embed nor loses or repeats an alert.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from anyio.abc import TaskGroup
from loguru import logger

from protocol.breaker import BreakerOpen
from protocol.channel import UNREACHABLE, RemoteError, RequestTimeout
from protocol.clock import Clock
from protocol.discord import (
    GATEWAY,
    NO_PINGS,
    CommandAnswer,
    CommandInvoked,
    ConnectionState,
    EditMessage,
    GapBackfilled,
    GuildReady,
    SendMessage,
)
from protocol.messages import SUPERVISOR, RestartRequest, SupervisorStatus
from protocol.runtime import Service
from protocol.store import STORE, KvGet, KvSet, StorageHealth, StoreCounts, Usage, UsageRequest
from services.heartbeat.alerts import Alert, AlertDetector, AlertGroup, Thresholds, alert_message
from services.heartbeat.embed import Snapshot, status_embed, summary_text
from services.heartbeat.health import HostSample, ProcessCpu, host_sample, service_pids
from services.heartbeat.settings import Settings

NAMESPACE = "heartbeat"
TICK_S = 0.25
# The supervisor pushes its status every 5 s: silent this long, it is not answering.
STATUS_STALE_S = 20.0
_UNKNOWN_MESSAGE = re.compile(r"unknown message|10008|not.?found|404", re.IGNORECASE)


def message_was_deleted(exc: RemoteError) -> bool:
    return bool(_UNKNOWN_MESSAGE.search(f"{exc.reason} {exc.detail}"))


class Heartbeat:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.clock = service.clock
        self.detector = AlertDetector(self.clock.wall)
        self.group = AlertGroup(self.clock.monotonic)
        self.cpu = ProcessCpu()
        self.status: SupervisorStatus | None = None
        self.status_at = 0.0  # monotonic
        self.host: HostSample | None = None
        self.connection: ConnectionState | None = None
        self.storage: StorageHealth | None = None
        self.gap: GapBackfilled | None = None  # the gateway's latest backfill after a gap
        self.channels: list[dict[str, Any]] = []
        self.admin_channel_id: str | None = None
        self.status_message: dict[str, str] | None = None  # {channel_id, message_id}
        self.state_loaded = False
        self.state_dirty = False
        self.db_bytes: int | None = None
        self.llm: Usage | None = None
        self._deadman_busy = False
        self.configure(service.settings)

    @property
    def settings(self) -> Settings:
        return self.service.settings

    def configure(self, settings: Settings) -> None:
        self.group.group_s = settings.alert_group_s
        self.detector.thresholds = Thresholds(
            memory_percent=settings.memory_alert_percent,
            disk_percent=settings.disk_alert_percent,
            flap_restarts=settings.flap_restarts,
            flap_window_s=settings.flap_window_s,
        )
        self.resolve_admin_channel()

    def disk_path(self) -> Path:
        ctx = self.service.ctx
        return Path(self.settings.disk_path or (ctx.data_dir if ctx else "/"))

    # --- what it listens to ---------------------------------------------------------

    async def on_status(self, msg: SupervisorStatus) -> None:
        self.status, self.status_at = msg, self.clock.monotonic()
        if self.state_loaded:  # else the alert state of the previous run comes first
            self.detect()

    async def on_connection(self, msg: ConnectionState) -> None:
        self.connection = msg

    async def on_storage(self, msg: StorageHealth) -> None:
        self.storage = msg
        if self.state_loaded:  # else the alert state of the previous run comes first
            self.detect_storage()

    def detect_storage(self) -> None:
        assert self.storage is not None
        alerts = self.detector.storage(self.storage)
        if alerts:
            logger.warning("alerts: {}", "; ".join(a.text for a in alerts))
            self.group.add(alerts)
            self.state_dirty = True

    async def on_gap(self, msg: GapBackfilled) -> None:
        """The gateway read back what Discord did not send during a gap: once it is done,
        one line in the admin channel (through the alert group, saved across restarts)."""
        self.gap = msg
        if not msg.done:
            return
        self.group.add([Alert(f"gap:{msg.gap_id}", msg.line(), recovery=True)])
        self.state_dirty = True

    async def on_guild_ready(self, msg: GuildReady) -> None:
        self.channels = list(msg.channels)
        self.resolve_admin_channel()

    async def on_status_command(self, msg: CommandInvoked) -> CommandAnswer:
        snap = self.snapshot()
        if msg.by_admin:
            return CommandAnswer(embeds=[status_embed(snap)], ephemeral=True)
        return CommandAnswer(summary_text(snap), ephemeral=True)

    async def on_restart_command(self, msg: CommandInvoked) -> CommandAnswer:
        return CommandAnswer(
            await self.restart(str(msg.options.get("service", ""))), ephemeral=True
        )

    def resolve_admin_channel(self) -> None:
        wanted = self.settings.admin_channel
        if wanted.isdigit():
            self.admin_channel_id = wanted
            return
        self.admin_channel_id = next(
            (
                str(ch["id"])
                for ch in self.channels
                if str(ch.get("name", "")).casefold() == wanted.lstrip("#").casefold()
            ),
            None,
        )

    # --- what it does ---------------------------------------------------------------

    def detect(self) -> list[Alert]:
        """What changed since the previous status (and the host's latest numbers)."""
        assert self.status is not None
        host = self.host
        alerts = self.detector.check(
            self.status,
            memory_percent=host.memory_percent if host else None,
            disk_percent=host.disk_percent if host else None,
        )
        if alerts:
            logger.warning("alerts: {}", "; ".join(a.text for a in alerts))
            self.group.add(alerts)
            self.state_dirty = True
        return alerts

    async def watch(self) -> None:
        """Sample the host, flush grouped alerts when due, refresh the embed each interval."""
        await self.load_state()
        if self.status is not None:
            self.detect()  # what happened while this service was down
        if self.storage is not None:
            self.detect_storage()
        next_sample = next_embed = self.clock.monotonic()
        async with aiohttp.ClientSession() as http, anyio.create_task_group() as pings:
            while True:
                now = self.clock.monotonic()
                if now >= next_sample:
                    next_sample = now + self.settings.check_s
                    self.host = host_sample(self.disk_path())
                if self.group.due():
                    await self.flush_alerts()
                if self.state_dirty:
                    await self.save_state()
                if now >= next_embed and self.status is not None:
                    next_embed = now + self.settings.interval_s
                    await self.refresh_store_numbers()
                    snap = self.snapshot()
                    await self.update_embed(snap)
                    self.ping_deadman(pings, http, snap)
                await anyio.sleep(TICK_S)

    def snapshot(self) -> Snapshot:
        """Everything gathered, as one picture for the embed and /status."""
        fresh = self.clock.monotonic() - self.status_at < STATUS_STALE_S
        status = self.status if fresh else None
        return Snapshot(
            at=self.clock.wall(),
            status=status,
            host=self.host,
            cpu=self.cpu.read(service_pids(status.services if status else [])),
            connection=self.connection,
            gap=self.gap,
            db_bytes=self.db_bytes,
            llm=self.llm,
        )

    async def refresh_store_numbers(self) -> None:
        try:
            counts = await self.service.call(STORE, StoreCounts(), timeout=2)
            since = self.clock.wall() - 3600
            self.llm = await self.service.call(STORE, UsageRequest(since), timeout=2)
            self.db_bytes = counts.db_bytes
        except UNREACHABLE as exc:
            logger.info("store numbers unavailable: {}", exc)
            self.db_bytes = self.llm = None

    async def restart(self, name: str) -> str:
        if not name:
            return "Name the service to restart."
        try:
            outcome = await self.service.call(SUPERVISOR, RestartRequest(name), timeout=5)
        except UNREACHABLE as exc:
            return f"The supervisor did not answer: {exc}"
        return ("Restarting: " if outcome.ok else "Not restarted: ") + outcome.detail

    def ping_deadman(self, tg: TaskGroup, http: aiohttp.ClientSession, snap: Snapshot) -> None:
        """Tell the outside watcher we are alive, only while healthy, never waiting on it."""
        url = self.settings.deadman_url
        healthy = snap.level() == "ok" and self.detector.healthy
        if not url or not healthy or self._deadman_busy:
            return
        self._deadman_busy = True
        tg.start_soon(self._ping, http, url)

    async def _ping(self, http: aiohttp.ClientSession, url: str) -> None:
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if resp.status >= 400:
                    logger.warning("dead-man's switch answered {}", resp.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("dead-man's switch unreachable: {}", exc)
        finally:
            self._deadman_busy = False

    # --- what it sends --------------------------------------------------------------

    async def flush_alerts(self) -> None:
        alerts = self.group.take()
        if self.admin_channel_id is None:
            self.group.put_back(alerts)
            return
        content, allowed = alert_message(alerts, self.settings.alert_role_id)
        msg = SendMessage(self.admin_channel_id, content, allowed_mentions=allowed)
        try:
            await self.service.call(GATEWAY, msg, timeout=10)
        except UNREACHABLE as exc:
            logger.warning("alerts not sent, kept for the next try: {}", exc)
            self.group.put_back(alerts)
            return
        self.state_dirty = True
        await self.save_state()

    async def update_embed(self, snap: Snapshot) -> None:
        """Edit the one status message; post a new one only if it was deleted."""
        channel = self.admin_channel_id
        if channel is None:
            return
        embed = status_embed(snap)
        known = self.status_message
        if known is not None and known.get("channel_id") == channel:
            edit = EditMessage(
                channel, known["message_id"], embeds=[embed], allowed_mentions=NO_PINGS
            )
            try:
                await self.service.call(GATEWAY, edit, timeout=10)
                return
            except RemoteError as exc:
                if not message_was_deleted(exc):
                    logger.warning("status edit failed: {}", exc)
                    return
                logger.info("the status message was deleted: posting a new one")
            except (RequestTimeout, BreakerOpen) as exc:
                logger.info("status edit failed: {}", exc)
                return
        post = SendMessage(channel, embeds=[embed], allowed_mentions=NO_PINGS)
        try:
            sent = await self.service.call(GATEWAY, post, timeout=10)
        except UNREACHABLE as exc:
            logger.info("status message not posted: {}", exc)
            return
        self.status_message = {"channel_id": channel, "message_id": sent.message_id}
        self.state_dirty = True
        await self.save_state()

    # --- state in persistence -------------------------------------------------------

    async def load_state(self) -> None:
        """The embed's message id and the alert state of the previous run. Waits up to
        `state_wait_s` for persistence (it may be restarting too), then goes on without:
        status and alerts matter most exactly when things are down, and the price is
        one extra embed and a fresh alert baseline."""

        async def load() -> tuple[Any, Any]:
            return await self._kv_get("status_message"), await self._kv_get("alerts")

        saved = await self.service.patiently(
            load, "saved state", give_up_after_s=self.settings.state_wait_s
        )
        self.state_loaded = True
        if saved is None:
            logger.warning("persistence unavailable: starting without saved state")
            return
        message, alerts = saved
        if isinstance(message, dict) and message.get("message_id"):
            self.status_message = {k: str(v) for k, v in message.items()}
        if isinstance(alerts, dict):
            self.detector.restore(alerts.get("detector") or {})
            self.group.put_back([Alert.from_dict(a) for a in alerts.get("pending") or []])

    async def save_state(self) -> None:
        state = {
            "detector": self.detector.to_dict(),
            "pending": [a.to_dict() for a in self.group.pending],
        }
        try:
            if self.status_message is not None:
                await self._kv_set("status_message", self.status_message)
            await self._kv_set("alerts", state)
        except UNREACHABLE as exc:
            logger.info("state not saved yet: {}", exc)
            return
        self.state_dirty = False

    async def _kv_get(self, key: str) -> Any:
        found = await self.service.call(STORE, KvGet(NAMESPACE, key), timeout=2)
        return found.value

    async def _kv_set(self, key: str, value: Any) -> None:
        await self.service.call(STORE, KvSet(NAMESPACE, key, value), timeout=2)


def build(clock: Clock | None = None) -> tuple[Service, Heartbeat]:
    """A fresh service and its state (tests build one per simulated process run)."""
    service = Service("heartbeat", Settings, clock)
    heartbeat = Heartbeat(service)
    service.on_settings(heartbeat.configure)

    service.event(SupervisorStatus)(heartbeat.on_status)
    service.event(ConnectionState)(heartbeat.on_connection)
    service.event(StorageHealth)(heartbeat.on_storage)
    service.event(GapBackfilled)(heartbeat.on_gap)
    service.event(GuildReady)(heartbeat.on_guild_ready)
    service.command("status")(heartbeat.on_status_command)
    service.command("restart")(heartbeat.on_restart_command)

    service.task(heartbeat.watch)
    return service, heartbeat
