"""The supervisor with real service processes: crashes, hangs, memory, stop, orphans."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.channel import MAX_PEER_LOSSES, PeerGone, RequestTimeout
from protocol.messages import Ping
from tests.support.harness import Running, alive, wait_for
from tests.support.services.messages import Misbehave

TOML = """
[supervisor]
heartbeat_interval_s = 0.2
memory_poll_s = 0.3

[defaults]
max_restarts = {max_restarts}
within_s = 30
backoff_initial_s = 0.1
backoff_max_s = 0.5
stop_grace_s = 1
shutdown_timeout_s = 3

[services.echo]
module = "tests.support.services.echo"
subscribes = ["test.item", "test.note"]
heartbeat_timeout_s = 1.5
memory_limit_mb = 150
critical = {critical}

[services.producer]
module = "tests.support.services.producer"
after = ["echo"]
"""


@pytest.fixture
def bot(tmp_path: Path) -> Iterator[Running]:
    running = Running(tmp_path, TOML.format(max_restarts=20, critical="false"))
    try:
        running.wait_all_running()
        yield running
    finally:
        running.cleanup()


def test_kill_9_is_restarted_at_once_and_serves_again(bot: Running) -> None:
    old = bot.service("echo")
    os.kill(old["pid"], signal.SIGKILL)
    new = bot.wait_state("echo", "RUNNING", pid_not=old["pid"], timeout=5)
    assert new["restarts"] == 1
    assert new["last_exit"] == "killed by SIGKILL"
    assert bot.call("echo", Ping("hi"))["pid"] == new["pid"]


def test_a_request_to_a_service_that_dies_is_answered_by_its_restarted_successor(
    bot: Running,
) -> None:
    old = bot.service("echo")
    bot.call("echo", Misbehave("crash_once"), timeout=15)  # answered: no exception
    new = bot.service("echo")
    assert new["pid"] != old["pid"] and new["restarts"] == 1


def test_a_request_that_kills_its_service_each_time_is_given_up_well_before_its_timeout(
    bot: Running,
) -> None:
    with pytest.raises(PeerGone):
        bot.call("echo", Misbehave("crash"), timeout=60)
    # Asked MAX_PEER_LOSSES times, not until the deadline (nor until the service is FATAL).
    # (The caller may learn of the last crash before the supervisor does: wait for it.)
    back = wait_for(
        lambda: (
            (s := bot.service("echo"))["state"] == "RUNNING"
            and s["restarts"] >= MAX_PEER_LOSSES
            and s
        ),
        15,
        "echo running again after its last crash",
    )
    assert back["restarts"] == MAX_PEER_LOSSES


def test_a_hung_service_is_killed_and_restarted(bot: Running) -> None:
    old = bot.service("echo")
    with pytest.raises(RequestTimeout):
        bot.call("echo", Misbehave("hang"), timeout=0.5)
    new = bot.wait_state("echo", "RUNNING", pid_not=old["pid"], timeout=10)
    assert "hung" in new["last_exit"]
    assert not alive(old["pid"])
    assert bot.call("echo", Ping())["pid"] == new["pid"]


def test_memory_over_the_limit_restarts_the_service(bot: Running) -> None:
    old = bot.service("echo")
    bot.call("echo", Misbehave("grow", mb=200), timeout=10)
    new = bot.wait_state("echo", "RUNNING", pid_not=old["pid"], timeout=10)
    assert "memory" in new["last_exit"]


def test_sigterm_stops_every_service_in_reverse_order_with_no_orphans(bot: Running) -> None:
    pids = bot.children()
    assert len(pids) == 2
    started = time.monotonic()
    assert bot.stop() == 0
    assert time.monotonic() - started < 3  # well inside the 1 s grace per service
    assert not any(alive(p) for p in pids)
    out = bot.output()
    assert out.index("producer RUNNING -> STOPPING") < out.index("echo RUNNING -> STOPPING")
    assert "SIGKILL" not in out


def test_sigkill_of_the_supervisor_leaves_no_children(bot: Running) -> None:
    pids = bot.children()
    bot.proc.kill()
    bot.proc.wait()
    wait_for(lambda: not any(alive(p) for p in pids), 5, "children to exit")


def test_a_flapping_service_goes_fatal_after_the_intensity_limit(tmp_path: Path) -> None:
    bot = Running(tmp_path, TOML.format(max_restarts=3, critical="false"))
    try:
        bot.wait_all_running()
        pid = None
        for _ in range(4):
            pid = bot.wait_state("echo", "RUNNING", pid_not=pid)["pid"]
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda pid=pid: not alive(pid), 5)
        fatal = bot.wait_state("echo", "FATAL", timeout=5)
        assert fatal["pid"] is None and fatal["restarts"] == 3
        assert bot.service("producer")["state"] == "RUNNING"  # the others live on
        assert bot.proc.poll() is None
        # An operator can bring it back by hand.
        from supervisor import control

        assert control.restart(bot.runtime, "echo").ok
        bot.wait_state("echo", "RUNNING", timeout=5)
    finally:
        bot.cleanup()


def test_a_critical_service_going_fatal_stops_the_supervisor_non_zero(tmp_path: Path) -> None:
    bot = Running(tmp_path, TOML.format(max_restarts=0, critical="true"))
    try:
        pid = bot.wait_all_running()["services"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        assert bot.proc.wait(15) == 1
        assert "critical: stopping everything" in bot.output()
    finally:
        bot.cleanup()


def test_restart_command_restarts_a_running_service(bot: Running) -> None:
    from protocol.messages import Outcome
    from supervisor import control

    old = bot.service("producer")
    assert control.restart(bot.runtime, "producer") == Outcome(True, "producer is restarting")
    new = bot.wait_state("producer", "RUNNING", pid_not=old["pid"])
    assert new["restarts"] == 0
    assert control.restart(bot.runtime, "nope").ok is False
