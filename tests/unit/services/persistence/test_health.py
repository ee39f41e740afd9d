"""What persistence tells about its storage: the first outcome; a failure once failures
have gone on for the window, once; the recovery once writes work and none has failed for
the window, once; nothing for a blip, or for a success between failures."""

from __future__ import annotations

from services.persistence.health import StorageWatch, short

WINDOW = 10.0


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def watch() -> tuple[Clock, StorageWatch]:
    clock = Clock()
    return clock, StorageWatch(clock, lambda: clock.t + 1e9, window_s=WINDOW)


def test_a_failure_is_told_once_it_has_gone_on_and_the_recovery_once_it_is_over() -> None:
    clock, w = watch()
    first = w.succeeded()
    assert first is not None and first.ok
    assert w.succeeded() is None  # nothing changed
    full = "OperationalError: database or disk is full\nDETAIL: more"
    assert w.failed(full) is None  # a moment: not an incident yet
    started = clock.t
    clock.t += 4
    assert w.failed(full) is None
    clock.t += 6
    told = w.failed(full)
    assert told is not None and not told.ok
    assert told.detail == "OperationalError: database or disk is full"
    assert told.since == started + 1e9  # wall time the trouble began
    for _ in range(3):  # a nearly full disk: small writes pass between failures
        clock.t += 4
        assert w.succeeded() is None
        assert w.failed(full) is None  # told already
        assert w.poll() is None
    assert w.failures == 6
    clock.t += 1
    assert w.succeeded() is None  # works, but failed a second ago
    assert w.failed("full") is None
    clock.t += WINDOW
    assert w.poll() is None  # no failure for the window, but nothing written since
    back = w.succeeded()
    assert back is not None and back.ok and w.failures == 0
    assert w.succeeded() is None and w.poll() is None


def test_a_blip_is_never_told_and_the_recovery_needs_no_write() -> None:
    clock, w = watch()
    assert w.succeeded() is not None
    assert w.failed("database is locked") is None
    clock.t += 5
    assert w.succeeded() is None
    clock.t += WINDOW
    assert w.poll() is None and w.trouble_since is None  # over, and nobody was told
    assert w.failed("database is locked") is None  # a new blip starts its own clock
    clock.t += WINDOW - 1
    assert w.failed("database is locked") is None
    # Told failing; then the writes stop coming and time alone tells the recovery.
    clock.t += 1
    assert w.failed("database is locked") is not None
    clock.t += 1
    assert w.succeeded() is None
    clock.t += WINDOW
    back = w.poll()
    assert back is not None and back.ok


def test_details_are_one_short_line() -> None:
    assert short("") == "unknown error"
    assert short("a\nb") == "a"
    assert len(short("x" * 500)) == 200
