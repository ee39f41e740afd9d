"""Presence: never faster than Discord allows, honest about health, newest value wins."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.breaker import BreakerOpen
from protocol.discord import CountsRequest, SetPresence
from protocol.messages import Message, StatusRequest
from services.presence.rotation import Rotation, clamp_interval, presence_status, uptime_text
from services.presence.service import Presence

pytestmark = pytest.mark.anyio


def status(*states: tuple[str, str, bool], uptime: float = 3700.0) -> dict[str, Any]:
    return {
        "supervisor": {"pid": 1, "uptime_s": uptime, "rss_mb": 30.0, "summary": ""},
        "services": [{"name": n, "state": s, "critical": c} for n, s, c in states],
    }


def test_the_interval_is_clamped_to_what_discord_allows():
    assert clamp_interval(1) == 15.0
    assert clamp_interval(60) == 60.0
    assert 60 / clamp_interval(0) <= 5  # at most ~5 presence updates per minute


def test_status_is_idle_when_degraded_and_dnd_when_a_critical_service_is_fatal():
    assert presence_status(status(("gateway", "RUNNING", True))) == "online"
    assert (
        presence_status(status(("gateway", "RUNNING", True), ("llm", "BACKOFF", False))) == "idle"
    )
    assert presence_status(status(("gateway", "RUNNING", True), ("llm", "FATAL", False))) == "idle"
    assert presence_status(status(("gateway", "FATAL", True))) == "dnd"


def test_templates_rotate_and_skip_values_not_known_yet():
    rotation = Rotation(["{members:,} members", "{online} online", "/ask me anything"])
    assert rotation.next({}) == "/ask me anything"
    assert rotation.next({"members": 1234, "online": None}) == "1,234 members"
    assert rotation.next({"members": 1234, "online": 5}) == "5 online"
    assert uptime_text(3700) == "1h 1m" and uptime_text(90000) == "1d 1h"


class FakeBus:
    def __init__(self) -> None:
        self.sent: list[SetPresence] = []
        self.status = status(("gateway", "RUNNING", True))
        self.gateway_down = False

    async def call(self, peer: str, msg: Message, timeout: float = 5.0) -> dict[str, Any]:
        if isinstance(msg, StatusRequest):
            return self.status
        if self.gateway_down:
            raise BreakerOpen("presence->gateway", 1.0)
        if isinstance(msg, CountsRequest):
            return {"guild_id": "1", "members": 10, "humans": 9, "bots": 1, "online": 4}
        assert isinstance(msg, SetPresence)
        self.sent.append(msg)
        return {}


async def test_a_failed_update_is_superseded_by_the_newest_and_unchanged_ones_are_not_sent():
    bus = FakeBus()
    presence = Presence(bus)  # type: ignore[arg-type]
    presence.configure({"templates": ["{members} members"], "interval_s": 5})
    assert presence.interval_s == 15.0
    bus.gateway_down = True
    assert await presence.tick() is None
    bus.gateway_down = False
    bus.status = status(("gateway", "RUNNING", True), ("stats", "STARTING", False))
    assert await presence.tick() == SetPresence("idle", "10 members", "custom")
    assert await presence.tick() is None  # nothing changed: no update spent
    bus.status = status(("gateway", "RUNNING", True), ("stats", "RUNNING", False))
    assert await presence.tick() == SetPresence("online", "10 members", "custom")
    assert [p.status for p in bus.sent] == ["idle", "online"]
