"""Scheduled events as an iCalendar file (RFC 5545), built with the `icalendar` package.

The file Google Calendar, Outlook, Apple Calendar or any calendar app imports: one
VEVENT per event, times in UTC (every app converts them to its own zone), a stable UID
per Discord event (importing again updates instead of duplicating), and the event's
page on Discord as its URL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from icalendar import Calendar, Event

PRODID = "-//discord-supervised-bot//scheduler//EN"


def calendar(events: list[dict[str, Any]], guild_name: str, now: float) -> bytes:
    """`events` as in ScheduledEventList (start/end in Unix seconds)."""
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("method", "PUBLISH")
    cal.add("x-wr-calname", f"{guild_name} events")
    stamp = datetime.fromtimestamp(now, UTC)
    for e in events:
        event = Event()
        event.add("uid", f"{e['id']}@discord-scheduled-event")
        event.add("dtstamp", stamp)
        event.add("summary", e.get("name") or "(no name)")
        start = float(e["start"])
        event.add("dtstart", datetime.fromtimestamp(start, UTC))
        end = e.get("end")
        event.add("dtend", datetime.fromtimestamp(float(end) if end else start + 3600, UTC))
        if e.get("location"):
            event.add("location", e["location"])
        if e.get("description"):
            event.add("description", e["description"])
        if e.get("guild_id"):
            event.add("url", f"https://discord.com/events/{e['guild_id']}/{e['id']}")
        event.add("status", "CANCELLED" if e.get("status") == "canceled" else "CONFIRMED")
        cal.add_component(event)
    return cal.to_ical()
