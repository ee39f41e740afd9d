"""What the persistence service serves and stores, beyond the Discord events.

Queries answer plain dicts; a stored message is
`{id, channel_id, guild_id, author_id, author_name, author_bot, content, created_at,
edited_at, deleted, reply_to_id}` (times in Unix seconds, `edited_at` None if never).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.messages import Message, message


@message("store.recent_messages")
@dataclass(frozen=True, slots=True)
class RecentMessages(Message):
    """`{messages: [...]}`: the channel's newest messages, oldest first, deleted ones left
    out (at most 100)."""

    channel_id: str
    limit: int = 50
    before_id: str | None = None
    after_ts: float | None = None  # only messages created after this time


@message("store.reply_chain")
@dataclass(frozen=True, slots=True)
class ReplyChain(Message):
    """`{messages: [...]}`: the message and the ones it replies to, transitively, oldest
    first (deleted ones included, marked `deleted`)."""

    message_id: str
    limit: int = 20


@message("store.member_events")
@dataclass(frozen=True, slots=True)
class MemberEvents(Message):
    """`{events: [{kind: joined|left|banned|unbanned, user_id, username, bot, at}]}`."""

    guild_id: str
    since: float
    until: float


@message("store.counts")
@dataclass(frozen=True, slots=True)
class StoreCounts(Message):
    """`{messages, deleted, edits, users, member_events, exchanges, db_bytes}`."""


@message("store.kv.get")
@dataclass(frozen=True, slots=True)
class KvGet(Message):
    """`{value}` (None if absent): small state services keep across restarts."""

    namespace: str
    key: str


@message("store.kv.set")
@dataclass(frozen=True, slots=True)
class KvSet(Message):
    namespace: str
    key: str
    value: Any
    only_if_absent: bool = False  # answers {stored: false} if the key exists: a claim


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


@message("store.usage")
@dataclass(frozen=True, slots=True)
class UsageRequest(Message):
    """`{exchanges, prompt_tokens, completion_tokens, by_outcome: {outcome: n},
    latency_p50_ms}` for a guild (or all) since a time."""

    since: float
    guild_id: str | None = None
