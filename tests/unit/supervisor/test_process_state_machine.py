"""The supervisor's per-service state machine and restart policy, driven with a fake clock."""

from __future__ import annotations

import pytest

from supervisor.config import RestartPolicy, ServiceSpec
from supervisor.process import IllegalTransition, ServiceProcess, State, backoff_delay


def make(restart: str = "permanent", **policy: float) -> ServiceProcess:
    spec = ServiceSpec(
        name="svc",
        module="x",
        policy=RestartPolicy(restart=restart, **policy),  # type: ignore[arg-type]
        heartbeat_timeout_s=5,
        start_timeout_s=10,
        memory_limit_mb=100,
    )
    return ServiceProcess(spec, random=lambda: 0.5)  # 0.5 = no jitter


def run_until_crash(p: ServiceProcess, now: float, up_for: float = 1.0):
    p.spawned(100, now)
    p.ready(now)
    return p.exited(-9, now + up_for)


def test_first_restart_is_immediate_then_backoff_doubles_up_to_max() -> None:
    p = make(max_restarts=100, within_s=1000, backoff_initial_s=0.5, backoff_max_s=4)
    delays = [run_until_crash(p, t * 10.0).delay_s for t in range(7)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert p.state is State.BACKOFF
    assert p.restarts == 7
    assert p.last_exit == "killed by SIGKILL"


def test_jitter_stays_within_its_band() -> None:
    policy = RestartPolicy(backoff_initial_s=1, backoff_max_s=100, backoff_jitter=0.2)
    assert backoff_delay(3, policy, lambda: 0.0) == pytest.approx(4 * 0.8)
    assert backoff_delay(3, policy, lambda: 1.0) == pytest.approx(4 * 1.2)


def test_a_service_up_for_the_stable_window_gets_its_backoff_reset() -> None:
    p = make(max_restarts=100, within_s=1000, backoff_initial_s=1, stable_after_s=30)
    assert run_until_crash(p, 0).delay_s == 0
    assert run_until_crash(p, 10).delay_s == 1
    assert run_until_crash(p, 20).delay_s == 2
    assert run_until_crash(p, 40, up_for=31).delay_s == 0  # stable: start over


def test_more_than_max_restarts_within_window_is_fatal() -> None:
    p = make(max_restarts=3, within_s=10)
    for t in range(3):
        assert run_until_crash(p, t) is not None
    assert run_until_crash(p, 3.5) is None
    assert p.state is State.FATAL
    assert p.status(4)["reason"].endswith("more than 3 restarts in 10s")


def test_restarts_spread_beyond_the_window_never_go_fatal() -> None:
    p = make(max_restarts=2, within_s=10)
    for t in range(10):
        assert run_until_crash(p, t * 6.0) is not None
    assert p.state is State.BACKOFF


def test_transient_restarts_only_on_abnormal_exit() -> None:
    p = make("transient")
    p.spawned(1, 0)
    p.ready(0)
    assert p.exited(0, 1) is None
    assert p.state is State.EXITED
    p.spawned(2, 2)
    assert p.exited(1, 3) is not None
    assert p.state is State.BACKOFF


def test_temporary_is_never_restarted() -> None:
    p = make("temporary")
    assert run_until_crash(p, 0) is None
    assert p.state is State.EXITED


def test_shutdown_stops_without_restart_and_operator_restart_is_not_a_failure() -> None:
    p = make(max_restarts=1, within_s=100)
    p.spawned(1, 0)
    p.ready(0)
    p.stopping("restart")
    assert p.state is State.STOPPING
    assert p.exited(0, 1).delay_s == 0  # operator restarts never count towards FATAL
    p.spawned(2, 1)
    p.ready(1)
    p.stopping("shutdown")
    assert p.exited(0, 2) is None
    assert p.state is State.STOPPED


def test_missed_heartbeats_and_slow_start_are_hangs() -> None:
    p = make()
    p.spawned(1, 0)
    assert p.hung(5) is None
    assert p.hung(10.5) is not None and "not ready" in p.hung(10.5)
    p.ready(1)
    p.heartbeat(3)
    assert p.hung(7.9) is None
    assert "no heartbeat" in p.hung(8.1)


def test_a_hung_kill_counts_towards_intensity() -> None:
    p = make(max_restarts=1, within_s=100)
    p.spawned(1, 0)
    p.ready(0)
    p.stopping("hung")
    assert p.exited(-9, 1) is not None
    assert p.last_exit == "killed by SIGKILL (hung)"
    p.spawned(2, 1)
    p.ready(1)
    p.stopping("hung")
    assert p.exited(-9, 2) is None
    assert p.state is State.FATAL


def test_memory_limit_applies_only_while_running() -> None:
    p = make()
    p.spawned(1, 0)
    assert not p.over_memory(500)
    p.ready(0)
    assert not p.over_memory(99)
    assert p.over_memory(101)


def test_illegal_transitions_are_refused() -> None:
    p = make()
    with pytest.raises(IllegalTransition):
        p.ready_at = 0
        p.transition(State.RUNNING, "skipping STARTING")
    with pytest.raises(IllegalTransition):
        p.transition(State.BACKOFF, "never ran")


def test_status_uses_the_state_names() -> None:
    p = make()
    p.spawned(42, 0)
    p.ready(1)
    s = p.status(11)
    assert (s["state"], s["pid"], s["uptime_s"], s["restarts"]) == ("RUNNING", 42, 10.0, 0)


def test_a_temporary_service_killed_as_hung_ends_exited_not_in_a_crash() -> None:
    p = make("temporary")
    p.spawned(100, 0.0)
    p.ready(0.0)
    p.stopping("hung")
    assert p.exited(-9, 20.0) is None
    assert p.state is State.EXITED
