"""Daily and weekly member reports: which are due, and what they say.

Pure functions over member events (`{kind, user_id, username, bot, at}`) and
local dates, so the numbers are tested without a bus. Days are local days in
the configured timezone (zoneinfo), so "yesterday" means the guild's
yesterday, daylight saving time included.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from protocol.settings import WEEKDAYS

NAMES_SHOWN = 20
CATCH_UP_DAYS = 7  # a longer outage posts the last week's missed reports, not a month's
EMBED_COLOUR = 0x5865F2


# --- time ----------------------------------------------------------------------------


def parse_time(text: str) -> dt.time:
    hours, minutes = text.strip().split(":")
    return dt.time(int(hours), int(minutes))


def local_date(wall: float, tz: ZoneInfo) -> dt.date:
    return dt.datetime.fromtimestamp(wall, tz).date()


def day_start(day: dt.date, tz: ZoneInfo) -> float:
    """Unix time of local midnight starting `day`."""
    return dt.datetime.combine(day, dt.time(0), tzinfo=tz).timestamp()


def at_local(day: dt.date, when: dt.time, tz: ZoneInfo) -> float:
    return dt.datetime.combine(day, when, tzinfo=tz).timestamp()


@dataclass(frozen=True)
class ReportJob:
    """One report to post exactly once: `key` is its claim in persistence."""

    kind: str  # "daily" | "weekly"
    day: dt.date  # the day reported (daily), or the first day of the week (weekly)
    due_at: float

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.day.isoformat()}"

    @property
    def header(self) -> str:
        """The message's first line: also how a post is recognised after a crash."""
        if self.kind == "daily":
            return f"**Daily member report for {self.day.isoformat()}**"
        end = self.day + dt.timedelta(days=6)
        return f"**Weekly member report for {self.day.isoformat()} to {end.isoformat()}**"


def due_reports(
    now: float,
    tz: ZoneInfo,
    report_time: dt.time,
    weekly_day: str | None,
    first_run: float,
    catch_up_days: int = CATCH_UP_DAYS,
) -> list[ReportJob]:
    """Reports whose time has come, oldest first: each day's report is due the next
    local day at `report_time`. Days before the bot first ran were never watched, so
    their reports are not missed; an outage catches up at most `catch_up_days`."""
    today = local_date(now, tz)
    first_day = local_date(first_run, tz)
    weekday = WEEKDAYS.index(weekly_day.lower()) if weekly_day else None
    jobs = []
    for back in range(catch_up_days, -1, -1):
        posting_day = today - dt.timedelta(days=back)
        due = at_local(posting_day, report_time, tz)
        if due > now:
            continue
        yesterday = posting_day - dt.timedelta(days=1)
        if yesterday >= first_day:
            jobs.append(ReportJob("daily", yesterday, due))
        if weekday is not None and posting_day.weekday() == weekday and yesterday >= first_day:
            jobs.append(ReportJob("weekly", posting_day - dt.timedelta(days=7), due))
    return jobs


def next_due_at(now: float, tz: ZoneInfo, report_time: dt.time) -> float:
    """The next report time after `now` (weekly reports share the daily time)."""
    today = local_date(now, tz)
    for day in (today, today + dt.timedelta(days=1), today + dt.timedelta(days=2)):
        at = at_local(day, report_time, tz)
        if at > now:
            return at
    raise AssertionError("unreachable")  # pragma: no cover


# --- numbers -------------------------------------------------------------------------


@dataclass
class DaySummary:
    day: dt.date
    joined: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    banned: list[str] = field(default_factory=list)
    unbanned: list[str] = field(default_factory=list)

    @property
    def joins(self) -> int:
        return len(self.joined)

    @property
    def leaves(self) -> int:
        return len(self.left)

    @property
    def bans(self) -> int:
        return len(self.banned)

    @property
    def net(self) -> int:
        # A ban also removes the member, and the gateway reports that as a leave too.
        return self.joins - self.leaves


_KIND_LIST = {"joined": "joined", "left": "left", "banned": "banned", "unbanned": "unbanned"}


def summarise(
    events: Iterable[dict[str, Any]], first: dt.date, days: int, tz: ZoneInfo
) -> list[DaySummary]:
    """Bucket member events into `days` local days starting at `first`."""
    out = [DaySummary(first + dt.timedelta(days=i)) for i in range(days)]
    for ev in sorted(events, key=lambda e: e.get("at", 0.0)):
        index = (local_date(float(ev["at"]), tz) - first).days
        attr = _KIND_LIST.get(str(ev.get("kind")))
        if attr is None or not 0 <= index < days:
            continue
        getattr(out[index], attr).append(str(ev.get("username") or ev.get("user_id")))
    return out


def names(items: list[str], cap: int = NAMES_SHOWN) -> str:
    """`a, b, c and 12 more`: a report stays readable on a raid day."""
    if not items:
        return "none"
    shown = ", ".join(_plain(n) for n in items[:cap])
    return f"{shown} and {len(items) - cap} more" if len(items) > cap else shown


def _plain(name: str) -> str:
    """A username cannot format the report (allowed_mentions already stops pings)."""
    for ch in "\\*_~`|>":
        name = name.replace(ch, "\\" + ch)
    return name[:40]


def _signed(n: float) -> str:
    return f"{n:+.1f}" if isinstance(n, float) and not n.is_integer() else f"{int(n):+d}"


def _compare(value: int, before: int, average: float, *, signed: bool = False) -> str:
    shown = _signed(value) if signed else str(value)
    delta = value - before
    trend = "same as" if delta == 0 else f"{_signed(delta)} vs"
    return f"**{shown}** ({trend} the day before, 7-day avg {average:.1f})"


def daily_embed(day: DaySummary, previous: DaySummary, week: list[DaySummary]) -> dict[str, Any]:
    """The report for `day`, compared with the day before and the 7 days before it."""

    def avg(attr: str) -> float:
        return sum(getattr(d, attr) for d in week) / len(week) if week else 0.0

    fields = [
        {"name": "Joins", "value": _compare(day.joins, previous.joins, avg("joins"))},
        {"name": "Leaves", "value": _compare(day.leaves, previous.leaves, avg("leaves"))},
        {"name": "Bans", "value": _compare(day.bans, previous.bans, avg("bans"))},
        {
            "name": "Net change",
            "value": _compare(day.net, previous.net, avg("net"), signed=True),
        },
        {"name": "Joined", "value": names(day.joined)},
        {"name": "Left", "value": names(day.left)},
    ]
    if day.banned:
        fields.append({"name": "Banned", "value": names(day.banned)})
    return {
        "title": f"Members on {day.day.strftime('%A %d %B %Y')}",
        "color": EMBED_COLOUR,
        "fields": [{**f, "inline": i < 4} for i, f in enumerate(fields)],
    }


def weekly_embed(week: list[DaySummary], previous: list[DaySummary]) -> dict[str, Any]:
    """Totals for a week, compared with the week before, with the busiest day."""

    def total(days: list[DaySummary], attr: str) -> int:
        return sum(getattr(d, attr) for d in days)

    def line(attr: str, signed: bool = False) -> str:
        now, before = total(week, attr), total(previous, attr)
        shown = _signed(now) if signed else str(now)
        return f"**{shown}** ({_signed(now - before)} vs the week before)"

    busiest = max(week, key=lambda d: d.joins)
    joined = [n for d in week for n in d.joined]
    return {
        "title": f"Members, week of {week[0].day.isoformat()}",
        "color": EMBED_COLOUR,
        "fields": [
            {"name": "Joins", "value": line("joins"), "inline": True},
            {"name": "Leaves", "value": line("leaves"), "inline": True},
            {"name": "Bans", "value": line("bans"), "inline": True},
            {"name": "Net change", "value": line("net", signed=True), "inline": True},
            {
                "name": "Busiest day",
                "value": f"{busiest.day.strftime('%A')}: {busiest.joins} joins"
                if busiest.joins
                else "no joins",
                "inline": True,
            },
            {"name": "Joined", "value": names(joined)},
        ],
    }
