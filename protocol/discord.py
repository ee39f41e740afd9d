"""What the gateway publishes and serves: Discord, as plain protocol types.

Discord objects never leave the gateway; these do. Ids are strings of digits,
as in Discord's JSON. Events that must not be lost (messages, member changes)
are durable: stored in the gateway's outbox and acknowledged by each
subscriber. Times are Unix seconds (float).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from protocol.commands import Tier
from protocol.messages import Done, Message, Request, message

# --- facts about Discord every service shares ---------------------------------------

GATEWAY = "gateway"  # the service that publishes these events and serves these requests

NO_PINGS: dict[str, Any] = {"parse": []}  # allowed_mentions that ping nobody
MESSAGE_LIMIT = 2000  # characters in one message's content
RENAMES_PER_WINDOW = 2  # channel renames Discord allows per channel ...
RENAME_WINDOW_S = 600.0  # ... within this many seconds (undocumented, enforced)


def pinging_only(*user_ids: str) -> dict[str, Any]:
    """allowed_mentions that ping exactly these users and nobody else."""
    return {"parse": [], "users": list(user_ids)}


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
    # Found in Discord's history after a gap (a refused RESUME), not received live.
    backfilled: bool = False


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


@dataclass(frozen=True, slots=True)
class Membership(Message):
    """A member joining or leaving: the fields both events carry."""

    guild_id: str
    user_id: str
    username: str
    bot: bool
    at: float
    backfilled: bool = False  # found by comparing with Discord after a gap


@message("discord.member.joined", durable=True)
@dataclass(frozen=True, slots=True)
class MemberJoined(Membership):
    pass


@message("discord.member.left", durable=True)
@dataclass(frozen=True, slots=True)
class MemberLeft(Membership):
    pass


@dataclass(frozen=True, slots=True)
class Ban(Message):
    """A ban given or lifted: the fields both events carry (Discord does not say whether
    a banned user is a bot)."""

    guild_id: str
    user_id: str
    username: str
    at: float
    backfilled: bool = False  # found by comparing with Discord after a gap


@message("discord.member.banned", durable=True)
@dataclass(frozen=True, slots=True)
class MemberBanned(Ban):
    pass


@message("discord.member.unbanned", durable=True)
@dataclass(frozen=True, slots=True)
class MemberUnbanned(Ban):
    pass


@message("discord.gap.backfilled", durable=True)
@dataclass(frozen=True, slots=True)
class GapBackfilled(Message):
    """What the gateway recovered from Discord's history after a gap: a fresh IDENTIFY
    that followed a stored position (Discord refused to RESUME, or the session was too
    old). Sent when the backfill is done (`done`), and when one starts."""

    gap_id: str  # the same for the start and the end of one backfill
    gap_s: float  # from the last event stored before the gap to the READY after it
    messages: int  # messages stored from the history (not received live)
    joined: int = 0
    left: int = 0
    banned: int = 0
    unbanned: int = 0
    truncated: bool = False  # not everything: a limit was reached or a channel failed
    done: bool = True
    at: float = 0.0

    def line(self) -> str:
        """ "gap of 42 s: 300 messages recovered, 1 join" (or "backfilling" while it runs)."""
        length = f"{self.gap_s:.0f}" if self.gap_s >= 10 else f"{self.gap_s:.1f}"
        if not self.done:
            return f"gap of {length} s: backfilling from Discord's history"
        text = f"gap of {length} s: {self.messages} messages recovered"
        for n, word in (
            (self.joined, "join"),
            (self.left, "leave"),
            (self.banned, "ban"),
            (self.unbanned, "unban"),
        ):
            if n:
                text += f", {n} {word}{'s' if n > 1 else ''}"
        if self.truncated:
            text += " (not all: a limit was reached or a channel failed)"
        return text


@message("discord.guild.counts", retain_by="guild_id")
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


COUNT_FIELDS = ("members", "humans", "bots", "online", "bans")  # GuildCounts' numbers


@message("discord.guild.ready", retain_by="guild_id")
@dataclass(frozen=True, slots=True)
class GuildReady(Message):
    """A guild the bot is in, with its channels; retained, so a service that starts after
    the gateway connected gets it too."""

    guild_id: str
    name: str
    channels: list[dict[str, Any]]  # {id, name, type: "text" | "voice" | "category" | ...}
    member_count: int
    bot_user_id: str


@dataclass(frozen=True, slots=True)
class PollVote(Message):
    """`answer_id` is Discord's, 1-based in the order the answers were sent."""

    message_id: str
    channel_id: str
    guild_id: str | None
    user_id: str
    answer_id: int
    at: float


@message("discord.poll.vote_added", durable=True)
@dataclass(frozen=True, slots=True)
class PollVoteAdded(PollVote):
    """MESSAGE_POLL_VOTE_ADD."""


@message("discord.poll.vote_removed", durable=True)
@dataclass(frozen=True, slots=True)
class PollVoteRemoved(PollVote):
    """MESSAGE_POLL_VOTE_REMOVE."""


