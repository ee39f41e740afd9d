"""The sandbox guild: its state, the operations on it, and the Discord payloads it renders.

Both the REST routes (what the bot does) and the control API (what a test makes users do)
change the world only through the methods here, so both sides see the same state and every
change emits the gateway event real Discord would send. The world does not know about
websockets: it hands each event to ``self.dispatch(event_name, payload)``, which the
emulator wires to the gateway.

Ids are deterministic snowflakes (a fixed timestamp plus a counter), so a fresh world has the
same ids on every start: guild, roles, bot, alice, bob, then the channels in order.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DISCORD_EPOCH_MS = 1420070400000
#: 2024-01-01T00:00:00Z: the fixed timestamp inside every sandbox snowflake.
BASE_TIME_MS = 1704067200000

PERM_ADMINISTRATOR = 1 << 3
#: Roughly what Discord gives @everyone in a new guild (view, send, history, connect, ...).
PERM_EVERYONE = 1071698660929
PERM_ALL = (1 << 51) - 1

STATUSES = ("online", "idle", "dnd", "offline")
#: How long a message nonce is remembered for enforce_nonce (Discord: "a few minutes").
NONCE_WINDOW_S = 300.0
NONCE_MAX_CHARS = 25
TEXT, VOICE, CATEGORY = 0, 2, 4
DM = 1  # a direct-message channel: not part of the guild (kept in World.dm_channels)

#: Discord's limits for a native poll (Create Message, Poll Create Request Object).
POLL_QUESTION_MAX, POLL_ANSWER_MAX, POLL_ANSWERS_MAX, POLL_HOURS_MAX = 300, 55, 10, 768
#: Guild scheduled events: privacy GUILD_ONLY, entity type EXTERNAL, status SCHEDULED...
EVENT_GUILD_ONLY, EVENT_EXTERNAL = 2, 3
EVENT_STATUSES = {1: "scheduled", 2: "active", 3: "completed", 4: "canceled"}

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")


class WorldError(Exception):
    """A request the world refuses; ``status``, ``code`` and ``errors`` follow Discord's
    error JSON (``{"code", "message", "errors"?}``)."""

    status = 400

    def __init__(
        self, message: str, code: int = 50035, errors: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.errors = errors


class NotFound(WorldError):
    """An unknown id (Discord answers 404 with a specific ``code``, e.g. 10003)."""

    status = 404


class Forbidden(WorldError):
    """Discord's 403: allowed in general, not to this caller (e.g. 50005)."""

    status = 403


class Unauthorized(WorldError):
    """Discord's 401: a bad or expired token (e.g. 50027 for a webhook token)."""

    status = 401


class FormError(WorldError):
    """Discord's 50035 "Invalid Form Body", with the failing field in ``errors``.

    ``field`` is a dotted path (``content``, ``allowed_mentions.parse.0``) and ``kind`` one
    of Discord's error codes (``BASE_TYPE_MAX_LENGTH``...), nested as Discord nests them:
    ``{"content": {"_errors": [{"code": kind, "message": detail}]}}``.
    """

    def __init__(self, field: str, kind: str, detail: str) -> None:
        errors: dict[str, Any] = {"_errors": [{"code": kind, "message": detail}]}
        for key in reversed(field.split(".")):
            errors = {key: errors}
        super().__init__("Invalid Form Body", 50035, errors)
        self.field = field
        self.detail = detail

    def __str__(self) -> str:
        return f"Invalid Form Body: {self.field}: {self.detail}"


def iso_at(wall: float) -> str:
    """Discord timestamps are ISO-8601 with an explicit UTC offset."""
    return datetime.fromtimestamp(wall, UTC).isoformat()


