"""Reminders, native polls and scheduled events end to end: `python run.py --sandbox` with
the scheduler, driven only through the emulator's control API (POST interactions, POST
clock, POST polls/{id}/votes, GET scheduled-events, GET channels/{id}/messages), as an
acceptance check would.

`POST clock` moves the emulator's clock and, through the supervisor, the clock of every
service that allows it: a reminder ten minutes away fires when the test moves time ten
minutes on. Each test is also marked with the Discord actions it proves
(docs/discord-actions.md).
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from icalendar import Calendar

from protocol.messages import AdvanceClock
from tests.support.harness import Running, wait_for
from tests.support.sandbox import FAST_CORE, Sandbox, running_sandbox

pytestmark = pytest.mark.timeout(120)

TOML = (
    FAST_CORE
    + """
[services.scheduler]
module = "services.scheduler"
after = ["gateway", "persistence"]
subscribes = ["discord.guild.ready", "discord.poll.vote_added", "discord.poll.vote_removed",
              "discord.poll.ended", "discord.scheduled_event", "discord.scheduled_event.interest"]
[services.scheduler.settings]
timezone = "UTC"
event_reminder_min = 15
"""
)
MESSAGES = "/channels/{channel_id}/messages"
CALLBACK = "/interactions/{interaction_id}/{token}/callback"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with running_sandbox(tmp_path_factory.mktemp("scheduler"), TOML, commands=True) as box:
        yield box


def run(box: Sandbox, user: str, name: str, /, **options: Any) -> dict[str, Any]:
    """`user` runs `/name` in #general; answers the interaction's first response."""
    body = {
        "channel_id": box.channels["general"],
        "user_id": box.users[user],
        "name": name,
        "options": options,
    }
    iid = box.post("interactions", body)["id"]
    return wait_for(
        lambda: (r := box.get(f"interactions/{iid}")["responses"]) and r[0],
        10,
        f"the answer to /{name}",
    )


def said(box: Sandbox, text: str, channel: str = "general") -> list[dict[str, Any]]:
    return [m for m in box.bot_messages(channel) if text in m["content"]]


def advance(box: Sandbox, seconds: float) -> None:
    box.post("clock", {"advance_s": seconds})


def kill(box: Sandbox, name: str) -> None:
    pid = box.service(name)["pid"]
    os.kill(pid, signal.SIGKILL)
    box.wait_state(name, "RUNNING", pid_not=pid)


# --- Must show: a reminder, once, pinging only its person, across a SIGKILL -----------


def test_remind_in_ten_minutes_posts_once_pinging_only_bob_across_a_killed_scheduler(
    box: Sandbox,
) -> None:
    bob = box.users["bob"]
    answer = run(box, "bob", "remind", when="in 10 minutes", text="stretch")
    assert answer["ephemeral"] is True
    assert "<t:" in answer["content"] and ":F>" in answer["content"]
    due = int(answer["content"].split("<t:")[1].split(":F>")[0])
    assert abs(due - (time.time() + clock_offset(box) + 600)) < 5

    kill(box, "scheduler")
    mark = box.mark()
    advance(box, 660)
    [posted] = wait_for(lambda: said(box, "stretch"), 15, "the reminder")
    assert posted["allowed_mentions"] == {"parse": [], "users": [bob]}
    assert posted["content"] == f"<@{bob}> ⏰ stretch"

    advance(box, 660)
    time.sleep(1.5)
    assert len(said(box, "stretch")) == 1, "advancing again posts nothing more"
    sends = [r for r in box.requests(mark, "POST", MESSAGES) if "stretch" in str(r["body"])]
    assert len(sends) == 1, "Discord was asked once"


def test_a_reminder_due_as_the_gateway_is_killed_is_still_posted_once(box: Sandbox) -> None:
    run(box, "bob", "remind", when="in 10 minutes", text="gateway gone")
    advance(box, 601)
    kill(box, "gateway")  # around the send: before, during or after it
    box.wait_connected()
    for _ in range(6):  # past the retry (30 s) and the lease (120 s) of an unknown outcome
        advance(box, 31)
        time.sleep(0.5)
    [posted] = wait_for(lambda: said(box, "gateway gone"), 15, "the reminder")
    assert posted["allowed_mentions"] == {"parse": [], "users": [box.users["bob"]]}
    time.sleep(1)
    assert len(said(box, "gateway gone")) == 1


def clock_offset(box: Sandbox) -> float:
    """How far the sandbox has moved time (its clock is monotonic time plus that)."""
    return float(box.get("clock")["now"]) - time.monotonic()


def test_a_service_started_after_the_clock_moved_keeps_the_sandboxs_time(box: Sandbox) -> None:
    advance(box, 120)
    kill(box, "scheduler")
    reading = Running.call(box, "scheduler", AdvanceClock(0))
    assert abs(reading["wall"] - (time.time() + clock_offset(box))) < 2


