"""What the gateway publishes and serves: Discord, as plain protocol types.

Discord objects never leave the gateway; these do. Ids are strings of digits,
as in Discord's JSON. Events that must not be lost (messages, member changes)
are durable: stored in the gateway's outbox and acknowledged by each
subscriber. Times are Unix seconds (float).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.messages import Message, message

# --- events the gateway publishes --------------------------------------------------


@message("discord.message.created", durable=True)
@dataclass(frozen=True, slots=True)
class MessageCreated(Message):
    id: str
    channel_id: str
    guild_id: str | None
    author_id: str
    author_name: str
    author_bot: bool
    content: str
    created_at: float
    mentions: list[str] = field(default_factory=list)  # user ids
    mention_roles: list[str] = field(default_factory=list)
    mention_everyone: bool = False
    mentions_bot: bool = False
    reply_to_id: str | None = None
    reply_to_author_id: str | None = None
    channel_name: str | None = None
    is_dm: bool = False
    attachments: list[dict[str, Any]] = field(default_factory=list)  # {url, filename, size}


@message("discord.message.edited", durable=True)
@dataclass(frozen=True, slots=True)
class MessageEdited(Message):
    id: str
    channel_id: str
    guild_id: str | None
    content: str
    edited_at: float


@message("discord.message.deleted", durable=True)
@dataclass(frozen=True, slots=True)
class MessageDeleted(Message):
    id: str
    channel_id: str
    guild_id: str | None
    deleted_at: float


@message("discord.member.joined", durable=True)
@dataclass(frozen=True, slots=True)
class MemberJoined(Message):
    guild_id: str
    user_id: str
    username: str
    bot: bool
    at: float


@message("discord.member.left", durable=True)
@dataclass(frozen=True, slots=True)
class MemberLeft(Message):
    guild_id: str
    user_id: str
    username: str
    bot: bool
    at: float


@message("discord.member.banned", durable=True)
@dataclass(frozen=True, slots=True)
class MemberBanned(Message):
    guild_id: str
    user_id: str
    username: str
    at: float


@message("discord.member.unbanned", durable=True)
@dataclass(frozen=True, slots=True)
class MemberUnbanned(Message):
    guild_id: str
    user_id: str
    username: str
    at: float


@message("discord.guild.counts")
@dataclass(frozen=True, slots=True)
class GuildCounts(Message):
    """Published when membership or presence changes (coalesced), and the answer to
    `discord.counts`."""

    guild_id: str
    members: int
    humans: int
    bots: int
    online: int
    bans: int | None = None  # None when not known (bans are fetched on request)


@message("discord.guild.ready")
@dataclass(frozen=True, slots=True)
class GuildReady(Message):
    guild_id: str
    name: str
    channels: list[dict[str, Any]]  # {id, name, type: "text" | "voice" | "category" | ...}
    member_count: int
    bot_user_id: str


@message("discord.connection")
@dataclass(frozen=True, slots=True)
class ConnectionState(Message):
    state: str  # "connected" | "resumed" | "disconnected" | "identified_after_gap"
    latency_ms: float | None
    at: float
    bot_user_id: str | None = None


# --- requests the gateway serves ---------------------------------------------------


@message("discord.send")
@dataclass(frozen=True, slots=True)
class SendMessage(Message):
    """Post a message; answers `{message_id}`. `allowed_mentions` None means: ping nobody."""

    channel_id: str
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    reply_to_id: str | None = None
    allowed_mentions: dict[str, Any] | None = None  # Discord's shape: {parse, users, roles}


@message("discord.edit")
@dataclass(frozen=True, slots=True)
class EditMessage(Message):
    channel_id: str
    message_id: str
    content: str | None = None
    embeds: list[dict[str, Any]] | None = None
    allowed_mentions: dict[str, Any] | None = None


@message("discord.delete")
@dataclass(frozen=True, slots=True)
class DeleteMessage(Message):
    channel_id: str
    message_id: str


@message("discord.rename_channel")
@dataclass(frozen=True, slots=True)
class RenameChannel(Message):
    channel_id: str
    name: str


@message("discord.create_channel")
@dataclass(frozen=True, slots=True)
class CreateChannel(Message):
    """Answers `{channel_id}`."""

    guild_id: str
    name: str
    kind: str = "text"  # "text" | "voice"


@message("discord.typing")
@dataclass(frozen=True, slots=True)
class Typing(Message):
    channel_id: str


@message("discord.presence")
@dataclass(frozen=True, slots=True)
class SetPresence(Message):
    status: str = "online"  # online | idle | dnd | invisible
    activity: str | None = None
    activity_type: str = "custom"  # playing | watching | listening | competing | custom


@message("discord.counts")
@dataclass(frozen=True, slots=True)
class CountsRequest(Message):
    guild_id: str | None = None  # None: the first guild
    with_bans: bool = True


@message("discord.guild")
@dataclass(frozen=True, slots=True)
class GuildInfoRequest(Message):
    """Answered with a `discord.guild.ready` body for the first (or named) guild."""

    guild_id: str | None = None


# --- slash commands: the gateway asks the owning service --------------------------


@message("discord.command")
@dataclass(frozen=True, slots=True)
class CommandInvoked(Message):
    """A slash command for the service that owns it. The reply is a `CommandAnswer`.

    `deferred` is true when the gateway has already told Discord "thinking...", in
    which case the answer becomes the edited original response.
    """

    interaction_id: str
    command: str
    options: dict[str, Any]
    user_id: str
    user_name: str
    channel_id: str | None
    guild_id: str | None
    is_admin: bool
    deferred: bool = False


@message("discord.command.answer")
@dataclass(frozen=True, slots=True)
class CommandAnswer(Message):
    """The owner's reply to a CommandInvoked. Interaction messages (this, EditInteraction,
    InteractionFollowup) are always sent pinging nobody."""

    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    ephemeral: bool = False


@message("discord.interaction.edit")
@dataclass(frozen=True, slots=True)
class EditInteraction(Message):
    """Edit the original response of an interaction (streaming answers to /ask)."""

    interaction_id: str
    content: str | None = None
    embeds: list[dict[str, Any]] | None = None


@message("discord.interaction.followup")
@dataclass(frozen=True, slots=True)
class InteractionFollowup(Message):
    interaction_id: str
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    ephemeral: bool = False
