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
import time
from dataclasses import asdict
from typing import Any

import aiohttp
import anyio
import discord
import tenacity
from loguru import logger

from protocol.breaker import BreakerOpen
from protocol.channel import PeerGone, RemoteError, RequestTimeout
from protocol.commands import CATALOGUE
from protocol.discord import (
    CommandAnswer,
    CommandInvoked,
    ConnectionState,
)
from protocol.messages import Message, MessageError, decode
from protocol.runtime import Service
from services.gateway.actions import HANDLERS, edit_original
from services.gateway.connection import GatewayClient, GatewaySocket
from services.gateway.convert import convert
from services.gateway.interactions import (
    RESPOND_DEFERRED,
    RESPOND_WITH_MESSAGE,
    RESTARTING,
    TOO_SLOW,
    UNKNOWN,
    Invocation,
    command_payload,
    message_data,
)
from services.gateway.session import SavedSession, SessionFile
from services.gateway.state import Position, gw

service = Service("gateway")
for request_type, handler in HANDLERS.items():  # Discord actions: services/gateway/actions.py
    service.request(request_type)(handler)

SESSION_SAVE_EVERY_S = 0.05
POSITION_KEY = "gateway.position"  # in the gateway's outbox
INTERACTION_TTL_S = 900.0  # interaction tokens live 15 minutes


# --- start: prepare, then (in the background) log in, register commands, connect -----


@service.setup
async def prepare() -> None:
    """Nothing here needs Discord: the gateway is up on the bus even while Discord is
    unreachable, and says so (requests get "not_connected" until it logs in)."""
    settings = service.settings
    assert service.ctx is not None
    api_base = os.environ.get("DISCORD_API_BASE")
    if api_base:
        discord.http.Route.API_BASE_URL = api_base.rstrip("/")
        logger.info("Discord API at {}", discord.http.Route.API_BASE_URL)
    gw.request_timeout_s = float(settings.get("request_timeout_s", 15))
    gw.clock = service.clock  # the one the sandbox can move
    gw.session_file = SessionFile(service.ctx.data_dir / "gateway-session.json")
    saved = gw.session_file.load()
    assert service.bus is not None and service.bus.outbox is not None
    stored = await service.bus.outbox.get_meta(POSITION_KEY)
    if saved is not None and stored is not None:
        # The outbox holds the position committed with the events themselves: it wins.
        at = Position(**json.loads(stored))
        saved.session_id, saved.seq, saved.resume_url = at.session_id, at.seq, at.resume_url
    gw.client = GatewayClient(
        identify_delay_s=float(settings.get("identify_delay_s", 5.0)),
        on_state=lambda state: _publish_connection(state),
    )
    if saved is not None:
        gw.guilds.load(saved.guilds)
        gw.resumed_from = gw.client.resume_from = saved
        gw.session_id, gw.resume_url, gw.bot_id = (
            saved.session_id,
            saved.resume_url,
            saved.bot_user_id,
        )
        gw.committed = gw.saved = Position(saved.session_id, saved.seq, saved.resume_url)
    GatewaySocket.sink = on_dispatch
    assert service.bus is not None
    for owner in set(service.ctx.topology.commands.values()):
        service.bus.channel(owner)  # connect early: interactions must be answered within 3 s


async def _log_in() -> None:
    """Log in, retrying with backoff while Discord cannot be reached; a rejected token
    is final (exit 2: restarting would not help)."""
    assert gw.client is not None
    retrying = tenacity.AsyncRetrying(
        wait=tenacity.wait_exponential_jitter(initial=1, max=60),
        retry=tenacity.retry_if_exception(_worth_retrying),
        before_sleep=lambda state: logger.warning(
            "Discord unreachable ({}); retrying login", state.outcome.exception()
        ),
    )
    try:
        async for attempt in retrying:
            with attempt:
                await gw.client.login(os.environ.get("DISCORD_TOKEN", ""))
    except discord.LoginFailure:
        logger.error("Discord rejected DISCORD_TOKEN: set a valid bot token (nothing retried)")
        await gw.client.close()
        sys.exit(2)
    gw.bot_id = str(gw.client.user.id) if gw.client.user else gw.bot_id
    gw.logged_in = True


def _worth_retrying(exc: BaseException) -> bool:
    if isinstance(exc, discord.HTTPException):
        return exc.status >= 500 or exc.status == 429
    return isinstance(exc, OSError | aiohttp.ClientError | TimeoutError)


async def _register_commands() -> None:
    assert service.ctx is not None and gw.bot_id is not None
    names = list(service.ctx.topology.commands)
    try:
        with anyio.fail_after(gw.request_timeout_s):
            await gw.http().bulk_upsert_global_commands(gw.bot_id, command_payload(names))
        logger.info("slash commands registered: {}", ", ".join(sorted(names)) or "none")
    except (discord.HTTPException, TimeoutError) as exc:
        logger.error(
            "could not register slash commands ({}); they will be retried at the next start", exc
        )


