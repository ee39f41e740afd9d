"""The on-disk outbox for durable events: written before sending, deleted on ack.

One SQLite file per sending service, one sequence per channel (receiver). It
survives the receiver's restart (events stay until acknowledged) and the
sender's own (the next process replays from the file). Writes are group
commits on a worker thread, so the event loop never waits on the disk, and
concurrent appends, to any channels, share one transaction.

WAL with synchronous=NORMAL survives a killed process (the common failure
here); set `synchronous="FULL"` to survive power loss as well, at a cost.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS channel (name TEXT PRIMARY KEY, last_seq INTEGER NOT NULL,
                                    acked INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS event (channel TEXT NOT NULL, seq INTEGER NOT NULL,
                                  frame BLOB NOT NULL, PRIMARY KEY (channel, seq))
                                  WITHOUT ROWID;
"""


@dataclass
class _Pending:
    batches: list[tuple[str, list[bytes]]]
    meta: dict[str, str]
    lasts: list[int] | None = None
    done: anyio.Event = field(default_factory=anyio.Event)


class Outbox:
    """Durable queue of packed frames per channel. All methods are async and thread-backed."""

    def __init__(self, path: Path, synchronous: str = "NORMAL") -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
        if row is None:
            self.epoch = uuid.uuid4().hex[:12]
            self._db.execute("INSERT INTO meta VALUES ('epoch', ?)", (self.epoch,))
        else:
            self.epoch = row[0]
        self._waiting: list[_Pending] = []
        self._committing = False
        # sqlite3 connections are not safe for concurrent use; one worker at a time.
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(1)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, fn, *args):
        def locked():
            with self._lock:
                return fn(*args)

        return anyio.to_thread.run_sync(locked, limiter=self._limiter)

    # --- synchronous bodies, run on the worker thread -------------------------------

    def _state(self, channel: str) -> tuple[int, int]:
        row = self._db.execute(
            "SELECT last_seq, acked FROM channel WHERE name=?", (channel,)
        ).fetchone()
        return (row[0], row[1]) if row else (0, 0)

    def _append_all(
        self, batches: list[tuple[str, list[bytes]]], meta: dict[str, str] | None = None
    ) -> list[int]:
        """One transaction for every batch (and `meta`); the last sequence number of each."""
        lasts: dict[str, int] = {}
        result = []
        self._db.execute("BEGIN")
        try:
            for channel, frames in batches:
                if channel not in lasts:
                    lasts[channel] = self._state(channel)[0]
                first = lasts[channel] + 1
                self._db.executemany(
                    "INSERT INTO event VALUES (?, ?, ?)",
                    [(channel, first + i, f) for i, f in enumerate(frames)],
                )
                lasts[channel] += len(frames)
                result.append(lasts[channel])
            for channel, last in lasts.items():
                self._db.execute(
                    "INSERT INTO channel VALUES (?, ?, 0) "
                    "ON CONFLICT(name) DO UPDATE SET last_seq=?",
                    (channel, last, last),
                )
            for key, value in (meta or {}).items():
                self._db.execute(
                    "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=?",
                    (key, value, value),
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return result

    def _ack(self, channel: str, through: int) -> None:
        self._db.execute("BEGIN")
        self._db.execute("DELETE FROM event WHERE channel=? AND seq<=?", (channel, through))
        self._db.execute("UPDATE channel SET acked=max(acked, ?) WHERE name=?", (through, channel))
        self._db.execute("COMMIT")

    def _load(self, channel: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        return self._db.execute(
            "SELECT seq, frame FROM event WHERE channel=? AND seq>? ORDER BY seq LIMIT ?",
            (channel, after, limit),
        ).fetchall()

    def _pending_channels(self) -> list[str]:
        rows = self._db.execute("SELECT name FROM channel WHERE last_seq > acked").fetchall()
        return [r[0] for r in rows]

    # --- async API ------------------------------------------------------------------

    async def pending_channels(self) -> list[str]:
        """Receivers that still have unacknowledged events (replayed at start-up)."""
        return await self._run(self._pending_channels)

    async def state(self, channel: str) -> tuple[int, int]:
        """(last sequence written, highest sequence acknowledged) of a channel."""
        return await self._run(self._state, channel)

    async def append(self, channel: str, frames: list[bytes]) -> int:
        """Store frames in order; returns the sequence of the last one."""
        return (await self.append_many({channel: frames}))[channel]

    async def append_many(
        self, batches: dict[str, list[bytes]], meta: dict[str, str] | None = None
    ) -> dict[str, int]:
        """Store frames for several channels in one transaction; the last sequence of each.

        `meta` is written in the same transaction: a sender's own position (the gateway's
        Discord sequence number) is then on disk exactly when the events up to it are.

        Group commit: the first caller commits; callers arriving meanwhile join the next
        transaction, so concurrent publishers share a disk write. The commit is shielded
        from cancellation: a cancelled committer still finishes what others wait for.
        """
        pending = _Pending(list(batches.items()), meta or {})
        self._waiting.append(pending)
        if not self._committing:
            self._committing = True
            batch: list[_Pending] = []
            try:
                with anyio.CancelScope(shield=True):
                    while self._waiting:
                        batch, self._waiting = self._waiting, []
                        merged_meta = {k: v for p in batch for k, v in p.meta.items()}
                        lasts = await self._run(
                            self._append_all,
                            [item for p in batch for item in p.batches],
                            merged_meta,
                        )
                        for p in batch:
                            p.lasts, lasts = lasts[: len(p.batches)], lasts[len(p.batches) :]
                            p.done.set()
            finally:
                self._committing = False
                for p in [*batch, *self._waiting]:
                    p.done.set()  # on failure nobody waits for ever (lasts stays None)
        await pending.done.wait()
        if pending.lasts is None:
            raise RuntimeError("outbox commit failed")  # the committer raised the cause
        return {
            channel: last for (channel, _), last in zip(pending.batches, pending.lasts, strict=True)
        }

    def _get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    async def get_meta(self, key: str) -> str | None:
        return await self._run(self._get_meta, key)

    async def ack(self, channel: str, through: int) -> None:
        await self._run(self._ack, channel, through)

    async def load(self, channel: str, after: int, limit: int = 1000) -> list[tuple[int, bytes]]:
        return await self._run(self._load, channel, after, limit)
