"""What people type for a time or a length of time, as Unix seconds.

One-off times go to `dateparser` (pinned in requirements.txt): it reads what people
write ("tomorrow 9:00", "friday 18:30", "2026-12-24 18:00", "dec 24 6pm") in a time
zone, relative to a base we give it (the service clock, so tests and the sandbox move
it) and preferring the future; it is pure Python and maintained. Two small parsers do
what it does not do well: lengths of time ("in 2h30" it reads as 02:30; "90 minutes",
"1h30" for an event's duration) and repeats ("every monday 9:00", which it does not
read at all).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import dateparser

EXAMPLES = "`in 10 minutes`, `tomorrow 9:00`, `friday 18:30`, `2026-12-24 18:00`"
REPEAT_EXAMPLE = "`every monday 9:00`"
MAX_AHEAD_S = 5 * 366 * 86400.0  # nothing is scheduled further ahead than five years

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
EVERY_DAY = tuple(range(7))
DAY_WORDS: dict[str, tuple[int, ...]] = {
    "day": EVERY_DAY,
    "days": EVERY_DAY,
    "weekday": (0, 1, 2, 3, 4),
    "weekdays": (0, 1, 2, 3, 4),
    "weekend": (5, 6),
    **{name: (i,) for i, name in enumerate(WEEKDAYS)},
    **{name + "s": (i,) for i, name in enumerate(WEEKDAYS)},
    **{name[:3]: (i,) for i, name in enumerate(WEEKDAYS)},
}
UNITS = {
    "w": 604800,
    "week": 604800,
    "d": 86400,
    "day": 86400,
    "h": 3600,
    "hr": 3600,
    "hour": 3600,
    "m": 60,
    "min": 60,
    "minute": 60,
    "s": 1,
    "sec": 1,
    "second": 1,
}
_AMOUNT = re.compile(r"(\d+(?:[.,]\d+)?|\bhalf an?\b|\ban?\b)\s*([a-z]+)")
_CLOCK = re.compile(r"(?:at\s+)?(\d{1,2})(?:[:.h](\d{2}))?\s*(am|pm)?")
_REPEAT = re.compile(
    r"(?:every|each)\s+(?P<days>[a-z]+(?:(?:\s*,\s*|\s+and\s+|\s+)[a-z]+)*?)\s+(?P<clock>(?:at\s+)?\d.*)"
)


class WhenError(ValueError):
    """Input that cannot be used: its text is the one line to show, saying what to type."""


@dataclass(frozen=True)
class Repeat:
    """Every one of `weekdays` (0 is monday) at hour:minute, local time."""

    weekdays: tuple[int, ...]
    hour: int
    minute: int

    def next_after(self, after: float, tz: ZoneInfo) -> float:
        """The first occurrence strictly after `after` (Unix seconds)."""
        local = datetime.fromtimestamp(after, tz)
        for days in range(8):
            day = local.date() + timedelta(days=days)
            if day.weekday() in self.weekdays:
                at = datetime.combine(day, time(self.hour, self.minute), tzinfo=tz).timestamp()
                if at > after:
                    return at
        raise AssertionError("a repeat has at least one weekday")

    def describe(self) -> str:
        days = {
            EVERY_DAY: "day",
            (0, 1, 2, 3, 4): "weekday",
            (5, 6): "weekend day",
        }.get(self.weekdays) or " and ".join(WEEKDAYS[d] for d in self.weekdays)
        return f"every {days} at {self.hour:02d}:{self.minute:02d}"

    def to_json(self) -> dict[str, Any]:
        return {"weekdays": list(self.weekdays), "time": f"{self.hour:02d}:{self.minute:02d}"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Repeat:
        hour, minute = (int(x) for x in str(data["time"]).split(":"))
        return cls(tuple(int(d) for d in data["weekdays"]), hour, minute)


@dataclass(frozen=True)
class When:
    at: float  # Unix seconds of the (first) occurrence
    repeat: Repeat | None = None


def parse_when(text: str, now: float, tz: ZoneInfo) -> When:
    """A reminder's time: a moment in the future, or a repeat ("every monday 9:00")."""
    text = " ".join(text.lower().split())
    if not text:
        raise WhenError(f"Say when, e.g. {EXAMPLES} or {REPEAT_EXAMPLE}.")
    if text.startswith(("every ", "each ", "daily")):
        repeat = parse_repeat(text)
        return When(repeat.next_after(now, tz), repeat)
    return When(parse_moment(text, now, tz))


