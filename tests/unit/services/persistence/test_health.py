"""What persistence tells about its storage: the first outcome, a failure only once it has
lasted `alert_after_s`, once, and the first success after it."""

from __future__ import annotations

from services.persistence.health import StorageWatch, short


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_failure_is_told_once_it_has_lasted_and_the_recovery_once() -> None:
    clock = Clock()
    watch = StorageWatch(clock, lambda: clock.t + 1e9, alert_after_s=10)
    first = watch.succeeded()
    assert first is not None and first.ok
    assert watch.succeeded() is None  # nothing changed
    assert watch.failed("database is locked") is None  # a moment: not an incident yet
    clock.t += 5
    assert watch.failed("database is locked") is None
    assert watch.succeeded() is None  # it passed: nobody was told, nobody needs to be
    assert watch.failed("OperationalError: database or disk is full\nDETAIL: more") is None
    started = clock.t
    clock.t += 10
    told = watch.failed("OperationalError: database or disk is full\nDETAIL: more")
    assert told is not None and not told.ok
    assert told.detail == "OperationalError: database or disk is full"
    assert told.since == started + 1e9  # wall time the failure began
    clock.t += 60
    assert watch.failed("still full") is None  # told already
    assert watch.failures == 3
    back = watch.succeeded()
    assert back is not None and back.ok and watch.failures == 0
    assert watch.succeeded() is None


def test_details_are_one_short_line() -> None:
    assert short("") == "unknown error"
    assert short("a\nb") == "a"
    assert len(short("x" * 500)) == 200
