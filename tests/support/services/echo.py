"""A small service for backbone tests: answers pings, misbehaves on request,
and stores durable `test.item` events in SQLite exactly once."""

from __future__ import annotations

import os
import sqlite3
import time

from protocol.runtime import Service
from tests.support.services.messages import Count, Item, Misbehave, Note

service = Service("echo")
_db: sqlite3.Connection | None = None
_ballast: list[bytes] = []
_notes: list[int] = []


@service.setup
async def open_store() -> None:
    global _db
    assert service.ctx is not None
    _db = sqlite3.connect(service.ctx.data_dir / f"{service.ctx.name}-items.sqlite3")
    _db.execute("CREATE TABLE IF NOT EXISTS item (n INTEGER PRIMARY KEY, handled INTEGER)")


@service.event(Item, batch=True)
async def store(items: list[Item]) -> None:
    # Idempotent: a redelivered item bumps `handled` instead of adding a row, so tests
    # can see both that redelivery happened and that nothing was stored twice.
    assert _db is not None
    with _db:
        _db.executemany(
            "INSERT INTO item VALUES (?, 1) ON CONFLICT(n) DO UPDATE SET handled = handled + 1",
            [(i.n,) for i in items],
        )


@service.event(Note)
async def note(msg: Note) -> None:
    _notes.append(msg.n)


@service.request(Count)
async def count(_: Count) -> dict:
    assert _db is not None
    rows, handled = _db.execute("SELECT count(*), coalesce(sum(handled), 0) FROM item").fetchone()
    return {"rows": rows, "handled": handled, "notes": len(_notes)}


@service.request(Misbehave)
async def misbehave(msg: Misbehave) -> dict:
    if msg.how == "crash":
        os._exit(3)
    if msg.how == "hang":
        time.sleep(3600)  # noqa: ASYNC251 - deliberately blocks the event loop: heartbeats stop
    if msg.how == "grow":
        _ballast.append(bytearray(msg.mb * 1024 * 1024))
        for b in _ballast:
            b[::4096] = b"\x01" * len(b[::4096])  # touch the pages so RSS grows
    return {"ok": True}
