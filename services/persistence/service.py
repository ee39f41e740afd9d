"""The persistence service: stores what the gateway and the llm service publish, and
answers the queries of protocol/store.py.

A batch of events (up to 500 of one type, handed over by the runtime) is appended to
the journal, committed to the database in one transaction, and only then does the
handler return, after which the runtime acknowledges it. A database that cannot be
used right now (locked, full, restarting) raises TransientError, so the sender keeps
the events in its outbox and redelivers them later; a redelivered batch is journaled
once, not at every attempt. Whether writes work is published as `store.health`
(health.py): the heartbeat alerts when they have failed for `storage_alert_after_s`,
and says so again when they work. Queries the database cannot answer right now are
refused as "unavailable". All file and database work runs on a worker thread, one call
at a time over one connection, never on the event loop.

Settings: settings.py. Environment: DATABASE_URL, any peewee database URL (default:
SQLite at DATA_DIR/bot.sqlite3).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
from loguru import logger

from protocol.clock import Clock
from protocol.discord import MessageCreated
from protocol.messages import Message
from protocol.runtime import Refused, Service, TransientError
from protocol.store import (
    STORE,
    Counts,
    KvGet,
    KvSet,
    KvStored,
    KvValue,
    MemberEventList,
    MemberEvents,
    NewestMessages,
    NewestStored,
    RecentMessages,
    ReplyChain,
    StorageHealth,
    StoreCounts,
    StoredMessages,
    Usage,
    UsageRequest,
)
from services.persistence.health import StorageWatch
from services.persistence.journal import Journal, to_json
from services.persistence.settings import Settings
from services.persistence.store import DatabaseUnavailable, Store, describe_url, open_database

STORED_EVENTS: tuple[type[Message], ...] = tuple(Store.WRITERS)
T = TypeVar("T")
WATCH_INTERVAL_S = 0.5
MAX_UNSTORED = 1_000_000  # keys of journaled, refused events remembered (8 bytes each)


class Stopping(DatabaseUnavailable):
    """The store is closed: events are refused, to be redelivered to the next process."""


class Persistence:
    """The store and the journal, and the worker thread they run on (one call at a time)."""

    def __init__(
        self,
        clock: Clock,
        publish: Callable[[StorageHealth], Awaitable[object]] | None = None,
    ) -> None:
        self.clock = clock
        self.publish = publish
        self.store: Store | None = None
        self.journal: Journal | None = None
        self.watch = StorageWatch(clock.monotonic, clock.wall)
        self._told_failing = False
        self._max_pages: int | None = None
        self._max_pages_applied: int | None = None
        # Journaled but refused by the database: not journaled again when redelivered.
        self._unstored: set[int] = set()
        self._limiter = anyio.CapacityLimiter(1)
        # The bus is up before setup has opened the database: early events wait for it.
        self._opened = anyio.Event()

    def configure(self, settings: Settings) -> None:
        """At start and on each reload."""
        self.watch.window_s = settings.storage_alert_after_s
        self._max_pages = settings.sqlite_max_pages

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

    async def query(self, fn: Callable[[], T]) -> T:
        """A query's answer, or a refusal the caller can act on if the database cannot
        answer right now (no traceback in the log: that is not a bug)."""
        try:
            return await self.run(fn)
        except DatabaseUnavailable as exc:
            raise Refused("unavailable", f"database unavailable: {exc}") from None

    async def write(self, events: list[Message]) -> None:
        """Journal, commit, return: the runtime acknowledges after this."""
        await self._writing(self._write, events)

    async def kv_set(self, req: KvSet) -> bool:
        try:
            return await self._writing(self._kv_set, req)
        except TransientError as exc:
            raise Refused("unavailable", str(exc)) from None

    async def _writing(self, fn: Callable[[Any], T], arg: Any) -> T:
        """Run a write; what its outcome says about the storage goes to the watch."""
        try:
            result = await self.run(fn, arg)
        except Stopping as exc:
            raise TransientError(str(exc)) from exc
        except DatabaseUnavailable as exc:
            await self._tell(self.watch.failed(str(exc)))
            raise TransientError(f"database unavailable: {exc}") from exc
        except OSError as exc:  # the journal's disk (full, read-only): nothing stored yet
            if self.watch.failing_since is None:
                logger.error("journal write failed: {!r}", exc)
            await self._tell(self.watch.failed(f"journal: {exc}"))
            raise TransientError(f"journal unavailable: {exc}") from exc
        await self._tell(self.watch.succeeded())
        return result

    async def watch_storage(self) -> None:
        """A recovery is known by time passing without failures: look now and then."""
        while True:
            await self.clock.sleep(WATCH_INTERVAL_S)
            await self._tell(self.watch.poll())

    async def _tell(self, health: StorageHealth | None) -> None:
        if health is None:
            return
        if health.ok and self._told_failing:
            logger.warning("storage writes again")
        elif not health.ok:
            logger.error(
                "storage refuses writes ({}) for {:.0f} s: the events wait in their senders' "
                "outboxes",
                health.detail,
                self.clock.wall() - health.since,
            )
        self._told_failing = not health.ok
        if self.publish is not None:
            await self.publish(health)

    def _ready(self) -> tuple[Store, Journal]:
        if self.store is None or self.journal is None:  # stopping: not acked, redelivered
            raise Stopping("the service is stopping")
        if self._max_pages != self._max_pages_applied:
            self.store.limit_pages(self._max_pages)
            self._max_pages_applied = self._max_pages
        return self.store, self.journal

    @staticmethod
    def _key(type_name: str, body: dict[str, Any]) -> int:
        return hash((type_name, to_json(body)))

    def _journal_once(self, journal: Journal, type_name: str, bodies: list[dict[str, Any]]) -> None:
        """Journal the bodies not journaled already by a refused attempt. (Keys are only
        computed while something was refused: the usual write serialises each body once.)"""
        if self._unstored:
            bodies = [b for b in bodies if self._key(type_name, b) not in self._unstored]
        if bodies:
            journal.append(type_name, bodies, self.clock.wall())

    def _committing(
        self, type_name: str, bodies: list[dict[str, Any]], commit: Callable[[], T]
    ) -> T:
        try:
            result = commit()
        except DatabaseUnavailable:
            if len(self._unstored) > MAX_UNSTORED:
                self._unstored.clear()  # at worst, lines journaled twice: replay is idempotent
            self._unstored.update(self._key(type_name, b) for b in bodies)
            raise
        if self._unstored:
            self._unstored.difference_update(self._key(type_name, b) for b in bodies)
        return result

    def _write(self, events: list[Message]) -> None:
        store, journal = self._ready()
        type_name = events[0].TYPE
        bodies = [e.to_body() for e in events]
        self._journal_once(journal, type_name, bodies)
        result = self._committing(type_name, bodies, lambda: store.apply(type_name, events))
        if result.skipped:
            logger.warning("{}: {} stored, {} skipped", type_name, result.stored, result.skipped)

    def _kv_set(self, req: KvSet) -> bool:
        store, journal = self._ready()
        bodies = [req.to_body()]
        self._journal_once(journal, KvSet.TYPE, bodies)
        return self._committing(KvSet.TYPE, bodies, lambda: store.kv_set(req))

    def queries(self) -> Store:
        if self.store is None:
            raise DatabaseUnavailable("the service is stopping")
        return self.store


def build(clock: Clock | None = None) -> tuple[Service, Persistence]:
    """The service and its state, fresh (tests run several in one process)."""
    service = Service(STORE, Settings, clock)
    p = Persistence(service.clock, service.publish)
    service.on_settings(p.configure)

    @service.setup
    async def open_store() -> None:
        assert service.ctx is not None
        await p.open(service.ctx.data_dir, service.settings)

    @service.teardown
    async def close_store() -> None:
        await p.close()

    service.task(p.watch_storage)

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
        rows = await p.query(
            lambda: p.queries().recent_messages(
                req.channel_id, req.limit, req.before_id, req.after_ts
            )
        )
        return StoredMessages(rows)

    @service.request(ReplyChain)
    async def reply_chain(req: ReplyChain) -> StoredMessages:
        return StoredMessages(
            await p.query(lambda: p.queries().reply_chain(req.message_id, req.limit))
        )

    @service.request(NewestMessages)
    async def newest_messages(req: NewestMessages) -> NewestStored:
        return await p.run(lambda: p.queries().newest_messages(req.below))

    @service.request(MemberEvents)
    async def member_events(req: MemberEvents) -> MemberEventList:
        return await p.query(lambda: p.queries().member_events(req.guild_id, req.since, req.until))

    @service.request(StoreCounts)
    async def counts(_: StoreCounts) -> Counts:
        return await p.query(lambda: p.queries().counts())

    @service.request(KvGet)
    async def kv_get(req: KvGet) -> KvValue:
        return KvValue(await p.query(lambda: p.queries().kv_get(req.namespace, req.key)))

    @service.request(KvSet)
    async def kv_set(req: KvSet) -> KvStored:
        return KvStored(await p.kv_set(req))

    @service.request(UsageRequest)
    async def usage(req: UsageRequest) -> Usage:
        return await p.query(lambda: p.queries().usage(req.since, req.guild_id))

    return service, p
