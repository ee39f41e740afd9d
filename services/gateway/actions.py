"""Discord actions the other services ask for, carried out with py-cord's HTTP client.

Every call is bounded by a timeout and every failure becomes a `Refused` with a
reason the caller can act on (rate_limited, not_found, forbidden, timeout, ...).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections import deque
from datetime import UTC, datetime
from typing import Any, ClassVar, NamedTuple

import aiohttp
import anyio
import discord

from protocol.discord import (
    MESSAGE_LIMIT,
    NO_PINGS,
    NONCE_LIMIT,
    RENAME_WINDOW_S,
    RENAMES_PER_WINDOW,
    ChannelCreated,
    CountsRequest,
    CreateChannel,
    CreateScheduledEvent,
    DeleteMessage,
    DirectChannel,
    EditInteraction,
    EditMessage,
    ExpirePoll,
    GuildCounts,
    GuildInfoRequest,
    GuildReady,
    InteractionFollowup,
    ListScheduledEvents,
    OpenDirectMessage,
    PollSent,
    PollVotersRequest,
    PollVotes,
    RenameChannel,
    ScheduledEventInfo,
    ScheduledEventList,
    ScheduledEventUsers,
    SendMessage,
    SendPoll,
    Sent,
    SetPresence,
    Typing,
    UserIds,
)
from protocol.messages import Done, Request
from protocol.runtime import Refused, Service, caller_time_left
from services.gateway.convert import scheduled_event, timestamp
from services.gateway.interactions import EPHEMERAL, RESPOND_WITH_MESSAGE, Invocation
from services.gateway.state import Gateway

#: Discord error codes that say more than their HTTP status.
REASON_BY_CODE = {50027: "expired"}  # Invalid Webhook Token: the 15-minute token expired
REASON_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    429: "rate_limited",
}


class Webhook(NamedTuple):
    """What an interaction's responses are sent with, when this process has no
    `Invocation` of it."""

    application_id: str
    token: str


def _nonce_fits(nonce: str | None) -> None:
    if nonce is not None and not 0 < len(nonce) <= NONCE_LIMIT:
        raise Refused("bad_request", f"a nonce is 1 to {NONCE_LIMIT} characters")


PAGE = 100  # users per page of Get Answer Voters / Get Guild Scheduled Event Users
EXTERNAL_EVENT, GUILD_ONLY_EVENT = 3, 2


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def _files(files: list[dict[str, Any]]) -> list[discord.File]:
    """`{filename, data_b64}` from a CommandAnswer as py-cord's Files."""
    out = []
    for f in files:
        try:
            data = base64.b64decode(str(f.get("data_b64", "")), validate=True)
        except (binascii.Error, ValueError):
            raise Refused("bad_request", f"file {f.get('filename')!r} is not base64") from None
        out.append(discord.File(io.BytesIO(data), filename=str(f.get("filename") or "file")))
    return out


def _fits(content: str | None) -> None:
    """Refuses content Discord would refuse, rather than cutting off its end."""
    if content is not None and len(content) > MESSAGE_LIMIT:
        raise Refused(
            "bad_request", f"content is {len(content)} characters; split it below {MESSAGE_LIMIT:,}"
        )


