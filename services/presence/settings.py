"""The presence service's settings: `[services.presence.settings]`, declared once with
their bounds. All apply live (a reload: SIGHUP or `run.py reload`)."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.discord import COUNT_FIELDS
from protocol.settings import ServiceSettings, setting, template

PLACEHOLDERS = (*COUNT_FIELDS, "uptime")  # the guild's numbers and the bot's uptime
ACTIVITY_TYPES = ("custom", "playing", "watching", "listening", "competing")
DEFAULT_TEMPLATES = ("{members:,} members", "{online} online", "/ask me anything", "up {uptime}")


def _activity_type(value: str) -> tuple[str, str] | None:
    if value in ACTIVITY_TYPES:
        return None
    return f"unknown activity type {value!r}", "use one of " + ", ".join(ACTIVITY_TYPES)


@dataclass(frozen=True)
class Settings(ServiceSettings):
    # Discord takes about five presence updates a minute: 15 s leaves a margin.
    interval_s: float = setting(60.0, min=15)
    templates: tuple[str, ...] = setting(DEFAULT_TEMPLATES, check=template(*PLACEHOLDERS))
    activity_type: str = setting("custom", check=_activity_type)