@service.task
async def stay_connected() -> None:
    """py-cord's connect loop (reconnects and RESUMEs by itself), plus our helpers."""
    assert gw.client is not None
    await _log_in()
    await _register_commands()
    async with anyio.create_task_group() as tg:
        gw.tg = tg
        tg.start_soon(publish_in_order)
        tg.start_soon(save_session)
        tg.start_soon(report_latency)
        tg.start_soon(publish_counts)
        await gw.client.connect(reconnect=True)
        tg.cancel_scope.cancel()


@service.teardown
async def disconnect() -> None:
    """Flush what was received, save the session, and leave it resumable."""
    with anyio.move_on_after(1.5):
        if gw.queue:
            gw.queue_drained = anyio.Event()
            gw.queue_wake.set()
            await gw.queue_drained.wait()
    await _save_session()
    client = gw.client
    if client is not None and not client.is_closed():
        if client.ws is not None:
            # Any close code but 1000/1001 keeps the session resumable for our successor.
            await client.ws.close(code=4000)
        try:
            await client.close()
        except RuntimeError:
            pass  # py-cord: 'Session is closed' when already closed


# --- Discord to the bus ---------------------------------------------------------------


def on_dispatch(payload: dict[str, Any]) -> None:
    """Every DISPATCH frame, synchronously and in order (called from py-cord's reader)."""
    event, d, seq = payload.get("t"), payload.get("d"), payload.get("s")
    if not isinstance(event, str) or not isinstance(d, dict):
        return
    now = time.time()
    try:
        if event == "READY":
            _on_ready(d)
        elif event == "RESUMED":
            logger.info("session resumed at seq {}", seq)
            _publish_connection("resumed")
        elif event == "INTERACTION_CREATE":
            invocation = Invocation.parse(d)
            if invocation is not None and gw.tg is not None:
                if isinstance(seq, int):
                    gw.unanswered[invocation.id] = seq
                gw.tg.start_soon(answer_interaction, invocation)
        changed = gw.guilds.apply(event, d)
        if changed:
            gw.counts_dirty.add(changed)
        if event == "GUILD_CREATE" and changed:
            guild = gw.guilds.get(changed)
            if guild is not None and gw.bot_id:
                gw.queue.append((None, [guild.ready(gw.bot_id)]))
        events = convert(event, d, gw.bot_id, now, gw.guilds.channel_names())
    except (KeyError, TypeError, ValueError) as exc:
        # A payload missing what Discord always sends: log it once, lose nothing else.
        logger.error("dropped malformed {} (seq {}): {!r}", event, seq, exc)
        events = []
    position = (
        Position(gw.session_id, seq, gw.resume_url)
        if isinstance(seq, int) and gw.session_id
        else None
    )
    gw.queue.append((position, events))
    gw.queue_wake.set()


def _on_ready(d: dict[str, Any]) -> None:
    gw.session_id = str(d.get("session_id"))
    gw.unanswered.clear()  # sequence numbers of the old session mean nothing in the new
    gw.resume_url = d.get("resume_gateway_url")
    gw.bot_id = str((d.get("user") or {}).get("id", gw.bot_id))
    if gw.resumed_from is not None:
        logger.warning(
            "Discord refused to resume session {}: identified afresh; events "
            "after seq {} may be missing (possible gap)",
            gw.resumed_from.session_id[:8],
            gw.resumed_from.seq,
        )
        gw.resumed_from = None
        _publish_connection("identified_after_gap")
    else:
        _publish_connection("connected")


async def publish_in_order() -> None:
    """Outbox first, then the saved sequence: a RESUME replays whatever is not stored."""
    while True:
        await gw.queue_wake.wait()
        gw.queue_wake = anyio.Event()
        while gw.queue:
            batch: list[Message] = []
            last: Position | None = None
            while gw.queue and len(batch) < 500:
                position, events = gw.queue.popleft()
                batch.extend(events)
                last = position or last
            durable = [m for m in batch if m.DURABLE]
            if durable:
                # The position goes into the same outbox transaction as the events: after
                # a crash, a RESUME replays exactly what is not stored, nothing twice.
                meta = {POSITION_KEY: json.dumps(asdict(_resumable(last)))} if last else None
                await service.publish_many(durable, meta)
            for m in batch:
                if not m.DURABLE:
                    await service.publish(m)
            if last is not None:
                gw.committed = last
                gw.seq_committed.set()
        gw.queue_drained.set()


async def save_session() -> None:
    """Save the committed sequence at most every 50 ms, off the publishing path."""
    while True:
        await gw.seq_committed.wait()
        gw.seq_committed = anyio.Event()
        await _save_session()
        await anyio.sleep(SESSION_SAVE_EVERY_S)


def _resumable(at: Position) -> Position:
    """Not past a slash command still waiting for its first response: if we die now, the
    RESUME replays it and our successor answers (often still inside Discord's 3 s)."""
    if not gw.unanswered:
        return at
    oldest = min(gw.unanswered.values())
    return at if at.seq < oldest else Position(at.session_id, oldest - 1, at.resume_url)