class Actions:
    """The Discord actions of one gateway process, over its state."""

    # The action table: each request type the gateway serves, and the method that does it
    # (docs/discord-actions.md is generated from it and services/gateway/routes.py).
    HANDLERS: ClassVar[dict[type[Request[Any]], str]] = {
        SendMessage: "send_message",
        EditMessage: "edit_message",
        DeleteMessage: "delete_message",
        RenameChannel: "rename_channel",
        CreateChannel: "create_channel",
        Typing: "typing",
        SetPresence: "set_presence",
        CountsRequest: "counts",
        GuildInfoRequest: "guild_info",
        EditInteraction: "edit_interaction",
        InteractionFollowup: "interaction_followup",
        OpenDirectMessage: "open_dm",
        SendPoll: "send_poll",
        ExpirePoll: "expire_poll",
        PollVotersRequest: "poll_voters",
        CreateScheduledEvent: "create_scheduled_event",
        ListScheduledEvents: "list_scheduled_events",
        ScheduledEventUsers: "scheduled_event_users",
    }

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def serve(self, service: Service) -> None:
        """Answer every action's request type on the bus."""
        for request_type, method in self.HANDLERS.items():
            service.request(request_type)(getattr(self, method))

    async def call_discord(self, call: Any) -> Any:
        """Await one py-cord HTTP call, mapping failures to clear refusals for the caller.

        A gateway that has just (re)started is on the bus before it has logged in to
        Discord: the call waits for the login as long as its caller waits for the answer.
        """
        if not self.gw.logged_in:
            with anyio.move_on_after(min(caller_time_left(), self.gw.request_timeout_s)):
                await self.gw.login_done.wait()
        if not self.gw.logged_in:
            call.close()  # never awaited: the coroutine is dropped cleanly
            raise Refused("not_connected", "not logged in to Discord yet")
        try:
            with anyio.fail_after(self.gw.request_timeout_s):
                return await call
        except TimeoutError:
            raise Refused(
                "timeout", f"Discord did not answer within {self.gw.request_timeout_s:g}s"
            ) from None
        except discord.HTTPException as exc:
            reason = REASON_BY_CODE.get(exc.code) or REASON_BY_STATUS.get(exc.status)
            detail = f"{exc.status} (code {exc.code}) {exc.text or exc}"
            raise Refused(reason or "discord_error", detail) from None
        except (OSError, aiohttp.ClientError) as exc:
            # A connection reset or refused under py-cord: worth a retry, never a crash.
            raise Refused("not_connected", f"Discord could not be reached: {exc!r}") from None

    async def edit_original(
        self, inv: Invocation | Webhook, content: str | None, embeds: list[dict[str, Any]] | None
    ) -> None:
        await self.call_discord(
            self.gw.http().edit_original_interaction_response(
                inv.application_id,
                inv.token,
                content=content[:MESSAGE_LIMIT] if content else None,
                embeds=embeds,
                allowed_mentions=NO_PINGS,
            )
        )

    def _mentions(self, allowed: dict[str, Any] | None) -> dict[str, Any]:
        return allowed if allowed is not None else NO_PINGS

    async def send_message(self, msg: SendMessage) -> Sent:
        _fits(msg.content)
        _nonce_fits(msg.nonce)
        reference = (
            {"message_id": msg.reply_to_id, "fail_if_not_exists": False}
            if msg.reply_to_id
            else None
        )
        sent = await self.call_discord(
            self.gw.http().send_message(
                msg.channel_id,
                msg.content or None,
                embeds=msg.embeds or None,
                nonce=msg.nonce,
                enforce_nonce=True if msg.nonce else None,
                allowed_mentions=self._mentions(msg.allowed_mentions),
                message_reference=reference,
            )
        )
        return Sent(str(sent["id"]), sent.get("content"))

    async def edit_message(self, msg: EditMessage) -> Done:
        _fits(msg.content)
        fields: dict[str, Any] = {"allowed_mentions": self._mentions(msg.allowed_mentions)}
        if msg.content is not None:
            fields["content"] = msg.content
        if msg.embeds is not None:
            fields["embeds"] = msg.embeds
        await self.call_discord(
            self.gw.http().edit_message(msg.channel_id, msg.message_id, **fields)
        )
        return Done()

    async def delete_message(self, msg: DeleteMessage) -> Done:
        await self.call_discord(self.gw.http().delete_message(msg.channel_id, msg.message_id))
        return Done()

    async def rename_channel(self, msg: RenameChannel) -> Done:
        """Refuses a third rename within 10 minutes instead of letting py-cord sleep on a 429."""
        now = self.gw.clock.monotonic()
        recent = self.gw.renames.setdefault(msg.channel_id, deque())
        while recent and now - recent[0] > RENAME_WINDOW_S:
            recent.popleft()
        if len(recent) >= RENAMES_PER_WINDOW:
            wait = RENAME_WINDOW_S - (now - recent[0])
            raise Refused("rate_limited", f"retry_after={wait:.0f}")
        recent.append(now)
        await self.call_discord(self.gw.http().edit_channel(msg.channel_id, name=msg.name))
        return Done()

    async def create_channel(self, msg: CreateChannel) -> ChannelCreated:
        kind = {"text": 0, "voice": 2}.get(msg.kind)
        if kind is None:
            raise Refused("bad_request", f"unknown channel kind {msg.kind!r}: use text or voice")
        created = await self.call_discord(
            self.gw.http().create_channel(msg.guild_id, kind, name=msg.name)
        )
        return ChannelCreated(str(created["id"]))

    async def typing(self, msg: Typing) -> Done:
        await self.call_discord(self.gw.http().send_typing(msg.channel_id))
        return Done()

    async def set_presence(self, msg: SetPresence) -> Done:
        client = self.gw.client
        if client is None or client.ws is None or client.is_closed():
            raise Refused("not_connected", "no Discord connection right now")
        try:
            status = discord.Status(msg.status)
        except ValueError:
            raise Refused("bad_request", f"unknown status {msg.status!r}") from None
        activity: discord.BaseActivity | None = None
        if msg.activity:
            if msg.activity_type == "custom":
                activity = discord.CustomActivity(name=msg.activity)
            else:
                kind = getattr(
                    discord.ActivityType, msg.activity_type, discord.ActivityType.playing
                )
                activity = discord.Activity(type=kind, name=msg.activity)
        if client.ws.socket.closed:  # dropped; py-cord keeps the old socket while it reconnects
            raise Refused("not_connected", "the Discord connection is down; reconnecting")
        try:
            await client.change_presence(status=status, activity=activity)
        except (OSError, aiohttp.ClientError, discord.ConnectionClosed) as exc:
            # the socket closed under us (py-cord sends op 3 without catching this)
            raise Refused("not_connected", f"the Discord connection closed: {exc}") from None
        return Done()

    async def counts(self, msg: CountsRequest) -> GuildCounts:
        guild = self.gw.guilds.get(msg.guild_id)
        if guild is None:
            raise Refused("not_found", "no guild known yet (not connected?)")
        if msg.with_bans and guild.bans is None:
            bans = await self.call_discord(self.gw.http().get_bans(guild.id, limit=1000))
            guild.bans = len(bans)
            if len(bans) < 1000:  # all of them: a backfill after a gap compares with these
                guild.banned = {str(b["user"]["id"]) for b in bans}
        return guild.counts()

    async def guild_info(self, msg: GuildInfoRequest) -> GuildReady:
        guild = self.gw.guilds.get(msg.guild_id)
        if guild is None or self.gw.bot_id is None:
            raise Refused("not_found", "no guild known yet (not connected?)")
        return guild.ready(self.gw.bot_id)

    def _webhook(self, msg: EditInteraction | InteractionFollowup) -> Invocation | Webhook:
        """The interaction's webhook: this process's record of it, else the one the request
        carries (this gateway started after the interaction arrived)."""
        inv = self.gw.interactions.get(msg.interaction_id)
        if inv is not None:
            return inv
        if msg.interaction_token and msg.application_id:
            return Webhook(msg.application_id, msg.interaction_token)
        raise Refused("not_found", "unknown or expired interaction")

    async def edit_interaction(self, msg: EditInteraction) -> Done:
        inv = self._webhook(msg)
        _fits(msg.content)
        await self.edit_original(inv, msg.content, msg.embeds)
        return Done()

    async def interaction_followup(self, msg: InteractionFollowup) -> Sent:
        inv = self._webhook(msg)
        _fits(msg.content)
        if msg.nonce is not None and (posted := self.gw.followups.get(msg.nonce)) is not None:
            return posted  # asked again (its sender restarted): posted once
        # Create Followup Message. py-cord's create_followup_message iterates `files` (None
        # raises TypeError before any request) and cannot set flags (ephemeral): call its
        # multipart helper on the same route instead.
        route = discord.http.Route(
            "POST",
            "/webhooks/{application_id}/{interaction_token}",
            application_id=inv.application_id,
            interaction_token=inv.token,
        )
        sent = await self.call_discord(
            self.gw.http().send_multipart_helper(
                route,
                files=[],
                content=msg.content or None,
                embeds=msg.embeds or None,
                allowed_mentions=NO_PINGS,
                flags=EPHEMERAL if msg.ephemeral else None,
            )
        )
        posted = Sent(str(sent["id"]), sent.get("content"))
        if msg.nonce is not None:
            self.gw.remember_followup(msg.nonce, posted)
        return posted

    async def respond_with_files(
        self, inv: Invocation, data: dict[str, Any], files: list[dict[str, Any]]
    ) -> None:
        """Create Interaction Response (type 4) with attachments: py-cord's HTTP client
        sends the callback as JSON only, so it goes as the multipart form Discord takes
        (`payload_json` plus `files[n]`), through the same rate-limited client."""
        uploads = _files(files)
        route = discord.http.Route(
            "POST",
            "/interactions/{interaction_id}/{interaction_token}/callback",
            interaction_id=inv.id,
            interaction_token=inv.token,
        )
        attachments = [{"id": i, "filename": f.filename} for i, f in enumerate(uploads)]
        payload = {"type": RESPOND_WITH_MESSAGE, "data": {**data, "attachments": attachments}}
        form: list[dict[str, Any]] = [{"name": "payload_json", "value": json.dumps(payload)}]
        for i, f in enumerate(uploads):
            form.append(
                {
                    "name": f"files[{i}]",
                    "value": f.fp,
                    "filename": f.filename,
                    "content_type": "application/octet-stream",
                }
            )
        try:
            await self.call_discord(self.gw.http().request(route, form=form, files=uploads))
        finally:
            for f in uploads:
                f.close()

    # --- direct messages --------------------------------------------------------------

    async def open_dm(self, msg: OpenDirectMessage) -> DirectChannel:
        channel = await self.call_discord(self.gw.http().start_private_message(msg.user_id))
        return DirectChannel(str(channel["id"]))

    # --- native polls -----------------------------------------------------------------

    async def send_poll(self, msg: SendPoll) -> PollSent:
        _fits(msg.content)
        poll = discord.Poll(
            question=msg.question,
            answers=[discord.PollAnswer(text) for text in msg.answers],
            duration=msg.hours,
            allow_multiselect=msg.multiple,
        )
        sent = await self.call_discord(
            self.gw.http().send_message(
                msg.channel_id,
                msg.content or None,
                allowed_mentions=self._mentions(msg.allowed_mentions),
                poll=poll.to_dict(),
            )
        )
        made = sent.get("poll") or {}
        expiry = timestamp(made.get("expiry"), self.gw.clock.wall() + msg.hours * 3600.0)
        answer_ids = [int(a["answer_id"]) for a in made.get("answers") or [] if "answer_id" in a]
        return PollSent(str(sent["id"]), expiry, answer_ids)

    async def expire_poll(self, msg: ExpirePoll) -> Done:
        await self.call_discord(self.gw.http().expire_poll(msg.channel_id, msg.message_id))
        return Done()

    async def poll_voters(self, msg: PollVotersRequest) -> PollVotes:
        voters: dict[str, list[str]] = {}
        for answer_id in msg.answer_ids:
            found: list[str] = []
            while True:
                page = await self.call_discord(
                    self.gw.http().get_answer_voters(
                        msg.channel_id,
                        msg.message_id,
                        answer_id,
                        PAGE,
                        after=found[-1] if found else None,
                    )
                )
                users = [str(u["id"]) for u in page.get("users") or []]
                found += users
                if len(users) < PAGE:
                    break
            voters[str(answer_id)] = found
        return PollVotes(voters)

    # --- guild scheduled events -------------------------------------------------------

    async def create_scheduled_event(self, msg: CreateScheduledEvent) -> ScheduledEventInfo:
        created = await self.call_discord(
            self.gw.http().create_scheduled_event(
                msg.guild_id,
                name=msg.name,
                privacy_level=GUILD_ONLY_EVENT,
                scheduled_start_time=_iso(msg.start),
                scheduled_end_time=_iso(msg.end),
                description=msg.description or None,
                entity_type=EXTERNAL_EVENT,
                entity_metadata={"location": msg.location},
            )
        )
        return ScheduledEventInfo(scheduled_event(created))

    async def list_scheduled_events(self, msg: ListScheduledEvents) -> ScheduledEventList:
        found = await self.call_discord(
            self.gw.http().get_scheduled_events(msg.guild_id, with_user_count=True)
        )
        return ScheduledEventList([scheduled_event(e) for e in found])

    async def scheduled_event_users(self, msg: ScheduledEventUsers) -> UserIds:
        users: list[str] = []
        while True:
            page = await self.call_discord(
                self.gw.http().get_scheduled_event_users(
                    msg.guild_id, msg.event_id, PAGE, after=users[-1] if users else None
                )
            )
            ids = [str(entry["user"]["id"]) for entry in page if entry.get("user")]
            users += ids
            if len(ids) < PAGE:
                return UserIds(users)
