"""Streaming an answer into Discord: one message edited in place, more when it grows.

`split_message` cuts text below Discord's 2,000 characters at line boundaries, closing a
``` block at the cut and reopening it (same language) in the next part. It is greedy
from the start, so every part but the last is final as soon as a later one exists: the
streamer can finish a message and move on without ever rewriting an earlier one.

`Pacer` spaces the writes (sends and edits) to one channel, shared by every answer in
that channel: Discord allows about 5 per 5 s. `ReplyStreamer` writes the newest text
whenever the pacer gives it a turn, so tokens that arrive meanwhile coalesce into one
edit, and it always ends with the full text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import anyio
from loguru import logger

FENCE = "```"


def _break_long_line(line: str, width: int) -> list[str]:
    """A line wider than a message, cut at the last space that fits (else hard)."""
    pieces: list[str] = []
    while len(line) > width:
        cut = line.rfind(" ", 0, width)
        cut = cut + 1 if cut > width // 2 else width
        pieces.append(line[:cut])
        line = line[cut:]
    pieces.append(line)
    return pieces


def _opening(line: str) -> str:
    """The fence to reopen a block with: its opening line (```python) when plain."""
    stripped = line.strip()
    plain = stripped.startswith(FENCE) and stripped.count(FENCE) == 1 and len(stripped) <= 20
    return stripped if plain else FENCE


def split_message(text: str, limit: int = 1900) -> list[str]:
    """Parts of at most `limit` characters (limit < 2000), never splitting a ``` block open.

    Whether a block is open is counted on the part itself, so odd runs of backticks
    cannot unbalance a part. Whether a line fits depends only on what only grows while an
    answer streams in (room for the closing fence is always kept, and a piece of a long
    line fits only if the rest of its line does), so a part followed by another is final.
    """
    width = max(limit - 100, 20)  # room for a reopened fence line and the closing one
    closing = len(FENCE) + 1
    lines: list[tuple[str, int]] = []  # (piece, length of its line from the piece on)
    for line in text.splitlines(keepends=True):
        rest = len(line)
        for piece in _break_long_line(line, width):
            lines.append((piece, rest))
            rest -= len(piece)
    parts: list[str] = []
    current = ""
    has_content = False  # more than the reopened fence line
    fence = FENCE  # the open block's opening line, while one is open
    for line, rest in lines:
        if has_content and len(current) + rest + closing > limit:
            is_open = current.count(FENCE) % 2 == 1
            if is_open:
                current = current if current.endswith("\n") else current + "\n"
                current += FENCE
            parts.append(current)
            current = fence + "\n" if is_open else ""
            has_content = False
        was_open = current.count(FENCE) % 2 == 1
        current += line
        has_content = True
        if not was_open and current.count(FENCE) % 2 == 1:
            fence = _opening(line)
    if has_content or not parts:
        parts.append(current)
    return [p.rstrip().lstrip("\n") for p in parts]


class Pacer:
    """At most one write per `interval_s` per key (a channel), in arrival order."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._next: dict[str, float] = {}

    async def turn(self, key: str) -> None:
        now = self._clock()
        if len(self._next) > 1000:
            self._next = {k: t for k, t in self._next.items() if t > now}
        slot = max(now, self._next.get(key, 0.0))
        self._next[key] = slot + self.interval_s
        if slot > now:
            await anyio.sleep(slot - now)


class Sink(Protocol):
    """Where the parts of one answer go (a channel, or an interaction's responses)."""

    async def send(self, index: int, content: str) -> bool: ...

    async def edit(self, index: int, content: str) -> bool: ...

    def editable(self, index: int) -> bool:
        """Whether part `index` can be edited after it is sent (else sent only when final)."""
        ...

    async def typing(self) -> None:
        """Show that an answer is coming (where that means something)."""
        ...


class ReplyStreamer:
    """Feeds text in; `run()` keeps Discord showing it, paced, until `finish()` and done."""

    MAX_WRITE_FAILURES = 5

    def __init__(
        self, sink: Sink, pacer: Pacer, key: str, limit: int = 1900, existing: int = 0
    ) -> None:
        self.sink = sink
        self.pacer = pacer
        self.key = key
        self.limit = limit
        self.text = ""
        # What each sent part currently shows. `existing` parts were posted by an earlier
        # attempt at this answer (the llm restarted): what they show is unknown, so they
        # are edited (where they can be), never posted again.
        self.shown: list[str | None] = [None] * existing
        self.writes = 0
        self.first_write = anyio.Event()
        self._finished = False
        self._changed = anyio.Event()
        self._failures = 0

    def feed(self, delta: str) -> None:
        if delta:
            self.text += delta
            self._changed.set()

    def finish(self, text: str | None = None) -> None:
        """No more text comes; `text` replaces what was streamed (e.g. with a failure note)."""
        if text is not None:
            self.text = text
        self._finished = True
        self._changed.set()

    @property
    def failures(self) -> int:
        """Writes that failed (the streamer gives up at MAX_WRITE_FAILURES)."""
        return self._failures

    @property
    def parts(self) -> list[str]:
        return split_message(self.text, self.limit)

    def _next_write(self) -> tuple[str, int, str] | None:
        parts = self.parts
        for i, part in enumerate(parts):
            final = self._finished or i < len(parts) - 1
            if i >= len(self.shown):
                if not part.strip():
                    return None  # nothing to show yet (or an empty tail)
                if final or self.sink.editable(i):
                    return ("send", i, part)
                return None
            if self.shown[i] != part and self.sink.editable(i):
                return ("edit", i, part)
        return None

    async def run(self) -> None:
        while True:
            await self._changed.wait()
            self._changed = anyio.Event()
            while self._next_write() is not None:
                await self.pacer.turn(self.key)
                write = self._next_write()  # the newest text, after the wait
                if write is None:
                    break
                await self._write(*write)
                if self._failures >= self.MAX_WRITE_FAILURES:
                    logger.warning("giving up writing to {}: {} failures", self.key, self._failures)
                    return
            if self._finished:
                return

    async def _write(self, kind: str, index: int, content: str) -> None:
        if kind == "send":
            ok = await self.sink.send(index, content)
            if ok:
                self.shown.append(content)
        else:
            ok = await self.sink.edit(index, content)
            if ok:
                self.shown[index] = content
        if ok:
            self.writes += 1
            self.first_write.set()
        else:
            self._failures += 1
