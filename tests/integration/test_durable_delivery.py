"""Durable events across real processes: killed receivers and senders lose and double nothing."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import Running, alive, wait_for
from tests.support.services.messages import Count, Produce

TOML = """
[supervisor]
heartbeat_interval_s = 0.2

[defaults]
max_restarts = 50
within_s = 30
backoff_initial_s = 0.05
backoff_max_s = 0.2

[services.echo]
module = "tests.support.services.echo"
subscribes = ["test.item", "test.note"]

[services.producer]
module = "tests.support.services.producer"
after = ["echo"]
"""


@pytest.fixture
def bot(tmp_path: Path) -> Iterator[Running]:
    running = Running(tmp_path, TOML)
    try:
        running.wait_all_running()
        yield running
    finally:
        running.cleanup()


def stored(bot: Running) -> dict:
    return bot.call("echo", Count(), timeout=2)


def test_receiver_killed_twice_mid_stream_loses_and_doubles_nothing(bot: Running) -> None:
    total = 0
    for _ in range(2):
        bot.call("producer", Produce(start=total, count=3000), timeout=20)
        total += 3000
        pid = bot.service("echo")["pid"]
        os.kill(pid, signal.SIGKILL)
        bot.wait_state("echo", "RUNNING", pid_not=pid, timeout=10)
    bot.call("producer", Produce(start=total, count=3000), timeout=20)
    total += 3000
    result = wait_for(lambda: (c := stored(bot))["rows"] == total and c, 30, f"{total} rows")
    assert result["rows"] == total  # every event stored, each exactly once (primary key)
    producer = bot.service("producer")
    wait_for(lambda: bot.service("producer")["channels"][0]["unacked"] == 0 or None, 10)
    echo = bot.service("echo")
    assert echo["restarts"] == 2, (echo["last_exit"], bot.output()[-3000:])
    assert producer["state"] == "RUNNING"


def test_sender_killed_before_acks_replays_from_its_outbox(bot: Running) -> None:
    bot.call("producer", Produce(start=0, count=4000), timeout=20)
    # Kill both ends at once: the receiver loses what it had in memory, the sender
    # loses its process, and only the sender's outbox on disk remembers.
    victims = [bot.service("echo")["pid"], bot.service("producer")["pid"]]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(alive(p) for p in victims), 5)
    bot.wait_all_running()
    result = wait_for(lambda: (c := stored(bot))["rows"] == 4000 and c, 30, "4000 rows")
    assert result["rows"] == 4000
