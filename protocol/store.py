"""What the persistence service serves and stores, beyond the Discord events.

Each query declares its reply type. A stored message is
`{id, channel_id, guild_id, author_id, author_name, author_bot, content, created_at,
edited_at, deleted, reply_to_id}` (times in Unix seconds, `edited_at` None if never).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.messages import Message, Request, message

STORE = "persistence"  # the service that serves these queries

# --- replies ----------------------------------------------------------------------------


@message("store.messages")
@dataclass(frozen=True, slots=True)
class StoredMessages(Message):
    messages: list[dict[str, Any]]  # stored messages, oldest first


@message("store.member_events.list")
@dataclass(frozen=True, slots=True)
class MemberEventList(Message):
    """`events`: `[{kind: joined|left|banned|unbanned, user_id, username, bot, at}]`."""

    events: list[dict[str, Any]]
    truncated: bool = False


@message("store.counts.list")
@dataclass(frozen=True, slots=True)
class Counts(Message):
    messages: int
    deleted: int
    edits: int
    users: int
    member_events: int
    exchanges: int
    db_bytes: int | None


@message("store.newest.ids")
@dataclass(frozen=True, slots=True)
class NewestStored(Message):
    newest: dict[str, str]  # channel id -> the id of its newest stored message
    dm_channels: list[str] = field(default_factory=list)  # the DM channels among them


@message("store.kv.value")
@dataclass(frozen=True, slots=True)
class KvValue(Message):
    value: Any  # None if absent


@message("store.kv.stored")
@dataclass(frozen=True, slots=True)
class KvStored(Message):
    stored: bool  # False: only_if_absent and the key existed (the claim failed)


@message("store.usage.totals")
@dataclass(frozen=True, slots=True)
class Usage(Message):
    exchanges: int
    prompt_tokens: int
    completion_tokens: int
    by_outcome: dict[str, int] = field(default_factory=dict)
    latency_p50_ms: float | None = None
    by_provider: dict[str, int] = field(default_factory=dict)  # answers per provider


# --- queries ----------------------------------------------------------------------------


@message("store.recent_messages")
@dataclass(frozen=True, slots=True)
class RecentMessages(Request[StoredMessages]):
    """The channel's newest messages, oldest first, deleted ones left
    out (at most 100)."""

    channel_id: str
    limit: int = 50
    before_id: str | None = None
    after_ts: float | None = None  # only messages created after this time


@message("store.reply_chain")
@dataclass(frozen=True, slots=True)
class ReplyChain(Request[StoredMessages]):
    """The message and the ones it replies to, transitively, oldest
    first (deleted ones included, marked `deleted`)."""

    message_id: str
    limit: int = 20


@message("store.newest_messages")
@dataclass(frozen=True, slots=True)
class NewestMessages(Request[NewestStored]):
    """The newest stored message of every channel (deleted ones count; ones known only
    from an edit or a delete do not), below `below[channel]` where given: where the
    gateway's backfill after a gap starts."""

    below: dict[str, str] = field(default_factory=dict)  # channel id -> message id


@message("store.member_events")
@dataclass(frozen=True, slots=True)
class MemberEvents(Request[MemberEventList]):
    """Member events with since <= at <= until, oldest first."""

    guild_id: str
    since: float
    until: float


@message("store.counts")
@dataclass(frozen=True, slots=True)
class StoreCounts(Request[Counts]):
    """How many rows each table holds, and the database's size."""


@message("store.kv.get")
@dataclass(frozen=True, slots=True)
class KvGet(Request[KvValue]):
    """Small state services keep across restarts."""

    namespace: str
    key: str


@message("store.kv.set")
@dataclass(frozen=True, slots=True)
class KvSet(Request[KvStored]):
    namespace: str
    key: str
    value: Any
    only_if_absent: bool = False  # a claim: not stored if the key exists


@message("llm.exchange", durable=True)
@dataclass(frozen=True, slots=True)
class LlmExchange(Message):
    """One answer (or failure) of the llm service, for /usage and the health embed."""

    id: str  # the triggering message or interaction id: idempotent
    guild_id: str | None
    channel_id: str | None
    user_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    outcome: str
    at: float
    provider: str = ""  # the name of the provider that answered; "" if none did


@message("store.health", retain_by="")
@dataclass(frozen=True, slots=True)
class StorageHealth(Message):
    """Whether persistence can write: sent on its first write and whenever that changes
    (a failure once it has lasted its `storage_alert_after_s`). Retained, so a
    subscriber that starts late still learns of an outage under way. While writes
    fail, persistence refuses events and the senders keep them in their outboxes."""

    ok: bool
    detail: str  # why writes fail ("database or disk is full"); "" when ok
    since: float  # wall time the current state began


@message("store.usage")
@dataclass(frozen=True, slots=True)
class UsageRequest(Request[Usage]):
    """The model usage of a guild (or all) since a time."""

    since: float
    guild_id: str | None = None
