"""The database work: idempotent batched upserts and the queries. All synchronous.

One `Store` owns one connection and is used from one thread at a time (the
service's worker, or the rebuild). Writes are keyed by Discord ids, so a
redelivered event changes nothing, and they never lose what arrived out of
order: an edit or a delete before its create leaves a partial row that the
create completes. Each writer collapses its batch per key first (PostgreSQL
refuses to upsert one row twice in a statement) with the same tie rules the
SQL uses between batches, so how events were batched never changes the result.

Errors: `DatabaseUnavailable` when the database cannot be used right now (locked,
restarting, connection lost): the caller retries later. Anything else is a
problem with a row, which is logged with its id and skipped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sqlite3
import typing
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import peewee
from loguru import logger
from peewee import EXCLUDED, Case, Database, Model, SqliteDatabase, fn
from playhouse import db_url

from protocol.discord import (
    MemberBanned,
    MemberJoined,
    MemberLeft,
    MemberUnbanned,
    MessageCreated,
    MessageDeleted,
    MessageEdited,
)
from protocol.messages import Message
from protocol.store import Counts, KvSet, LlmExchange, MemberEventList, NewestStored, Usage
from services.persistence.journal import to_json
from services.persistence.models import (
    Channel,
    Guild,
    KvEntry,
    LlmExchangeRow,
    Member,
    MemberEvent,
    MessageEdit,
    StoredMessage,
    User,
    bind_models,
    migrate,
)

# SQLite reports bugs ("no such column") as OperationalError too: only these are waits.
SQLITE_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o", "readonly", "disk is full")
SQLITE_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
MAX_RECENT = 100
RECENT_BYTES_BUDGET = 600_000  # replies must stay well under the bus's 1 MiB frame limit
MAX_MEMBER_EVENTS = 5_000
MAX_SQL_VARIABLES = 30_000  # SQLite >= 3.32 allows 32766 per statement

MemberChange = MemberJoined | MemberLeft | MemberBanned | MemberUnbanned
MEMBER_KINDS: dict[str, str] = {
    MemberJoined.TYPE: "joined",
    MemberLeft.TYPE: "left",
    MemberBanned.TYPE: "banned",
    MemberUnbanned.TYPE: "unbanned",
}


class DatabaseUnavailable(Exception):
    """The database cannot be used right now; the same work may succeed later."""


# --- opening ----------------------------------------------------------------------------


def describe_url(url: str) -> str:
    """Scheme and host only: a database URL can carry a password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}" if host else f"{parts.scheme}://(local)"


def open_database(
    url: str | None,
    sqlite_path: Path,
    *,
    synchronous: str = "NORMAL",
    busy_timeout_ms: int = 5000,
) -> Database:
    """SQLite in WAL mode at `sqlite_path`, or whatever peewee database `url` names.

    `thread_safe=False` keeps one connection for the whole process: the worker
    thread may differ from call to call, but calls never overlap.
    """
    synchronous = synchronous.upper()
    if synchronous not in SQLITE_SYNCHRONOUS:
        raise ValueError(f"sqlite_synchronous must be one of {SQLITE_SYNCHRONOUS}")
    sqlite_options: dict[str, Any] = {
        "pragmas": {"journal_mode": "wal", "synchronous": synchronous, "foreign_keys": 0},
        "timeout": busy_timeout_ms / 1000,
        "check_same_thread": False,
    }
    if not url:
        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteDatabase(str(sqlite_path), thread_safe=False, **sqlite_options)
    scheme = urlsplit(url).scheme
    extra = sqlite_options if scheme.startswith("sqlite") else {}
    return db_url.connect(url, thread_safe=False, **extra)


@dataclass
class ApplyResult:
    stored: int = 0
    skipped: int = 0


