"""The questions the llm has taken on and not yet answered, on disk.

A question (a mention, a reply to the bot, a DM, a conversation-channel message, an /ask)
is written here before the event or request that brought it is acknowledged, and marked
answered only once its answer is complete in Discord. A restarted llm resumes the open
ones. Each part of an answer is recorded as it is posted (its message id), so a resumed
answer edits the messages already there instead of posting them again; a crash between a
post and its record is covered by the part's nonce (`part_nonce`: Discord answers a
repeated nonce with the message already posted).

Answered questions are kept for a day (without their text): a redelivered event of one
(the gateway RESUMEd and Discord replayed it) is recognised and not answered twice.

SQLite (WAL, synchronous=NORMAL: it survives a killed process) in the data dir, owned by
the llm alone; every call runs on a worker thread, one at a time, never on the event loop.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from protocol.discord import nonce_for

T = TypeVar("T")

MESSAGE, ASK = "message", "ask"  # what a question came as: MessageCreated, CommandInvoked
KEEP_ANSWERED_S = 86_400.0  # longer than Discord replays a resumed session's events

_SCHEMA = """
CREATE TABLE IF NOT EXISTS question (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    body TEXT,                      -- the event or request, as on the bus; NULL once answered
    received_at REAL NOT NULL,      -- wall clock
    attempts INTEGER NOT NULL DEFAULT 1,
    parts TEXT NOT NULL DEFAULT '[]',  -- the message id of each part posted so far
    answered_at REAL
);
CREATE INDEX IF NOT EXISTS question_open ON question (answered_at);
"""


def part_nonce(question_id: str, part: int) -> str:
    """The nonce of one part of a question's answer: the same for every attempt at it,
    another for every other part or question."""
    return nonce_for("llm", question_id, part)


@dataclass(frozen=True)
class Question:
    id: str
    kind: str  # MESSAGE | ASK
    body: dict[str, Any]
    received_at: float
    attempts: int = 1  # this one included
    parts: list[str] = field(default_factory=list)


class PendingQuestions:
    """The llm's open questions; every method is async and runs on a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(1)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        def locked() -> T:
            with self._lock:
                return fn(*args)

        return await anyio.to_thread.run_sync(locked, limiter=self._limiter)

    # --- the synchronous bodies -----------------------------------------------------

    def _accept(self, q: Question) -> bool:
        cur = self._db.execute(
            "INSERT INTO question (id, kind, body, received_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(id) DO NOTHING",
            (q.id, q.kind, json.dumps(q.body), q.received_at),
        )
        return cur.rowcount == 1

    def _part_sent(self, question_id: str, index: int, message_id: str) -> None:
        row = self._db.execute("SELECT parts FROM question WHERE id=?", (question_id,)).fetchone()
        if row is None:
            return
        parts: list[str] = json.loads(row[0])
        if index < len(parts):
            parts[index] = message_id
        else:
            parts.append(message_id)
        self._db.execute("UPDATE question SET parts=? WHERE id=?", (json.dumps(parts), question_id))

    def _answered(self, question_id: str, at: float) -> None:
        self._db.execute(
            "UPDATE question SET body=NULL, answered_at=? WHERE id=?", (at, question_id)
        )

    def _resume(self) -> list[Question]:
        """The open questions, oldest first, each counted as attempted once more."""
        self._db.execute("BEGIN")
        try:
            self._db.execute("UPDATE question SET attempts=attempts+1 WHERE answered_at IS NULL")
            rows = self._db.execute(
                "SELECT id, kind, body, received_at, attempts, parts FROM question "
                "WHERE answered_at IS NULL ORDER BY received_at"
            ).fetchall()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return [
            Question(qid, kind, json.loads(body), at, attempts, json.loads(parts))
            for qid, kind, body, at, attempts, parts in rows
        ]

    def _forget_answered(self, before: float) -> int:
        cur = self._db.execute(
            "DELETE FROM question WHERE answered_at IS NOT NULL AND answered_at < ?", (before,)
        )
        return cur.rowcount

    # --- async API ------------------------------------------------------------------

    async def accept(self, question: Question) -> bool:
        """Record a question; False if it is already known (open, or answered)."""
        return await self._run(self._accept, question)

    async def part_sent(self, question_id: str, index: int, message_id: str) -> None:
        await self._run(self._part_sent, question_id, index, message_id)

    async def answered(self, question_id: str, at: float) -> None:
        """The answer is complete: the question is closed (its text is dropped)."""
        await self._run(self._answered, question_id, at)

    async def resume(self) -> list[Question]:
        """The open questions (a previous process took them on), oldest first."""
        return await self._run(self._resume)

    async def forget_answered(self, before: float) -> int:
        """Drop answered questions closed before `before` (wall clock); how many."""
        return await self._run(self._forget_answered, before)
