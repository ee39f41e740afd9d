"""Settings declared once per service: a frozen dataclass whose fields carry their bounds.

    @dataclass(frozen=True)
    class Settings(ServiceSettings):
        interval_s: float = setting(30.0, min=1, fix="seconds between embed edits")
        timezone: str = setting("UTC", check=time_zone)
        base_url: str = setting("https://api.openai.com/v1", live=False)

`parse_settings` checks a `[services.NAME.settings]` table against it and reports every
problem at once, each naming the full key and the fix, so `run.py check`, start-up,
and a reload (SIGHUP, `run.py reload`) all say the same thing. Fields marked
`live=False` take effect on the next restart; a reload names them.

Written on the project's own type checker (protocol/messages.py) rather than pydantic:
that would add about 18 MB to every process, the supervisor included, for what is
here a hundred lines.
"""

from __future__ import annotations

import dataclasses
import re
import string
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from protocol.messages import MessageError, check_type


@dataclass(frozen=True)
class Problem:
    """One thing wrong in the configuration: where, what, and how to fix it."""

    key: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}; fix: {self.fix}"


# A check returns None when the value is fine, else (what is wrong, how to fix it).
Check = Callable[[Any], tuple[str, str] | None]


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    min: float | None = None,
    max: float | None = None,
    check: Check | None = None,
    live: bool = True,
) -> Any:
    """A settings field: its default, bounds, an extra check, and whether it can change
    while the service runs."""
    metadata = {"min": min, "max": max, "check": check, "live": live}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ServiceSettings:
    """What every service understands, besides its own settings."""

    # Lets a peer move this service's clock (AdvanceClock): the sandbox sets it.
    allow_clock_control: bool = setting(False, live=False)


S = TypeVar("S")


def parse_settings(schema: type[S], raw: Mapping[str, Any], key: str) -> tuple[S, list[Problem]]:
    """The settings in `raw` as `schema`, and every problem found; a bad value is
    replaced by its default so the caller can decide whether to go on."""
    problems: list[Problem] = []
    value = _parse_dataclass(schema, raw, key, problems)
    return value, problems


def live_and_restart_changes(old: Any, new: Any) -> tuple[list[str], list[str]]:
    """The names of the fields that differ, split into those applied live and those
    that wait for a restart."""
    live, restart = [], []
    for f in dataclasses.fields(old):
        if getattr(old, f.name) != getattr(new, f.name):
            (live if f.metadata.get("live", True) else restart).append(f.name)
    return live, restart


# --- checks shared by the services -------------------------------------------------------


def time_zone(value: str) -> tuple[str, str] | None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {value!r}", 'use an IANA name such as "Europe/Paris" or "UTC"'
    return None


def time_of_day(value: str) -> tuple[str, str] | None:
    if re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
        return None
    return f"{value!r} is not a time of day", 'write it as HH:MM on 24 hours, e.g. "09:00"'


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def weekday_or_empty(value: str) -> tuple[str, str] | None:
    if value == "" or value.lower() in WEEKDAYS:
        return None
    return f"{value!r} is not a day of the week", 'use "monday" ... "sunday", or "" for none'


def channel(value: str) -> tuple[str, str] | None:
    """A channel's id (digits) or name as Discord allows it (1-100 characters, no #)."""
    name = value.lstrip("#")
    if value.isdigit() or (0 < len(name) <= 100 and not re.search(r"[\s#@:`]", name)):
        return None
    return (
        f"{value!r} is not a channel id or name",
        "give the channel's name without spaces (e.g. admin) or its id",
    )


def template(*placeholders: str) -> Check:
    """A str.format template that uses only these placeholders."""

    def check(value: Any) -> tuple[str, str] | None:
        for text in value if isinstance(value, list | tuple) else [value]:
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
            except ValueError as exc:
                return f"{text!r} is not a valid template ({exc})", "balance its { and }"
            for name in fields:
                base = re.split(r"[.\[!:]", name, maxsplit=1)[0]
                if base not in placeholders:
                    known = ", ".join("{" + p + "}" for p in placeholders)
                    return f"unknown placeholder {{{name}}} in {text!r}", f"use {known}"
        return None

    return check


# --- the parser ----------------------------------------------------------------------------


def _parse_dataclass(schema: type[S], raw: Any, key: str, problems: list[Problem]) -> S:
    if not isinstance(raw, Mapping):
        problems.append(Problem(key, f"must be a table (got {raw!r})", f"write {key} as a table"))
        raw = {}
    fields = {f.name: f for f in dataclasses.fields(schema)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(schema)
    for unknown in sorted(set(raw) - set(fields)):
        problems.append(
            Problem(
                f"{key}.{unknown}",
                "unknown setting",
                "remove it or check its spelling (known: " + ", ".join(sorted(fields)) + ")",
            )
        )
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(Problem(f"{key}.{name}", "missing", f"set {name}"))
            continue
        ok, value = _parse_value(raw[name], hints[name], f"{key}.{name}", f.metadata, problems)
        if ok:
            values[name] = value
    try:
        return schema(**values)
    except TypeError as exc:  # a required field was missing or bad: already reported
        if problems:
            return None  # type: ignore[return-value]  # a nested table: its caller drops it
        raise ValueError(f"{key}: {exc}") from None


def _parse_value(
    value: Any, hint: Any, key: str, meta: Mapping[str, Any], problems: list[Problem]
) -> tuple[bool, Any]:
    before, given = len(problems), value
    value = _convert(value, hint, key, problems)
    if len(problems) > before:
        return False, None
    low, high = meta.get("min"), meta.get("max")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = " and ".join(
                part
                for part in (
                    f">= {low:g}" if low is not None else "",
                    f"<= {high:g}" if high is not None else "",
                )
                if part
            )
            problem = Problem(key, f"must be {bounds} (got {given!r})", f"set a number {bounds}")
            problems.append(problem)
            return False, None
    check = meta.get("check")
    if check is not None and value is not None:
        found = check(value)
        if found is not None:
            problems.append(Problem(key, *found))
            return False, None
    return True, value


def _convert(value: Any, hint: Any, key: str, problems: list[Problem]) -> Any:
    """TOML data into the declared type: tables into dataclasses, lists into tuples."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _parse_dataclass(hint, value, key, problems)  # type: ignore[arg-type]
    if origin is tuple and isinstance(value, list):
        value = tuple(value)
        if len(args) == 2 and args[1] is Ellipsis and dataclasses.is_dataclass(args[0]):
            parsed = [
                _parse_dataclass(args[0], v, f"{key}[{i}]", problems) for i, v in enumerate(value)
            ]
            return tuple(parsed)
    if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        if not isinstance(value, Mapping):
            problems.append(Problem(key, f"must be a table (got {value!r})", "write a table"))
            return None
        return {
            str(k): _parse_dataclass(args[1], v, f"{key}.{k}", problems) for k, v in value.items()
        }
    try:
        check_type(value, hint, key)
    except MessageError as exc:
        problems.append(Problem(key, _plain(str(exc), key), f"set a value of type {_name(hint)}"))
        return None
    if hint is float and isinstance(value, int):
        return float(value)
    return value


def _plain(message: str, key: str) -> str:
    return message.removeprefix(f"{key}: ")


def _name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")
