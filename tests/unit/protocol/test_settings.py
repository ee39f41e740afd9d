"""Settings schemas: every problem at once, each naming the full key and the fix."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from protocol.settings import (
    ServiceSettings,
    channel,
    live_and_restart_changes,
    parse_settings,
    setting,
    template,
    time_of_day,
    time_zone,
)

KEY = "services.demo.settings"


@dataclass(frozen=True)
class Limit:
    tokens: int = setting(5, min=1)
    per_s: float = setting(60.0, min=0.1)


@dataclass(frozen=True)
class Demo(ServiceSettings):
    interval_s: float = setting(30.0, min=1)
    timezone: str = setting("UTC", check=time_zone)
    report_time: str = setting("09:00", check=time_of_day)
    channel: str = setting("admin", check=channel)
    banner: str = setting("{members} members", check=template("members", "online"))
    names: tuple[str, ...] = setting(factory=tuple)
    rate: Limit = setting(factory=Limit)
    counters: dict[str, Limit] = setting(factory=dict)
    base_url: str = setting("http://x", live=False)


def problems(raw: dict) -> dict[str, str]:
    _, found = parse_settings(Demo, raw, KEY)
    return {p.key: f"{p.problem}; fix: {p.fix}" for p in found}


def test_defaults_and_toml_values_become_typed_settings() -> None:
    settings, found = parse_settings(
        Demo, {"interval_s": 5, "names": ["a", "b"], "counters": {"x": {"tokens": 2}}}, KEY
    )
    assert found == []
    assert settings.interval_s == 5.0 and isinstance(settings.interval_s, float)
    assert settings.names == ("a", "b")
    assert settings.counters == {"x": Limit(2, 60.0)}
    assert settings.rate == Limit()


def test_every_problem_is_reported_with_its_full_key_and_fix() -> None:
    found = problems(
        {
            "interval_s": -5,
            "timezone": "Mars/Olympus",
            "report_time": "9am",
            "channel": "my channel",
            "banner": "{member} members",
            "names": "a,b",
            "rate": {"tokens": 0},
            "counters": {"x": {"per_s": "soon"}},
            "colour": "red",
        }
    )
    assert set(found) == {
        f"{KEY}.interval_s",
        f"{KEY}.timezone",
        f"{KEY}.report_time",
        f"{KEY}.channel",
        f"{KEY}.banner",
        f"{KEY}.names",
        f"{KEY}.rate.tokens",
        f"{KEY}.counters.x.per_s",
        f"{KEY}.colour",
    }
    assert found[f"{KEY}.interval_s"] == "must be >= 1 (got -5); fix: set a number >= 1"
    assert "unknown time zone 'Mars/Olympus'" in found[f"{KEY}.timezone"]
    assert "HH:MM" in found[f"{KEY}.report_time"]
    assert "unknown placeholder {member}" in found[f"{KEY}.banner"]
    assert "{members}, {online}" in found[f"{KEY}.banner"]
    assert "unknown setting" in found[f"{KEY}.colour"]


def test_booleans_are_not_numbers_and_numbers_are_not_strings() -> None:
    assert set(problems({"interval_s": True, "timezone": 3})) == {
        f"{KEY}.interval_s",
        f"{KEY}.timezone",
    }


def test_a_reload_tells_live_changes_from_those_that_wait_for_a_restart() -> None:
    old, _ = parse_settings(Demo, {}, KEY)
    new, _ = parse_settings(Demo, {"interval_s": 10, "base_url": "http://y"}, KEY)
    assert live_and_restart_changes(old, new) == (["interval_s"], ["base_url"])
    assert live_and_restart_changes(old, old) == ([], [])


def test_time_zones_work_without_the_system_zoneinfo_directory(tmp_path: Path) -> None:
    """tzdata (requirements.txt) carries the IANA database: a slim image or Windows with
    no /usr/share/zoneinfo still checks and uses "Europe/Paris"."""
    code = (
        "import zoneinfo, datetime as dt\n"
        "from protocol.settings import time_zone\n"
        "assert zoneinfo.TZPATH == (), zoneinfo.TZPATH\n"
        "assert time_zone('Europe/Paris') is None, time_zone('Europe/Paris')\n"
        "paris = zoneinfo.ZoneInfo('Europe/Paris')\n"
        "print(dt.datetime(2024, 7, 1, 12, tzinfo=paris).utcoffset().total_seconds())\n"
    )
    root = Path(__file__).resolve().parents[3]
    env = {"PYTHONTZPATH": "", "PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "7200.0"  # CEST