async def _save_session() -> None:
    """The position (for batches without durable events) and the guild state."""
    async with gw.save_lock:  # the saver task and teardown must not write at once
        if gw.committed is None:
            return
        at = _resumable(gw.committed)
        if gw.session_file is None or at == gw.saved:
            return
        await service.publish_many([], {POSITION_KEY: json.dumps(asdict(at))})
        await gw.session_file.save(
            SavedSession(at.session_id, at.seq, at.resume_url, gw.bot_id, gw.guilds.to_json())
        )
        gw.saved = at


async def publish_counts() -> None:
    """Membership and presence changes, coalesced to at most one event a second per guild."""
    while True:
        await anyio.sleep(1.0)
        dirty, gw.counts_dirty = gw.counts_dirty, set()
        for gid in dirty:
            guild = gw.guilds.get(gid)
            if guild is not None:
                await service.publish(guild.counts())


async def report_latency() -> None:
    while True:
        await anyio.sleep(15.0)
        if gw.client is not None and gw.client.ws is not None and not gw.client.is_closed():
            _publish_connection("connected")


def _publish_connection(state: str) -> None:
    latency = gw.client.latency_ms() if gw.client is not None else None
    msg = ConnectionState(state, latency, time.time(), gw.bot_id)
    gw.queue.append((None, [msg]))
    gw.queue_wake.set()


# --- slash commands ---------------------------------------------------------------------


async def answer_interaction(inv: Invocation) -> None:
    """Answer one slash command; a failed Discord call is logged, never fatal."""
    try:
        await _answer_interaction(inv)
    except Exception:
        logger.exception("/{} ({}) could not be answered", inv.command, inv.id)


async def _answer_interaction(inv: Invocation) -> None:
    assert service.ctx is not None and service.bus is not None
    owner = service.ctx.topology.commands.get(inv.command)
    if owner is None:
        await _respond(inv, RESPOND_WITH_MESSAGE, message_data(UNKNOWN, ephemeral=True))
        return
    channel = service.bus.channel(owner)
    # A fresh channel needs a moment to connect; a dead owner never will.
    if not await channel.wait_connected(0.3) or not channel.breaker.allows():
        await _respond(inv, RESPOND_WITH_MESSAGE, message_data(RESTARTING, ephemeral=True))
        return
    _remember(inv)
    deferred = CATALOGUE[inv.command].slow
    request = CommandInvoked(
        inv.id,
        inv.command,
        inv.options,
        inv.user_id,
        inv.user_name,
        inv.channel_id,
        inv.guild_id,
        inv.is_admin,
        deferred,
    )
    if deferred:
        await _respond(inv, RESPOND_DEFERRED, None)
    answer, failure = await _ask_owner(owner, request, timeout=120.0 if deferred else 2.0)
    if deferred:
        text = failure or (answer.content if answer else "")
        await edit_original(inv, text or "(no answer)", answer.embeds if answer else None)
    elif answer is not None:
        await _respond(
            inv, RESPOND_WITH_MESSAGE, message_data(answer.content, answer.embeds, answer.ephemeral)
        )
    else:
        await _respond(inv, RESPOND_WITH_MESSAGE, message_data(failure or TOO_SLOW, ephemeral=True))


async def _ask_owner(
    owner: str, request: CommandInvoked, timeout: float
) -> tuple[CommandAnswer | None, str | None]:
    try:
        body = await service.call(owner, request, timeout=timeout)
        answer = decode(CommandAnswer.TYPE, body)
        assert isinstance(answer, CommandAnswer)
        return answer, None
    except (BreakerOpen, PeerGone):
        return None, RESTARTING
    except RequestTimeout:
        return None, TOO_SLOW
    except RemoteError as exc:
        logger.warning("/{} failed in {}: {}", request.command, owner, exc)
        return None, "That failed, sorry. The error was logged."
    except MessageError as exc:
        logger.error(
            "/{}: {} answered something that is not a CommandAnswer: {}",
            request.command,
            owner,
            exc,
        )
        return None, "That failed, sorry. The error was logged."


def _remember(inv: Invocation) -> None:
    cutoff = time.monotonic() - INTERACTION_TTL_S
    for key in [k for k, v in gw.interactions.items() if v.created < cutoff]:
        del gw.interactions[key]
    gw.interactions[inv.id] = inv


async def _respond(inv: Invocation, kind: int, data: dict[str, Any] | None) -> None:
    try:
        with anyio.fail_after(gw.request_timeout_s):
            await gw.http().create_interaction_response(inv.id, inv.token, type=kind, data=data)
    except (discord.HTTPException, TimeoutError) as exc:
        logger.warning("could not answer /{} ({}): {}", inv.command, inv.id, exc)
    finally:
        if gw.unanswered.pop(inv.id, None) is not None:
            gw.seq_committed.set()  # the saved position may move on now
