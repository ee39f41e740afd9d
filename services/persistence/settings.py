"""The persistence service's settings: `[services.persistence.settings]`.

The database and journal settings apply when they are opened, at start: a reload names
them as waiting for a restart; `storage_alert_after_s` and `sqlite_max_pages` apply
live. DATABASE_URL in the environment (any peewee database URL) chooses the database;
without it, SQLite at DATA_DIR/bot.sqlite3.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.settings import ServiceSettings, setting
from services.persistence.store import SQLITE_SYNCHRONOUS


def _synchronous(value: str) -> tuple[str, str] | None:
    if value.upper() in SQLITE_SYNCHRONOUS:
        return None
    return f"unknown PRAGMA synchronous {value!r}", "use one of " + ", ".join(SQLITE_SYNCHRONOUS)


@dataclass(frozen=True)
class Settings(ServiceSettings):
    journal_max_mb: float = setting(64.0, min=0.01, live=False)  # size before rotating
    journal_fsync: bool = setting(False, live=False)  # fsync the journal after each batch
    sqlite_synchronous: str = setting("NORMAL", check=_synchronous, live=False)
    # How long a write waits for a lock before its batch is refused for now (redelivered).
    sqlite_busy_timeout_ms: int = setting(5000, min=0, live=False)
    # Writes failing this long (full disk, database down) is an incident (`store.health`,
    # an alert); it is over once writes work and none has failed for as long. Keep it
    # above the senders' longest retransmit interval (5 s).
    storage_alert_after_s: float = setting(10.0, min=0)
    # A quota on the SQLite file, in pages (4 KiB): writes beyond it fail as on a full
    # disk. The tests use it to fill the "disk"; None: no quota but SQLite's own.
    sqlite_max_pages: int | None = setting(None, min=1)
