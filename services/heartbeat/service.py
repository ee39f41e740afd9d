"""The heartbeat service: one status embed for admins, alerts when something breaks.

Listens to: `discord.connection` (state, latency), `discord.guild.ready` (to find
the admin channel), and the `/status` and `/restart` commands.
Does: every `check_s` asks the supervisor for its status, reads host and
per-process numbers (health.py) and looks for crashes, FATAL services,
flapping, open breakers, memory and disk (alerts.py); every `interval_s` edits
the status embed in place (embed.py) and pings the dead-man's switch while healthy.
Sends: the embed, grouped alert messages (pinging only the configured role) and
presence-free answers to the gateway; restart requests to the supervisor; its
embed's message id and alert state to persistence, so a restart neither
reposts the embed nor loses or repeats an alert.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import anyio
from anyio.abc import TaskGroup
from loguru import logger

from protocol.breaker import BreakerOpen
from protocol.channel import RemoteError, RequestTimeout
from protocol.discord import (
    CommandAnswer,
    CommandInvoked,
    ConnectionState,
    EditMessage,
    GuildInfoRequest,
    GuildReady,
    SendMessage,
)
from protocol.messages import RestartRequest, StatusRequest
from protocol.runtime import Service
from protocol.store import KvGet, KvSet, StoreCounts, UsageRequest
from services.heartbeat.alerts import Alert, AlertDetector, AlertGroup, Thresholds, alert_message
from services.heartbeat.embed import Snapshot, status_embed, summary_text
from services.heartbeat.health import ProcessCpu, host_sample, service_pids

GATEWAY = "gateway"
STORE = "persistence"
SUPERVISOR = "supervisor"
NAMESPACE = "heartbeat"
UNREACHABLE = (RequestTimeout, BreakerOpen, RemoteError)
NO_PINGS: dict[str, Any] = {"parse": []}
TICK_S = 0.25
_UNKNOWN_MESSAGE = re.compile(r"unknown message|10008|not.?found|404", re.IGNORECASE)
T = TypeVar("T")


def message_was_deleted(exc: RemoteError) -> bool:
    return bool(_UNKNOWN_MESSAGE.search(f"{exc.reason} {exc.detail}"))


class Heartbeat:
    def __init__(
        self,
        service: Service,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.wall = wall
        self.monotonic = monotonic
        self.detector = AlertDetector(wall)
        self.group = AlertGroup(monotonic)
        self.cpu = ProcessCpu()
        self.connection: dict[str, Any] | None = None
        self.channels: list[dict[str, Any]] = []
        self.guild_known = anyio.Event()
        self.admin_channel_id: str | None = None
        self.status_message: dict[str, str] | None = None  # {channel_id, message_id}
        self.state_dirty = False
        self.last: Snapshot | None = None
        self.db_bytes: int | None = None
        self.llm: dict[str, Any] | None = None
        self._deadman_busy = False
        self.configure({})

    def configure(self, settings: dict[str, Any]) -> None:
        self.interval_s = float(settings.get("interval_s", 30))
        self.check_s = float(settings.get("check_s", min(5.0, self.interval_s)))
        self.group.group_s = float(settings.get("alert_group_s", 5))
        self.admin_channel = str(settings.get("admin_channel", "admin"))
        role = settings.get("alert_role_id")
        self.alert_role_id: str | None = str(role) if role else None
        self.owner_ids = {str(u) for u in settings.get("owner_ids", [])}
        self.detector.thresholds = Thresholds(
            memory_percent=float(settings.get("memory_alert_percent", 90)),
            disk_percent=float(settings.get("disk_alert_percent", 90)),
            flap_restarts=int(settings.get("flap_restarts", 3)),
            flap_window_s=float(settings.get("flap_window_s", 600)),
        )
        self.deadman_url: str | None = settings.get("deadman_url") or None
        self.state_wait_s = float(settings.get("state_wait_s", 30))
        ctx = self.service.ctx
        self.disk_path = Path(settings.get("disk_path") or (ctx.data_dir if ctx else "/"))

    # --- what it listens to ---------------------------------------------------------

    async def on_connection(self, msg: ConnectionState) -> None:
        self.connection = msg.to_body()

    async def on_guild_ready(self, msg: GuildReady) -> None:
        self.learn_guild(msg.to_body())

    def learn_guild(self, body: dict[str, Any]) -> None:
        self.channels = list(body.get("channels") or [])
        if self.admin_channel.isdigit():
            self.admin_channel_id = self.admin_channel
        else:
            wanted = self.admin_channel.casefold()
            for ch in self.channels:
                if str(ch.get("name", "")).casefold() == wanted:
                    self.admin_channel_id = str(ch["id"])
        self.guild_known.set()

    async def on_command(self, msg: CommandInvoked) -> CommandAnswer:
        if msg.command == "status":
            snap = await self.fresh_snapshot()
            if self.is_admin(msg):
                return CommandAnswer(embeds=[status_embed(snap)], ephemeral=True)
            return CommandAnswer(summary_text(snap), ephemeral=True)
        if msg.command == "restart":
            if not self.is_admin(msg):
                return CommandAnswer("Only admins can restart services.", ephemeral=True)
            return CommandAnswer(
                await self.restart(str(msg.options.get("service", ""))), ephemeral=True
            )
        return CommandAnswer(f"heartbeat does not answer /{msg.command}", ephemeral=True)

    def is_admin(self, msg: CommandInvoked) -> bool:
        return msg.is_admin or msg.user_id in self.owner_ids

    # --- what it does ---------------------------------------------------------------

    async def watch(self) -> None:
        """Check often, flush grouped alerts when due, refresh the embed each interval."""
        await self.load_state()
        next_check = next_embed = self.monotonic()
        async with aiohttp.ClientSession() as http, anyio.create_task_group() as pings:
            while True:
                now = self.monotonic()
                if now >= next_check:
                    next_check = now + self.check_s
                    await self.check()
                if self.group.due():
                    await self.flush_alerts()
                if self.state_dirty:
                    await self.save_state()
                if now >= next_embed and self.last is not None:
                    next_embed = now + self.interval_s
                    await self.refresh_store_numbers()
                    await self.update_embed(self.last)
                    self.ping_deadman(pings, http)
                await anyio.sleep(TICK_S)

    async def collect(self) -> Snapshot:
        """The supervisor's status and host numbers (db and LLM numbers are kept)."""
        try:
            status: dict[str, Any] | None = await self.service.call(
                SUPERVISOR, StatusRequest(), timeout=2
            )
        except UNREACHABLE as exc:
            logger.warning("supervisor status unavailable: {}", exc)
            status = None
        snap = Snapshot(
            at=self.wall(),
            status=status,
            host=host_sample(self.disk_path),
            cpu=self.cpu.read(service_pids(status or {})),
            connection=self.connection,
            db_bytes=self.db_bytes,
            llm=self.llm,
        )
        self.last = snap
        return snap

    async def check(self) -> list[Alert]:
        snap = await self.collect()
        if snap.status is None:
            return []
        host = snap.host
        alerts = self.detector.check(
            snap.status,
            memory_percent=host.memory_percent if host else None,
            disk_percent=host.disk_percent if host else None,
        )
        if alerts:
            logger.warning("alerts: {}", "; ".join(a.text for a in alerts))
            self.group.add(alerts)
            self.state_dirty = True
        return alerts

    async def fresh_snapshot(self) -> Snapshot:
        if self.last is not None and self.wall() - self.last.at < 2 * self.check_s:
            return self.last
        return await self.collect()

    async def refresh_store_numbers(self) -> None:
        try:
            counts = await self.service.call(STORE, StoreCounts(), timeout=2)
            self.db_bytes = counts.get("db_bytes")
            self.llm = await self.service.call(
                STORE, UsageRequest(since=self.wall() - 3600), timeout=2
            )
        except UNREACHABLE as exc:
            logger.info("store numbers unavailable: {}", exc)
            self.db_bytes = self.llm = None
        if self.last is not None:
            self.last.db_bytes, self.last.llm = self.db_bytes, self.llm

    async def restart(self, name: str) -> str:
        if not name:
            return "Name the service to restart."
        try:
            body = await self.service.call(SUPERVISOR, RestartRequest(name), timeout=5)
        except UNREACHABLE as exc:
            return f"The supervisor did not answer: {exc}"
        return ("Restarting: " if body.get("ok") else "Not restarted: ") + str(body.get("detail"))

    def ping_deadman(self, tg: TaskGroup, http: aiohttp.ClientSession) -> None:
        """Tell the outside watcher we are alive, only while healthy, never waiting on it."""
        healthy = self.last is not None and self.last.level() == "ok" and self.detector.healthy
        if not self.deadman_url or not healthy or self._deadman_busy:
            return
        self._deadman_busy = True
        tg.start_soon(self._ping, http, self.deadman_url)

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
        content, allowed = alert_message(alerts, self.alert_role_id)
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
        try:
            body = await self.service.call(
                GATEWAY, SendMessage(channel, embeds=[embed], allowed_mentions=NO_PINGS), timeout=10
            )
        except UNREACHABLE as exc:
            logger.info("status message not posted: {}", exc)
            return
        message_id = body.get("id") or body.get("message_id")
        if message_id:
            self.status_message = {"channel_id": channel, "message_id": str(message_id)}
            self.state_dirty = True
            await self.save_state()

    # --- state in persistence -------------------------------------------------------

    async def load_state(self) -> None:
        """The embed's message id and the alert state of the previous run. Waits up to
        `state_wait_s` for persistence (it may be restarting too), then goes on without:
        status and alerts matter most exactly when things are down, and the price is
        one extra embed and a fresh alert baseline."""
        delay, waited = 0.5, 0.0
        while True:
            try:
                message = await self._kv_get("status_message")
                alerts = await self._kv_get("alerts")
                break
            except UNREACHABLE as exc:
                if waited >= self.state_wait_s:
                    logger.warning("persistence unavailable: starting without saved state")
                    return
                logger.info("persistence unavailable, retrying in {:.1f}s: {}", delay, exc)
            await anyio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 5.0)
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

    async def learn_guild_at_start(self) -> None:
        body = await self._patiently(
            lambda: self.service.call(GATEWAY, GuildInfoRequest(), timeout=5), self.guild_known
        )
        if body is not None and not self.guild_known.is_set():
            self.learn_guild(body)

    async def _patiently(self, call: Callable[[], Awaitable[T]], until: anyio.Event) -> T | None:
        delay = 0.5
        while not until.is_set():
            try:
                return await call()
            except UNREACHABLE as exc:
                logger.info("gateway unavailable, retrying in {:.1f}s: {}", delay, exc)
            with anyio.move_on_after(delay):
                await until.wait()
            delay = min(delay * 2, 10.0)
        return None

    async def _kv_get(self, key: str) -> Any:
        body = await self.service.call(STORE, KvGet(NAMESPACE, key), timeout=2)
        return body.get("value")

    async def _kv_set(self, key: str, value: Any) -> None:
        await self.service.call(STORE, KvSet(NAMESPACE, key, value), timeout=2)


def build(
    wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic
) -> tuple[Service, Heartbeat]:
    """A fresh service and its state (tests build one per simulated process run)."""
    service = Service("heartbeat")
    heartbeat = Heartbeat(service, wall, monotonic)
    service.event(ConnectionState)(heartbeat.on_connection)
    service.event(GuildReady)(heartbeat.on_guild_ready)
    service.request(CommandInvoked)(heartbeat.on_command)

    @service.setup
    async def configure() -> None:
        heartbeat.configure(service.settings)

    service.task(heartbeat.learn_guild_at_start)
    service.task(heartbeat.watch)
    return service, heartbeat


def create_service() -> Service:
    return build()[0]