def parse_iso(value: Any, field_name: str) -> float:
    """An ISO-8601 timestamp with an offset, as Discord requires one; FormError if not."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed.timestamp()
    raise FormError(field_name, "DATE_TIME_TYPE_PARSE", f"Could not parse {value!r}.")


class Snowflakes:
    """Deterministic snowflake ids: a fixed timestamp in the high bits, a counter below."""

    def __init__(self, base_ms: int = BASE_TIME_MS) -> None:
        self._prefix = (base_ms - DISCORD_EPOCH_MS) << 22
        self._counter = 0

    def next(self) -> str:
        self._counter += 1
        return str(self._prefix + self._counter)


@dataclass
class User:
    id: str
    username: str
    bot: bool = False


@dataclass
class Member:
    user_id: str
    roles: list[str]
    joined_at: str
    status: str = "offline"
    activities: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Channel:
    id: str
    name: str
    type: int
    position: int
    topic: str | None = None
    parent_id: str | None = None
    last_message_id: str | None = None
    #: The name it was created with: counter channels get renamed, lookups should not break.
    key: str = ""


@dataclass
class Poll:
    """A native poll: answers have 1-based ids in the order given."""

    question: str
    answers: list[str]
    allow_multiselect: bool
    expiry: float  # Unix seconds on the emulator's clock
    votes: dict[int, list[str]] = field(default_factory=dict)  # answer id -> user ids
    finalized: bool = False

    def answer_id(self, answer: Any) -> int:
        """An answer given by its 1-based id or its text; 400 if there is none such."""
        if isinstance(answer, int) and not isinstance(answer, bool):
            if 1 <= answer <= len(self.answers):
                return answer
        elif isinstance(answer, str):
            if answer.isdigit() and 1 <= int(answer) <= len(self.answers):
                return int(answer)
            for i, text in enumerate(self.answers, 1):
                if text.casefold() == answer.strip().casefold():
                    return i
        raise WorldError(f"no answer {answer!r} in this poll", 10008)


@dataclass
class ScheduledEvent:
    """A guild scheduled event (external: a place and an end time)."""

    id: str
    name: str
    start: float
    end: float | None
    location: str
    description: str | None
    creator_id: str
    status: int = 1
    interested: list[str] = field(default_factory=list)


@dataclass
class Message:
    id: str
    channel_id: str
    author_id: str
    content: str
    timestamp: str
    embeds: list[Any] = field(default_factory=list)
    attachments: list[dict[str, Any]] = field(default_factory=list)
    components: list[Any] = field(default_factory=list)
    allowed_mentions: Any = None
    reply_to_id: str | None = None
    edited_at: str | None = None
    tts: bool = False
    flags: int = 0
    interaction_id: str | None = None
    webhook_id: str | None = None
    poll: Poll | None = None
    nonce: str | int | None = None

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & 64)


@dataclass
class Interaction:
    id: str
    token: str
    channel_id: str
    user_id: str
    name: str
    command_id: str
    options: list[dict[str, Any]]
    responses: list[dict[str, Any]] = field(default_factory=list)
    original_message_id: str | None = None
    acknowledged: bool = False
    #: Set by a deferred (type 5) response: the flags the eventual message will carry.
    deferred_flags: int | None = None
    #: When it was created, on the emulator's clock: its token expires 15 minutes later.
    created_at: float = 0.0


class World:
    """One guild with a bot, alice (owner, administrator), bob and the usual channels."""

    def __init__(self, *, guild_name: str = "Sandbox", bot_name: str = "sandbox-bot") -> None:
        self.ids = Snowflakes()
        self.dispatch: Callable[[str, dict[str, Any]], None] = lambda event, data: None
        #: The emulator's clock (what interaction tokens expire by); the emulator wires it.
        self.now: Callable[[], float] = time.monotonic
        #: Epoch seconds on the same clock: message and join timestamps (POST clock moves
        #: them with every service's clock, as Discord's own time and the bot's agree).
        self.wall: Callable[[], float] = time.time
        self.guild_id = self.ids.next()
        self.guild_name = guild_name
        self.admin_role_id = self.ids.next()
        self.roles: dict[str, dict[str, Any]] = {
            self.guild_id: _role(self.guild_id, "@everyone", 0, PERM_EVERYONE),
            self.admin_role_id: _role(self.admin_role_id, "Admin", 1, PERM_ADMINISTRATOR),
        }
        self.users: dict[str, User] = {}
        self.members: dict[str, Member] = {}
        self.bot_user_id = self._add_user(bot_name, bot=True, status="online").id
        self.owner_id = self._add_user("alice", roles=[self.admin_role_id], status="online").id
        self._add_user("bob", status="online")
        self.channels: dict[str, Channel] = {}
        for name, kind in (
            ("general", TEXT),
            ("admin", TEXT),
            ("stats", TEXT),
            ("Members", VOICE),
            ("Online", VOICE),
            ("Bans", VOICE),
        ):
            self._add_channel(name, kind)
        self.messages: dict[str, Message] = {}
        self.bans: dict[str, str | None] = {}
        #: Application commands by scope: "global" or a guild id.
        self.commands: dict[str, list[dict[str, Any]]] = {}
        self.interactions: dict[str, Interaction] = {}
        self.interactions_by_token: dict[str, str] = {}
        #: The bot's DM channels (not the guild's): by channel id, and by the user's id.
        self.dm_channels: dict[str, Channel] = {}
        self.dm_by_user: dict[str, str] = {}
        self.scheduled_events: dict[str, ScheduledEvent] = {}
        #: Uploaded files by attachment id: (filename, content type, bytes).
        self.files: dict[str, tuple[str, str, bytes]] = {}
        #: (author, nonce) -> (message id, when): what enforce_nonce looks up.
        self.nonces: dict[tuple[str, str], tuple[str, float]] = {}

    def iso_now(self) -> str:
        return iso_at(self.wall())

    # ---- lookups -------------------------------------------------------------------------

    def channel_id(self, name: str) -> str:
        """The id of the channel called (or first created as) ``name``; KeyError if none."""
        for channel in self.channels.values():
            if channel.name == name:
                return channel.id
        for channel in self.channels.values():
            if channel.key == name:
                return channel.id
        raise KeyError(name)

    def user_id(self, username: str) -> str:
        """The id of the user called ``username`` (KeyError if there is none)."""
        for user in self.users.values():
            if user.username == username:
                return user.id
        raise KeyError(username)

    def channel(self, channel_id: str) -> Channel:
        try:
            return self.channels.get(channel_id) or self.dm_channels[channel_id]
        except KeyError:
            raise NotFound("Unknown Channel", 10003) from None

    def user(self, user_id: str) -> User:
        try:
            return self.users[user_id]
        except KeyError:
            raise NotFound("Unknown User", 10013) from None

    def member(self, user_id: str) -> Member:
        try:
            return self.members[user_id]
        except KeyError:
            raise NotFound("Unknown Member", 10007) from None

    def message(self, message_id: str, channel_id: str | None = None) -> Message:
        msg = self.messages.get(message_id)
        if msg is None or (channel_id is not None and msg.channel_id != channel_id):
            raise NotFound("Unknown Message", 10008)
        return msg

    def interaction(self, interaction_id: str) -> Interaction:
        try:
            return self.interactions[interaction_id]
        except KeyError:
            raise NotFound("Unknown interaction", 10062) from None

    def interaction_by_token(self, token: str) -> Interaction:
        try:
            return self.interactions[self.interactions_by_token[token]]
        except KeyError:
            raise NotFound("Unknown Webhook", 10015) from None

    def channel_messages(self, channel_id: str) -> list[Message]:
        """Visible (non-ephemeral) messages of a channel, oldest first."""
        self.channel(channel_id)
        return [m for m in self.messages.values() if m.channel_id == channel_id and not m.ephemeral]

    def message_by_nonce(self, author_id: str, nonce: str | int) -> Message | None:
        """The message `author_id` created with this nonce within the last
        NONCE_WINDOW_S, if it still exists (what Discord returns for enforce_nonce)."""
        found = self.nonces.get((author_id, str(nonce)))
        if found is None or self.now() - found[1] > NONCE_WINDOW_S:
            return None
        return self.messages.get(found[0])

    def permissions(self, user_id: str) -> int:
        """Effective guild permissions: owner and administrators get every bit."""
        member = self.member(user_id)
        perms = 0
        for role_id in [self.guild_id, *member.roles]:
            perms |= int(self.roles[role_id]["permissions"])
        if user_id == self.owner_id or perms & PERM_ADMINISTRATOR:
            return PERM_ALL
        return perms

    # ---- operations (each emits the gateway event Discord would) -------------------------

    def post_message(
        self,
        channel_id: str,
        author_id: str,
        content: str,
        *,
        embeds: list[Any] | None = None,
        attachments: list[dict[str, Any]] | None = None,
        components: list[Any] | None = None,
        allowed_mentions: Any = None,
        reply_to_id: str | None = None,
        tts: bool = False,
        flags: int = 0,
        interaction_id: str | None = None,
        webhook_id: str | None = None,
        poll: Poll | None = None,
        nonce: str | int | None = None,
    ) -> Message:
        channel = self.channel(channel_id)
        if channel.type not in (TEXT, DM):
            raise WorldError("Cannot send messages in a non-text channel", 50008)
        self.user(author_id)
        if reply_to_id is not None:
            self.message(reply_to_id)
        msg = Message(
            id=self.ids.next(),
            channel_id=channel_id,
            author_id=author_id,
            content=content,
            timestamp=self.iso_now(),
            embeds=list(embeds or []),
            attachments=list(attachments or []),
            components=list(components or []),
            allowed_mentions=allowed_mentions,
            reply_to_id=reply_to_id,
            tts=tts,
            flags=flags,
            interaction_id=interaction_id,
            webhook_id=webhook_id,
            poll=poll,
            nonce=nonce,
        )
        self.messages[msg.id] = msg
        if nonce is not None:
            now = self.now()
            if len(self.nonces) > 10_000:
                self.nonces = {k: v for k, v in self.nonces.items() if now - v[1] <= NONCE_WINDOW_S}
            self.nonces[(author_id, str(nonce))] = (msg.id, now)
        if not msg.ephemeral:
            channel.last_message_id = msg.id
            self.dispatch("MESSAGE_CREATE", self.message_payload(msg))
        return msg

    def edit_message(self, msg: Message, changes: dict[str, Any]) -> Message:
        """Apply the editable fields present in ``changes`` (a REST PATCH body or control)."""
        if "content" in changes:
            msg.content = "" if changes["content"] is None else str(changes["content"])
        if "embeds" in changes:
            msg.embeds = list(changes["embeds"] or [])
        if "allowed_mentions" in changes:
            msg.allowed_mentions = changes["allowed_mentions"]
        if "components" in changes:
            msg.components = list(changes["components"] or [])
        if "flags" in changes and isinstance(changes["flags"], int):
            msg.flags = (msg.flags & 64) | (changes["flags"] & ~64)
        msg.edited_at = self.iso_now()
        if not msg.ephemeral:
            self.dispatch("MESSAGE_UPDATE", self.message_payload(msg))
        return msg

    def delete_message(self, msg: Message) -> None:
        del self.messages[msg.id]
        if not msg.ephemeral:
            data = {"id": msg.id, "channel_id": msg.channel_id}
            if msg.channel_id not in self.dm_channels:
                data["guild_id"] = self.guild_id
            self.dispatch("MESSAGE_DELETE", data)

    def add_member(self, username: str) -> User:
        user = self._add_user(username)
        self.dispatch(
            "GUILD_MEMBER_ADD", {**self.member_payload(user.id), "guild_id": self.guild_id}
        )
        return user

    def rejoin(self, user_id: str) -> None:
        """A known user who left comes back as a member."""
        self.user(user_id)
        if user_id in self.members:
            raise WorldError("User is already a member")
        self.members[user_id] = Member(user_id=user_id, roles=[], joined_at=self.iso_now())
        self.dispatch(
            "GUILD_MEMBER_ADD", {**self.member_payload(user_id), "guild_id": self.guild_id}
        )

    def remove_member(self, user_id: str) -> None:
        if user_id == self.bot_user_id:
            raise WorldError("The bot cannot leave the sandbox guild")
        self.member(user_id)
        del self.members[user_id]
        self.dispatch(
            "GUILD_MEMBER_REMOVE",
            {"guild_id": self.guild_id, "user": self.user_payload(self.users[user_id])},
        )

    def ban(self, user_id: str, reason: str | None = None) -> None:
        """Ban then remove, in the order Discord sends them (py-cord relies on it)."""
        user = self.user(user_id)
        if user_id == self.bot_user_id:
            raise WorldError("The bot cannot be banned from the sandbox guild")
        self.bans[user_id] = reason
        self.dispatch("GUILD_BAN_ADD", {"guild_id": self.guild_id, "user": self.user_payload(user)})
        if user_id in self.members:
            self.remove_member(user_id)

    def unban(self, user_id: str) -> None:
        if user_id not in self.bans:
            raise NotFound("Unknown Ban", 10026)
        del self.bans[user_id]
        user = self.users[user_id]
        self.dispatch(
            "GUILD_BAN_REMOVE", {"guild_id": self.guild_id, "user": self.user_payload(user)}
        )

    def set_status(self, user_id: str, status: str, activities: list[Any] | None = None) -> None:
        if status not in STATUSES:
            raise WorldError(f"status must be one of {', '.join(STATUSES)}")
        member = self.member(user_id)
        member.status = status
        member.activities = list(activities or []) if status != "offline" else []
        self.dispatch("PRESENCE_UPDATE", self.presence_payload(member))

    def update_channel(self, channel: Channel, changes: dict[str, Any]) -> Channel:
        if "name" in changes:
            name = changes["name"]
            if not isinstance(name, str) or not 1 <= len(name) <= 100:
                raise FormError(
                    "name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
                )
            channel.name = name
        if "topic" in changes:
            topic = changes["topic"]
            if topic is not None and (not isinstance(topic, str) or len(topic) > 1024):
                raise FormError("topic", "BASE_TYPE_MAX_LENGTH", "Must be 1024 or fewer in length.")
            channel.topic = topic
        if isinstance(changes.get("position"), int):
            channel.position = changes["position"]
        self.dispatch("CHANNEL_UPDATE", self.channel_payload(channel))
        return channel

    def create_channel(
        self, name: str, kind: int = TEXT, topic: str | None = None, parent_id: str | None = None
    ) -> Channel:
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise FormError("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        if kind not in (TEXT, VOICE, CATEGORY):
            raise FormError("type", "BASE_TYPE_CHOICES", "Value must be 0, 2 or 4 here.")
        if parent_id is not None:
            self.channel(parent_id)
        channel = self._add_channel(name, kind, topic=topic, parent_id=parent_id)
        self.dispatch("CHANNEL_CREATE", self.channel_payload(channel))
        return channel

    def set_commands(self, scope: str, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Bulk overwrite: keep the id of a command whose name survives, like Discord."""
        old = {c["name"]: c for c in self.commands.get(scope, [])}
        stored = []
        for cmd in commands:
            if not isinstance(cmd, dict) or not isinstance(cmd.get("name"), str):
                raise WorldError("each command needs a name")
            prev = old.get(cmd["name"])
            stored.append(self._command(scope, cmd, prev["id"] if prev else None))
        self.commands[scope] = stored
        return stored

    def upsert_command(self, scope: str, cmd: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(cmd.get("name"), str):
            raise WorldError("a command needs a name")
        current = self.commands.setdefault(scope, [])
        for i, prev in enumerate(current):
            if prev["name"] == cmd["name"]:
                current[i] = self._command(scope, {**prev, **cmd}, prev["id"])
                return current[i]
        current.append(self._command(scope, cmd, None))
        return current[-1]

    def delete_command(self, scope: str, command_id: str) -> None:
        current = self.commands.get(scope, [])
        for i, prev in enumerate(current):
            if prev["id"] == command_id:
                del current[i]
                return
        raise NotFound("Unknown application command", 10063)

    def find_command(self, name: str) -> dict[str, Any] | None:
        for scope in ("global", self.guild_id):
            for cmd in self.commands.get(scope, []):
                if cmd["name"] == name:
                    return cmd
        return None

    def create_interaction(
        self, channel_id: str, user_id: str, name: str, options: list[dict[str, Any]]
    ) -> Interaction:
        self.channel(channel_id)
        self.member(user_id)
        cmd = self.find_command(name)
        iid = self.ids.next()
        inter = Interaction(
            id=iid,
            token=f"sandbox-interaction-{iid}",
            channel_id=channel_id,
            user_id=user_id,
            name=name,
            command_id=cmd["id"] if cmd else self.ids.next(),
            options=options,
            created_at=self.now(),
        )
        self.interactions[iid] = inter
        self.interactions_by_token[inter.token] = iid
        self.dispatch("INTERACTION_CREATE", self.interaction_payload(inter))
        return inter

    # ---- direct messages -----------------------------------------------------------------

    def open_dm(self, user_id: str) -> Channel:
        """The bot's DM channel with a user, created on first use (as Discord does)."""
        self.user(user_id)
        if user_id == self.bot_user_id:
            raise WorldError("Cannot send messages to this user", 50007)
        known = self.dm_by_user.get(user_id)
        if known is not None:
            return self.dm_channels[known]
        # key: the recipient (a DM channel has no name of its own)
        channel = Channel(id=self.ids.next(), name="", type=DM, position=0, key=user_id)
        self.dm_channels[channel.id] = channel
        self.dm_by_user[user_id] = channel.id
        return channel

    def dm_messages(self, user_id: str) -> list[Message]:
        """Every message in the bot's DM channel with the user, oldest first."""
        self.user(user_id)
        known = self.dm_by_user.get(user_id)
        return [] if known is None else self.channel_messages(known)

    # ---- native polls --------------------------------------------------------------------

    def make_poll(self, data: Any) -> Poll:
        """A Poll Create Request Object, checked as Discord checks it."""
        if not isinstance(data, dict):
            raise FormError("poll", "MODEL_TYPE_CONVERT", "Only dictionaries may be used.")
        question = (data.get("question") or {}) if isinstance(data.get("question"), dict) else {}
        text = question.get("text")
        if not isinstance(text, str) or not 1 <= len(text) <= POLL_QUESTION_MAX:
            raise FormError(
                "poll.question.text",
                "BASE_TYPE_BAD_LENGTH",
                f"Must be between 1 and {POLL_QUESTION_MAX} in length.",
            )
        answers = data.get("answers")
        if not isinstance(answers, list) or not 1 <= len(answers) <= POLL_ANSWERS_MAX:
            raise FormError(
                "poll.answers",
                "BASE_TYPE_BAD_LENGTH",
                f"Must be between 1 and {POLL_ANSWERS_MAX} in length.",
            )
        texts = []
        for i, answer in enumerate(answers):
            media = answer.get("poll_media") if isinstance(answer, dict) else None
            label = media.get("text") if isinstance(media, dict) else None
            if not isinstance(label, str) or not 1 <= len(label) <= POLL_ANSWER_MAX:
                raise FormError(
                    f"poll.answers.{i}.poll_media.text",
                    "BASE_TYPE_BAD_LENGTH",
                    f"Must be between 1 and {POLL_ANSWER_MAX} in length.",
                )
            texts.append(label)
        hours = data.get("duration", 24)
        if isinstance(hours, bool) or not isinstance(hours, int) or not 1 <= hours <= 768:
            raise FormError(
                "poll.duration", "NUMBER_TYPE_MAX", f"Must be between 1 and {POLL_HOURS_MAX}."
            )
        multiple = data.get("allow_multiselect", False)
        if not isinstance(multiple, bool):
            raise FormError(
                "poll.allow_multiselect", "BASE_TYPE_BOOLEAN", "Must be either true or false."
            )
        return Poll(text, texts, multiple, self.wall() + hours * 3600.0)

    def poll_message(self, message_id: str, channel_id: str | None = None) -> Message:
        msg = self.message(message_id, channel_id)
        if msg.poll is None:
            raise WorldError("This message has no poll", 10008)
        return msg

    def vote(self, message_id: str, user_id: str, answer: Any) -> int:
        """A user votes; in a single-choice poll a vote for another answer moves it."""
        msg = self.poll_message(message_id)
        poll = msg.poll
        assert poll is not None
        self.member(user_id)
        self.finalize_due_polls()
        if poll.finalized:
            raise WorldError("This poll has ended", 520001)
        answer_id = poll.answer_id(answer)
        if user_id in poll.votes.get(answer_id, []):
            return answer_id
        if not poll.allow_multiselect:
            for other, voters in poll.votes.items():
                if user_id in voters:
                    self.unvote(message_id, user_id, other)
        poll.votes.setdefault(answer_id, []).append(user_id)
        self.dispatch("MESSAGE_POLL_VOTE_ADD", self._vote_payload(msg, user_id, answer_id))
        return answer_id

    def unvote(self, message_id: str, user_id: str, answer: Any) -> int:
        msg = self.poll_message(message_id)
        poll = msg.poll
        assert poll is not None
        if poll.finalized:
            raise WorldError("This poll has ended", 520001)
        answer_id = poll.answer_id(answer)
        voters = poll.votes.get(answer_id, [])
        if user_id not in voters:
            raise NotFound("No such vote", 10008)
        voters.remove(user_id)
        self.dispatch("MESSAGE_POLL_VOTE_REMOVE", self._vote_payload(msg, user_id, answer_id))
        return answer_id

    def _vote_payload(self, msg: Message, user_id: str, answer_id: int) -> dict[str, Any]:
        data = {
            "user_id": user_id,
            "channel_id": msg.channel_id,
            "message_id": msg.id,
            "answer_id": answer_id,
        }
        if msg.channel_id not in self.dm_channels:
            data["guild_id"] = self.guild_id
        return data

    def end_poll(self, msg: Message) -> None:
        """Finalize: counts are final, and MESSAGE_UPDATE says so (no edited_timestamp)."""
        assert msg.poll is not None
        if msg.poll.finalized:
            raise WorldError("This poll has already ended", 520001)
        msg.poll.finalized = True
        msg.poll.expiry = min(msg.poll.expiry, self.wall())
        if not msg.ephemeral:
            self.dispatch("MESSAGE_UPDATE", self.message_payload(msg))

    def finalize_due_polls(self) -> int:
        """Polls whose time is up end (called as the clock moves); answers how many."""
        now = self.wall()
        due = [
            m
            for m in self.messages.values()
            if m.poll is not None and not m.poll.finalized and m.poll.expiry <= now
        ]
        for msg in due:
            self.end_poll(msg)
        return len(due)

    def poll_payload(self, poll: Poll) -> dict[str, Any]:
        return {
            "question": {"text": poll.question},
            "answers": [
                {"answer_id": i, "poll_media": {"text": text}}
                for i, text in enumerate(poll.answers, 1)
            ],
            "expiry": iso_at(poll.expiry),
            "allow_multiselect": poll.allow_multiselect,
            "layout_type": 1,
            "results": {
                "is_finalized": poll.finalized,
                "answer_counts": [
                    {"id": i, "count": len(voters), "me_voted": self.bot_user_id in voters}
                    for i, voters in sorted(poll.votes.items())
                    if voters
                ],
            },
        }

    # ---- guild scheduled events ----------------------------------------------------------

    def scheduled_event(self, event_id: str) -> ScheduledEvent:
        try:
            return self.scheduled_events[event_id]
        except KeyError:
            raise NotFound("Unknown Guild Scheduled Event", 10070) from None

    def create_scheduled_event(self, body: dict[str, Any], creator_id: str) -> ScheduledEvent:
        """Create Guild Scheduled Event, checked as Discord checks an external one."""
        if body.get("privacy_level") != EVENT_GUILD_ONLY:
            raise FormError("privacy_level", "BASE_TYPE_CHOICES", "Value must be one of {2}.")
        if body.get("entity_type") != EVENT_EXTERNAL:
            raise FormError(
                "entity_type", "BASE_TYPE_CHOICES", "Only external events are emulated (3)."
            )
        event = ScheduledEvent(
            id=self.ids.next(),
            name="",
            start=0.0,
            end=None,
            location="",
            description=None,
            creator_id=creator_id,
        )
        self._apply_event(event, body, creating=True)
        self.scheduled_events[event.id] = event
        self.dispatch("GUILD_SCHEDULED_EVENT_CREATE", self.scheduled_event_payload(event))
        return event

    def update_scheduled_event(self, event: ScheduledEvent, body: dict[str, Any]) -> None:
        self._apply_event(event, body, creating=False)
        self.dispatch("GUILD_SCHEDULED_EVENT_UPDATE", self.scheduled_event_payload(event))

    def delete_scheduled_event(self, event: ScheduledEvent) -> None:
        del self.scheduled_events[event.id]
        event.status = 4
        self.dispatch("GUILD_SCHEDULED_EVENT_DELETE", self.scheduled_event_payload(event))

    def _apply_event(self, event: ScheduledEvent, body: dict[str, Any], creating: bool) -> None:
        name = body.get("name", None if creating else event.name)
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise FormError("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        start = (
            parse_iso(body["scheduled_start_time"], "scheduled_start_time")
            if creating or "scheduled_start_time" in body
            else event.start
        )
        if (creating or "scheduled_start_time" in body) and start <= self.wall():
            raise FormError(
                "scheduled_start_time",
                "GUILD_SCHEDULED_EVENT_SCHEDULED_START_TIME_IN_PAST",
                "Cannot schedule event in the past.",
            )
        raw_end = body.get("scheduled_end_time", None if creating else iso_at(event.end or 0))
        if raw_end is None:
            raise FormError(
                "scheduled_end_time", "BASE_TYPE_REQUIRED", "External events need an end time."
            )
        end = parse_iso(raw_end, "scheduled_end_time")
        if end <= start:
            raise FormError(
                "scheduled_end_time",
                "GUILD_SCHEDULED_EVENT_END_BEFORE_START",
                "The end time must be after the start time.",
            )
        metadata = body.get("entity_metadata", None if creating else {"location": event.location})
        location = metadata.get("location") if isinstance(metadata, dict) else None
        if not isinstance(location, str) or not 1 <= len(location) <= 100:
            raise FormError(
                "entity_metadata.location",
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 100 in length.",
            )
        description = body.get("description", event.description)
        if description is not None and (
            not isinstance(description, str) or len(description) > 1000
        ):
            raise FormError(
                "description", "BASE_TYPE_MAX_LENGTH", "Must be 1000 or fewer in length."
            )
        status = body.get("status", event.status)
        if status not in EVENT_STATUSES:
            raise FormError("status", "BASE_TYPE_CHOICES", "Value must be one of {1, 2, 3, 4}.")
        event.name, event.start, event.end = name, start, end
        event.location, event.description, event.status = location, description, status

    def set_interest(self, event_id: str, user_id: str, interested: bool) -> None:
        """A member marks (or unmarks) themselves interested in an event."""
        event = self.scheduled_event(event_id)
        self.member(user_id)
        if interested == (user_id in event.interested):
            return
        if interested:
            event.interested.append(user_id)
        else:
            event.interested.remove(user_id)
        self.dispatch(
            "GUILD_SCHEDULED_EVENT_USER_ADD" if interested else "GUILD_SCHEDULED_EVENT_USER_REMOVE",
            {"guild_scheduled_event_id": event.id, "user_id": user_id, "guild_id": self.guild_id},
        )

    def scheduled_event_payload(
        self, event: ScheduledEvent, *, with_count: bool = True
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": event.id,
            "guild_id": self.guild_id,
            "channel_id": None,
            "creator_id": event.creator_id,
            "name": event.name,
            "description": event.description,
            "scheduled_start_time": iso_at(event.start),
            "scheduled_end_time": iso_at(event.end) if event.end is not None else None,
            "privacy_level": EVENT_GUILD_ONLY,
            "status": event.status,
            "entity_type": EVENT_EXTERNAL,
            "entity_id": None,
            "entity_metadata": {"location": event.location},
            "image": None,
            "recurrence_rule": None,
        }
        if event.creator_id in self.users:
            data["creator"] = self.user_payload(self.users[event.creator_id])
        if with_count:
            data["user_count"] = len(event.interested)
        return data

    # ---- payloads ------------------------------------------------------------------------

    def user_payload(self, user: User) -> dict[str, Any]:
        return {
            "id": user.id,
            "username": user.username,
            "discriminator": "0",
            "global_name": None if user.bot else user.username,
            "avatar": None,
            "bot": user.bot,
            "public_flags": 0,
        }

    def member_payload(self, user_id: str, *, with_user: bool = True) -> dict[str, Any]:
        member = self.member(user_id)
        data: dict[str, Any] = {
            "roles": list(member.roles),
            "joined_at": member.joined_at,
            "nick": None,
            "avatar": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "premium_since": None,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user_payload(self.users[user_id])
        return data

    def presence_payload(self, member: Member) -> dict[str, Any]:
        status = member.status
        return {
            "user": {"id": member.user_id},
            "guild_id": self.guild_id,
            "status": status,
            "activities": list(member.activities),
            "client_status": {} if status == "offline" else {"desktop": status},
        }

    def channel_payload(self, channel: Channel) -> dict[str, Any]:
        if channel.type == DM:
            recipient = self.users[channel.key]
            return {
                "id": channel.id,
                "type": DM,
                "last_message_id": channel.last_message_id,
                "recipients": [self.user_payload(recipient)],
                "flags": 0,
            }
        data: dict[str, Any] = {
            "id": channel.id,
            "type": channel.type,
            "guild_id": self.guild_id,
            "name": channel.name,
            "position": channel.position,
            "parent_id": channel.parent_id,
            "permission_overwrites": [],
            "nsfw": False,
            "flags": 0,
        }
        if channel.type == TEXT:
            data.update(
                topic=channel.topic,
                last_message_id=channel.last_message_id,
                rate_limit_per_user=0,
            )
        elif channel.type == VOICE:
            data.update(bitrate=64000, user_limit=0, rtc_region=None, rate_limit_per_user=0)
        return data

    def guild_payload(self) -> dict[str, Any]:
        """The guild as ``GET /guilds/{id}`` returns it."""
        return {
            "id": self.guild_id,
            "name": self.guild_name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": self.owner_id,
            "region": "us-west",
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "preferred_locale": "en-US",
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "nsfw_level": 0,
            "roles": list(self.roles.values()),
            "emojis": [],
            "stickers": [],
            "features": [],
            "max_members": 500000,
            "approximate_member_count": len(self.members),
        }

    def guild_create_payload(self, *, presences: bool = True) -> dict[str, Any]:
        """GUILD_CREATE: ``member_count`` equals the members sent, so py-cord never chunks."""
        members = [self.member_payload(uid) for uid in self.members]
        data = self.guild_payload()
        data.update(
            channels=[self.channel_payload(c) for c in self.channels.values()],
            members=members,
            member_count=len(members),
            presences=[
                self.presence_payload(m)
                for m in self.members.values()
                if presences and m.status != "offline"
            ],
            joined_at=self.members[self.bot_user_id].joined_at,
            large=False,
            unavailable=False,
            threads=[],
            voice_states=[],
            stage_instances=[],
            guild_scheduled_events=[
                self.scheduled_event_payload(e) for e in self.scheduled_events.values()
            ],
            soundboard_sounds=[],
        )
        return data

    def message_payload(self, msg: Message, *, nested: bool = True) -> dict[str, Any]:
        """A full message object; ``mentions`` come from ``<@id>`` in the content."""
        author = self.users.get(msg.author_id) or User(msg.author_id, "deleted-user")
        mentions = []
        for uid in dict.fromkeys(_USER_MENTION.findall(msg.content)):
            if uid in self.users:
                mention = self.user_payload(self.users[uid])
                if uid in self.members:
                    mention["member"] = self.member_payload(uid, with_user=False)
                mentions.append(mention)
        kind = 20 if msg.interaction_id else 19 if msg.reply_to_id else 0
        in_guild = msg.channel_id not in self.dm_channels
        data: dict[str, Any] = {
            "id": msg.id,
            "channel_id": msg.channel_id,
            "author": self.user_payload(author),
            "content": msg.content,
            "timestamp": msg.timestamp,
            "edited_timestamp": msg.edited_at,
            "tts": msg.tts,
            "mention_everyone": "@everyone" in msg.content or "@here" in msg.content,
            "mentions": mentions,
            "mention_roles": [
                r for r in dict.fromkeys(_ROLE_MENTION.findall(msg.content)) if r in self.roles
            ],
            "attachments": list(msg.attachments),
            "embeds": list(msg.embeds),
            "components": list(msg.components),
            "pinned": False,
            "type": kind,
            "flags": msg.flags,
        }
        if in_guild:
            data["guild_id"] = self.guild_id
        if msg.poll is not None:
            data["poll"] = self.poll_payload(msg.poll)
        if msg.nonce is not None:
            data["nonce"] = msg.nonce
        if in_guild and msg.webhook_id is None and msg.author_id in self.members:
            data["member"] = self.member_payload(msg.author_id, with_user=False)
        if msg.webhook_id is not None:
            data["webhook_id"] = msg.webhook_id
            data["application_id"] = msg.webhook_id
        if msg.reply_to_id is not None:
            data["message_reference"] = {
                "type": 0,
                "message_id": msg.reply_to_id,
                "channel_id": msg.channel_id,
            }
            if in_guild:
                data["message_reference"]["guild_id"] = self.guild_id
            ref = self.messages.get(msg.reply_to_id)
            if nested:
                data["referenced_message"] = (
                    self.message_payload(ref, nested=False) if ref else None
                )
        return data

    def interaction_payload(self, inter: Interaction) -> dict[str, Any]:
        channel = self.channels[inter.channel_id]
        member = self.member_payload(inter.user_id)
        member["permissions"] = str(self.permissions(inter.user_id))
        return {
            "id": inter.id,
            "application_id": self.bot_user_id,
            "type": 2,
            "token": inter.token,
            "version": 1,
            "guild_id": self.guild_id,
            "channel_id": inter.channel_id,
            "channel": self.channel_payload(channel),
            "member": member,
            "app_permissions": str(PERM_ALL),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": self.guild_id},
            "context": 0,
            "data": {
                "id": inter.command_id,
                "name": inter.name,
                "type": 1,
                "guild_id": self.guild_id,
                "options": inter.options,
            },
        }

    # ---- construction helpers ------------------------------------------------------------

    def _add_user(
        self,
        username: str,
        *,
        bot: bool = False,
        roles: list[str] | None = None,
        status: str = "offline",
    ) -> User:
        user = User(id=self.ids.next(), username=username, bot=bot)
        self.users[user.id] = user
        self.members[user.id] = Member(
            user_id=user.id, roles=list(roles or []), joined_at=self.iso_now(), status=status
        )
        return user

    def _add_channel(
        self, name: str, kind: int, *, topic: str | None = None, parent_id: str | None = None
    ) -> Channel:
        position = sum(1 for c in self.channels.values() if c.type == kind)
        channel = Channel(
            id=self.ids.next(),
            name=name,
            type=kind,
            position=position,
            topic=topic,
            parent_id=parent_id,
            key=name,
        )
        self.channels[channel.id] = channel
        return channel

    def _command(self, scope: str, cmd: dict[str, Any], cid: str | None) -> dict[str, Any]:
        stored = dict(cmd)
        stored.update(
            id=cid or self.ids.next(),
            application_id=self.bot_user_id,
            version="1",
            type=cmd.get("type", 1),
            description=cmd.get("description", ""),
            default_member_permissions=cmd.get("default_member_permissions"),
        )
        if scope != "global":
            stored["guild_id"] = scope
        return stored


def _role(role_id: str, name: str, position: int, permissions: int) -> dict[str, Any]:
    return {
        "id": role_id,
        "name": name,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "icon": None,
        "unicode_emoji": None,
        "position": position,
        "permissions": str(permissions),
        "managed": False,
        "mentionable": False,
        "flags": 0,
    }
