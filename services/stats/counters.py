"""Counter channels: which channel shows which number, and when it may be renamed.

Discord lets a bot rename a channel only twice per ten minutes, and py-cord
answers a third rename by sleeping out the ~600 s retry_after inside the
gateway. So the stats service throttles itself: per channel it keeps the newest
wanted name and a sliding window of its own recent renames, and sends the
newest name as soon as the window allows. Values that change fifty times in a
minute cost at most two renames, and the last one shows the final value.
"""

from __future__ import annotations

import re
import string
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from protocol.discord import RENAME_WINDOW_S, RENAMES_PER_WINDOW
from services.stats.settings import Counter

BACKOFF_INITIAL_S = 5.0  # after a failure that says nothing about when to retry
BACKOFF_MAX_S = 300.0
CHANNEL_NAME_MAX = 100
STALE_S = 60.0  # a channel list this soon after our rename may predate it
_DIGITS = re.compile(r"^[0-9]{5,20}$")


@dataclass(frozen=True)
class CounterSpec:
    """One configured counter: `kind` names it, `channel` is an id or a current name."""

    kind: str
    channel: str
    template: str

    @property
    def channel_id(self) -> str | None:
        return self.channel if _DIGITS.match(self.channel) else None


def counter_specs(counters: dict[str, Counter]) -> list[CounterSpec]:
    """The configured counters; one without a template shows `Kind: {kind:,}`."""
    return [
        CounterSpec(kind, c.channel, c.template or f"{kind.capitalize()}: {{{kind}:,}}")
        for kind, c in counters.items()
    ]


def render(spec: CounterSpec, values: dict[str, Any]) -> str | None:
    """The channel name for these values, or None while a value it needs is unknown."""
    try:
        name = spec.template.format(**{k: v for k, v in values.items() if v is not None})
    except (KeyError, ValueError, IndexError):
        return None
    return name.strip()[:CHANNEL_NAME_MAX] or None


def _template_pattern(template: str) -> re.Pattern[str]:
    """`Members: {members:,}` -> a regex matching any rendering of it (`Members: 1,234`)."""
    parts = []
    for literal, field_name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field_name is not None:
            parts.append(r"[0-9.,\s'kKmM]+")
    return re.compile("^" + "".join(parts) + "$", re.IGNORECASE)


def find_channel(spec: CounterSpec, channels: Iterable[dict[str, Any]]) -> str | None:
    """Resolve a counter's channel by name: the configured name, or a rendered template
    (the channel was already renamed by an earlier run whose remembered id is gone)."""
    if spec.channel_id is not None:
        return spec.channel_id
    channels = list(channels)
    wanted = spec.channel.casefold()
    for ch in channels:
        if str(ch.get("name", "")).casefold() == wanted:
            return str(ch["id"])
    pattern = _template_pattern(spec.template)
    for ch in channels:
        if pattern.match(str(ch.get("name", ""))):
            return str(ch["id"])
    return None


@dataclass
class _Channel:
    current: str | None = None  # the name Discord shows, as far as we know
    desired: str | None = None  # the newest name we want it to show
    renames: deque[float] = field(default_factory=deque)  # our attempts, monotonic times
    not_before: float = 0.0  # backoff after a failure
    failures: int = 0
    in_flight: bool = False
    renamed_at: float | None = None  # our last successful rename


class RenameThrottle:
    """Per channel: newest wanted name, known current name, sliding window of renames."""

    def __init__(
        self,
        now: Callable[[], float],
        limit: int = RENAMES_PER_WINDOW,
        window_s: float = RENAME_WINDOW_S,
    ) -> None:
        self._now = now
        self.limit = limit
        self.window_s = window_s
        self._channels: dict[str, _Channel] = {}

    def _ch(self, channel_id: str) -> _Channel:
        return self._channels.setdefault(channel_id, _Channel())

    def _expire(self, ch: _Channel, now: float) -> None:
        while ch.renames and ch.renames[0] <= now - self.window_s:
            ch.renames.popleft()

    # --- what the service learns ----------------------------------------------------

    def seen(self, channel_id: str, name: str) -> None:
        """Discord says the channel is called `name` (GuildReady). A snapshot taken
        before our own recent rename is stale: believing it would waste a rename."""
        ch = self._ch(channel_id)
        if ch.in_flight or (ch.renamed_at is not None and self._now() - ch.renamed_at < STALE_S):
            return
        ch.current = name

    def want(self, channel_id: str, name: str) -> bool:
        """Keep `name` as the newest wanted one; True if a rename is now needed."""
        ch = self._ch(channel_id)
        ch.desired = name
        return name != ch.current

    def restore(self, channel_id: str, renamed_at: Iterable[float]) -> None:
        """Renames a previous run made (monotonic times on this clock), so a restart
        does not reset the window."""
        ch = self._ch(channel_id)
        ch.renames = deque(sorted([*ch.renames, *renamed_at]))
        self._expire(ch, self._now())

    def history(self, channel_id: str) -> list[float]:
        ch = self._ch(channel_id)
        self._expire(ch, self._now())
        return list(ch.renames)

    # --- what the service sends -----------------------------------------------------

    def _ready_at(self, ch: _Channel) -> float:
        """When this channel's pending rename may go (its window and its backoff)."""
        self._expire(ch, self._now())
        at = ch.not_before
        if len(ch.renames) >= self.limit:
            at = max(at, ch.renames[-self.limit] + self.window_s)
        return at

    def _pending(self, ch: _Channel) -> bool:
        return ch.desired is not None and ch.desired != ch.current and not ch.in_flight

    def due(self) -> list[tuple[str, str]]:
        """Renames that may be sent now, each with the newest wanted name."""
        now = self._now()
        return [
            (cid, ch.desired)
            for cid, ch in self._channels.items()
            if self._pending(ch) and self._ready_at(ch) <= now and ch.desired is not None
        ]

    def next_due_in(self) -> float | None:
        """Seconds until the next pending rename may go; None if nothing is pending."""
        times = [self._ready_at(ch) for ch in self._channels.values() if self._pending(ch)]
        return max(0.0, min(times) - self._now()) if times else None

    def started(self, channel_id: str) -> None:
        """A rename is on its way: it counts against the window from now."""
        ch = self._ch(channel_id)
        ch.in_flight = True
        ch.renames.append(self._now())

    def succeeded(self, channel_id: str, name: str) -> None:
        ch = self._ch(channel_id)
        ch.in_flight = False
        ch.current = name
        ch.renamed_at = self._now()
        ch.failures = 0
        ch.not_before = 0.0

    def failed(
        self, channel_id: str, *, maybe_applied: bool, retry_after: float | None = None
    ) -> None:
        """A rename failed. Without `maybe_applied` Discord surely did not rename (an error
        answer, a breaker that never let it out), so the slot in the window is given
        back; after a timeout it may have, so the slot stays used and the name is unknown.
        """
        ch = self._ch(channel_id)
        ch.in_flight = False
        if maybe_applied:
            ch.current = None
        elif ch.renames:
            ch.renames.pop()
        ch.failures += 1
        if retry_after is None:
            retry_after = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** (ch.failures - 1))
        ch.not_before = self._now() + retry_after


_RETRY_AFTER = re.compile(r"retry[_ -]?after\D{0,5}([0-9]+(?:\.[0-9]+)?)", re.IGNORECASE)


def retry_after_from(text: str) -> float | None:
    """The gateway reports a 429 as an error whose detail names retry_after."""
    m = _RETRY_AFTER.search(text)
    return float(m.group(1)) if m else None
