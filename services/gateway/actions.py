"""Discord actions the other services ask for, carried out with py-cord's HTTP client.

Every call is bounded by a timeout and every failure becomes a `Refused` with a
reason the caller can act on (rate_limited, not_found, forbidden, timeout, ...).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import anyio
import discord

from protocol.discord import (
    MESSAGE_LIMIT,
    NO_PINGS,
    RENAME_WINDOW_S,
    RENAMES_PER_WINDOW,
    ChannelCreated,
    CountsRequest,
    CreateChannel,
    DeleteMessage,
    EditInteraction,
    EditMessage,
    GuildCounts,
    GuildInfoRequest,
    GuildReady,
    InteractionFollowup,
    RenameChannel,
    SendMessage,
    Sent,
    SetPresence,
    Typing,
)
from protocol.messages import Done
from protocol.runtime import Refused, Service
from services.gateway.interactions import Invocation
from services.gateway.state import Gateway


class Actions:
    """The Discord actions of one gateway process, over its state."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def serve(self, service: Service) -> None:
        """Answer every action's request type on the bus."""
        service.request(SendMessage)(self.send_message)
        service.request(EditMessage)(self.edit_message)
        service.request(DeleteMessage)(self.delete_message)
        service.request(RenameChannel)(self.rename_channel)
        service.request(CreateChannel)(self.create_channel)
        service.request(Typing)(self.typing)
        service.request(SetPresence)(self.set_presence)
        service.request(CountsRequest)(self.counts)
        service.request(GuildInfoRequest)(self.guild_info)
        service.request(EditInteraction)(self.edit_interaction)
        service.request(InteractionFollowup)(self.interaction_followup)

    async def _discord(self, call: Any) -> Any:
        """Await one py-cord HTTP call, mapping failures to clear refusals for the caller."""
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
            reason = {
                400: "bad_request",
                403: "forbidden",
                404: "not_found",
                429: "rate_limited",
            }.get(exc.status, "discord_error")
            raise Refused(reason, f"{exc.status} {exc.text or exc}") from None

    async def edit_original(
        self, inv: Invocation, content: str | None, embeds: list[dict[str, Any]] | None
    ) -> None:
        await self._discord(
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
        if len(msg.content) > MESSAGE_LIMIT:
            raise Refused(
                "bad_request", f"content is {len(msg.content)} characters; split it below 2,000"
            )
        reference = (
            {"message_id": msg.reply_to_id, "fail_if_not_exists": False}
            if msg.reply_to_id
            else None
        )
        sent = await self._discord(
            self.gw.http().send_message(
                msg.channel_id,
                msg.content or None,
                embeds=msg.embeds or None,
                allowed_mentions=self._mentions(msg.allowed_mentions),
                message_reference=reference,
            )
        )
        return Sent(str(sent["id"]))

    async def edit_message(self, msg: EditMessage) -> Done:
        fields: dict[str, Any] = {"allowed_mentions": self._mentions(msg.allowed_mentions)}
        if msg.content is not None:
            fields["content"] = msg.content[:MESSAGE_LIMIT]
        if msg.embeds is not None:
            fields["embeds"] = msg.embeds
        await self._discord(self.gw.http().edit_message(msg.channel_id, msg.message_id, **fields))
        return Done()

    async def delete_message(self, msg: DeleteMessage) -> Done:
        await self._discord(self.gw.http().delete_message(msg.channel_id, msg.message_id))
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
        await self._discord(self.gw.http().edit_channel(msg.channel_id, name=msg.name))
        return Done()

    async def create_channel(self, msg: CreateChannel) -> ChannelCreated:
        kind = {"text": 0, "voice": 2}.get(msg.kind)
        if kind is None:
            raise Refused("bad_request", f"unknown channel kind {msg.kind!r}: use text or voice")
        created = await self._discord(
            self.gw.http().create_channel(msg.guild_id, kind, name=msg.name)
        )
        return ChannelCreated(str(created["id"]))

    async def typing(self, msg: Typing) -> Done:
        await self._discord(self.gw.http().send_typing(msg.channel_id))
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
        await client.change_presence(status=status, activity=activity)
        return Done()

    async def counts(self, msg: CountsRequest) -> GuildCounts:
        guild = self.gw.guilds.get(msg.guild_id)
        if guild is None:
            raise Refused("not_found", "no guild known yet (not connected?)")
        if msg.with_bans and guild.bans is None:
            bans = await self._discord(self.gw.http().get_bans(guild.id, limit=1000))
            guild.bans = len(bans)
        return guild.counts()

    async def guild_info(self, msg: GuildInfoRequest) -> GuildReady:
        guild = self.gw.guilds.get(msg.guild_id)
        if guild is None or self.gw.bot_id is None:
            raise Refused("not_found", "no guild known yet (not connected?)")
        return guild.ready(self.gw.bot_id)

    async def edit_interaction(self, msg: EditInteraction) -> Done:
        inv = self.gw.interactions.get(msg.interaction_id)
        if inv is None:
            raise Refused("not_found", "unknown or expired interaction")
        await self.edit_original(inv, msg.content, msg.embeds)
        return Done()

    async def interaction_followup(self, msg: InteractionFollowup) -> Sent:
        inv = self.gw.interactions.get(msg.interaction_id)
        if inv is None:
            raise Refused("not_found", "unknown or expired interaction")
        sent = await self._discord(
            self.gw.http().create_followup_message(
                inv.application_id,
                inv.token,
                content=msg.content[:MESSAGE_LIMIT] or None,
                embeds=msg.embeds or None,
                allowed_mentions=NO_PINGS,
                files=[],  # py-cord 2.8.1 iterates it: None raises before any request
            )
        )
        return Sent(str(sent["id"]))