def parse_moment(text: str, now: float, tz: ZoneInfo) -> float:
    """A moment after `now`: "in <length>" exactly, anything else through dateparser."""
    text = " ".join(text.lower().split())
    if text.startswith("in "):
        try:
            return _ahead(now, now + parse_duration(text[3:]), text)
        except WhenError:
            pass  # "in the evening", "in march": dateparser's business
    base = datetime.fromtimestamp(now, tz).replace(tzinfo=None)
    found = dateparser.parse(
        text,
        languages=["en"],
        settings={
            "PREFER_DATES_FROM": "future",
            "RELATIVE_BASE": base,
            "TIMEZONE": tz.key,
            "RETURN_AS_TIMEZONE_AWARE": True,
        },
    )
    if found is None:
        raise WhenError(f"I can't read `{text}` as a time: try {EXAMPLES}.")
    return _ahead(now, found.timestamp(), text)


def _ahead(now: float, at: float, text: str) -> float:
    if at <= now:
        raise WhenError(
            f"`{text}` is in the past (<t:{int(at)}:f>): give a time to come, e.g. {EXAMPLES}."
        )
    if at - now > MAX_AHEAD_S:
        raise WhenError(f"`{text}` is more than five years away: give a nearer time.")
    return at


def parse_duration(text: str) -> float:
    """A length of time in seconds: "10 minutes", "2h", "1h30", "90 min", "an hour"."""
    text = " ".join(text.lower().split())
    # "1h30" and "2h30m": minutes after hours without their unit
    text = re.sub(r"(\d)\s*h\s*(\d{1,2})(?!\s*[a-z\d])", r"\1h \2m", text)
    total, pos = 0.0, 0
    for match in _AMOUNT.finditer(text):
        between = text[pos : match.start()].strip(" ,")
        if between not in ("", "and"):
            break
        amount, unit = match.groups()
        unit_s = UNITS.get(unit.rstrip("s")) or UNITS.get(unit)
        if unit_s is None:
            break
        number = {"a": 1.0, "an": 1.0, "half a": 0.5, "half an": 0.5}.get(amount)
        total += (number if number is not None else float(amount.replace(",", "."))) * unit_s
        pos = match.end()
    if total <= 0 or text[pos:].strip(" ,."):
        raise WhenError(f"I can't read `{text}` as a length of time: try `90 minutes` or `2h`.")
    return total


def parse_repeat(text: str) -> Repeat:
    """ "every monday 9:00", "every day at 7:30am", "every weekday 18:00", "daily 8:00"."""
    text = " ".join(text.lower().split())
    text = re.sub(r"^daily\b", "every day", text)
    match = _REPEAT.fullmatch(text)
    if match is None:
        raise WhenError(
            f"I can't read `{text}` as a repeat: say the day and the time, e.g. {REPEAT_EXAMPLE}."
        )
    days: set[int] = set()
    for word in re.split(r"\s*,\s*|\s+and\s+|\s+", match["days"]):
        found = DAY_WORDS.get(word)
        if found is None:
            raise WhenError(
                f"`{word}` is not a day: say `every day`, `every weekday` or a day's name, "
                f"e.g. {REPEAT_EXAMPLE}."
            )
        days.update(found)
    clock = _CLOCK.fullmatch(match["clock"].strip())
    if clock is None:
        raise WhenError(f"Say the time as 9:00 or 6pm, e.g. {REPEAT_EXAMPLE}.")
    hour, minute = int(clock[1]), int(clock[2] or 0)
    if clock[3]:
        if not 1 <= hour <= 12:
            raise WhenError(f"`{match['clock']}` is not a time: use 1-12 with am/pm, or 0-23.")
        hour = hour % 12 + (12 if clock[3] == "pm" else 0)
    if hour > 23 or minute > 59:
        raise WhenError(f"`{match['clock']}` is not a time of day: use 0:00 to 23:59.")
    return Repeat(tuple(sorted(days)), hour, minute)
