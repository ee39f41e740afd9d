"""The persistence service's settings: `[services.persistence.settings]`.

All of them apply when the database and the journal are opened, at start: a reload
names them as waiting for a restart. DATABASE_URL in the environment (any peewee
database URL) chooses the database; without it, SQLite at DATA_DIR/bot.sqlite3.
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
