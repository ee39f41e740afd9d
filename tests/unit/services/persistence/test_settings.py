"""The persistence settings: every bad value reported with its key, and all of them wait
for a restart (the database and the journal are opened at start)."""

from __future__ import annotations

import dataclasses

from protocol.settings import live_and_restart_changes, parse_settings
from services.persistence.settings import Settings

KEY = "services.persistence.settings"


def test_bad_values_are_each_reported_with_their_full_key() -> None:
    _, problems = parse_settings(
        Settings,
        {"journal_max_mb": 0, "sqlite_synchronous": "fast", "sqlite_busy_timeout_ms": -1},
        KEY,
    )
    assert [p.key for p in problems] == [
        f"{KEY}.journal_max_mb",
        f"{KEY}.sqlite_synchronous",
        f"{KEY}.sqlite_busy_timeout_ms",
    ]
    assert "OFF, NORMAL, FULL, EXTRA" in problems[1].fix


def test_defaults_and_case_insensitive_synchronous() -> None:
    settings, problems = parse_settings(Settings, {"sqlite_synchronous": "full"}, KEY)
    assert problems == []
    assert (settings.journal_max_mb, settings.journal_fsync) == (64.0, False)
    assert (settings.sqlite_synchronous, settings.sqlite_busy_timeout_ms) == ("full", 5000)


def test_every_setting_applies_on_restart_only() -> None:
    old = Settings()
    new = dataclasses.replace(
        old,
        journal_max_mb=1.0,
        journal_fsync=True,
        sqlite_synchronous="FULL",
        sqlite_busy_timeout_ms=10,
    )
    live, restart = live_and_restart_changes(old, new)
    assert live == []
    assert restart == [
        "journal_max_mb",
        "journal_fsync",
        "sqlite_synchronous",
        "sqlite_busy_timeout_ms",
    ]
