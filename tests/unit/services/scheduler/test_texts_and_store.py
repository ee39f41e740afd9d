"""What the scheduler writes, and what it keeps on disk between runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from icalendar import Calendar

from services.scheduler import texts
from services.scheduler.ics import calendar
from services.scheduler.store import Poll, Reminder, Store


def reminder(**changes: object) -> Reminder:
    base = Reminder(
        id=3,
        user_id="12",
        channel_id="201",
        guild_id="100",
        text="stretch",
        due_at=1_800_000_000.0,
        repeat=None,
        private=False,
        tz="UTC",
        created_at=1_799_999_400.0,
        state="active",
        first_try_at=None,
        late=False,
        refusals=0,
    )
    return Reminder(**{**vars(base), **changes})  # type: ignore[arg-type]


def test_a_reminder_names_its_person_in_a_channel_but_not_in_a_dm() -> None:
    assert texts.reminder(reminder()) == "<@12> ⏰ stretch"
    assert texts.reminder(reminder(private=True)) == "⏰ stretch"
    late = texts.reminder(reminder(late=True))
    assert late == "<@12> ⏰ stretch (late: it was due <t:1800000000:f>)"


def test_poll_results_name_the_winner_a_tie_or_nobody() -> None:
    answers = [(1, "pizza"), (2, "sushi"), (3, "salad")]
    won = texts.poll_results("Lunch?", answers, {"1": ["a", "b"], "2": ["c"]})
    assert "**pizza** wins with 2 votes (67%)" in won
    assert won.endswith("pizza: 2 · sushi: 1 · salad: 0 (3 votes in all)")
    tie = texts.poll_results("Lunch?", answers, {"1": ["a"], "2": ["b"]})
    assert "a tie between **pizza** and **sushi** with 1 vote each" in tie
    assert "nobody voted" in texts.poll_results("Lunch?", answers, {})


def test_a_long_list_is_cut_at_a_whole_line_within_a_message() -> None:
    many = [reminder(id=i, text="x" * 90) for i in range(60)]
    listed = texts.reminder_list(many, "UTC")
    assert len(listed) <= 2000 and listed.endswith("…")


def test_the_calendar_file_holds_each_event_with_a_stable_uid() -> None:
    event = {
        "id": "77",
        "guild_id": "100",
        "name": "Party",
        "start": 1_800_000_000.0,
        "end": None,
        "location": "Park",
        "description": "snacks",
        "status": "scheduled",
    }
    cal = Calendar.from_ical(calendar([event], "Sandbox", 1_799_000_000.0))
    [vevent] = cal.walk("VEVENT")
    assert str(vevent["uid"]) == "77@discord-scheduled-event"
    assert (vevent.decoded("dtend") - vevent.decoded("dtstart")).total_seconds() == 3600
    assert str(vevent["url"]) == "https://discord.com/events/100/77"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "scheduler.sqlite3")


def test_a_claim_is_taken_once(store: Store) -> None:
    assert store.claim_set("reminder:1:100", {"state": "posting"}, True)
    assert not store.claim_set("reminder:1:100", {"state": "posting"}, True)
    assert store.claim_get("reminder:1:100") == {"state": "posting"}
    assert store.claim_set("reminder:1:100", {"state": "posted"}, False)
    assert store.claim_get("reminder:1:100") == {"state": "posted"}
    assert store.claim_get("nothing") is None


def test_reminders_survive_a_reopen_and_a_repeat_moves_on(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.sqlite3"
    first = Store(path)
    repeat = {"weekdays": [0], "time": "09:00"}
    rid = first.add_reminder("12", "201", "100", "standup", 100.0, repeat, False, "UTC", 50.0)
    first.start_occurrence(rid, 101.0, True)
    first.close()
    again = Store(path)
    [due] = again.due_reminders(100.0)
    assert (due.text, due.repeat, due.first_try_at, due.late) == ("standup", repeat, 101.0, True)
    again.reminder_delivered(rid, 700.0)
    assert again.due_reminders(699.0) == []
    [moved] = again.active_reminders("12")
    assert (moved.due_at, moved.first_try_at, moved.late) == (700.0, None, False)


def test_votes_are_counted_once_however_often_they_arrive(store: Store) -> None:
    poll = Poll("5", "201", "100", "11", "Q?", [(1, "a"), (2, "b")], False, 10.0, "open", 0)
    store.add_poll(poll)
    for _ in range(3):
        store.vote("5", 1, "12", True)
    store.vote("5", 2, "13", True)
    store.vote("5", 2, "13", False)
    store.vote("5", 2, "13", False)
    assert store.votes("5") == {"1": ["12"]}
    assert store.poll("5") == poll


def test_discords_list_of_events_replaces_ours(store: Store) -> None:
    def event(eid: str, start: float) -> dict[str, object]:
        return {"id": eid, "guild_id": "100", "name": eid, "start": start, "end": None}

    store.upsert_event(event("a", 10.0), channel_id="201")
    store.upsert_event(event("b", 20.0))
    store.set_interest("b", "12", True)
    store.replace_events("100", [event("a", 15.0)])
    [kept] = store.events()
    assert (kept.event_id, kept.start, kept.channel_id) == ("a", 15.0, "201")
    assert store.interested("b") == []
