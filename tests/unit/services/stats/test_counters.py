"""Counter channels: renamed only on change, never more than twice per ten minutes."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.channel import RemoteError, RequestTimeout
from protocol.clock import Clock, fixed
from protocol.discord import GuildCounts, GuildReady, RenameChannel
from protocol.messages import Done, Message
from protocol.store import KvGet, KvSet, KvStored, KvValue
from services.stats import build
from services.stats.counters import (
    CounterSpec,
    RenameThrottle,
    counter_specs,
    find_channel,
    render,
    retry_after_from,
)
from services.stats.service import Stats
from services.stats.settings import Counter

pytestmark = pytest.mark.anyio

T0 = 1_714_550_400.0  # 2024-05-01 08:00 UTC
CHANNELS = [
    {"id": "500001", "name": "general", "type": "text"},
    {"id": "500002", "name": "Members", "type": "voice"},
    {"id": "500003", "name": "Online: 12", "type": "voice"},
]
SETTINGS = {
    "counters": {
        "members": {"channel": "Members", "template": "Members: {members:,}"},
        "online": {"channel": "Online", "template": "Online: {online:,}"},
    },
    "report_channel": "",
}


def guild(channels: list[dict[str, Any]]) -> GuildReady:
    return GuildReady("1", "Test", channels, 3, "900")


def counts(members: int, online: int = 12) -> GuildCounts:
    return GuildCounts("1", members, members, 0, online)


class FakeBus:
    """Stands in for Service.call: answers like the gateway and persistence would."""

    def __init__(self) -> None:
        self.renames: list[tuple[float, str, str]] = []
        self.kv: dict[tuple[str, str], Any] = {}
        self.fail_next: Exception | None = None
        self.clock: Any = None

    async def call(self, peer: str, msg: Message, timeout: float = 5.0) -> Message:
        if isinstance(msg, KvGet):
            return KvValue(self.kv.get((msg.namespace, msg.key)))
        if isinstance(msg, KvSet):
            self.kv[(msg.namespace, msg.key)] = msg.value
            return KvStored(True)
        assert isinstance(msg, RenameChannel)
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.renames.append((self.clock.monotonic(), msg.channel_id, msg.name))
        return Done()


def built(bus: FakeBus, clock: Clock) -> Stats:
    """A stats service as it starts, its calls answered by `bus`."""
    bus.clock = clock
    service, stats = build(clock)
    service.configure(SETTINGS)
    service.call = bus.call  # type: ignore[method-assign]
    return stats


def make_stats(bus: FakeBus, clock: Clock) -> Stats:
    stats = built(bus, clock)
    stats.learn_guild(guild(CHANNELS))
    return stats


async def flush(stats: Stats) -> None:
    for channel_id, name in stats.throttle.due():
        await stats.rename(channel_id, name)


def max_in_window(times: list[float], window: float = 600.0) -> int:
    return max((sum(1 for u in times if t <= u < t + window) for t in times), default=0)


async def test_a_burst_of_fifty_changes_costs_at_most_two_renames_and_ends_on_the_last_value():
    clock = fixed(T0)
    bus = FakeBus()
    stats = make_stats(bus, clock)
    for n in range(50):  # a raid: one join every 12 s for ten minutes
        stats.learn_counts(counts(1000 + n))
        await flush(stats)
        clock.advance(12)
    assert len(bus.renames) == 2
    for _ in range(100):  # let the throttle catch up with the newest value
        clock.advance(30)
        await flush(stats)
    times = [t for t, cid, _ in bus.renames if cid == "500002"]
    assert max_in_window(times) <= 2
    assert bus.renames[-1][2] == "Members: 1,049"
    assert stats.throttle.next_due_in() is None


async def test_an_unchanged_value_is_not_renamed_and_known_names_are_respected():
    clock = fixed(T0)
    bus = FakeBus()
    stats = make_stats(bus, clock)
    stats.learn_counts(counts(3))  # "Online: 12" is already shown
    await flush(stats)
    stats.learn_counts(counts(3))
    await flush(stats)
    assert [(cid, name) for _, cid, name in bus.renames] == [("500002", "Members: 3")]


async def test_a_rate_limit_answer_backs_off_for_retry_after_and_keeps_the_newest_value():
    clock = fixed(T0)
    bus = FakeBus()
    stats = make_stats(bus, clock)
    bus.fail_next = RemoteError("gateway", "rate_limited", "retry_after=120.5")
    stats.learn_counts(counts(7))
    await flush(stats)
    assert bus.renames == []
    stats.learn_counts(counts(8))
    clock.advance(120)
    await flush(stats)
    assert bus.renames == []  # still inside retry_after
    clock.advance(1)
    await flush(stats)
    assert [name for _, _, name in bus.renames] == ["Members: 8"]


async def test_a_timed_out_rename_still_counts_against_the_window():
    clock = fixed(T0)
    bus = FakeBus()
    stats = make_stats(bus, clock)
    bus.fail_next = RequestTimeout("no reply")
    stats.learn_counts(counts(7))
    await flush(stats)  # may have reached Discord: the slot stays used
    clock.advance(10)
    await flush(stats)  # the retry takes the second slot
    stats.learn_counts(counts(9))
    clock.advance(10)
    await flush(stats)
    assert [name for _, _, name in bus.renames] == ["Members: 7"]
    assert stats.throttle.next_due_in() == pytest.approx(580)


async def test_a_restart_remembers_the_channel_id_and_the_rename_window():
    clock = fixed(T0)
    bus = FakeBus()
    stats = make_stats(bus, clock)
    stats.learn_counts(counts(1))
    await flush(stats)
    stats.learn_counts(counts(2))
    await flush(stats)
    assert len(bus.renames) == 2
    # The process restarts; the channel is now called "Members: 2", not "Members".
    clock.advance(60)
    renamed = [{**c, "name": "Members: 2"} if c["id"] == "500002" else c for c in CHANNELS]
    again = built(bus, clock)
    await again.load_counter_records()
    again.learn_guild(guild(renamed))
    assert again.counter_ids["members"] == "500002"
    again.learn_counts(counts(3))
    await flush(again)
    assert len(bus.renames) == 2  # the window of the previous run still holds
    assert again.throttle.next_due_in() == pytest.approx(540)
    clock.advance(540)
    await flush(again)
    assert bus.renames[-1][1:] == ("500002", "Members: 3")


async def test_a_guild_snapshot_older_than_our_rename_does_not_cause_another():
    clock = fixed(T0)
    bus = FakeBus()
    stats = make_stats(bus, clock)
    stats.learn_counts(counts(3))
    await flush(stats)
    stats.learn_guild(guild(CHANNELS))  # still says "Members"
    await flush(stats)
    assert [name for _, _, name in bus.renames] == ["Members: 3"]
    clock.advance(120)
    renamed_by_hand = [{**c, "name": "Members"} if c["id"] == "500002" else c for c in CHANNELS]
    stats.learn_guild(guild(renamed_by_hand))
    await flush(stats)
    assert [name for _, _, name in bus.renames] == ["Members: 3", "Members: 3"]


def test_channels_resolve_by_id_by_name_or_by_an_earlier_rendering():
    spec = CounterSpec("members", "Members", "Members: {members:,}")
    assert find_channel(spec, CHANNELS) == "500002"
    renamed = [{"id": "9", "name": "Members: 1,234"}]
    assert find_channel(spec, renamed) == "9"
    assert find_channel(CounterSpec("bans", "123456789", "Bans: {bans}"), []) == "123456789"
    assert find_channel(spec, [{"id": "9", "name": "general"}]) is None


def test_templates_render_only_when_their_values_are_known():
    (spec,) = counter_specs({"bans": Counter("Bans")})
    assert spec.template == "Bans: {bans:,}"
    assert render(spec, {"bans": 1234}) == "Bans: 1,234"
    assert render(spec, {"bans": None}) is None


def test_retry_after_is_read_from_the_error_detail():
    assert retry_after_from("429 Too Many Requests: retry_after 541.2") == 541.2
    assert retry_after_from('{"retry_after": 3}') == 3.0
    assert retry_after_from("Missing Permissions") is None


def test_the_throttle_window_slides():
    now = [0.0]
    throttle = RenameThrottle(lambda: now[0])
    for name, at in (("a", 0.0), ("b", 100.0)):
        now[0] = at
        throttle.want("1", name)
        assert throttle.due() == [("1", name)]
        throttle.started("1")
        throttle.succeeded("1", name)
    now[0] = 200.0
    throttle.want("1", "c")
    assert throttle.due() == []
    assert throttle.next_due_in() == 400.0
    now[0] = 600.0
    assert throttle.due() == [("1", "c")]
