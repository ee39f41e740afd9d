"""Presence: never faster than Discord allows, honest about health, newest value wins."""

from __future__ import annotations

import pytest

from protocol.breaker import BreakerOpen
from protocol.clock import fixed
from protocol.discord import GuildCounts, SetPresence
from protocol.messages import Done, Message, SupervisorStatus
from protocol.runtime import ConfigurationError
from services.presence import build
from services.presence.rotation import Rotation, presence_status, uptime_text

pytestmark = pytest.mark.anyio


def status(*states: tuple[str, str, bool], uptime: float = 3700.0) -> SupervisorStatus:
    return SupervisorStatus(
        {"pid": 1, "uptime_s": uptime, "rss_mb": 30.0, "summary": ""},
        [{"name": n, "state": s, "critical": c} for n, s, c in states],
    )


def test_an_interval_faster_than_discord_allows_or_an_unknown_placeholder_is_refused():
    service, _ = build()
    with pytest.raises(ConfigurationError) as refused:
        service.configure({"interval_s": 5, "templates": ["{members} members", "{guests}"]})
    lines = str(refused.value).splitlines()
    assert lines[0].startswith("services.presence.settings.interval_s: must be >= 15")
    assert lines[1].startswith("services.presence.settings.templates: unknown placeholder")


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


class FakeGateway:
    def __init__(self) -> None:
        self.sent: list[SetPresence] = []
        self.down = False

    async def call(self, peer: str, msg: Message, timeout: float = 5.0) -> Message:
        if self.down:
            raise BreakerOpen("presence->gateway", 1.0)
        assert peer == "gateway" and isinstance(msg, SetPresence)
        self.sent.append(msg)
        return Done()


async def test_a_failed_update_is_superseded_by_the_newest_and_unchanged_ones_are_not_sent():
    gateway = FakeGateway()
    service, presence = build(fixed(1000.0))
    service.configure({"templates": ["{members} members"], "interval_s": 15})
    service.call = gateway.call  # type: ignore[method-assign]
    await presence.on_counts(GuildCounts("1", 10, 9, 1, 4))
    await presence.on_status(status(("gateway", "RUNNING", True)))
    gateway.down = True
    assert await presence.tick() is None
    gateway.down = False
    await presence.on_status(status(("gateway", "RUNNING", True), ("stats", "STARTING", False)))
    assert await presence.tick() == SetPresence("idle", "10 members", "custom")
    assert await presence.tick() is None  # nothing changed: no update spent
    await presence.on_status(status(("gateway", "RUNNING", True), ("stats", "RUNNING", False)))
    assert await presence.tick() == SetPresence("online", "10 members", "custom")
    assert [p.status for p in gateway.sent] == ["idle", "online"]


async def test_a_change_of_health_shows_at_once_but_never_within_15_s_of_the_last_update():
    clock = fixed(1000.0)
    service, presence = build(clock)
    service.configure({"templates": ["{members} members"], "interval_s": 60})
    service.call = FakeGateway().call  # type: ignore[method-assign]
    await presence.on_status(status(("gateway", "RUNNING", True)))
    assert presence.next_update_at() <= clock.monotonic()  # nothing shown yet
    presence.rotated_at = clock.monotonic()
    await presence.tick()
    assert presence.next_update_at() == clock.monotonic() + 60  # the rotation's pace
    service.configure({"templates": ["{members} members"], "interval_s": 30})
    assert presence.next_update_at() == clock.monotonic() + 30  # a reload applies live
    await presence.on_status(status(("gateway", "FATAL", True)))
    assert presence.next_update_at() == clock.monotonic() + 15  # dnd, at Discord's pace
