"""The gateway: the only process that holds the Discord connection.

Listens to: Discord (every DISPATCH frame, raw and in order) and to requests
from the other services (send, edit, rename, presence, typing, counts, ...).
Does: converts Discord's events into protocol events and stores the durable ones
in its outbox together with the Discord position they reach, so a successor's
RESUME replays exactly what is not stored; routes slash commands to the service
that owns them; carries out Discord actions (actions.py) with py-cord's
rate-limited HTTP client.
Sends: discord.* events to their subscribers (services.toml), replies.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from typing import Any

import aiohttp
import anyio
import discord
import tenacity
from loguru import logger

from protocol.breaker import BreakerOpen
from protocol.channel import PeerGone, RemoteError, RequestTimeout
from protocol.clock import Clock
from protocol.commands import CATALOGUE, Tier
from protocol.discord import (
    GATEWAY,
    CommandAnswer,
    CommandInvoked,
    ConnectionState,
)
from protocol.messages import Message
from protocol.runtime import Refused, Service
from services.gateway.actions import Actions
from services.gateway.backfill import Backfill
from services.gateway.connection import GatewayClient
from services.gateway.convert import convert
from services.gateway.interactions import (
    RESPOND_DEFERRED,
    RESPOND_WITH_MESSAGE,
    RESTARTING,
    TOO_SLOW,
    UNKNOWN,
    Invocation,
    command_payload,
    help_text,
    message_data,
)
from services.gateway.session import SavedSession, SessionFile
from services.gateway.settings import Settings
from services.gateway.state import Gateway, Position

SESSION_SAVE_EVERY_S = 0.05
POSITION_KEY = "gateway.position"  # in the gateway's outbox
INTERACTION_TTL_S = 900.0  # interaction tokens live 15 minutes
DEFERRED_TIMEOUT_S = 120.0  # for the owner of a deferred command to take it on
FAILED = "That failed, sorry. The error was logged."


def build(clock: Clock | None = None) -> tuple[Service, GatewayService]:
    """A fresh gateway service and its process state (tests build several)."""
    service = Service(GATEWAY, Settings, clock)
    gateway = GatewayService(service, Gateway(service.clock))
    # What it listens to: Discord (started by stay_connected), and the other services'
    # requests for Discord actions.
    gateway.actions.serve(service)
    service.command("help")(gateway.help)
    service.on_settings(gateway.configure)
    service.setup(gateway.prepare)
    service.task(gateway.stay_connected)
    service.teardown(gateway.disconnect)
    return service, gateway


class GatewayService:
    def __init__(self, service: Service, gw: Gateway) -> None:
        self.service = service
        self.gw = gw
        self.actions = Actions(gw)
        self.backfill = Backfill(service, gw, self.actions)

    def configure(self, settings: Settings) -> None:
        self.gw.request_timeout_s = settings.request_timeout_s

    # --- start: prepare, then (in the background) log in, register commands, connect -----

    async def prepare(self) -> None:
        """Nothing here needs Discord: the gateway is up on the bus even while Discord is
        unreachable, and says so (requests get "not_connected" until it logs in)."""
        settings: Settings = self.service.settings
        assert self.service.ctx is not None
        api_base = os.environ.get("DISCORD_API_BASE")
        if api_base:
            discord.http.Route.API_BASE_URL = api_base.rstrip("/")
            logger.info("Discord API at {}", discord.http.Route.API_BASE_URL)
        self.gw.session_file = SessionFile(self.service.ctx.data_dir / "gateway-session.json")
        saved = self.gw.session_file.load()
        assert self.service.bus is not None and self.service.bus.outbox is not None
        stored = await self.service.bus.outbox.get_meta(POSITION_KEY)
        position = json.loads(stored) if stored is not None else {}
        # When that position was reached: a gap, if Discord refuses to resume, starts here.
        self.gw.last_event_at = position.pop("at", None)
        if self.gw.last_event_at is None and saved is not None:
            self.gw.last_event_at = self.gw.session_file.path.stat().st_mtime
        if saved is not None and stored is not None:
            # The outbox holds the position committed with the events themselves: it wins.
            at = Position(**position)
            saved.session_id, saved.seq, saved.resume_url = at.session_id, at.seq, at.resume_url
        await self.backfill.load()
        self.gw.client = GatewayClient(
            identify_delay_s=settings.identify_delay_s,
            on_state=self._publish_connection,
            on_dispatch=self.on_dispatch,
        )
        if saved is not None:
            self.gw.guilds.load(saved.guilds)
            self.gw.resumed_from = self.gw.client.resume_from = saved
            self.gw.session_id, self.gw.resume_url, self.gw.bot_id = (
                saved.session_id,
                saved.resume_url,
                saved.bot_user_id,
            )
            self.gw.committed = self.gw.saved = Position(
                saved.session_id, saved.seq, saved.resume_url
            )
            if saved.bot_user_id:  # retained: services that start later get them too
                for guild in self.gw.guilds.guilds.values():
                    await self.service.publish(guild.ready(saved.bot_user_id))
        # Connect early to the commands' owners: interactions must be answered within 3 s.
        for owner in set(self.service.ctx.topology.commands.values()) - {self.service.name}:
            self.service.bus.channel(owner)

    async def _log_in(self) -> None:
        """Log in, retrying with backoff while Discord cannot be reached; a rejected token
        is final (exit 2: restarting would not help)."""
        assert self.gw.client is not None
        retrying = tenacity.AsyncRetrying(
            wait=tenacity.wait_exponential_jitter(initial=1, max=60),
            retry=tenacity.retry_if_exception(self._worth_retrying),
            before_sleep=lambda state: logger.warning(
                "Discord unreachable ({}); retrying login", state.outcome.exception()
            ),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self.gw.client.login(os.environ.get("DISCORD_TOKEN", ""))
        except discord.LoginFailure:
            logger.error("Discord rejected DISCORD_TOKEN: set a valid bot token (nothing retried)")
            await self.gw.client.close()
            sys.exit(2)
        self.gw.bot_id = str(self.gw.client.user.id) if self.gw.client.user else self.gw.bot_id
        self.gw.logged_in = True
        self.gw.login_done.set()

    @staticmethod
    def _worth_retrying(exc: BaseException) -> bool:
        if isinstance(exc, discord.HTTPException):
            return exc.status >= 500 or exc.status == 429
        return isinstance(exc, OSError | aiohttp.ClientError | TimeoutError)

    async def _register_commands(self) -> None:
        assert self.service.ctx is not None and self.gw.bot_id is not None
        names = list(self.service.ctx.topology.commands)
        settings: Settings = self.service.settings
        hide = not (settings.owner_ids or settings.admin_roles)
        try:
            with anyio.fail_after(self.gw.request_timeout_s):
                await self.gw.http().bulk_upsert_global_commands(
                    self.gw.bot_id, command_payload(names, hide)
                )
            logger.info("slash commands registered: {}", ", ".join(sorted(names)) or "none")
        except (discord.HTTPException, TimeoutError) as exc:
            logger.error(
                "could not register slash commands ({}); they will be retried at the next start",
                exc,
            )

    async def stay_connected(self) -> None:
        """py-cord's connect loop (reconnects and RESUMEs by itself), plus our helpers."""
        assert self.gw.client is not None
        await self._log_in()
        await self._register_commands()
        async with anyio.create_task_group() as tg:
            self.gw.tg = tg
            tg.start_soon(self.publish_in_order)
            tg.start_soon(self.save_session)
            tg.start_soon(self.report_latency)
            tg.start_soon(self.publish_counts)
            tg.start_soon(self.backfill.run)  # after a gap; never in the live path
            await self.gw.client.connect(reconnect=True)
            tg.cancel_scope.cancel()

    async def disconnect(self) -> None:
        """Flush what was received, save the session, and leave it resumable."""
        with anyio.move_on_after(1.5):
            if self.gw.queue:
                self.gw.queue_drained = anyio.Event()
                self.gw.queue_wake.set()
                await self.gw.queue_drained.wait()
        await self._save_session()
        client = self.gw.client
        if client is not None and not client.is_closed():
            if client.ws is not None:
                # Any close code but 1000/1001 keeps the session resumable for our successor.
                await client.ws.close(code=4000)
            try:
                await client.close()
            except RuntimeError:
                pass  # py-cord: 'Session is closed' when already closed

    # --- Discord to the bus ---------------------------------------------------------------

    def on_dispatch(self, payload: dict[str, Any]) -> None:
        """Every DISPATCH frame, synchronously and in order (called from py-cord's reader)."""
        event, d, seq = payload.get("t"), payload.get("d"), payload.get("s")
        if not isinstance(event, str) or not isinstance(d, dict):
            return
        now = self.service.clock.wall()  # the sandbox moves it with the other services'
        try:
            if event == "READY":
                self._on_ready(d)
            elif event == "RESUMED":
                logger.info("session resumed at seq {}", seq)
                self.backfill.resumed()
                self._publish_connection("resumed")
            elif event == "INTERACTION_CREATE":
                invocation = Invocation.parse(d, self.service.clock.monotonic())
                if invocation is not None and self.gw.tg is not None:
                    if isinstance(seq, int):
                        self.gw.unanswered[invocation.id] = seq
                    self.gw.tg.start_soon(self.answer_interaction, invocation)
            self.backfill.observe(event, d)
            changed = self.gw.guilds.apply(event, d)
            if changed:
                self.gw.counts_dirty.add(changed)
            # The retained GuildReady follows the guild's channels: a service that starts
            # later must find a channel created or renamed since the connection.
            if event == "GUILD_CREATE" or event.startswith("CHANNEL_"):
                guild = self.gw.guilds.guilds.get(str(d.get("guild_id") or d.get("id") or ""))
                if guild is not None and self.gw.bot_id:
                    self.gw.queue.append((None, [guild.ready(self.gw.bot_id)]))
            events = convert(event, d, self.gw.bot_id, now, self.gw.guilds.channel_names())
        except (KeyError, TypeError, ValueError) as exc:
            # A payload missing what Discord always sends: log it once, lose nothing else.
            logger.error("dropped malformed {} (seq {}): {!r}", event, seq, exc)
            events = []
        position = (
            Position(self.gw.session_id, seq, self.gw.resume_url)
            if isinstance(seq, int) and self.gw.session_id
            else None
        )
        if position is not None:
            self.gw.last_event_at = now
        self.gw.queue.append((position, events))
        self.gw.queue_wake.set()

    def _on_ready(self, d: dict[str, Any]) -> None:
        self.gw.session_id = str(d.get("session_id"))
        self.gw.unanswered.clear()  # sequence numbers of the old session mean nothing in the new
        self.gw.resume_url = d.get("resume_gateway_url")
        self.gw.bot_id = str((d.get("user") or {}).get("id", self.gw.bot_id))
        refused, self.gw.resumed_from = self.gw.resumed_from, None
        if self.gw.last_event_at is None and self.backfill.gap is None:
            self.backfill.connected.set()  # the very first session: nothing before it
            self._publish_connection("connected")
            return
        # A fresh session after a stored position: whatever Discord dispatched meanwhile
        # is gone from the gateway; read it back from the history (backfill.py).
        now = self.service.clock.wall()
        since = self.gw.last_event_at
        gap_s = f"{now - since:.0f} s" if since is not None else "unknown length"
        if refused is not None:
            logger.warning(
                "Discord refused to resume session {} at seq {}: identified afresh; "
                "backfilling the gap ({}) from Discord's history",
                refused.session_id[:8],
                refused.seq,
                gap_s,
            )
        else:
            logger.warning(
                "a new Discord session after a gap ({}): backfilling from Discord's history",
                gap_s,
            )
        guild_ids = [str(g["id"]) for g in d.get("guilds") or [] if isinstance(g, dict)]
        self.backfill.gap_found(since, now, self.gw.session_id, guild_ids)
        self._publish_connection("identified_after_gap")

    async def publish_in_order(self) -> None:
        """Outbox first, then the saved sequence: a RESUME replays whatever is not stored."""
        while True:
            await self.gw.queue_wake.wait()
            self.gw.queue_wake = anyio.Event()
            while self.gw.queue:
                batch: list[Message] = []
                last: Position | None = None
                while self.gw.queue and len(batch) < 500:
                    position, events = self.gw.queue.popleft()
                    batch.extend(events)
                    last = position or last
                durable = [m for m in batch if m.DURABLE]
                if durable:
                    # The position goes into the same outbox transaction as the events: after
                    # a crash, a RESUME replays exactly what is not stored, nothing twice.
                    meta = self._position_meta(self._resumable(last)) if last else None
                    await self.service.publish_many(durable, meta)
                for m in batch:
                    if not m.DURABLE:
                        await self.service.publish(m)
                if last is not None:
                    self.gw.committed = last
                    self.gw.seq_committed.set()
            self.gw.queue_drained.set()

    async def save_session(self) -> None:
        """Save the committed sequence at most every 50 ms, off the publishing path."""
        while True:
            await self.gw.seq_committed.wait()
            self.gw.seq_committed = anyio.Event()
            await self._save_session()
            await anyio.sleep(SESSION_SAVE_EVERY_S)

    def _position_meta(self, at: Position) -> dict[str, str]:
        """The position for the outbox, with when it was reached (a gap's start)."""
        return {POSITION_KEY: json.dumps({**asdict(at), "at": self.gw.last_event_at})}

    def _resumable(self, at: Position) -> Position:
        """Not past a slash command still waiting for its first response, or deferred and
        not yet taken on by its owner: if we die now, the RESUME replays it and our
        successor answers (often still inside Discord's 3 s) or hands it on."""
        if not self.gw.unanswered:
            return at
        oldest = min(self.gw.unanswered.values())
        return at if at.seq < oldest else Position(at.session_id, oldest - 1, at.resume_url)

    async def _save_session(self) -> None:
        """The position (for batches without durable events) and the guild state."""
        async with self.gw.save_lock:  # the saver task and teardown must not write at once
            if self.gw.committed is None:
                return
            at = self._resumable(self.gw.committed)
            if self.gw.session_file is None or at == self.gw.saved:
                return
            await self.service.publish_many([], self._position_meta(at))
            await self.gw.session_file.save(
                SavedSession(
                    at.session_id, at.seq, at.resume_url, self.gw.bot_id, self.gw.guilds.to_json()
                )
            )
            self.gw.saved = at

    async def publish_counts(self) -> None:
        """Membership and presence changes, coalesced to at most one event a second per guild."""
        while True:
            await anyio.sleep(1.0)
            dirty, self.gw.counts_dirty = self.gw.counts_dirty, set()
            for gid in dirty:
                guild = self.gw.guilds.get(gid)
                if guild is not None:
                    await self.service.publish(guild.counts())

    async def report_latency(self) -> None:
        while True:
            await anyio.sleep(15.0)
            if (
                self.gw.client is not None
                and self.gw.client.ws is not None
                and not self.gw.client.is_closed()
            ):
                self._publish_connection("connected")

    def _publish_connection(self, state: str) -> None:
        latency = self.gw.client.latency_ms() if self.gw.client is not None else None
        msg = ConnectionState(state, latency, self.service.clock.wall(), self.gw.bot_id)
        self.gw.queue.append((None, [msg]))
        self.gw.queue_wake.set()

    # --- slash commands ---------------------------------------------------------------------

    async def answer_interaction(self, inv: Invocation) -> None:
        """Answer one slash command; a failed Discord call is logged, never fatal."""
        try:
            await self._answer_interaction(inv)
        except Exception:
            logger.exception("/{} ({}) could not be answered", inv.command, inv.id)

    async def _answer_interaction(self, inv: Invocation) -> None:
        assert self.service.ctx is not None and self.service.bus is not None
        owner = self.service.ctx.topology.commands.get(inv.command)
        declared = CATALOGUE.get(inv.command)
        if owner is None or declared is None:
            await self._respond(inv, RESPOND_WITH_MESSAGE, message_data(UNKNOWN, ephemeral=True))
            return
        settings: Settings = self.service.settings
        tier = inv.tier(settings.owner_ids, settings.admin_roles)
        if not tier.allows(declared.tier):
            refusal = message_data(declared.tier.refusal, ephemeral=True)
            await self._respond(inv, RESPOND_WITH_MESSAGE, refusal)
            return
        request = CommandInvoked(
            inv.id,
            inv.command,
            inv.options,
            inv.user_id,
            inv.user_name,
            inv.channel_id,
            inv.guild_id,
            tier.value,
            declared.slow,
            # A deferred answer may be finished by the owner through another gateway
            # process (this one may die meanwhile): it gets the interaction's webhook.
            inv.token if declared.slow else None,
            inv.application_id if declared.slow else None,
            subcommand=inv.subcommand,
        )
        if owner == self.service.name:  # answered here (/help): no hop
            answer = await self.service.commands[inv.command](request)
            reply = message_data(answer.content, answer.embeds, answer.ephemeral)
            await self._respond(inv, RESPOND_WITH_MESSAGE, reply)
            return
        channel = self.service.bus.channel(owner)
        if declared.slow:
            await self._answer_deferred(inv, owner, request)
            return
        if not await channel.wait_connected(0.3) or not channel.breaker.allows():
            # A fresh channel needs a moment to connect; a dead owner will not make 3 s.
            await self._respond(inv, RESPOND_WITH_MESSAGE, message_data(RESTARTING, ephemeral=True))
            return
        self._remember(inv)
        answer, failure = await self._ask_owner(owner, request, 2.0)
        if answer is not None and answer.files:
            reply = message_data(answer.content, answer.embeds, answer.ephemeral)
            await self._respond_with_files(inv, reply, answer.files)
        elif answer is not None:
            reply = message_data(answer.content, answer.embeds, answer.ephemeral)
            await self._respond(inv, RESPOND_WITH_MESSAGE, reply)
        else:
            reply = message_data(failure or TOO_SLOW, ephemeral=True)
            await self._respond(inv, RESPOND_WITH_MESSAGE, reply)

    async def _answer_deferred(self, inv: Invocation, owner: str, request: CommandInvoked) -> None:
        """ "Thinking..." at once; then the owner has minutes, so a restarting owner is waited
        for (the request rides out its restart) rather than refused. Until the owner has
        taken the command on, the Discord position stays before it: if this process dies
        meanwhile, RESUME gives the interaction to its successor (whose deferral Discord
        refuses as already done: it goes on to the owner all the same)."""
        self._remember(inv)
        try:
            await self._respond(inv, RESPOND_DEFERRED, None, settle=False)
            answer, failure = await self._ask_owner(owner, request, DEFERRED_TIMEOUT_S)
            if answer is not None and answer.later:
                return  # taken on: the owner edits the response itself
            text = failure or (answer.content if answer else "")
            embeds = answer.embeds if answer else None
            await self.actions.edit_original(inv, text or "(no answer)", embeds)
        finally:
            self._settled(inv)

    async def _ask_owner(
        self, owner: str, request: CommandInvoked, timeout: float
    ) -> tuple[CommandAnswer | None, str | None]:
        try:
            return await self.service.call(owner, request, timeout=timeout), None
        except (BreakerOpen, PeerGone):
            return None, RESTARTING
        except RequestTimeout:
            assert self.service.bus is not None
            return None, TOO_SLOW if self.service.bus.channel(owner).connected else RESTARTING
        except RemoteError as exc:
            logger.warning("/{} failed in {}: {}", request.command, owner, exc)
            return None, FAILED

    async def help(self, msg: CommandInvoked) -> CommandAnswer:
        """/help: the commands this caller may run, among those of enabled services."""
        assert self.service.ctx is not None
        enabled = set(self.service.ctx.topology.commands.values())
        text = help_text(Tier(msg.tier), enabled, in_guild=msg.guild_id is not None)
        return CommandAnswer(text, ephemeral=True)

    def _remember(self, inv: Invocation) -> None:
        cutoff = self.service.clock.monotonic() - INTERACTION_TTL_S
        for key in [k for k, v in self.gw.interactions.items() if v.created < cutoff]:
            del self.gw.interactions[key]
        self.gw.interactions[inv.id] = inv

    async def _respond_with_files(
        self, inv: Invocation, data: dict[str, Any], files: list[dict[str, Any]]
    ) -> None:
        try:
            await self.actions.respond_with_files(inv, data, files)
        except Refused as exc:
            logger.warning("could not answer /{} ({}) with its files: {}", inv.command, inv.id, exc)
        finally:
            self._settled(inv)

    async def _respond(
        self, inv: Invocation, kind: int, data: dict[str, Any] | None, settle: bool = True
    ) -> None:
        """The interaction's first response; with `settle`, it is then settled (the saved
        Discord position may pass it)."""
        try:
            with anyio.fail_after(self.gw.request_timeout_s):
                await self.gw.http().create_interaction_response(
                    inv.id, inv.token, type=kind, data=data
                )
        except (discord.HTTPException, TimeoutError) as exc:
            logger.warning("could not answer /{} ({}): {}", inv.command, inv.id, exc)
        finally:
            if settle:
                self._settled(inv)

    def _settled(self, inv: Invocation) -> None:
        if self.gw.unanswered.pop(inv.id, None) is not None:
            self.gw.seq_committed.set()  # the saved position may move on now