@message("discord.poll.ended", durable=True)
@dataclass(frozen=True, slots=True)
class PollEnded(Message):
    """A poll was finalized (it expired, or its author ended it through the expire
    endpoint): Discord's MESSAGE_UPDATE with `results.is_finalized`."""

    message_id: str
    channel_id: str
    guild_id: str | None
    at: float


@message("discord.scheduled_event", durable=True)
@dataclass(frozen=True, slots=True)
class ScheduledEventChanged(Message):
    """GUILD_SCHEDULED_EVENT_CREATE / _UPDATE / _DELETE. `event` is a ScheduledEvent dict
    (see ScheduledEventList)."""

    change: str  # "created" | "updated" | "deleted"
    event: dict[str, Any]


@message("discord.scheduled_event.interest", durable=True)
@dataclass(frozen=True, slots=True)
class ScheduledEventInterest(Message):
    """GUILD_SCHEDULED_EVENT_USER_ADD (interested) / _REMOVE (no longer)."""

    guild_id: str
    event_id: str
    user_id: str
    interested: bool
    at: float


@message("discord.connection")
@dataclass(frozen=True, slots=True)
class ConnectionState(Message):
    state: str  # "connected" | "resumed" | "disconnected" | "identified_after_gap"
    latency_ms: float | None
    at: float
    bot_user_id: str | None = None


# --- requests the gateway serves, and their replies ---------------------------------


@message("discord.sent")
@dataclass(frozen=True, slots=True)
class Sent(Message):
    message_id: str
    # What the message shows, as Discord answered: for a repeated nonce, the content of
    # the message sent the first time (which may differ from what was asked this time).
    content: str | None = None


@message("discord.channel.created")
@dataclass(frozen=True, slots=True)
class ChannelCreated(Message):
    channel_id: str


@message("discord.dm.channel")
@dataclass(frozen=True, slots=True)
class DirectChannel(Message):
    channel_id: str


@message("discord.poll.sent")
@dataclass(frozen=True, slots=True)
class PollSent(Message):
    message_id: str
    expiry: float  # when Discord ends it (Unix seconds)
    answer_ids: list[int] = field(default_factory=list)  # in the order the answers were given


@message("discord.poll.votes")
@dataclass(frozen=True, slots=True)
class PollVotes(Message):
    voters: dict[str, list[str]]  # answer id (as a string) -> user ids


@message("discord.scheduled_event.info")
@dataclass(frozen=True, slots=True)
class ScheduledEventInfo(Message):
    event: dict[str, Any]  # as in ScheduledEventList


@message("discord.scheduled_event.list")
@dataclass(frozen=True, slots=True)
class ScheduledEventList(Message):
    """Each event: `{id, guild_id, name, description, start, end, location, status,
    user_count, creator_id, channel_id}`; times in Unix seconds (`end` None if open),
    `status` one of scheduled, active, completed, canceled."""

    events: list[dict[str, Any]]


@message("discord.users")
@dataclass(frozen=True, slots=True)
class UserIds(Message):
    user_ids: list[str]


@message("discord.send")
@dataclass(frozen=True, slots=True)
class SendMessage(Request[Sent]):
    """Post a message. `allowed_mentions` None means: ping nobody."""

    channel_id: str
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    reply_to_id: str | None = None
    allowed_mentions: dict[str, Any] | None = None  # Discord's shape: {parse, users, roles}
    # Up to 25 characters. Sent with enforce_nonce: Discord answers a repeated nonce (same
    # author, within minutes) with the message already created, so a send retried after
    # a crash on either side posts once. Derive it from what the message is for.
    nonce: str | None = None


NONCE_LIMIT = 25  # characters in a message nonce (Discord)


def nonce_for(*what: object) -> str:
    """A message nonce derived from what the message is for (a question and a part, a
    report and its day): the same every time it is sent, another for anything else.
    24 hex characters, under Discord's 25."""
    key = "\x1f".join(str(w) for w in what)
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


@message("discord.edit")
@dataclass(frozen=True, slots=True)
class EditMessage(Request[Done]):
    channel_id: str
    message_id: str
    content: str | None = None
    embeds: list[dict[str, Any]] | None = None
    allowed_mentions: dict[str, Any] | None = None


@message("discord.delete")
@dataclass(frozen=True, slots=True)
class DeleteMessage(Request[Done]):
    channel_id: str
    message_id: str


@message("discord.rename_channel")
@dataclass(frozen=True, slots=True)
class RenameChannel(Request[Done]):
    channel_id: str
    name: str


@message("discord.create_channel")
@dataclass(frozen=True, slots=True)
class CreateChannel(Request[ChannelCreated]):
    guild_id: str
    name: str
    kind: str = "text"  # "text" | "voice"


@message("discord.dm.open")
@dataclass(frozen=True, slots=True)
class OpenDirectMessage(Request[DirectChannel]):
    """The bot's DM channel with a user (Discord creates it once, then returns it)."""

    user_id: str


