"""A small service for backbone tests: answers pings, misbehaves on request,
and stores durable `test.item` events in SQLite exactly once."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field

from protocol.clock import Clock
from protocol.messages import Done
from protocol.runtime import Service
from protocol.settings import ServiceSettings, setting
from tests.support.services.messages import Count, Counted, Item, Misbehave, Note


@dataclass(frozen=True)
class Settings(ServiceSettings):
    label: str = setting("")  # answered with every count: shows a live reload
    slow_start_s: float = setting(0.0, min=0, live=False)


@dataclass
class Echo:
    db: sqlite3.Connection | None = None
    ballast: list[bytearray] = field(default_factory=list)
    notes: list[int] = field(default_factory=list)


def build(clock: Clock | None = None) -> tuple[Service, Echo]:
    service = Service("echo", Settings, clock)
    state = Echo()

    @service.setup
    async def open_store() -> None:
        assert service.ctx is not None
        state.db = sqlite3.connect(service.ctx.data_dir / f"{service.ctx.name}-items.sqlite3")
        state.db.execute("CREATE TABLE IF NOT EXISTS item (n INTEGER PRIMARY KEY, handled INTEGER)")

    @service.event(Item, batch=True)
    async def store(items: list[Item]) -> None:
        # Idempotent: a redelivered item bumps `handled` instead of adding a row, so tests
        # can see both that redelivery happened and that nothing was stored twice.
        assert state.db is not None
        with state.db:
            state.db.executemany(
                "INSERT INTO item VALUES (?, 1) ON CONFLICT(n) DO UPDATE SET handled = handled + 1",
                [(i.n,) for i in items],
            )

    @service.event(Note)
    async def note(msg: Note) -> None:
        state.notes.append(msg.n)

    @service.request(Count)
    async def count(_: Count) -> Counted:
        assert state.db is not None
        rows, handled = state.db.execute(
            "SELECT count(*), coalesce(sum(handled), 0) FROM item"
        ).fetchone()
        return Counted(rows, handled, len(state.notes), service.settings.label)

    @service.request(Misbehave)
    async def misbehave(msg: Misbehave) -> Done:
        if msg.how == "crash":
            os._exit(3)
        if msg.how == "crash_once":  # the first process asked dies; its successor answers
            assert service.ctx is not None
            marker = service.ctx.data_dir / f"{service.ctx.name}-crashed-once"
            if not marker.exists():
                marker.touch()
                os._exit(3)
        if msg.how == "hang":
            time.sleep(3600)  # noqa: ASYNC251 - deliberately blocks the loop: heartbeats stop
        if msg.how == "grow":
            state.ballast.append(bytearray(msg.mb * 1024 * 1024))
            for b in state.ballast:
                b[::4096] = b"\x01" * len(b[::4096])  # touch the pages so RSS grows
        return Done()

    return service, state
