"""What people type for a time becomes the moment they meant, in their time zone, or one
line saying what to type instead."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from services.scheduler.when import (
    Repeat,
    WhenError,
    parse_duration,
    parse_moment,
    parse_repeat,
    parse_when,
)

PARIS = ZoneInfo("Europe/Paris")
UTC = ZoneInfo("UTC")
# Friday 8 May 2026, 19:00 in Paris (CEST, UTC+2)
FRIDAY_EVENING = dt.datetime(2026, 5, 8, 19, 0, tzinfo=PARIS).timestamp()


def local(at: float, tz: ZoneInfo = PARIS) -> dt.datetime:
    return dt.datetime.fromtimestamp(at, tz)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("in 10 minutes", dt.datetime(2026, 5, 8, 19, 10)),
        ("in 2h", dt.datetime(2026, 5, 8, 21, 0)),
        ("in 2h30", dt.datetime(2026, 5, 8, 21, 30)),  # dateparser alone reads 02:30
        ("in 2 hours and 5 minutes", dt.datetime(2026, 5, 8, 21, 5)),
        ("in an hour", dt.datetime(2026, 5, 8, 20, 0)),
        ("tomorrow 9:00", dt.datetime(2026, 5, 9, 9, 0)),
        ("Tomorrow at 9am", dt.datetime(2026, 5, 9, 9, 0)),
        ("friday 18:30", dt.datetime(2026, 5, 15, 18, 30)),  # today's 18:30 has passed
        ("friday 20:30", dt.datetime(2026, 5, 15, 20, 30)),
        ("2026-12-24 18:00", dt.datetime(2026, 12, 24, 18, 0)),  # CET then, not CEST
        ("dec 24 18:00", dt.datetime(2026, 12, 24, 18, 0)),
    ],
)
def test_what_people_type_is_read_in_their_time_zone(text: str, expected: dt.datetime) -> None:
    when = parse_when(text, FRIDAY_EVENING, PARIS)
    assert local(when.at).replace(tzinfo=None) == expected
    assert when.repeat is None


def test_the_same_words_mean_another_moment_in_another_time_zone() -> None:
    paris = parse_when("tomorrow 9:00", FRIDAY_EVENING, PARIS).at
    new_york = parse_when("tomorrow 9:00", FRIDAY_EVENING, ZoneInfo("America/New_York")).at
    assert new_york - paris == 6 * 3600


def test_in_ten_minutes_is_exactly_600_seconds_on_the_given_clock() -> None:
    now = 1_800_000_000.25
    assert parse_when("in 10 minutes", now, UTC).at == now + 600


def test_a_relative_time_across_a_daylight_saving_change_is_still_exact() -> None:
    # Paris moves its clocks from 02:00 to 03:00 on 29 March 2026
    before = dt.datetime(2026, 3, 29, 1, 55, tzinfo=PARIS).timestamp()
    assert parse_when("in 10 minutes", before, PARIS).at - before == 600
    assert local(parse_when("in 10 minutes", before, PARIS).at).hour == 3


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("yesterday", "is in the past"),
        ("2020-01-01 10:00", "is in the past"),
        ("now", "is in the past"),
        ("in 0 minutes", "is in the past"),
        ("blah", "I can't read `blah` as a time"),
        ("", "Say when"),
        ("in 10 years", "more than five years"),
    ],
)
def test_a_time_that_cannot_be_used_says_what_to_type(text: str, says: str) -> None:
    with pytest.raises(WhenError) as refused:
        parse_when(text, FRIDAY_EVENING, PARIS)
    message = str(refused.value)
    assert says in message
    assert "\n" not in message, "one line"
    if says != "more than five years":
        assert "`in 10 minutes`" in message, "an example of what works"


def test_every_monday_nine_is_the_next_monday_then_each_week() -> None:
    when = parse_when("every monday 9:00", FRIDAY_EVENING, PARIS)
    assert when.repeat == Repeat((0,), 9, 0)
    first = local(when.at)
    assert (first.date(), first.hour, first.minute) == (dt.date(2026, 5, 11), 9, 0)
    second = when.repeat.next_after(when.at, PARIS)
    assert second - when.at == 7 * 86400
    assert when.repeat.describe() == "every monday at 09:00"


def test_a_repeat_keeps_its_local_time_across_daylight_saving() -> None:
    repeat = parse_repeat("every day 9:00")
    saturday = dt.datetime(2026, 3, 28, 9, 0, tzinfo=PARIS).timestamp()
    sunday = repeat.next_after(saturday, PARIS)
    assert local(sunday).hour == 9 and sunday - saturday == 23 * 3600


@pytest.mark.parametrize(
    ("text", "days", "clock"),
    [
        ("every day at 7:30am", (0, 1, 2, 3, 4, 5, 6), (7, 30)),
        ("daily 8:00", (0, 1, 2, 3, 4, 5, 6), (8, 0)),
        ("every weekday 18:00", (0, 1, 2, 3, 4), (18, 0)),
        ("every mon and fri 9", (0, 4), (9, 0)),
        ("every monday, wednesday at 6pm", (0, 2), (18, 0)),
        ("every sunday 12am", (6,), (0, 0)),
    ],
)
def test_repeats_name_days_and_a_time(
    text: str, days: tuple[int, ...], clock: tuple[int, int]
) -> None:
    repeat = parse_repeat(text)
    assert (repeat.weekdays, (repeat.hour, repeat.minute)) == (days, clock)
    assert Repeat.from_json(repeat.to_json()) == repeat


@pytest.mark.parametrize(
    "text", ["every monday", "every 9:00", "every funday 9:00", "every day 25:00"]
)
def test_a_repeat_without_a_day_or_a_time_says_what_to_type(text: str) -> None:
    with pytest.raises(WhenError) as refused:
        parse_when(text, FRIDAY_EVENING, PARIS)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90 minutes", 5400),
        ("2h", 7200),
        ("1h30", 5400),
        ("1.5 hours", 5400),
        ("an hour", 3600),
        ("half an hour", 1800),
        ("2 days", 172800),
        ("1 week", 604800),
    ],
)
def test_lengths_of_time(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["blah", "10", "", "2 lightyears"])
def test_a_length_of_time_that_cannot_be_read_says_so(text: str) -> None:
    with pytest.raises(WhenError, match="length of time"):
        parse_duration(text)


def test_parse_moment_refuses_repeats_it_cannot_read() -> None:
    with pytest.raises(WhenError):
        parse_moment("every monday 9:00", FRIDAY_EVENING, PARIS)