@message("discord.poll.send")
@dataclass(frozen=True, slots=True)
class SendPoll(Request[PollSent]):
    """Post a native poll (Discord's `poll` object). `hours` 1-768, 1-10 answers of at
    most 55 characters, a question of at most 300."""

    channel_id: str
    question: str
    answers: list[str]
    hours: int = 24
    multiple: bool = False
    content: str = ""
    allowed_mentions: dict[str, Any] | None = None


@message("discord.poll.expire")
@dataclass(frozen=True, slots=True)
class ExpirePoll(Request[Done]):
    """End the bot's poll now; Discord finalizes it (PollEnded follows)."""

    channel_id: str
    message_id: str


@message("discord.poll.voters")
@dataclass(frozen=True, slots=True)
class PollVotersRequest(Request[PollVotes]):
    """Who voted for each answer, as Discord counts them."""

    channel_id: str
    message_id: str
    answer_ids: list[int]


@message("discord.scheduled_event.create")
@dataclass(frozen=True, slots=True)
class CreateScheduledEvent(Request[ScheduledEventInfo]):
    """A guild scheduled event of the external kind (a place, not a voice channel)."""

    guild_id: str
    name: str
    start: float
    end: float
    location: str
    description: str = ""


@message("discord.scheduled_event.get_all")
@dataclass(frozen=True, slots=True)
class ListScheduledEvents(Request[ScheduledEventList]):
    guild_id: str


@message("discord.scheduled_event.users")
@dataclass(frozen=True, slots=True)
class ScheduledEventUsers(Request[UserIds]):
    """The users who marked themselves interested in an event."""

    guild_id: str
    event_id: str


@message("discord.typing")
@dataclass(frozen=True, slots=True)
class Typing(Request[Done]):
    channel_id: str


@message("discord.presence")
@dataclass(frozen=True, slots=True)
class SetPresence(Request[Done]):
    status: str = "online"  # online | idle | dnd | invisible
    activity: str | None = None
    activity_type: str = "custom"  # playing | watching | listening | competing | custom


@message("discord.counts")
@dataclass(frozen=True, slots=True)
class CountsRequest(Request[GuildCounts]):
    guild_id: str | None = None  # None: the first guild
    with_bans: bool = True


@message("discord.guild")
@dataclass(frozen=True, slots=True)
class GuildInfoRequest(Request[GuildReady]):
    """The first (or named) guild."""

    guild_id: str | None = None


# --- slash commands: the gateway asks the owning service --------------------------


@message("discord.command.answer")
@dataclass(frozen=True, slots=True)
class CommandAnswer(Message):
    """The owner's reply to a CommandInvoked. Interaction messages (this, EditInteraction,
    InteractionFollowup) are always sent pinging nobody."""

    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    ephemeral: bool = False
    # A deferred command only: the owner has taken it on (durably) and finishes the
    # original response itself, through the interaction's webhook; nothing else to show.
    later: bool = False
    # Attached files: `{filename, data_b64, content_type?}` (the .ics of /events ics).
    files: list[dict[str, Any]] = field(default_factory=list)


@message("discord.command")
@dataclass(frozen=True, slots=True)
class CommandInvoked(Request[CommandAnswer]):
    """A slash command for the service that owns it, from a caller the gateway has let
    run it (protocol/commands.py). `tier` is the caller's highest permission tier.

    `deferred` is true when the gateway has already told Discord "thinking...", in
    which case the answer becomes the edited original response; or the owner answers
    `later` as soon as it has taken the command on, and edits that response itself
    (with `interaction_token`, through any gateway process). Until then the gateway
    keeps its Discord position before the interaction, so a gateway that dies meanwhile
    is given it again when it RESUMEs.
    """

    interaction_id: str
    command: str
    options: dict[str, Any]
    user_id: str
    user_name: str
    channel_id: str | None
    guild_id: str | None
    tier: str = "public"  # a Tier
    deferred: bool = False
    # The interaction's webhook (valid 15 minutes): lets the owner finish an answer
    # through any gateway process, even one started after this request was sent.
    interaction_token: str | None = None
    application_id: str | None = None
    subcommand: str | None = None  # "create" for `/event create`

    @property
    def by_admin(self) -> bool:
        return Tier(self.tier).allows(Tier.ADMIN)


@message("discord.interaction.edit")
@dataclass(frozen=True, slots=True)
class EditInteraction(Request[Done]):
    """Edit the original response of an interaction (streaming answers to /ask)."""

    interaction_id: str
    content: str | None = None
    embeds: list[dict[str, Any]] | None = None
    interaction_token: str | None = None  # from CommandInvoked (a restarted gateway needs it)
    application_id: str | None = None


@message("discord.interaction.followup")
@dataclass(frozen=True, slots=True)
class InteractionFollowup(Request[Sent]):
    """A further message of an interaction's answer. Discord has no nonce for these: the
    gateway answers a repeated `nonce` with the follow-up it already posted."""

    interaction_id: str
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    ephemeral: bool = False
    interaction_token: str | None = None
    application_id: str | None = None
    nonce: str | None = None
