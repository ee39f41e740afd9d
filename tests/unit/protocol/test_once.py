"""A message (a report, a reminder) is posted exactly once: across restarts, failed sends
and interrupted runs."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.breaker import BreakerOpen
from protocol.channel import RemoteError, RequestTimeout
from protocol.once import OncePoster

pytestmark = pytest.mark.anyio

KEY, HEADER = "daily:2024-05-08", "**Daily member report for 2024-05-08**"


class World:
    """Persistence (a dict with an atomic only_if_absent) and a report channel."""

    def __init__(self) -> None:
        self.kv: dict[str, Any] = {}
        self.channel: list[str] = []
        self.now = 1000.0
        self.store_down = False
        self.send_error: Exception | None = None
        self.send_lands_then_times_out = False

    async def get(self, key: str) -> Any:
        if self.store_down:
            raise RequestTimeout("persistence")
        return self.kv.get(key)

    async def set(self, key: str, value: Any, only_if_absent: bool) -> bool:
        if self.store_down:
            raise RequestTimeout("persistence")
        if only_if_absent and key in self.kv:
            return False
        self.kv[key] = value
        return True

    async def send(self, header: str, embeds: list[dict[str, Any]]) -> str:
        if self.send_error is not None:
            raise self.send_error
        self.channel.append(header)
        if self.send_lands_then_times_out:
            raise RequestTimeout("gateway")
        return str(len(self.channel))

    async def find(self, header: str, since: float) -> bool:
        if self.store_down:
            raise RequestTimeout("persistence")
        return header in self.channel

    def poster(self) -> OncePoster:
        """A fresh stats process: nothing in memory, the same persistence."""
        return OncePoster(self.get, self.set, self.send, self.find, lambda: self.now)


async def test_the_claim_prevents_a_double_post_across_a_restart():
    world = World()
    assert (await world.poster().post_once(KEY, HEADER, [])).done
    outcome = await world.poster().post_once(KEY, HEADER, [])
    assert outcome.done and outcome.detail == "already posted"
    assert world.channel == [HEADER]
    assert world.kv[KEY]["state"] == "posted"


async def test_a_send_the_gateway_refused_is_released_and_retried_once():
    world = World()
    world.send_error = RemoteError("gateway", "forbidden", "403 Missing Access")
    first = await world.poster().post_once(KEY, HEADER, [])
    assert not first.done and world.kv[KEY]["state"] == "failed"
    assert first.refused, "Discord said no: the caller may give up after a few tries"
    world.send_error = BreakerOpen("stats->gateway", 1.0)
    held_back = await world.poster().post_once(KEY, HEADER, [])
    assert not held_back.done and not held_back.refused, "the breaker only delays it"
    world.send_error = None
    assert (await world.poster().post_once(KEY, HEADER, [])).done
    assert (await world.poster().post_once(KEY, HEADER, [])).done
    assert world.channel == [HEADER]


async def test_a_run_that_died_after_sending_is_found_in_the_channel_not_reposted():
    world = World()
    world.send_lands_then_times_out = True  # the post arrived but the answer did not
    assert not (await world.poster().post_once(KEY, HEADER, [])).done
    assert world.kv[KEY]["state"] == "posting"
    world.send_lands_then_times_out = False
    world.now += 5
    outcome = await world.poster().post_once(KEY, HEADER, [])
    assert outcome.done and "interrupted" in outcome.detail
    assert world.channel == [HEADER]
    assert world.kv[KEY]["state"] == "posted"


async def test_a_gateway_timeout_towards_discord_is_not_taken_for_a_failure():
    world = World()
    world.send_error = RemoteError("gateway", "timeout", "Discord did not answer within 10s")
    assert not (await world.poster().post_once(KEY, HEADER, [])).done
    assert world.kv[KEY]["state"] == "posting"  # maybe posted: looked for, not just reposted


async def test_a_run_that_died_before_sending_is_reposted_after_the_lease():
    world = World()
    world.kv[KEY] = {"state": "posting", "at": world.now}  # claimed, then killed
    world.now += 30
    assert not (await world.poster().post_once(KEY, HEADER, [])).done  # may still arrive
    world.now += 120
    assert (await world.poster().post_once(KEY, HEADER, [])).done
    assert world.channel == [HEADER]


async def test_nothing_is_posted_without_persistence_and_a_lost_mark_is_retried():
    world = World()
    world.store_down = True
    outcome = await world.poster().post_once(KEY, HEADER, [])
    assert not outcome.done and "persistence" in outcome.detail
    assert world.channel == []
    world.store_down = False
    poster = world.poster()

    async def down_after_send(header: str, embeds: list[dict[str, Any]]) -> str:
        world.channel.append(header)
        world.store_down = True
        return "1"

    poster._send = down_after_send
    assert (await poster.post_once(KEY, HEADER, [])).done
    assert world.kv[KEY]["state"] == "posting" and KEY in poster.unmarked
    world.store_down = False
    await poster.flush_marks()
    assert world.kv[KEY]["state"] == "posted"
    assert world.channel == [HEADER]