@pytest.mark.action("dm_channel")
def test_a_private_reminder_arrives_by_dm(box: Sandbox) -> None:
    bob = box.users["bob"]
    answer = run(box, "bob", "remind", when="in 5 minutes", text="drink water", private=True)
    assert "by DM" in answer["content"]
    mark = box.mark()
    advance(box, 301)
    [dm] = wait_for(
        lambda: [m for m in box.get(f"users/{bob}/dms") if "drink water" in m["content"]],
        15,
        "the DM",
    )
    assert dm["content"] == "⏰ drink water" and dm["allowed_mentions"] == {"parse": []}
    [opened] = box.requests(mark, "POST", "/users/@me/channels")
    assert opened["body"] == {"recipient_id": bob} and opened["status"] == 200
    assert said(box, "drink water") == [], "not in the channel"


# --- Must show: a native poll, votes, and its results --------------------------------


@pytest.mark.action("send_poll")
@pytest.mark.action("poll_voters")
def test_a_lunch_poll_counts_the_votes_and_names_pizza_with_two(box: Sandbox) -> None:
    mark = box.mark()
    answer = run(box, "alice", "poll", question="Lunch?", answers="pizza;sushi;salad", hours=1)
    assert answer["ephemeral"] is True and "Poll posted" in answer["content"]
    [message] = wait_for(
        lambda: [m for m in box.bot_messages() if (m["poll"] or {}).get("question") == "Lunch?"],
        10,
        "the poll",
    )
    poll = message["poll"]
    assert [a["text"] for a in poll["answers"]] == ["pizza", "sushi", "salad"]
    [request] = [r for r in box.requests(mark, "POST", MESSAGES) if "poll" in (r["body"] or {})]
    assert request["body"]["poll"] == {
        "question": {"text": "Lunch?"},
        "answers": [{"poll_media": {"text": a}} for a in ("pizza", "sushi", "salad")],
        "duration": 1,
        "allow_multiselect": False,
        "layout_type": 1,
    }

    carol = box.users.get("carol") or box.post("members", {"username": "carol"})["id"]
    for user, choice in ((box.users["alice"], "pizza"), (box.users["bob"], "pizza"), (carol, 2)):
        box.post(f"polls/{message['id']}/votes", {"user_id": user, "answer": choice})

    advance(box, 3700)
    [results] = wait_for(lambda: said(box, "**Lunch?** has ended"), 15, "the results")
    assert "**pizza** wins with 2 votes" in results["content"]
    assert "pizza: 2 · sushi: 1 · salad: 0" in results["content"]
    assert results["reply_to_id"] == message["id"]
    assert results["allowed_mentions"] == {"parse": []}
    voters = box.requests(
        mark, "GET", "/channels/{channel_id}/polls/{message_id}/answers/{answer_id}"
    )
    assert sorted(r["path"].rsplit("/", 1)[1] for r in voters) == ["1", "2", "3"]
    assert all(r["status"] == 200 and "limit=100" in r["query"] for r in voters)
    final = next(m for m in box.messages() if m["id"] == message["id"])["poll"]
    assert final["finalized"] is True
    assert [a["votes"] for a in final["answers"]] == [2, 1, 0]


@pytest.mark.action("expire_poll")
def test_the_creator_ends_a_poll_early_through_discords_expire_endpoint(box: Sandbox) -> None:
    run(box, "bob", "poll", question="Tabs or spaces?", answers="tabs;spaces", hours=48)
    [message] = wait_for(
        lambda: [
            m for m in box.bot_messages() if (m["poll"] or {}).get("question") == "Tabs or spaces?"
        ],
        10,
        "the poll",
    )
    box.post(f"polls/{message['id']}/votes", {"user_id": box.users["alice"], "answer": "spaces"})
    mark = box.mark()
    ended = run(box, "alice", "endpoll", poll=message["id"])  # an admin may, too
    assert "has ended" in ended["content"]
    expire = "/channels/{channel_id}/polls/{message_id}/expire"
    [expired] = box.requests(mark, "POST", expire)
    assert expired["status"] == 200 and expired["body"] is None
    assert expired["path"].endswith(f"/polls/{message['id']}/expire")
    [results] = wait_for(lambda: said(box, "**Tabs or spaces?** has ended"), 15, "the results")
    assert "**spaces** wins with 1 vote" in results["content"]
    assert next(m for m in box.messages() if m["id"] == message["id"])["poll"]["finalized"]
    again = run(box, "bob", "endpoll", poll=message["id"])
    assert again["ephemeral"] and "No open poll" in again["content"]
    assert len(box.requests(mark, "POST", expire)) == 1


# --- Must show: a scheduled event, and the calendar file ------------------------------


