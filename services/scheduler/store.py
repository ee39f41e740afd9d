"""What the scheduler has scheduled, on disk: its own SQLite file in the data dir.

Reminders, polls (and their votes), scheduled events (and who is interested), each
person's time zone, the bot's DM channels, and the claims that make each post happen
once (protocol/once.py): one file, `DATA_DIR/scheduler.sqlite3`, written in WAL mode
with synchronous=FULL, so anything a command answered "scheduled" for survives a
SIGKILL of any process (or a power cut) and fires on time, or late when the bot was down.

`Store` is synchronous and used from one worker thread at a time: the service wraps it
in `Database`, which runs every call in a thread behind a lock (no SQLite call blocks
the event loop).
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS reminders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    channel_id TEXT,
    guild_id TEXT,
    text TEXT NOT NULL,
    due_at REAL NOT NULL,
    repeat TEXT,                         -- Repeat.to_json(), or NULL
    private INTEGER NOT NULL DEFAULT 0,  -- by DM
    tz TEXT NOT NULL,                    -- the time zone its time was read in
    created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'active',   -- active | done | cancelled | failed
    first_try_at REAL,                   -- when this occurrence was first tried
    late INTEGER NOT NULL DEFAULT 0,     -- this occurrence says it is late
    refusals INTEGER NOT NULL DEFAULT 0  -- times Discord refused this occurrence
);
CREATE INDEX IF NOT EXISTS reminders_due ON reminders (state, due_at);
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS timezones (user_id TEXT PRIMARY KEY, tz TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dm_channels (user_id TEXT PRIMARY KEY, channel_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS polls (
    message_id TEXT PRIMARY KEY,
    channel_id TEXT NOT NULL,
    guild_id TEXT,
    creator_id TEXT NOT NULL,
    question TEXT NOT NULL,
    answers TEXT NOT NULL,               -- JSON [[answer_id, text], ...]
    multiple INTEGER NOT NULL DEFAULT 0,
    ends_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'open',  -- open | reported | failed
    refusals INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS votes (
    message_id TEXT NOT NULL,
    answer_id INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (message_id, answer_id, user_id)
);
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    guild_id TEXT,
    channel_id TEXT,                     -- where /event was run (reminders go there)
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    location TEXT NOT NULL DEFAULT '',
    start REAL NOT NULL,
    end REAL,
    status TEXT NOT NULL DEFAULT 'scheduled',
    creator_id TEXT,
    reminded_start REAL,                 -- the start its reminder was sent for
    refusals INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS interest (
    event_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (event_id, user_id)
);
"""


@dataclass
class Reminder:
    id: int
    user_id: str
    channel_id: str | None
    guild_id: str | None
    text: str
    due_at: float
    repeat: dict[str, Any] | None
    private: bool
    tz: str
    created_at: float
    state: str
    first_try_at: float | None
    late: bool
    refusals: int


@dataclass
class Poll:
    message_id: str
    channel_id: str
    guild_id: str | None
    creator_id: str
    question: str
    answers: list[tuple[int, str]]
    multiple: bool
    ends_at: float
    state: str
    refusals: int


