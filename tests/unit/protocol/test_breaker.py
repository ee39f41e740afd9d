"""The per-channel circuit breaker, on a fake monotonic clock."""

from __future__ import annotations

import pytest

from protocol.breaker import BreakerOpen, BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_threshold_fails_fast_probes_once_and_closes() -> None:
    clock = Clock()
    changes: list[tuple[str, str]] = []
    b = CircuitBreaker(
        "a->b",
        failure_threshold=3,
        reset_timeout_s=5,
        clock=clock,
        on_change=lambda n, o, s: changes.append((o.value, s.value)),
    )
    for _ in range(3):
        b.before_call()
        b.record_failure()
    assert b.state is BreakerState.OPEN
    with pytest.raises(BreakerOpen) as info:
        b.before_call()
    assert info.value.retry_in_s == pytest.approx(5)
    clock.t += 5
    b.before_call()  # the probe
    assert b.state is BreakerState.HALF_OPEN
    with pytest.raises(BreakerOpen):
        b.before_call()  # a concurrent caller does not get a second probe
    b.record_success()
    assert b.state is BreakerState.CLOSED
    b.before_call()
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_failed_probe_reopens_for_a_full_timeout() -> None:
    clock = Clock()
    b = CircuitBreaker("a->b", failure_threshold=1, reset_timeout_s=2, clock=clock)
    b.record_failure()
    clock.t += 2
    b.before_call()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert b.retry_in() == pytest.approx(2)
    assert not b.allows()


def test_success_resets_the_failure_count() -> None:
    b = CircuitBreaker("a->b", failure_threshold=3, clock=Clock())
    b.record_failure()
    b.record_failure()
    b.record_success()
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED
