"""Heartbeat settings: every mistake named by its full key, before anything starts."""

from __future__ import annotations

import pytest

from protocol.runtime import ConfigurationError
from services.heartbeat import build


def test_bad_intervals_percentages_and_the_moved_owner_ids_are_named_with_their_key():
    service, _ = build()
    with pytest.raises(ConfigurationError) as refused:
        service.configure(
            {"interval_s": -5, "memory_alert_percent": 120, "owner_ids": ["77"], "deadman_url": "x"}
        )
    keys = sorted(line.split(":")[0] for line in str(refused.value).splitlines())
    assert keys == [
        "services.heartbeat.settings.deadman_url",
        "services.heartbeat.settings.interval_s",
        "services.heartbeat.settings.memory_alert_percent",
        "services.heartbeat.settings.owner_ids",  # the gateway's setting now
    ]


def test_thresholds_and_grouping_follow_the_settings():
    service, heartbeat = build()
    service.configure({"memory_alert_percent": 75, "flap_restarts": 5, "alert_group_s": 2})
    assert heartbeat.detector.thresholds.memory_percent == 75
    assert heartbeat.detector.thresholds.flap_restarts == 5
    assert heartbeat.group.group_s == 2