@dataclass
class Event:
    event_id: str
    guild_id: str | None
    channel_id: str | None
    name: str
    description: str
    location: str
    start: float
    end: float | None
    status: str
    creator_id: str | None
    reminded_start: float | None
    refusals: int


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- claims (protocol/once.py's key-value store) -----------------------------------

    def claim_get(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM claims WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row["value"])

    def claim_set(self, key: str, value: Any, only_if_absent: bool) -> bool:
        verb = "INSERT OR IGNORE" if only_if_absent else "INSERT OR REPLACE"
        cur = self.db.execute(
            f"{verb} INTO claims (key, value) VALUES (?, ?)", (key, json.dumps(value))
        )
        return cur.rowcount == 1

    # --- reminders ---------------------------------------------------------------------

    def add_reminder(
        self,
        user_id: str,
        channel_id: str | None,
        guild_id: str | None,
        text: str,
        due_at: float,
        repeat: dict[str, Any] | None,
        private: bool,
        tz: str,
        now: float,
    ) -> int:
        cur = self.db.execute(
            "INSERT INTO reminders (user_id, channel_id, guild_id, text, due_at, repeat, private,"
            " tz, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                user_id,
                channel_id,
                guild_id,
                text,
                due_at,
                json.dumps(repeat) if repeat else None,
                int(private),
                tz,
                now,
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def reminder(self, reminder_id: int) -> Reminder | None:
        row = self.db.execute("SELECT * FROM reminders WHERE id = ?", (reminder_id,)).fetchone()
        return None if row is None else _reminder(row)

    def active_reminders(self, user_id: str | None = None) -> list[Reminder]:
        sql, args = "SELECT * FROM reminders WHERE state = 'active'", ()
        if user_id is not None:
            sql, args = sql + " AND user_id = ?", (user_id,)
        return [_reminder(r) for r in self.db.execute(sql + " ORDER BY due_at, id", args)]

    def due_reminders(self, now: float) -> list[Reminder]:
        rows = self.db.execute(
            "SELECT * FROM reminders WHERE state = 'active' AND due_at <= ? ORDER BY due_at, id",
            (now,),
        )
        return [_reminder(r) for r in rows]

    def next_reminder_at(self) -> float | None:
        row = self.db.execute("SELECT MIN(due_at) FROM reminders WHERE state = 'active'").fetchone()
        return row[0]

    def start_occurrence(self, reminder_id: int, first_try_at: float, late: bool) -> None:
        self.db.execute(
            "UPDATE reminders SET first_try_at = ?, late = ? WHERE id = ? AND first_try_at IS NULL",
            (first_try_at, int(late), reminder_id),
        )

    def reminder_delivered(self, reminder_id: int, next_due: float | None) -> None:
        """Done for good, or on to the next occurrence of a repeat."""
        if next_due is None:
            self.db.execute("UPDATE reminders SET state = 'done' WHERE id = ?", (reminder_id,))
        else:
            self.db.execute(
                "UPDATE reminders SET due_at = ?, first_try_at = NULL, late = 0, refusals = 0"
                " WHERE id = ?",
                (next_due, reminder_id),
            )

    def reminder_refused(self, reminder_id: int, give_up_after: int) -> bool:
        """Count a refusal; True (and the reminder failed) once there were too many."""
        self.db.execute("UPDATE reminders SET refusals = refusals + 1 WHERE id = ?", (reminder_id,))
        cur = self.db.execute(
            "UPDATE reminders SET state = 'failed' WHERE id = ? AND refusals >= ?",
            (reminder_id, give_up_after),
        )
        return cur.rowcount == 1

    def cancel_reminder(self, reminder_id: int, user_id: str) -> Reminder | None:
        found = self.reminder(reminder_id)
        if found is None or found.user_id != user_id or found.state != "active":
            return None
        self.db.execute("UPDATE reminders SET state = 'cancelled' WHERE id = ?", (reminder_id,))
        return found

    # --- time zones and DM channels ----------------------------------------------------

    def timezone(self, user_id: str) -> str | None:
        row = self.db.execute("SELECT tz FROM timezones WHERE user_id = ?", (user_id,)).fetchone()
        return None if row is None else str(row["tz"])

    def set_timezone(self, user_id: str, tz: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO timezones (user_id, tz) VALUES (?, ?)", (user_id, tz)
        )

    def dm_channel(self, user_id: str) -> str | None:
        row = self.db.execute(
            "SELECT channel_id FROM dm_channels WHERE user_id = ?", (user_id,)
        ).fetchone()
        return None if row is None else str(row["channel_id"])

    def set_dm_channel(self, user_id: str, channel_id: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO dm_channels (user_id, channel_id) VALUES (?, ?)",
            (user_id, channel_id),
        )

    # --- polls -------------------------------------------------------------------------

    def add_poll(self, poll: Poll) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO polls (message_id, channel_id, guild_id, creator_id, question,"
            " answers, multiple, ends_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                poll.message_id,
                poll.channel_id,
                poll.guild_id,
                poll.creator_id,
                poll.question,
                json.dumps(poll.answers),
                int(poll.multiple),
                poll.ends_at,
            ),
        )

    def poll(self, message_id: str) -> Poll | None:
        row = self.db.execute("SELECT * FROM polls WHERE message_id = ?", (message_id,)).fetchone()
        return None if row is None else _poll(row)

    def open_polls(self, channel_id: str) -> list[Poll]:
        rows = self.db.execute(
            "SELECT * FROM polls WHERE state = 'open' AND channel_id = ? ORDER BY ends_at",
            (channel_id,),
        )
        return [_poll(r) for r in rows]

    def due_polls(self, now: float) -> list[Poll]:
        rows = self.db.execute(
            "SELECT * FROM polls WHERE state = 'open' AND ends_at <= ? ORDER BY ends_at", (now,)
        )
        return [_poll(r) for r in rows]

    def next_poll_end(self) -> float | None:
        return self.db.execute("SELECT MIN(ends_at) FROM polls WHERE state = 'open'").fetchone()[0]

    def poll_ended(self, message_id: str, at: float) -> None:
        self.db.execute(
            "UPDATE polls SET ends_at = MIN(ends_at, ?) WHERE message_id = ?", (at, message_id)
        )

    def poll_reported(self, message_id: str, state: str = "reported") -> None:
        self.db.execute("UPDATE polls SET state = ? WHERE message_id = ?", (state, message_id))

    def poll_refused(self, message_id: str, give_up_after: int) -> bool:
        self.db.execute(
            "UPDATE polls SET refusals = refusals + 1 WHERE message_id = ?", (message_id,)
        )
        cur = self.db.execute(
            "UPDATE polls SET state = 'failed' WHERE message_id = ? AND refusals >= ?",
            (message_id, give_up_after),
        )
        return cur.rowcount == 1

    def vote(self, message_id: str, answer_id: int, user_id: str, added: bool) -> None:
        if added:
            self.db.execute(
                "INSERT OR IGNORE INTO votes (message_id, answer_id, user_id) VALUES (?, ?, ?)",
                (message_id, answer_id, user_id),
            )
        else:
            self.db.execute(
                "DELETE FROM votes WHERE message_id = ? AND answer_id = ? AND user_id = ?",
                (message_id, answer_id, user_id),
            )

    def votes(self, message_id: str) -> dict[str, list[str]]:
        """The stored tally: answer id (as a string) -> user ids."""
        out: dict[str, list[str]] = {}
        rows = self.db.execute(
            "SELECT answer_id, user_id FROM votes WHERE message_id = ? ORDER BY user_id",
            (message_id,),
        )
        for row in rows:
            out.setdefault(str(row["answer_id"]), []).append(str(row["user_id"]))
        return out

    # --- scheduled events --------------------------------------------------------------

    def upsert_event(self, event: dict[str, Any], channel_id: str | None = None) -> None:
        """An event as Discord describes it (ScheduledEventList's dict); keeps the channel
        it was made in and whether its reminder went out."""
        self.db.execute(
            "INSERT INTO events (event_id, guild_id, channel_id, name, description, location,"
            " start, end, status, creator_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (event_id) DO UPDATE SET name = excluded.name,"
            " description = excluded.description, location = excluded.location,"
            " start = excluded.start, end = excluded.end, status = excluded.status,"
            " channel_id = COALESCE(events.channel_id, excluded.channel_id)",
            (
                event["id"],
                event.get("guild_id"),
                channel_id,
                event.get("name") or "",
                event.get("description") or "",
                event.get("location") or "",
                float(event["start"]),
                event.get("end"),
                event.get("status") or "scheduled",
                event.get("creator_id"),
            ),
        )

    def delete_event(self, event_id: str) -> None:
        self.db.execute("DELETE FROM events WHERE event_id = ?", (event_id,))
        self.db.execute("DELETE FROM interest WHERE event_id = ?", (event_id,))

    def replace_events(self, guild_id: str, events: list[dict[str, Any]]) -> None:
        """Discord's list is the truth: what is not in it any more was deleted."""
        for event in events:
            self.upsert_event(event)
        known = {e["id"] for e in events}
        rows = self.db.execute("SELECT event_id FROM events WHERE guild_id = ?", (guild_id,))
        for row in list(rows):
            if row["event_id"] not in known:
                self.delete_event(row["event_id"])

    def events(self) -> list[Event]:
        rows = self.db.execute("SELECT * FROM events ORDER BY start, event_id")
        return [_event(r) for r in rows]

    def event_reminded(self, event_id: str, start: float) -> None:
        self.db.execute(
            "UPDATE events SET reminded_start = ?, refusals = 0 WHERE event_id = ?",
            (start, event_id),
        )

    def event_refused(self, event_id: str, give_up_after: int) -> bool:
        self.db.execute("UPDATE events SET refusals = refusals + 1 WHERE event_id = ?", (event_id,))
        row = self.db.execute(
            "SELECT refusals, start FROM events WHERE event_id = ?", (event_id,)
        ).fetchone()
        if row is not None and row["refusals"] >= give_up_after:
            self.event_reminded(event_id, row["start"])
            return True
        return False

    def set_interest(self, event_id: str, user_id: str, interested: bool) -> None:
        if interested:
            self.db.execute(
                "INSERT OR IGNORE INTO interest (event_id, user_id) VALUES (?, ?)",
                (event_id, user_id),
            )
        else:
            self.db.execute(
                "DELETE FROM interest WHERE event_id = ? AND user_id = ?", (event_id, user_id)
            )

    def interested(self, event_id: str) -> list[str]:
        rows = self.db.execute(
            "SELECT user_id FROM interest WHERE event_id = ? ORDER BY user_id", (event_id,)
        )
        return [str(r["user_id"]) for r in rows]


class Database:
    """The store, called from a worker thread, one call at a time."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = anyio.Lock()

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._lock:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args))


def _reminder(row: sqlite3.Row) -> Reminder:
    return Reminder(
        id=int(row["id"]),
        user_id=row["user_id"],
        channel_id=row["channel_id"],
        guild_id=row["guild_id"],
        text=row["text"],
        due_at=float(row["due_at"]),
        repeat=json.loads(row["repeat"]) if row["repeat"] else None,
        private=bool(row["private"]),
        tz=row["tz"],
        created_at=float(row["created_at"]),
        state=row["state"],
        first_try_at=row["first_try_at"],
        late=bool(row["late"]),
        refusals=int(row["refusals"]),
    )


def _poll(row: sqlite3.Row) -> Poll:
    return Poll(
        message_id=row["message_id"],
        channel_id=row["channel_id"],
        guild_id=row["guild_id"],
        creator_id=row["creator_id"],
        question=row["question"],
        answers=[(int(a), str(t)) for a, t in json.loads(row["answers"])],
        multiple=bool(row["multiple"]),
        ends_at=float(row["ends_at"]),
        state=row["state"],
        refusals=int(row["refusals"]),
    )


def _event(row: sqlite3.Row) -> Event:
    return Event(
        event_id=row["event_id"],
        guild_id=row["guild_id"],
        channel_id=row["channel_id"],
        name=row["name"],
        description=row["description"],
        location=row["location"],
        start=float(row["start"]),
        end=row["end"],
        status=row["status"],
        creator_id=row["creator_id"],
        reminded_start=row["reminded_start"],
        refusals=int(row["refusals"]),
    )
