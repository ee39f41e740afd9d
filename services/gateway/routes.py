"""Which Discord call each gateway action makes: declared once, documented from here.

`docs/discord-actions.md` is generated from this table and the action table (Actions.HANDLERS
in actions.py) by `python -m tools.discord_actions`; every action listed here is proven end
to end by a test marked `@pytest.mark.action("<name>")`.
"""

from __future__ import annotations

from dataclasses import dataclass

DOCS = "https://discord.com/developers/docs"


@dataclass(frozen=True)
class DiscordCall:
    name: str  # the action, as tests mark it
    asked_by: str  # the bus request (message type) that asks for it, or what triggers it
    discord: str  # Discord's name for the call
    method: str  # HTTP method, or "op 3" for a gateway command
    route: str  # Discord's route ("" when no request is made)
    sends: str  # what the gateway puts in it
    doc: str = ""  # the page of Discord's docs, under DOCS


CALLS: tuple[DiscordCall, ...] = (
    DiscordCall(
        "send",
        "discord.send",
        "Create Message",
        "POST",
        "/channels/{channel.id}/messages",
        "JSON: content (refused over 2,000), embeds, allowed_mentions (none given: pings "
        "nobody), nonce with enforce_nonce: true when given (a repeat returns the message "
        "already posted)",
        "/resources/message#create-message",
    ),
    DiscordCall(
        "reply",
        "discord.send with reply_to_id",
        "Create Message",
        "POST",
        "/channels/{channel.id}/messages",
        "as send, plus message_reference {message_id, fail_if_not_exists: false}",
        "/resources/message#create-message",
    ),
    DiscordCall(
        "edit",
        "discord.edit",
        "Edit Message",
        "PATCH",
        "/channels/{channel.id}/messages/{message.id}",
        "JSON: content (refused over 2,000), embeds, allowed_mentions",
        "/resources/message#edit-message",
    ),
    DiscordCall(
        "delete",
        "discord.delete",
        "Delete Message",
        "DELETE",
        "/channels/{channel.id}/messages/{message.id}",
        "no body",
        "/resources/message#delete-message",
    ),
    DiscordCall(
        "typing",
        "discord.typing",
        "Trigger Typing Indicator",
        "POST",
        "/channels/{channel.id}/typing",
        "no body",
        "/resources/channel#trigger-typing-indicator",
    ),
    DiscordCall(
        "rename",
        "discord.rename_channel",
        "Modify Channel",
        "PATCH",
        "/channels/{channel.id}",
        "JSON: name; a third rename of a channel within 10 minutes is refused "
        "(rate_limited) without asking Discord",
        "/resources/channel#modify-channel",
    ),
    DiscordCall(
        "create_channel",
        "discord.create_channel",
        "Create Guild Channel",
        "POST",
        "/guilds/{guild.id}/channels",
        "JSON: type (0 text, 2 voice), name",
        "/resources/guild#create-guild-channel",
    ),
    DiscordCall(
        "presence",
        "discord.presence",
        "Update Presence",
        "op 3",
        "(gateway)",
        "since, activities (custom: state; others: name, type), status, afk; "
        "not_connected while the socket is down",
        "/events/gateway-events#update-presence",
    ),
    DiscordCall(
        "bans",
        "discord.counts (with_bans)",
        "Get Guild Bans",
        "GET",
        "/guilds/{guild.id}/bans?limit=1000",
        "once per guild; then kept from GUILD_BAN_ADD / GUILD_BAN_REMOVE",
        "/resources/guild#get-guild-bans",
    ),
    DiscordCall(
        "backfill",
        "a fresh IDENTIFY after a stored position (Discord refused to RESUME)",
        "Get Channel Messages",
        "GET",
        "/channels/{channel.id}/messages?after={message.id}&limit=100",
        "for each readable channel, thread and DM: after its newest stored message, page by "
        "page (each sorted by id: Discord sends pages newest first), up to the first message "
        "received live; a channel with nothing stored: before=, back to the gap's start",
        "/resources/message#get-channel-messages",
    ),
    DiscordCall(
        "backfill_members",
        "the same backfill",
        "Get Guild Bans; Get User",
        "GET",
        "/guilds/{guild.id}/bans?limit=1000&after={user.id}; /users/{user.id}",
        "every ban, page by page, compared (with GUILD_CREATE's members) with the view from "
        "before the gap; a departed member's name",
        "/resources/guild#get-guild-bans",
    ),
    DiscordCall(
        "members",
        "discord.counts, discord.guild",
        "none: the gateway's cache",
        "",
        "",
        "members, humans, bots, online and the channel list, kept from GUILD_CREATE "
        "and member, presence and channel events",
    ),
    DiscordCall(
        "answer",
        "a slash command (its owner answers within 2 s, or the gateway does)",
        "Create Interaction Response, type 4",
        "POST",
        "/interactions/{interaction.id}/{interaction.token}/callback",
        "JSON: type 4, data {content, embeds, allowed_mentions: pings nobody, flags 64 "
        "when ephemeral}",
        "/interactions/receiving-and-responding#create-interaction-response",
    ),
    DiscordCall(
        "defer",
        "a slow slash command (/ask)",
        "Create Interaction Response, type 5",
        "POST",
        "/interactions/{interaction.id}/{interaction.token}/callback",
        "JSON: type 5 (thinking...), sent at once",
        "/interactions/receiving-and-responding#create-interaction-response",
    ),
    DiscordCall(
        "edit_original",
        "discord.interaction.edit; the answer to a deferred command",
        "Edit Original Interaction Response",
        "PATCH",
        "/webhooks/{application.id}/{interaction.token}/messages/@original",
        "form (payload_json): content (refused over 2,000), embeds, allowed_mentions",
        "/interactions/receiving-and-responding#edit-original-interaction-response",
    ),
    DiscordCall(
        "followup",
        "discord.interaction.followup",
        "Create Followup Message",
        "POST",
        "/webhooks/{application.id}/{interaction.token}",
        "form (payload_json): tts, content (refused over 2,000), embeds, allowed_mentions, "
        "attachments [], flags 64 when ephemeral; a nonce already posted is answered with "
        "that follow-up, no request",
        "/interactions/receiving-and-responding#create-followup-message",
    ),
    DiscordCall(
        "answer_with_files",
        "a slash command whose answer carries files (`files` of discord.command.answer)",
        "Create Interaction Response, type 4, with attachments",
        "POST",
        "/interactions/{interaction.id}/{interaction.token}/callback",
        "form: payload_json {type 4, data {content, allowed_mentions: pings nobody, flags, "
        "attachments [{id, filename}]}} and files[n]",
        "/interactions/receiving-and-responding#create-interaction-response",
    ),
    DiscordCall(
        "dm_channel",
        "discord.dm.open",
        "Create DM",
        "POST",
        "/users/@me/channels",
        "JSON: recipient_id; the channel's id is then used with discord.send",
        "/resources/user#create-dm",
    ),
    DiscordCall(
        "send_poll",
        "discord.poll.send",
        "Create Message with a poll",
        "POST",
        "/channels/{channel.id}/messages",
        "JSON: poll {question {text}, answers [{poll_media {text}}], duration (hours), "
        "allow_multiselect, layout_type 1} as py-cord's Poll.to_dict(), allowed_mentions",
        "/resources/poll#poll-create-request-object",
    ),
    DiscordCall(
        "expire_poll",
        "discord.poll.expire",
        "End Poll",
        "POST",
        "/channels/{channel.id}/polls/{message.id}/expire",
        "no body; Discord finalizes the poll (MESSAGE_UPDATE: discord.poll.ended)",
        "/resources/poll#end-poll",
    ),
    DiscordCall(
        "poll_voters",
        "discord.poll.voters",
        "Get Answer Voters",
        "GET",
        "/channels/{channel.id}/polls/{message.id}/answers/{answer.id}",
        "query: limit=100, after (paged until a short page), once per answer",
        "/resources/poll#get-answer-voters",
    ),
    DiscordCall(
        "create_event",
        "discord.scheduled_event.create",
        "Create Guild Scheduled Event",
        "POST",
        "/guilds/{guild.id}/scheduled-events",
        "JSON: name, privacy_level 2, scheduled_start_time, scheduled_end_time (ISO-8601), "
        "description, entity_type 3 (external), entity_metadata {location}",
        "/resources/guild-scheduled-event#create-guild-scheduled-event",
    ),
    DiscordCall(
        "list_events",
        "discord.scheduled_event.get_all",
        "List Scheduled Events for Guild",
        "GET",
        "/guilds/{guild.id}/scheduled-events",
        "query: with_user_count=1",
        "/resources/guild-scheduled-event#list-scheduled-events-for-guild",
    ),
    DiscordCall(
        "event_users",
        "discord.scheduled_event.users",
        "Get Guild Scheduled Event Users",
        "GET",
        "/guilds/{guild.id}/scheduled-events/{guild_scheduled_event.id}/users",
        "query: limit=100, with_member=0, after (paged until a short page)",
        "/resources/guild-scheduled-event#get-guild-scheduled-event-users",
    ),
)

#: Discord calls a reader might look for that the gateway does not make, and why.
NOT_MADE: tuple[tuple[str, str], ...] = (
    (
        "Edit Followup Message",
        "no service asks for it: the llm sends each part of a long /ask answer after the "
        "first as a follow-up only once that part is final",
    ),
    (
        "List Guild Members",
        "member counts come from GUILD_CREATE and member events (the members intent)",
    ),
)
