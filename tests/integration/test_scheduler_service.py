"""The scheduler in-process over real ZeroMQ, beside the fake gateway and persistence.

One clock is shared by the scheduler and the fake gateway and stands still unless a test
moves it, so "ten minutes later" takes no time. A "restart" is a new scheduler built on
the same data dir, as the supervisor would start one.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from icalendar import Calendar

from protocol.clock import Clock, fixed
from protocol.commands import Tier
from protocol.discord import (
    NO_PINGS,
    CommandAnswer,
    CommandInvoked,
    PollEnded,
    PollVoteAdded,
    ScheduledEventInterest,
    SendMessage,
    pinging_only,
)
from protocol.runtime import Service
from services.scheduler import build
from tests.support.fakes import GUILD, FakeGateway, FakePersistence, Processes, ask, eventually

pytestmark = pytest.mark.anyio

T0 = dt.datetime(2026, 5, 8, 17, 0, tzinfo=dt.UTC).timestamp()  # a Friday, 17:00 UTC
ALICE, BOB, CAROL = "11", "12", "13"
GENERAL = "201"
SETTINGS = {"timezone": "UTC", "event_reminder_min": 15}


@dataclass
class World:
    tmp: Path
    procs: Processes
    clock: Clock
    gateway: FakeGateway
    store: FakePersistence
    scheduler: Service | None = None

    async def start_scheduler(self, settings: dict[str, Any] | None = None) -> Service:
        """A new scheduler process on the same data dir (and the same time)."""
        if self.scheduler is not None:
            await self.procs.stop(self.scheduler)
        service, _ = build(self.clock)
        self.scheduler = await self.procs.start(service, {**SETTINGS, **(settings or {})})
        await eventually(lambda: service.ready.is_set(), what="the scheduler ready")
        return service

    async def run(
        self,
        name: str,
        /,
        user: str = BOB,
        sub: str | None = None,
        tier: Tier = Tier.MEMBER,
        **options: Any,
    ) -> CommandAnswer:
        """A slash command as the gateway routes it."""
        msg = CommandInvoked(
            "1", name, options, user, "someone", GENERAL, GUILD, tier.value, subcommand=sub
        )
        return await ask(self.tmp, "scheduler", msg)

    async def later(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await anyio.sleep(0.2)  # time for the schedule to look (and perhaps post)

    def posts(self, text: str) -> list[SendMessage]:
        return [m for m in self.gateway.sent if text in m.content]


@asynccontextmanager
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = fixed(T0)
    gateway = FakeGateway()
    gateway.service.clock = clock  # poll expiries on the same clock
    store = FakePersistence(gateway)
    async with anyio.create_task_group() as tg:
        procs = Processes(tg, tmp_path)
        await procs.start(store.service)
        await procs.start(gateway.service)
        w = World(tmp_path, procs, clock, gateway, store)
        await w.start_scheduler()
        yield w
        tg.cancel_scope.cancel()


# --- reminders ------------------------------------------------------------------------


async def test_a_reminder_is_posted_once_at_its_time_pinging_only_its_person(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        answer = await w.run("remind", when="in 10 minutes", text="stretch")
        assert answer.ephemeral and f"<t:{int(T0 + 600)}:F>" in answer.content
        await w.later(599)
        assert w.posts("stretch") == []
        await w.later(2)
        [posted] = await eventually(lambda: w.posts("stretch"), what="the reminder")
        assert posted.channel_id == GENERAL
        assert posted.content == f"<@{BOB}> ⏰ stretch"
        assert posted.allowed_mentions == pinging_only(BOB)
        await w.later(3600)
        assert len(w.posts("stretch")) == 1, "once"
        listed = await w.run("reminders")
        assert "no reminders" in listed.content


async def test_a_reminder_outlives_a_restart_of_the_scheduler(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.run("remind", when="in 10 minutes", text="stretch")
        await w.start_scheduler()  # killed and started again before its time
        await w.later(601)
        await eventually(lambda: w.posts("stretch"), what="the reminder")
        await w.start_scheduler()
        await w.later(600)
        assert len(w.posts("stretch")) == 1
        assert "late" not in w.posts("stretch")[0].content


async def test_a_post_whose_answer_was_lost_is_found_and_not_sent_again(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.run("remind", when="in 10 minutes", text="stretch")
        w.gateway.lose_replies = True  # it reaches Discord; the gateway dies before answering
        await w.later(601)
        await eventually(lambda: w.posts("stretch"), what="the first send")
        w.gateway.lose_replies = False
        await w.start_scheduler()  # a new process: only the claim "posting" is left
        await w.later(31)  # past the retry: it looks among the stored messages first
        await w.later(200)  # and past the lease, where an unfound post would go again
        assert len(w.posts("stretch")) == 1
        assert "no reminders" in (await w.run("reminders")).content, "marked delivered"


async def test_a_reminder_due_while_the_scheduler_was_down_is_posted_late(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        await w.run("remind", when="in 10 minutes", text="stretch")
        assert w.scheduler is not None
        await w.procs.stop(w.scheduler)
        w.scheduler = None
        w.clock.advance(3600)  # an hour passes with no scheduler
        await w.start_scheduler()
        [posted] = await eventually(lambda: w.posts("stretch"), what="the late reminder")
        assert posted.content == f"<@{BOB}> ⏰ stretch (late: it was due <t:{int(T0 + 600)}:f>)"


async def test_a_repeating_reminder_comes_back_each_week(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        answer = await w.run("remind", when="every monday 9:00", text="standup")
        monday = dt.datetime(2026, 5, 11, 9, 0, tzinfo=dt.UTC).timestamp()
        assert f"<t:{int(monday)}:F>" in answer.content and "every monday" in answer.content
        await w.later(monday - T0 + 1)
        await eventually(lambda: len(w.posts("standup")) == 1, what="the first monday")
        await w.later(7 * 86400)
        await eventually(lambda: len(w.posts("standup")) == 2, what="the second monday")
        listed = await w.run("reminders")
        assert f"<t:{int(monday + 14 * 86400)}:F>" in listed.content


async def test_a_private_reminder_goes_by_dm_and_pings_nobody(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        answer = await w.run("remind", when="in 1 hour", text="call mum", private=True)
        assert "by DM" in answer.content
        await w.later(3601)
        [posted] = await eventually(lambda: w.posts("call mum"), what="the DM")
        assert posted.channel_id == w.gateway.dms[BOB]
        assert posted.content == "⏰ call mum" and posted.allowed_mentions == NO_PINGS


async def test_a_reminder_discord_keeps_refusing_is_given_up_after_five_tries(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        await w.run("remind", when="in 1 minute", text="stretch")
        await w.run("remind", when="in 1 minute", text="patience")
        w.gateway.fail_sends = "403 (code 50001) Missing Access"
        w.gateway.fail_reason = "forbidden"
        await w.later(61)
        for _ in range(6):
            await w.later(31)
        w.gateway.fail_sends = None
        await w.later(31)
        assert w.posts("stretch") == [] and w.posts("patience") == []
        assert "no reminders" in (await w.run("reminders")).content


async def test_a_reminder_waits_out_a_discord_outage_however_long(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.run("remind", when="in 1 minute", text="patience")
        w.gateway.fail_sends = "503 (code 0) Service Unavailable"  # no definite refusal
        await w.later(61)
        for _ in range(8):
            await w.later(31)
        w.gateway.fail_sends = None
        await w.later(31)
        [posted] = await eventually(lambda: w.posts("patience"), what="the reminder")
        # Late or not is decided at its first try: a retried post reads the same, which is
        # how an interrupted one is recognised among the stored messages.
        assert posted.content == f"<@{BOB}> ⏰ patience"


async def test_reminders_are_listed_and_cancelled_by_their_owner_only(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        mine = await w.run("remind", when="tomorrow 9:00", text="water the plants")
        number = mine.content.split("reminder #")[1].split(" ")[0]
        listed = await w.run("reminders")
        assert f"`#{number}`" in listed.content and "water the plants" in listed.content
        theirs = await w.run("reminders", user=ALICE, cancel=int(number))
        assert "no reminder" in theirs.content
        cancelled = await w.run("reminders", cancel=int(number))
        assert cancelled.content.startswith(f"Cancelled reminder #{number}")
        await w.later(86400)
        assert w.posts("plants") == []


async def test_a_time_zone_changes_how_times_are_read(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        shown = await w.run("timezone", sub="show")
        assert "server's time zone, UTC" in shown.content
        bad = await w.run("timezone", sub="set", zone="Mars/Olympus")
        assert bad.ephemeral and "not a time zone" in bad.content
        ok = await w.run("timezone", sub="set", zone="america/new_york")
        assert "America/New_York" in ok.content
        answer = await w.run("remind", when="tomorrow 9:00", text="coffee")
        nine_in_new_york = dt.datetime(2026, 5, 9, 13, 0, tzinfo=dt.UTC).timestamp()
        assert f"<t:{int(nine_in_new_york)}:F>" in answer.content


BAD_INPUT = [
    ("remind", None, {"when": "yesterday", "text": "x"}, "in the past"),
    ("remind", None, {"when": "blah", "text": "x"}, "can't read"),
    ("remind", None, {"when": "in 5 minutes", "text": ""}, "what to remind you of"),
    ("poll", None, {"question": "Lunch?", "answers": "pizza"}, "needs 2 to 10 answers"),
    ("poll", None, {"question": "Q", "answers": ";".join("abcdefghijk")}, "at most 10"),
    ("poll", None, {"question": "Q", "answers": "a;b", "hours": 0}, "hours:"),
    ("poll", None, {"question": "Q", "answers": "a;" + "b" * 56}, "55 characters"),
    ("event", "create", {"name": "Party", "start": "yesterday 18:00"}, "in the past"),
    ("event", "create", {"name": "Party", "start": "soonish"}, "can't read"),
    ("event", "create", {"name": "", "start": "tomorrow"}, "name of 1 to 100"),
]


async def test_bad_input_gets_one_ephemeral_line_saying_what_to_type(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        for name, sub, options, says in BAD_INPUT:
            answer = await w.run(name, sub=sub, **options)
            case = f"/{name} {options}: {answer.content!r}"
            assert answer.ephemeral and "\n" not in answer.content, case
            assert says in answer.content and "`" in answer.content, case
        assert w.gateway.polls == {} and w.gateway.events == {} and w.gateway.sent == []


# --- polls ----------------------------------------------------------------------------


async def test_a_poll_is_posted_and_its_results_name_the_winner_with_discords_counts(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        answer = await w.run("poll", question="Lunch?", answers="pizza; sushi ;salad", hours=1)
        assert answer.ephemeral and f"<t:{int(T0 + 3600)}:F>" in answer.content
        [(message_id, poll)] = w.gateway.polls.items()
        assert (poll.question, poll.answers, poll.hours, poll.multiple) == (
            "Lunch?",
            ["pizza", "sushi", "salad"],
            1,
            False,
        )
        w.gateway.voters[message_id] = {"1": [ALICE, BOB], "2": [CAROL]}
        await w.later(3599)
        assert w.posts("Lunch?") == []
        await w.later(2)
        [results] = await eventually(lambda: w.posts("has ended"), what="the results")
        assert results.content == (
            "📊 The poll **Lunch?** has ended: **pizza** wins with 2 votes (67%).\n"
            "pizza: 2 · sushi: 1 · salad: 0 (3 votes in all)"
        )
        assert results.reply_to_id == message_id and results.allowed_mentions == NO_PINGS
        await w.start_scheduler()
        await w.later(3600)
        assert len(w.posts("has ended")) == 1


async def test_poll_results_come_from_the_stored_votes_when_discord_lost_the_message(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        await w.run("poll", question="Tea?", answers="yes;no", hours=1)
        [message_id] = w.gateway.polls
        for user, answer in ((ALICE, 2), (BOB, 2), (CAROL, 1)):
            vote = PollVoteAdded(message_id, GENERAL, GUILD, user, answer, T0)
            await w.gateway.service.publish(vote)
            await w.gateway.service.publish(vote)  # delivered twice: counted once
        await anyio.sleep(0.3)
        del w.gateway.voters[message_id]  # Discord answers 404 now
        await w.later(3601)
        [results] = await eventually(lambda: w.posts("has ended"), what="the results")
        assert "**no** wins with 2 votes" in results.content


async def test_a_poll_ended_early_by_its_creator_or_an_admin_reports_at_once(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        await w.run("poll", user=ALICE, question="Movie?", answers="a;b", hours=24)
        [message_id] = w.gateway.polls
        refused = await w.run("endpoll", user=BOB, poll=message_id)
        assert "Only the poll's creator or a server admin" in refused.content
        assert w.gateway.expired == []
        ended = await w.run("endpoll", user=CAROL, tier=Tier.ADMIN)
        assert "has ended" in ended.content and w.gateway.expired == [message_id]
        await eventually(lambda: w.posts("has ended"), what="the results")
        assert "nobody voted" in w.posts("has ended")[0].content
        again = await w.run("endpoll", user=ALICE, poll=message_id)
        assert "No open poll" in again.content


async def test_a_poll_discord_ended_by_itself_reports_once(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.run("poll", question="Now?", answers="a;b", hours=5)
        [message_id] = w.gateway.polls
        await w.gateway.service.publish(PollEnded(message_id, GENERAL, GUILD, T0))
        await eventually(lambda: w.posts("has ended"), what="the results")
        await w.later(5 * 3600)
        assert len(w.posts("has ended")) == 1


# --- scheduled events -----------------------------------------------------------------


async def test_an_event_is_created_and_its_interested_people_are_reminded_before_it(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        answer = await w.run(
            "event", sub="create", name="Party", start="tomorrow 18:00", duration="2h"
        )
        start = dt.datetime(2026, 5, 9, 18, 0, tzinfo=dt.UTC).timestamp()
        assert not answer.ephemeral and f"<t:{int(start)}:F>" in answer.content
        [(event_id, event)] = w.gateway.events.items()
        assert (event["start"], event["end"], event["location"]) == (start, start + 7200, "Discord")
        w.gateway.interested[event_id] = [ALICE, BOB]
        interest = ScheduledEventInterest(GUILD, event_id, BOB, True, T0)
        await w.gateway.service.publish(interest)
        await w.later(start - 15 * 60 - T0 - 1)
        assert w.posts("Party") == []
        await w.later(2)
        [reminder] = await eventually(lambda: w.posts("Party"), what="the event reminder")
        assert reminder.channel_id == GENERAL
        assert reminder.allowed_mentions == pinging_only(ALICE, BOB)
        assert f"<@{ALICE}> <@{BOB}>" in reminder.content
        await w.start_scheduler()
        await w.later(600)
        assert len(w.posts("Party")) == 1


async def test_events_lists_them_and_ics_answers_a_calendar_file_holding_them(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        await w.run("event", sub="create", name="Party", start="tomorrow 18:00", location="Park")
        listed = await w.run("events")
        assert "**Party**" in listed.content and "Park" in listed.content
        answer = await w.run("events", ics=True)
        [file] = answer.files
        assert file["filename"] == "events.ics" and file["content_type"] == "text/calendar"
        cal = Calendar.from_ical(base64.b64decode(file["data_b64"]))
        [event] = cal.walk("VEVENT")
        assert str(event["summary"]) == "Party" and str(event["location"]) == "Park"
        assert event.decoded("dtstart") == dt.datetime(2026, 5, 9, 18, 0, tzinfo=dt.UTC)
