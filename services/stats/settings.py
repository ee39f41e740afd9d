"""The stats service's settings: `[services.stats.settings]`, declared once with their bounds.

Everything applies live (a reload: SIGHUP or `run.py reload`): report time, time zone
and weekly day from the next look at the schedule, counters and the report channel as
soon as they are resolved against the guild's channels again.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.discord import COUNT_FIELDS
from protocol.settings import (
    ServiceSettings,
    channel,
    setting,
    template,
    time_of_day,
    time_zone,
    weekday_or_empty,
)


def _channel_or_empty(value: str) -> tuple[str, str] | None:
    return None if value == "" else channel(value)


@dataclass(frozen=True)
class Counter:
    """One counter channel, `counters.<kind> = {channel, template}`: `channel` is the
    channel's id or its name before the first rename."""

    channel: str = setting(check=channel)
    # Empty: "<Kind>: {<kind>:,}", e.g. "Members: {members:,}".
    template: str = setting("", check=template(*COUNT_FIELDS))


@dataclass(frozen=True)
class Settings(ServiceSettings):
    report_channel: str = setting("stats", check=_channel_or_empty)  # "": no reports
    report_time: str = setting("09:00", check=time_of_day)  # local time, HH:MM
    timezone: str = setting("UTC", check=time_zone)
    weekly_day: str = setting("monday", check=weekday_or_empty)  # "": no weekly report
    refresh_s: float = setting(300.0, min=10)  # ask for the counts this often anyway
    counters: dict[str, Counter] = setting(factory=dict, check=lambda c: _counter_kinds(c))


def _counter_kinds(counters: dict[str, Counter]) -> tuple[str, str] | None:
    unknown = sorted(set(counters) - set(COUNT_FIELDS))
    if unknown:
        return f"unknown counter {unknown[0]!r}", "use " + ", ".join(COUNT_FIELDS)
    return None
