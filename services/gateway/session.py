"""What the gateway keeps on disk so its successor can RESUME the same Discord session.

The authoritative position (session id, sequence number) is written into the
gateway's outbox in the same transaction as the events up to it, so a RESUME
replays exactly what was not stored. This file carries the rest: the guild state
(py-cord's cache is empty after such a resume) and a copy of the position.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
from loguru import logger


@dataclass
class SavedSession:
    session_id: str
    seq: int
    resume_url: str | None = None
    bot_user_id: str | None = None
    guilds: list[dict[str, Any]] = field(default_factory=list)


class SessionFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> SavedSession | None:
        try:
            data = json.loads(self.path.read_text())
            return SavedSession(
                str(data["session_id"]),
                int(data["seq"]),
                data.get("resume_url"),
                data.get("bot_user_id"),
                list(data.get("guilds", [])),
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable {} ({}): a fresh IDENTIFY follows", self.path, exc)
            return None

    def _write(self, session: SavedSession) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(session.__dict__))
        os.replace(tmp, self.path)  # atomic: a crash leaves the old or the new file

    async def save(self, session: SavedSession) -> None:
        await anyio.to_thread.run_sync(self._write, session)
