"""Member reports: the numbers for a scripted day, their comparisons, and when they are due."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from services.stats import report

BERLIN = ZoneInfo("Europe/Berlin")
UTC = ZoneInfo("UTC")
DAY = dt.date(2024, 5, 8)  # a Wednesday


def at(day: dt.date, hour: int, tz: ZoneInfo = BERLIN) -> float:
    return dt.datetime.combine(day, dt.time(hour), tzinfo=tz).timestamp()


def ev(kind: str, name: str, when: float) -> dict:
    return {"kind": kind, "user_id": name, "username": name, "bot": False, "at": when}


def scripted_week() -> list[dict]:
    """Seven days before DAY with 2 joins and 1 leave each, then DAY and the day before."""
    events = []
    for back in range(1, 8):
        d = DAY - dt.timedelta(days=back)
        events += [ev("joined", f"j{back}a", at(d, 10)), ev("joined", f"j{back}b", at(d, 11))]
        events.append(ev("left", f"l{back}", at(d, 12)))
    previous = DAY - dt.timedelta(days=1)
    events.append(ev("banned", "troll", at(previous, 13)))
    # DAY itself: 25 joins (a raid), 3 leaves, one ban at 23:30 local (21:30 UTC).
    events += [ev("joined", f"raider{i:02d}", at(DAY, 9) + i) for i in range(25)]
    events += [ev("left", f"gone{i}", at(DAY, 15)) for i in range(3)]
    events.append(ev("banned", "raider00", at(DAY, 23) + 1800))
    events.append(ev("joined", "tomorrow", at(DAY + dt.timedelta(days=1), 0) + 60))
    return events


def test_a_scripted_day_gives_its_counts_and_compares_with_the_day_before_and_the_week():
    days = report.summarise(scripted_week(), DAY - dt.timedelta(days=7), 8, BERLIN)
    today, previous, week = days[-1], days[-2], days[:-1]
    assert (today.joins, today.leaves, today.bans, today.net) == (25, 3, 1, 22)
    assert (previous.joins, previous.leaves, previous.bans) == (2, 1, 1)
    embed = report.daily_embed(today, previous, week)
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Joins"] == "**25** (+23 vs the day before, 7-day avg 2.0)"
    assert fields["Leaves"] == "**3** (+2 vs the day before, 7-day avg 1.0)"
    assert fields["Bans"] == "**1** (same as the day before, 7-day avg 0.1)"
    assert fields["Net change"] == "**+22** (+21 vs the day before, 7-day avg 1.0)"
    assert fields["Joined"].endswith("raider19 and 5 more")
    assert fields["Joined"].count(",") == 19
    assert fields["Banned"] == "raider00"
    assert "Wednesday 08 May 2024" in embed["title"]


def test_days_are_local_days_in_the_configured_timezone():
    late = ev("joined", "night_owl", at(DAY, 23, BERLIN) + 1800)  # 21:30 UTC
    assert report.summarise([late], DAY, 1, BERLIN)[0].joins == 1
    assert report.summarise([late], DAY, 1, ZoneInfo("Asia/Tokyo"))[0].joins == 0


def test_usernames_cannot_format_the_report():
    assert report.names(["**bold**", "a_b"]) == "\\*\\*bold\\*\\*, a\\_b"
    assert report.names([]) == "none"


def test_the_weekly_report_totals_the_week_against_the_week_before():
    monday = dt.date(2024, 5, 6)
    events = [ev("joined", f"w{i}", at(monday, 10) + i * 86400) for i in range(7)]
    events += [ev("joined", "old", at(monday - dt.timedelta(days=3), 10))]
    days = report.summarise(events, monday - dt.timedelta(days=7), 14, BERLIN)
    embed = report.weekly_embed(days[7:], days[:7])
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Joins"] == "**7** (+6 vs the week before)"
    assert fields["Net change"] == "**+7** (+6 vs the week before)"


def test_a_report_is_due_the_next_local_morning_and_missed_ones_are_caught_up():
    nine = report.parse_time("09:00")
    first_run = at(DAY, 8)
    assert report.due_reports(at(DAY, 8) + 60, BERLIN, nine, None, first_run) == []
    # The bot was down from Wednesday noon until Saturday 10:00: three reports are due.
    saturday = DAY + dt.timedelta(days=3)
    jobs = report.due_reports(at(saturday, 10), BERLIN, nine, "monday", first_run)
    assert [j.key for j in jobs] == ["daily:2024-05-08", "daily:2024-05-09", "daily:2024-05-10"]
    assert jobs[0].due_at == at(DAY + dt.timedelta(days=1), 9)


def test_nothing_is_due_from_before_the_bot_first_ran_and_weeklies_come_on_the_weekly_day():
    nine = report.parse_time("09:00")
    monday = dt.date(2024, 5, 13)
    jobs = report.due_reports(at(monday, 9, UTC), UTC, nine, "monday", first_run=at(DAY, 0, UTC))
    keys = [j.key for j in jobs]
    assert keys[0] == "daily:2024-05-08"  # not the 7th: the bot was not there yet
    assert keys[-2:] == ["daily:2024-05-12", "weekly:2024-05-06"]
    assert jobs[-1].header.endswith("2024-05-06 to 2024-05-12**")


def test_the_next_report_time_follows_daylight_saving_time():
    nine = report.parse_time("09:00")
    before_switch = at(dt.date(2024, 3, 30), 10)  # Berlin moves to CEST on 31 March
    due = report.next_due_at(before_switch, BERLIN, nine)
    assert due - before_switch == 23 * 3600 - 3600
