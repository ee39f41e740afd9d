"""Stats settings: every mistake named by its full key, before anything starts."""

from __future__ import annotations

import pytest

from protocol.runtime import ConfigurationError
from services.stats import build


def test_a_bad_time_zone_report_time_day_or_counter_template_is_named_with_its_key():
    service, _ = build()
    with pytest.raises(ConfigurationError) as refused:
        service.configure(
            {
                "timezone": "Mars/Olympus",
                "report_time": "9am",
                "weekly_day": "someday",
                "counters": {"members": {"channel": "Members", "template": "{membres}"}},
            }
        )
    keys = [line.split(":")[0] for line in str(refused.value).splitlines()]
    assert keys == [
        "services.stats.settings.report_time",
        "services.stats.settings.timezone",
        "services.stats.settings.weekly_day",
        "services.stats.settings.counters.members.template",
    ]


def test_a_counter_without_a_template_shows_its_kind_and_number():
    service, stats = build()
    service.configure({"counters": {"bans": {"channel": "Bans"}}})
    (spec,) = stats.counters
    assert (spec.channel, spec.template) == ("Bans", "Bans: {bans:,}")