class Store:
    """The models are bound to this store's database: one Store per process at a time
    (the service's, or the rebuild's)."""

    # Every event type stored, and the method that writes a batch of it.
    WRITERS: ClassVar[dict[type[Message], str]] = {
        MessageCreated: "_messages_created",
        MessageEdited: "_messages_edited",
        MessageDeleted: "_messages_deleted",
        MemberJoined: "_member_events",
        MemberLeft: "_member_events",
        MemberBanned: "_member_events",
        MemberUnbanned: "_member_events",
        LlmExchange: "_llm_exchanges",
    }

    def __init__(self, db: Database) -> None:
        self.db = db
        self.is_sqlite = isinstance(db, SqliteDatabase)
        self._nul_warned = False
        self._own_max_pages: int | None = None
        bind_models(db)
        self._writers: dict[str, Callable[[list[Any]], None]] = {
            t.TYPE: getattr(self, method) for t, method in self.WRITERS.items()
        }

    @property
    def event_types(self) -> list[str]:
        return list(self._writers)

    def open(self) -> tuple[int, int]:
        """Connect and create or migrate the schema; returns (version before, after)."""
        with self._unavailable_on_error():
            self.db.connect(reuse_if_open=True)
            return migrate(self.db)

    def close(self) -> None:
        if not self.db.is_closed():
            self.db.close()

    def limit_pages(self, pages: int | None) -> None:
        """SQLite: cap the database at `pages` pages (None: SQLite's own limit); a write
        beyond it fails with SQLITE_FULL, as on a full disk. Elsewhere: nothing."""
        if not self.is_sqlite:
            return
        with self._unavailable_on_error():
            if self._own_max_pages is None:
                self._own_max_pages = self.db.execute_sql("PRAGMA max_page_count").fetchone()[0]
            wanted = self._own_max_pages if pages is None else pages
            self.db.execute_sql(f"PRAGMA max_page_count = {int(wanted)}")

    @contextmanager
    def _unavailable_on_error(self) -> Iterator[None]:
        """Turn the errors a retry can fix into `DatabaseUnavailable` (dropping a broken
        connection, so that the retry reconnects)."""
        try:
            yield
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            cause = _transient_cause(exc, self.is_sqlite)
            if cause is None:
                raise
            self._forget_connection()
            raise DatabaseUnavailable(f"{type(cause).__name__}: {cause}") from exc

    def _forget_connection(self) -> None:
        """After a lost connection the next call must reconnect, not reuse a dead socket."""
        if self.is_sqlite:
            return  # "database is locked" leaves the connection perfectly usable
        try:
            self.db.close()
        except Exception:  # the connection is already broken: closing may fail too
            self.db._state.reset()

    # --- writing ----------------------------------------------------------------------

    def apply(self, type_name: str, events: list[Message]) -> ApplyResult:
        """Store a batch of one event type in one transaction; if that fails for a reason
        a retry will not fix, store it row by row and skip (and log) the rows that fail."""
        writer = self._writers[type_name]
        result = ApplyResult()
        valid = []
        for event in events:
            problem = _problem(event)
            if problem:
                logger.warning("skipping {} {}: {}", type_name, _event_id(event), problem)
                result.skipped += 1
            else:
                valid.append(event)
        if not valid:
            return result
        try:
            with self._unavailable_on_error(), self.db.atomic():
                writer(valid)
            result.stored += len(valid)
            return result
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            if len(valid) == 1:
                logger.warning("skipping {} {}: {!r}", type_name, _event_id(valid[0]), exc)
                result.skipped += 1
                return result
            logger.warning(
                "batch of {} {} failed ({!r}): storing row by row", len(valid), type_name, exc
            )
        for event in valid:
            try:
                with self._unavailable_on_error(), self.db.atomic():
                    writer([event])
                result.stored += 1
            except DatabaseUnavailable:
                raise
            except Exception as exc:
                logger.warning("skipping {} {}: {!r}", type_name, _event_id(event), exc)
                result.skipped += 1
        return result

    def _text(self, value: str | None) -> str | None:
        """PostgreSQL text cannot hold NUL: store U+FFFD there (SQLite keeps it as is)."""
        if value is None or self.is_sqlite or "\x00" not in value:
            return value
        if not self._nul_warned:
            self._nul_warned = True
            logger.warning("NUL characters replaced by U+FFFD (PostgreSQL text cannot hold them)")
        return value.replace("\x00", "\ufffd")

    def _json(self, value: Any) -> str:
        return self._text(to_json(value)) or ""

    def _upsert(
        self,
        model: type[Model],
        rows: list[dict[str, Any]],
        on_conflict: Callable[[peewee.Insert], peewee.Insert],
    ) -> None:
        """Insert `rows` (dicts with the same keys) with the given conflict clause.

        SQLite: one statement run with executemany, since building the SQL for 500 rows
        in peewee costs several times what SQLite spends storing them. Elsewhere:
        multi-row statements, one round trip per chunk.
        """
        if not rows:
            return
        fields = [model._meta.fields[name] for name in rows[0]]
        values = [[row[f.name] for f in fields] for row in rows]
        if not self.is_sqlite:
            per_chunk = max(1, MAX_SQL_VARIABLES // len(fields))
            for i in range(0, len(values), per_chunk):
                on_conflict(model.insert_many(values[i : i + per_chunk], fields=fields)).execute()
            return
        sql, params = on_conflict(model.insert_many(values[:1], fields=fields)).sql()
        if len(params) != len(fields):  # the conflict clause must not carry parameters
            raise RuntimeError(f"{model.__name__} upsert has {len(params)} parameters")
        adapted = [[f.db_value(v) for f, v in zip(fields, row, strict=True)] for row in values]
        with peewee.__exception_wrapper__:
            self.db.cursor().executemany(sql, adapted)

    def _guilds(self, first_seen: dict[str, float]) -> None:
        rows = [{"id": self._text(g), "first_seen_at": t} for g, t in first_seen.items()]
        self._upsert(Guild, rows, lambda q: q.on_conflict_ignore())

    def _channels(self, channels: dict[str, dict[str, Any]]) -> None:
        rows = list(channels.values())
        update = {
            Channel.guild_id: fn.COALESCE(EXCLUDED.guild_id, Channel.guild_id),
            Channel.name: fn.COALESCE(EXCLUDED.name, Channel.name),
            Channel.is_dm: fn.COALESCE(EXCLUDED.is_dm, Channel.is_dm),
        }
        self._upsert(
            Channel, rows, lambda q: q.on_conflict(conflict_target=[Channel.id], update=update)
        )

    def _users(self, users: dict[str, dict[str, Any]]) -> None:
        newer = EXCLUDED.seen_at >= User.seen_at
        update = {
            User.name: Case(None, [(newer, EXCLUDED.name)], User.name),
            User.bot: Case(None, [(newer & EXCLUDED.bot.is_null(False), EXCLUDED.bot)], User.bot),
            User.seen_at: Case(None, [(newer, EXCLUDED.seen_at)], User.seen_at),
        }
        self._upsert(
            User,
            list(users.values()),
            lambda q: q.on_conflict(conflict_target=[User.id], update=update),
        )

    def _seen(
        self,
        events: Iterable[Any],
        at: Callable[[Any], float],
        channel_name: Callable[[Any], str | None] = lambda e: None,
    ) -> None:
        """Guilds and channels these message events mention."""
        guilds: dict[str, float] = {}
        channels: dict[str, dict[str, Any]] = {}
        for e in events:
            if e.guild_id is not None:
                guilds.setdefault(e.guild_id, at(e))
            row = channels.setdefault(
                e.channel_id,
                {
                    "id": self._text(e.channel_id),
                    "guild_id": self._text(e.guild_id),
                    "name": None,
                    "is_dm": None,
                    "first_seen_at": at(e),
                },
            )
            name = channel_name(e)
            if name is not None:
                row["name"] = self._text(name)
            if isinstance(e, MessageCreated):
                row["is_dm"] = e.is_dm
        self._guilds(guilds)
        self._channels(channels)

    def _messages_created(self, events: list[MessageCreated]) -> None:
        self._seen(events, lambda e: e.created_at, lambda e: e.channel_name)
        users: dict[str, dict[str, Any]] = {}
        for e in events:
            if e.author_id not in users or e.created_at >= users[e.author_id]["seen_at"]:
                users[e.author_id] = {
                    "id": self._text(e.author_id),
                    "name": self._text(e.author_name),
                    "bot": e.author_bot,
                    "seen_at": e.created_at,
                }
        self._users(users)
        rows = {
            e.id: {
                "id": self._text(e.id),
                "channel_id": self._text(e.channel_id),
                "guild_id": self._text(e.guild_id),
                "author_id": self._text(e.author_id),
                "author_name": self._text(e.author_name),
                "author_bot": e.author_bot,
                "content": self._text(e.content),
                "original_content": None,
                "created_at": e.created_at,
                "edited_at": None,
                "deleted": False,
                "deleted_at": None,
                "reply_to_id": self._text(e.reply_to_id),
                "reply_to_author_id": self._text(e.reply_to_author_id),
                "is_dm": e.is_dm,
                "mention_everyone": e.mention_everyone,
                "mentions_bot": e.mentions_bot,
                "mentions": self._json(e.mentions),
                "mention_roles": self._json(e.mention_roles),
                "attachments": self._json(e.attachments),
            }
            for e in events
        }
        never_edited = StoredMessage.edited_at.is_null()
        # The create is the authority on everything but what later events changed: an
        # edit that arrived first keeps its content (the create's becomes the original),
        # and the deleted flag is never touched.
        update = {
            f: getattr(EXCLUDED, f.name)
            for f in (
                StoredMessage.channel_id,
                StoredMessage.guild_id,
                StoredMessage.author_id,
                StoredMessage.author_name,
                StoredMessage.author_bot,
                StoredMessage.created_at,
                StoredMessage.reply_to_id,
                StoredMessage.reply_to_author_id,
                StoredMessage.is_dm,
                StoredMessage.mention_everyone,
                StoredMessage.mentions_bot,
                StoredMessage.mentions,
                StoredMessage.mention_roles,
                StoredMessage.attachments,
            )
        }
        update[StoredMessage.content] = Case(
            None, [(never_edited, EXCLUDED.content)], StoredMessage.content
        )
        update[StoredMessage.original_content] = Case(
            None, [(never_edited, StoredMessage.original_content)], EXCLUDED.content
        )
        self._upsert(
            StoredMessage,
            list(rows.values()),
            lambda q: q.on_conflict(conflict_target=[StoredMessage.id], update=update),
        )

    def _messages_edited(self, events: list[MessageEdited]) -> None:
        self._seen(events, lambda e: e.edited_at)
        history: dict[tuple[str, float], dict[str, Any]] = {}
        latest: dict[str, MessageEdited] = {}
        for e in events:
            history.setdefault(
                (e.id, e.edited_at),
                {
                    "message_id": self._text(e.id),
                    "edited_at": e.edited_at,
                    "content": self._text(e.content),
                },
            )
            if e.id not in latest or e.edited_at >= latest[e.id].edited_at:
                latest[e.id] = e
        self._upsert(MessageEdit, list(history.values()), lambda q: q.on_conflict_ignore())
        rows = [
            {
                "id": self._text(e.id),
                "channel_id": self._text(e.channel_id),
                "guild_id": self._text(e.guild_id),
                "content": self._text(e.content),
                "edited_at": e.edited_at,
                "deleted": False,
            }
            for e in latest.values()
        ]
        newer = StoredMessage.edited_at.is_null() | (EXCLUDED.edited_at >= StoredMessage.edited_at)
        first_edit_of_known = StoredMessage.edited_at.is_null() & StoredMessage.created_at.is_null(
            False
        )
        update = {
            StoredMessage.content: Case(None, [(newer, EXCLUDED.content)], StoredMessage.content),
            StoredMessage.edited_at: Case(
                None, [(newer, EXCLUDED.edited_at)], StoredMessage.edited_at
            ),
            StoredMessage.original_content: Case(
                None, [(first_edit_of_known, StoredMessage.content)], StoredMessage.original_content
            ),
        }
        self._upsert(
            StoredMessage,
            rows,
            lambda q: q.on_conflict(conflict_target=[StoredMessage.id], update=update),
        )

    def _messages_deleted(self, events: list[MessageDeleted]) -> None:
        self._seen(events, lambda e: e.deleted_at)
        rows: dict[str, dict[str, Any]] = {}
        for e in events:
            rows.setdefault(
                e.id,
                {
                    "id": self._text(e.id),
                    "channel_id": self._text(e.channel_id),
                    "guild_id": self._text(e.guild_id),
                    "deleted": True,
                    "deleted_at": e.deleted_at,
                },
            )
        update = {
            StoredMessage.deleted: EXCLUDED.deleted,  # True: no parameters in the clause
            StoredMessage.deleted_at: fn.COALESCE(StoredMessage.deleted_at, EXCLUDED.deleted_at),
        }
        self._upsert(
            StoredMessage,
            list(rows.values()),
            lambda q: q.on_conflict(conflict_target=[StoredMessage.id], update=update),
        )

    def _member_events(self, events: list[MemberChange]) -> None:
        guilds: dict[str, float] = {}
        users: dict[str, dict[str, Any]] = {}
        history: dict[tuple[str, str, str, float], dict[str, Any]] = {}
        members: dict[tuple[str, str], dict[str, Any]] = {}
        for e in events:
            kind = MEMBER_KINDS[e.TYPE]
            bot = getattr(e, "bot", None)
            guilds.setdefault(e.guild_id, e.at)
            user = users.get(e.user_id)
            if user is None or e.at >= user["seen_at"]:
                users[e.user_id] = {
                    "id": self._text(e.user_id),
                    "name": self._text(e.username),
                    "bot": bot if bot is not None else (user or {}).get("bot"),
                    "seen_at": e.at,
                }
            history.setdefault(
                (e.guild_id, e.user_id, kind, e.at),
                {
                    "guild_id": self._text(e.guild_id),
                    "user_id": self._text(e.user_id),
                    "kind": kind,
                    "at": e.at,
                    "username": self._text(e.username),
                    "bot": bot,
                },
            )
            joined_at = e.at if kind == "joined" else None
            member = members.get((e.guild_id, e.user_id))
            if member is None:
                members[(e.guild_id, e.user_id)] = member = {
                    "guild_id": self._text(e.guild_id),
                    "user_id": self._text(e.user_id),
                    "status": kind,
                    "updated_at": e.at,
                    "joined_at": joined_at,
                }
            elif e.at >= member["updated_at"]:
                member.update(status=kind, updated_at=e.at)
            if joined_at is not None and (member["joined_at"] or -math.inf) < joined_at:
                member["joined_at"] = joined_at
        self._guilds(guilds)
        self._users(users)
        self._upsert(MemberEvent, list(history.values()), lambda q: q.on_conflict_ignore())
        newer = EXCLUDED.updated_at >= Member.updated_at
        later_join = EXCLUDED.joined_at.is_null(False) & (
            Member.joined_at.is_null() | (EXCLUDED.joined_at > Member.joined_at)
        )
        update = {
            Member.status: Case(None, [(newer, EXCLUDED.status)], Member.status),
            Member.updated_at: Case(None, [(newer, EXCLUDED.updated_at)], Member.updated_at),
            Member.joined_at: Case(None, [(later_join, EXCLUDED.joined_at)], Member.joined_at),
        }
        self._upsert(
            Member,
            list(members.values()),
            lambda q: q.on_conflict(
                conflict_target=[Member.guild_id, Member.user_id], update=update
            ),
        )

    def _llm_exchanges(self, events: list[LlmExchange]) -> None:
        rows: dict[str, dict[str, Any]] = {}
        for e in events:
            rows.setdefault(
                e.id,
                {
                    "id": self._text(e.id),
                    "guild_id": self._text(e.guild_id),
                    "channel_id": self._text(e.channel_id),
                    "user_id": self._text(e.user_id),
                    "model": self._text(e.model),
                    "prompt_tokens": e.prompt_tokens,
                    "completion_tokens": e.completion_tokens,
                    "latency_ms": e.latency_ms,
                    "outcome": self._text(e.outcome),
                    "at": e.at,
                    "provider": self._text(e.provider),
                },
            )
        self._upsert(LlmExchangeRow, list(rows.values()), lambda q: q.on_conflict_ignore())

    def kv_set(self, req: KvSet) -> bool:
        """Set a value; with only_if_absent, an atomic claim: False if the key exists."""
        row = {
            "namespace": self._text(req.namespace),
            "key": self._text(req.key),
            "value": self._json(req.value),
        }
        with self._unavailable_on_error(), self.db.atomic():
            query = KvEntry.insert(row)
            if req.only_if_absent:
                return query.on_conflict_ignore().as_rowcount().execute() == 1
            query.on_conflict(
                conflict_target=[KvEntry.namespace, KvEntry.key],
                update={KvEntry.value: EXCLUDED.value},
            ).execute()
            return True

    # --- queries ----------------------------------------------------------------------

    def kv_get(self, namespace: str, key: str) -> Any:
        with self._unavailable_on_error():
            text = (
                KvEntry.select(KvEntry.value)
                .where((KvEntry.namespace == namespace) & (KvEntry.key == key))
                .scalar()
            )
        return None if text is None else json.loads(text)

    def recent_messages(
        self,
        channel_id: str,
        limit: int = 50,
        before_id: str | None = None,
        after_ts: float | None = None,
    ) -> list[dict[str, Any]]:
        """Newest `limit` messages of the channel, returned oldest first. Deleted ones and
        ones known only from an edit or delete (no create seen) are left out."""
        limit = min(max(limit, 0), MAX_RECENT)
        if limit == 0:
            return []
        m = StoredMessage
        where = (m.channel_id == channel_id) & (m.deleted == False) & m.created_at.is_null(False)  # noqa: E712
        if after_ts is not None:
            where &= m.created_at > after_ts
        with self._unavailable_on_error():
            if before_id is not None:
                anchor = m.get_or_none(m.id == before_id)
                if anchor is not None and anchor.created_at is not None:
                    where &= (m.created_at < anchor.created_at) | (
                        (m.created_at == anchor.created_at) & _id_before(before_id)
                    )
                else:
                    where &= _id_before(before_id)
            rows = list(
                _message_select()
                .where(where)
                .order_by(m.created_at.desc(), fn.LENGTH(m.id).desc(), m.id.desc())
                .limit(limit)
                .dicts()
            )
        kept, size = [], 0
        for row in rows:  # newest first: drop the oldest if the reply would grow too big
            size += len((row["content"] or "").encode("utf-8", "surrogatepass")) + 200
            if size > RECENT_BYTES_BUDGET and kept:
                break
            kept.append(_message_dict(row))
        kept.reverse()
        return kept

    def newest_messages(self, below: dict[str, str]) -> NewestStored:
        """The id of each channel's newest stored message (ids compare as numbers), below
        `below[channel]` where given; and which of those channels are DMs."""
        m = StoredMessage
        created = m.created_at.is_null(False)
        with self._unavailable_on_error():
            longest = (
                m.select(m.channel_id, fn.MAX(fn.LENGTH(m.id)).alias("n"))
                .where(created)
                .group_by(m.channel_id)
                .alias("longest")
            )
            newest: dict[str, str] = dict(
                m.select(m.channel_id, fn.MAX(m.id))
                .join(
                    longest,
                    on=(m.channel_id == longest.c.channel_id) & (fn.LENGTH(m.id) == longest.c.n),
                )
                .where(created)
                .group_by(m.channel_id)
                .tuples()
            )
            for channel_id, bound in below.items():
                if channel_id not in newest:
                    continue
                found = (
                    m.select(m.id)
                    .where((m.channel_id == channel_id) & created & _id_before(bound))
                    .order_by(fn.LENGTH(m.id).desc(), m.id.desc())
                    .limit(1)
                    .scalar()
                )
                if found is None:
                    del newest[channel_id]
                else:
                    newest[channel_id] = found
            dms = [c for (c,) in Channel.select(Channel.id).where(Channel.is_dm == True).tuples()]  # noqa: E712
        return NewestStored(newest, sorted(c for c in dms if c in newest))

    def reply_chain(self, message_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """The message and those it replies to, transitively, oldest first. Deleted ones
        are included (flagged) so the chain is not cut; the walk stops at an unknown id."""
        chain: list[dict[str, Any]] = []
        seen: set[str] = set()
        next_id: str | None = message_id
        with self._unavailable_on_error():
            while next_id is not None and next_id not in seen and len(chain) < max(limit, 0):
                seen.add(next_id)
                row = _message_select().where(StoredMessage.id == next_id).dicts().first()
                if row is None:
                    break
                chain.append(_message_dict(row))
                next_id = row["reply_to_id"]
        chain.reverse()
        return chain

    def member_events(self, guild_id: str, since: float, until: float) -> MemberEventList:
        """Events with since <= at <= until, oldest first; `bot` from the users table when
        the event itself does not say (bans)."""
        e = MemberEvent
        with self._unavailable_on_error():
            rows = list(
                e.select(
                    e.kind,
                    e.user_id,
                    e.username,
                    fn.COALESCE(e.bot, User.bot).alias("bot"),
                    e.at,
                )
                .join(User, peewee.JOIN.LEFT_OUTER, on=(User.id == e.user_id))
                .where((e.guild_id == guild_id) & (e.at >= since) & (e.at <= until))
                .order_by(e.at, e.user_id, e.kind)
                .limit(MAX_MEMBER_EVENTS + 1)
                .dicts()
            )
        for row in rows:
            row["bot"] = None if row["bot"] is None else bool(row["bot"])
        return MemberEventList(rows[:MAX_MEMBER_EVENTS], truncated=len(rows) > MAX_MEMBER_EVENTS)

    def counts(self) -> Counts:
        m = StoredMessage
        with self._unavailable_on_error():
            return Counts(
                messages=m.select().count(),
                deleted=m.select().where(m.deleted == True).count(),  # noqa: E712
                edits=MessageEdit.select().count(),
                users=User.select().count(),
                member_events=MemberEvent.select().count(),
                exchanges=LlmExchangeRow.select().count(),
                db_bytes=self._db_bytes(),
            )

    def _db_bytes(self) -> int | None:
        if self.is_sqlite:
            path = Path(self.db.database)
            return sum(
                os.path.getsize(p)
                for p in (path, path.with_name(path.name + "-wal"))
                if os.path.exists(p)
            )
        if isinstance(self.db, peewee.PostgresqlDatabase):
            return self.db.execute_sql("SELECT pg_database_size(current_database())").fetchone()[0]
        return None

    def usage(self, since: float, guild_id: str | None = None) -> Usage:
        x = LlmExchangeRow
        where = x.at >= since
        if guild_id is not None:
            where &= x.guild_id == guild_id
        with self._unavailable_on_error():
            n, prompt, completion = (
                x.select(
                    fn.COUNT(x.id),
                    fn.COALESCE(fn.SUM(x.prompt_tokens), 0),
                    fn.COALESCE(fn.SUM(x.completion_tokens), 0),
                )
                .where(where)
                .tuples()
                .get()
            )
            by_outcome = dict(
                x.select(x.outcome, fn.COUNT(x.id)).where(where).group_by(x.outcome).tuples()
            )
            answered = where & x.provider.is_null(False) & (x.provider != "")
            by_provider = dict(
                x.select(x.provider, fn.COUNT(x.id)).where(answered).group_by(x.provider).tuples()
            )
            p50 = None
            if n:
                # The median without loading every row: the middle one (two, when even).
                middle = [
                    v
                    for (v,) in x.select(x.latency_ms)
                    .where(where)
                    .order_by(x.latency_ms)
                    .offset((n - 1) // 2)
                    .limit(2 - n % 2)
                    .tuples()
                ]
                p50 = sum(middle) / len(middle)
        return Usage(
            exchanges=int(n),
            prompt_tokens=int(prompt),
            completion_tokens=int(completion),
            by_outcome={k: int(v) for k, v in by_outcome.items()},
            latency_p50_ms=p50,
            by_provider={k: int(v) for k, v in by_provider.items()},
        )


# --- helpers ------------------------------------------------------------------------------


def _transient_cause(exc: BaseException, sqlite: bool) -> BaseException | None:
    """Would the same work succeed later (locked, full, restarting, connection lost)?
    The error that says so, if it would.

    The whole chain counts: on SQLITE_FULL SQLite rolls the transaction back itself,
    so what reaches us is the ROLLBACK's "no transaction is active", raised while
    handling "database or disk is full"; taken alone it would make a full disk look
    like bad rows, to be skipped and lost."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, peewee.InterfaceError):
            return cause
        if isinstance(cause, peewee.OperationalError | sqlite3.OperationalError) and (
            not sqlite or any(word in str(cause).lower() for word in SQLITE_TRANSIENT)
        ):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


_CHECKED_FIELDS: dict[type, tuple[list[str], list[str]]] = {}


def _checked_fields(cls: type) -> tuple[list[str], list[str]]:
    """(number fields, id fields) of a message type: what `_problem` looks at."""
    if cls not in _CHECKED_FIELDS:
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        numbers = [n for n in names if float in (hints[n], *typing.get_args(hints[n]))]
        ids = [n for n in names if n == "id" or n.endswith("_id")]
        _CHECKED_FIELDS[cls] = numbers, ids
    return _CHECKED_FIELDS[cls]


def _problem(event: Message) -> str | None:
    """Why an event can never be stored, checked before touching the database."""
    numbers, ids = _checked_fields(type(event))
    for name in numbers:
        value = getattr(event, name)
        if isinstance(value, float) and not math.isfinite(value):
            return f"{name} is not a finite number"
    for name in ids:
        value = getattr(event, name)
        if value is not None and not value:
            return f"{name} is empty"
    return None


def _event_id(event: Message) -> str:
    body = event.to_body()
    if "id" in body:
        return f"id={body['id']}"
    return f"guild={body.get('guild_id')} user={body.get('user_id')} at={body.get('at')}"


def _id_before(before_id: str) -> Any:
    """Digit-string ids compare as numbers: shorter first, then by text."""
    m = StoredMessage
    length = fn.LENGTH(m.id)
    return (length < len(before_id)) | ((length == len(before_id)) & (m.id < before_id))


def _message_select() -> peewee.ModelSelect:
    m = StoredMessage
    return m.select(
        m.id,
        m.channel_id,
        m.guild_id,
        m.author_id,
        m.author_name,
        m.author_bot,
        m.content,
        m.created_at,
        m.edited_at,
        m.deleted,
        m.reply_to_id,
    )


def _message_dict(row: dict[str, Any]) -> dict[str, Any]:
    for flag in ("author_bot", "deleted"):
        if row[flag] is not None:
            row[flag] = bool(row[flag])
    return row
