"""The persistence service: stores what the gateway and the llm service publish, and
answers the queries of protocol/store.py.

A batch of events (up to 500 of one type, handed over by the runtime) is appended to
the journal, committed to the database in one transaction, and only then does the
handler return, after which the runtime acknowledges it. A database that cannot be
used right now (locked, restarting) raises TransientError, so the sender redelivers
later. All file and database work runs on a worker thread, one call at a time over
one connection, never on the event loop.

Settings: settings.py. Environment: DATABASE_URL, any peewee database URL (default:
SQLite at DATA_DIR/bot.sqlite3).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
from loguru import logger

from protocol.clock import Clock
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
from protocol.runtime import Service, TransientError
from protocol.store import (
    Counts,
    KvGet,
    KvSet,
    KvStored,
    KvValue,
    LlmExchange,
    MemberEventList,
    MemberEvents,
    RecentMessages,
    ReplyChain,
    StoreCounts,
    StoredMessages,
    Usage,
    UsageRequest,
)
from services.persistence.journal import Journal
from services.persistence.settings import Settings
from services.persistence.store import DatabaseUnavailable, Store, describe_url, open_database

STORED_EVENTS: tuple[type[Message], ...] = (
    MessageCreated,
    MessageEdited,
    MessageDeleted,
    MemberJoined,
    MemberLeft,
    MemberBanned,
    MemberUnbanned,
    LlmExchange,
)
T = TypeVar("T")


class Persistence:
    """The store and the journal, and the worker thread they run on (one call at a time)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.store: Store | None = None
        self.journal: Journal | None = None
        self._limiter = anyio.CapacityLimiter(1)
        # The bus is up before setup has opened the database: early events wait for it.
        self._opened = anyio.Event()

    async def open(self, data_dir: Path, settings: Settings) -> None:
        await anyio.to_thread.run_sync(self._open, data_dir, settings, limiter=self._limiter)
        self._opened.set()

    def _open(self, data_dir: Path, settings: Settings) -> None:
        url = os.environ.get("DATABASE_URL") or None
        sqlite_path = data_dir / "bot.sqlite3"
        where = describe_url(url) if url else str(sqlite_path)
        db = open_database(
            url,
            sqlite_path,
            synchronous=settings.sqlite_synchronous,
            busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        )
        store = Store(db)
        try:
            before, after = store.open()
        except Exception:
            logger.error("cannot open the database at {}", where)
            store.close()
            raise
        self.store = store
        self.journal = Journal(
            data_dir / "journal",
            int(settings.journal_max_mb * 1024 * 1024),
            settings.journal_fsync,
        )
        logger.info(
            "database at {} (schema v{} -> v{}); journal {}",
            where,
            before,
            after,
            self.journal.path,
        )

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._close, limiter=self._limiter)

    def _close(self) -> None:
        journal, store, self.journal, self.store = self.journal, self.store, None, None
        if journal is not None:
            journal.close()
        if store is not None:
            store.close()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the worker once the database is open."""
        await self._opened.wait()
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def write(self, events: list[Message]) -> None:
        """Journal, commit, return: the runtime acknowledges after this."""
        try:
            await self.run(self._write, events)
        except DatabaseUnavailable as exc:
            raise TransientError(f"database unavailable: {exc}") from exc
        except OSError as exc:  # the journal's disk (full, read-only): nothing stored yet
            logger.error("journal write failed: {!r}", exc)
            raise TransientError(f"journal unavailable: {exc}") from exc

    def _write(self, events: list[Message]) -> None:
        if self.store is None or self.journal is None:  # stopping: not acked, redelivered
            raise DatabaseUnavailable("the service is stopping")
        type_name = events[0].TYPE
        self.journal.append(type_name, [e.to_body() for e in events], self.clock.wall())
        result = self.store.apply(type_name, events)
        if result.skipped:
            logger.warning("{}: {} stored, {} skipped", type_name, result.stored, result.skipped)

    async def kv_set(self, req: KvSet) -> bool:
        return await self.run(self._kv_set, req)

    def _kv_set(self, req: KvSet) -> bool:
        if self.store is None or self.journal is None:
            raise DatabaseUnavailable("the service is stopping")
        self.journal.append(KvSet.TYPE, [req.to_body()], self.clock.wall())
        return self.store.kv_set(req)

    def queries(self) -> Store:
        if self.store is None:
            raise DatabaseUnavailable("the service is stopping")
        return self.store


def build(clock: Clock | None = None) -> tuple[Service, Persistence]:
    """The service and its state, fresh (tests run several in one process)."""
    service = Service("persistence", Settings, clock)
    p = Persistence(service.clock)

    @service.setup
    async def open_store() -> None:
        assert service.ctx is not None
        await p.open(service.ctx.data_dir, service.settings)

    @service.teardown
    async def close_store() -> None:
        await p.close()

    # --- what it listens to: every stored event type, in batches ----------------------

    async def store_events(events: list[Message]) -> None:
        await p.write(events)
        if isinstance(events[0], MessageCreated):  # the supervisor exports it as a metric
            figures = service.figures
            figures["messages_stored_total"] = figures.get("messages_stored_total", 0) + len(events)

    for msg_type in STORED_EVENTS:
        service.event(msg_type, batch=True)(store_events)

    # --- what it answers ------------------------------------------------------------

    @service.request(RecentMessages)
    async def recent_messages(req: RecentMessages) -> StoredMessages:
        rows = await p.run(
            lambda: p.queries().recent_messages(
                req.channel_id, req.limit, req.before_id, req.after_ts
            )
        )
        return StoredMessages(rows)

    @service.request(ReplyChain)
    async def reply_chain(req: ReplyChain) -> StoredMessages:
        return StoredMessages(
            await p.run(lambda: p.queries().reply_chain(req.message_id, req.limit))
        )

    @service.request(MemberEvents)
    async def member_events(req: MemberEvents) -> MemberEventList:
        return await p.run(lambda: p.queries().member_events(req.guild_id, req.since, req.until))

    @service.request(StoreCounts)
    async def counts(_: StoreCounts) -> Counts:
        return await p.run(lambda: p.queries().counts())

    @service.request(KvGet)
    async def kv_get(req: KvGet) -> KvValue:
        return KvValue(await p.run(lambda: p.queries().kv_get(req.namespace, req.key)))

    @service.request(KvSet)
    async def kv_set(req: KvSet) -> KvStored:
        return KvStored(await p.kv_set(req))

    @service.request(UsageRequest)
    async def usage(req: UsageRequest) -> Usage:
        return await p.run(lambda: p.queries().usage(req.since, req.guild_id))

    return service, p