@pytest.mark.action("create_event")
@pytest.mark.action("list_events")
@pytest.mark.action("answer_with_files")
def test_event_create_is_a_scheduled_event_and_events_ics_holds_it(box: Sandbox) -> None:
    mark = box.mark()
    answer = run(
        box,
        "alice",
        "event create",
        name="Board games",
        start="tomorrow 18:00",
        duration="3h",
        location="The café",
    )
    assert "**Board games**" in answer["content"]
    [event] = [e for e in box.get("scheduled-events") if e["name"] == "Board games"]
    assert event["location"] == "The café"
    [made] = box.requests(mark, "POST", "/guilds/{guild_id}/scheduled-events")
    assert made["status"] == 200
    assert made["body"]["entity_type"] == 3 and made["body"]["privacy_level"] == 2
    assert made["body"]["entity_metadata"] == {"location": "The café"}

    answer = run(box, "alice", "events", ics=True)
    [attachment] = answer["attachments"]
    assert attachment["filename"] == "events.ics"
    assert attachment["content_type"] == "text/calendar"
    with urllib.request.urlopen(attachment["url"], timeout=5) as resp:
        cal = Calendar.from_ical(resp.read())
    summaries = {str(v["summary"]): v for v in cal.walk("VEVENT")}
    assert "Board games" in summaries
    vevent = summaries["Board games"]
    assert str(vevent["location"]) == "The café"
    assert (vevent.decoded("dtend") - vevent.decoded("dtstart")).total_seconds() == 3 * 3600
    [listed] = box.requests(mark, "GET", "/guilds/{guild_id}/scheduled-events")[-1:]
    assert "with_user_count=1" in listed["query"]
    callbacks = box.requests(mark, "POST", CALLBACK)
    [with_file] = [r for r in callbacks if r["files"]]
    assert with_file["form"] is True and with_file["files"] == ["events.ics"]
    assert with_file["body"]["data"]["attachments"] == [{"id": 0, "filename": "events.ics"}]

    shown = next(m for m in box.messages() if m["id"] == answer["message_id"])
    assert shown["attachments"][0]["url"] == attachment["url"], "in the channel for everyone"
    listing = run(box, "bob", "events")
    assert "**Board games**" in listing["content"] and listing["ephemeral"]


@pytest.mark.action("event_users")
def test_people_interested_in_an_event_are_reminded_before_it(box: Sandbox) -> None:
    run(box, "alice", "event create", name="Standup", start="in 1 hour", location="Voice")
    [event] = [e for e in box.get("scheduled-events") if e["name"] == "Standup"]
    bob = box.users["bob"]
    box.post(f"scheduled-events/{event['id']}/interested", {"user_id": bob})
    mark = box.mark()
    advance(box, 46 * 60)
    [reminder] = wait_for(lambda: said(box, "**Standup** starts"), 15, "the event reminder")
    assert reminder["allowed_mentions"] == {"parse": [], "users": [bob]}
    assert f"<@{bob}>" in reminder["content"]
    [users] = box.requests(mark, "GET", "/guilds/{guild_id}/scheduled-events/{event_id}/users")
    assert users["status"] == 200 and "limit=100" in users["query"]


# --- Must show: bad input, one ephemeral line saying what to type ---------------------


@pytest.mark.parametrize(
    ("name", "options", "hint"),
    [
        ("remind", {"when": "yesterday", "text": "x"}, "`in 10 minutes`"),
        ("remind", {"when": "blah", "text": "x"}, "`in 10 minutes`"),
        ("poll", {"question": "Lunch?", "answers": "pizza"}, "`answers:pizza;sushi;salad`"),
        ("poll", {"question": "Lunch?", "answers": ";".join("abcdefghijk")}, "keep 10"),
        ("event create", {"name": "Past", "start": "yesterday 18:00"}, "`tomorrow 9:00`"),
    ],
    ids=["when-yesterday", "when-blah", "one-answer", "eleven-answers", "start-in-the-past"],
)
def test_bad_input_gets_one_ephemeral_line_saying_what_to_type(
    box: Sandbox, name: str, options: dict[str, Any], hint: str
) -> None:
    polls_before = sum(1 for m in box.bot_messages() if m["poll"])
    events_before = len(box.get("scheduled-events"))
    answer = run(box, "bob", name, **options)
    assert answer["ephemeral"] is True
    assert "\n" not in answer["content"] and hint in answer["content"], answer["content"]
    assert sum(1 for m in box.bot_messages() if m["poll"]) == polls_before
    assert len(box.get("scheduled-events")) == events_before


def test_no_service_restarted_but_the_killed_ones(box: Sandbox) -> None:
    restarts = {s["name"]: s["restarts"] for s in box.status()["services"]}
    assert restarts["persistence"] == 0
    assert (restarts["gateway"], restarts["scheduler"]) == (1, 2), "the SIGKILLs above"
    assert "Traceback" not in box.output()


def test_files_sent_with_an_answer_are_served_as_uploaded(box: Sandbox) -> None:
    answer = run(box, "bob", "events", ics=True)
    [attachment] = answer["attachments"]
    with urllib.request.urlopen(attachment["url"], timeout=5) as resp:
        data = resp.read()
    assert data.startswith(b"BEGIN:VCALENDAR") and data.endswith(b"END:VCALENDAR\r\n")
    assert len(data) == attachment["size"]
