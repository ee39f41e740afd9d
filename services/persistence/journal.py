"""The append-only JSONL journal: the disaster copy of everything the service stored.

One line per event, `{"type", "body", "received_at"}`, in the order the database
saw them, in `journal-NNNNNN.jsonl` files rotated by size. Lines are written
before the database commit, so the journal holds at least what the database
holds (an event redelivered after a failed commit appears twice; replaying it is
idempotent). JSON is ASCII-escaped so that any string Python holds, even one
that is not valid UTF-8, round-trips.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from loguru import logger

FILE_RE = re.compile(r"^journal-(\d{6,})\.jsonl$")


def to_json(value: Any) -> str:
    """The one JSON encoding for the journal and JSON columns (so a replay stores the same
    text): bytes become base64 text, anything else unknown its str()."""
    return json.dumps(value, separators=(",", ":"), default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def journal_files(directory: Path) -> list[Path]:
    """The journal's files, oldest first (by number, not by name)."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := FILE_RE.match(p.name))]
    return [p for _, p in sorted(found)]


class Journal:
    """Appends batches of events; owned by the persistence worker thread."""

    def __init__(self, directory: Path, max_bytes: int, fsync: bool = False) -> None:
        self.directory = directory
        self.max_bytes = max(1, max_bytes)
        self.fsync = fsync
        directory.mkdir(parents=True, exist_ok=True)
        files = journal_files(directory)
        last = files[-1] if files else None
        self._number = int(FILE_RE.match(last.name).group(1)) if last else 1  # type: ignore[union-attr]
        self._file: IO[bytes] | None = None
        self._size = 0
        self._open(self._number)

    @property
    def path(self) -> Path:
        return self.directory / f"journal-{self._number:06d}.jsonl"

    def _open(self, number: int) -> None:
        self._number = number
        self._file = open(self.path, "ab")  # kept open; closed in close()
        self._size = self._file.tell()
        if self._size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            if torn:  # the last process died mid-line: start ours on a fresh line
                self._write(b"\n")

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._size += len(data)

    def _sync(self) -> None:
        assert self._file is not None
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def _rotate(self) -> None:
        self._sync()
        assert self._file is not None
        self._file.close()
        self._open(self._number + 1)
        logger.info("journal rotated to {}", self.path.name)

    def append(self, type_name: str, bodies: list[dict[str, Any]], received_at: float) -> None:
        """Write one line per body and flush once (fsync if configured)."""
        for body in bodies:
            line = to_json({"type": type_name, "body": body, "received_at": received_at})
            data = line.encode("ascii") + b"\n"
            if self._size and self._size + len(data) > self.max_bytes:
                self._rotate()
            self._write(data)
        self._sync()

    def close(self) -> None:
        if self._file is not None:
            self._sync()
            self._file.close()
            self._file = None


@dataclass(frozen=True)
class JournalRecord:
    type: str
    body: dict[str, Any]
    received_at: float
    source: str  # file:line, for log lines


def read_journal(directory: Path) -> Iterator[JournalRecord]:
    """Every record in order; a line that does not parse (a torn write) is logged and
    skipped."""
    for path in journal_files(directory):
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                    yield JournalRecord(
                        str(record["type"]),
                        dict(record["body"]),
                        float(record["received_at"]),
                        f"{path.name}:{number}",
                    )
                except (ValueError, KeyError, TypeError) as exc:
                    logger.warning("journal {}:{} unreadable, skipped: {}", path.name, number, exc)
