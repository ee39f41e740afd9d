"""The scheduler's settings: `[services.scheduler.settings]`, declared once with bounds.

Everything applies live (a reload: SIGHUP or `run.py reload`): the default time zone
for the next command that reads a time, the rest at the next look at the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.settings import ServiceSettings, channel, setting, time_zone


def _location(value: str) -> tuple[str, str] | None:
    if 1 <= len(value) <= 100:
        return None
    return f"{value!r} is not 1-100 characters", "give a place Discord can show, e.g. Discord"


@dataclass(frozen=True)
class Settings(ServiceSettings):
    # The server's time zone: what people mean by "tomorrow 9:00" unless they set their
    # own with /timezone set.
    timezone: str = setting("UTC", check=time_zone)
    # Where reminders of events not made with /event go (those of /event: its channel).
    events_channel: str = setting("general", check=channel)
    # Minutes before an event starts to remind the people interested in it (0: never).
    event_reminder_min: float = setting(15.0, min=0, max=10080)
    event_duration_min: float = setting(60.0, min=1, max=10080)  # /event without duration
    event_location: str = setting("Discord", check=_location)  # /event without location
    poll_hours: int = setting(24, min=1, max=768)  # /poll without hours (Discord: 1-768)
    max_reminders: int = setting(25, min=1, max=1000)  # active reminders per person
    # A reminder delivered this long after its time (or due while the scheduler was
    # down) says it is late.
    late_after_s: float = setting(300.0, min=0)
