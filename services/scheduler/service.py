"""The scheduler: reminders, native polls and scheduled events, on the service clock.

Listens to: /remind, /reminders, /timezone, /poll, /endpoll, /event, /events;
`discord.guild.ready` (the guild and its channels; retained), the votes and ends of
polls (`discord.poll.*`), scheduled events and who is interested in them
(`discord.scheduled_event*`), all durable.
Does: keeps everything it schedules in its own SQLite file (store.py) and, on the
service clock, delivers each reminder, poll result and event reminder exactly once:
claimed, sent with a nonce derived from it, marked (protocol/once.py), an interrupted
send looked for among the messages persistence stored before it is sent again. What
fell due while the bot was down goes out when it is back, marked late.
Sends: messages, DMs, polls and scheduled events to the gateway; looks for its own
posts in persistence.
"""

from __future__ import annotations

import base64
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import anyio
from loguru import logger

from protocol.breaker import BreakerOpen
from protocol.channel import UNREACHABLE, RemoteError, RequestTimeout
from protocol.clock import Clock, Wakeup
from protocol.discord import (
    GATEWAY,
    NO_PINGS,
    CommandAnswer,
    CommandInvoked,
    CreateScheduledEvent,
    ExpirePoll,
    GuildReady,
    ListScheduledEvents,
    OpenDirectMessage,
    PollEnded,
    PollVoteAdded,
    PollVoteRemoved,
    PollVotersRequest,
    ScheduledEventChanged,
    ScheduledEventInterest,
    ScheduledEventUsers,
    SendMessage,
    SendPoll,
    nonce_for,
    pinging_only,
)
from protocol.once import DEFINITE, OncePoster, Outcome
from protocol.runtime import Service
from protocol.store import STORE, RecentMessages
from services.scheduler import texts
from services.scheduler.ics import calendar
from services.scheduler.settings import Settings
from services.scheduler.store import Database, Event, Poll, Reminder, Store
from services.scheduler.when import Repeat, WhenError, parse_duration, parse_moment, parse_when

GIVE_UP_AFTER = 5  # refusals by Discord of one post before it is given up (logged)
RETRY_S = 30.0  # a post that could not go out is tried again this much later
RECONNECT_S = 2.0  # ... or this much later when the gateway was only not connected
COMMAND_CALL_S = 1.5  # a command's call to the gateway (Discord wants an answer in 3 s)
MENTIONS_PER_POST = 40  # people named in one event reminder (a message holds 2,000)
POLL_QUESTION_MAX, POLL_ANSWER_MAX, POLL_ANSWERS = 300, 55, (2, 10)  # Discord's limits
TEXT_MAX = 1500
NOT_CONNECTED = "the gateway is not connected"


def truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "y")
    return bool(value)


def say(text: str) -> CommandAnswer:
    """One ephemeral line: what went wrong and what to type instead."""
    return CommandAnswer(text, ephemeral=True)


class Scheduler:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.clock = service.clock
        self.db: Database | None = None
        self.store: Store | None = None
        self.opened = anyio.Event()
        self.guild_id: str | None = None
        self.guild_name = "Discord"
        self.channels: list[dict[str, Any]] = []
        self.events_stale = True  # Discord's list of events is read again when set
        self.started_at = self.clock.wall()
        self.retry_at: dict[str, float] = {}  # post key -> not before (wall seconds)
        self.wakeup = Wakeup(self.clock)
        self._poked = False

    @property
    def settings(self) -> Settings:
        return self.service.settings

    def poke(self) -> None:
        """Something changed: look at the schedule again now."""
        self._poked = True
        self.wakeup.set()

    async def call_db(self, fn: Any, *args: Any) -> Any:
        assert self.db is not None, "the store is opened in setup"
        return await self.db(fn, *args)

    # --- start and stop ---------------------------------------------------------------

    async def open(self) -> None:
        assert self.service.ctx is not None
        path = self.service.ctx.data_dir / "scheduler.sqlite3"
        self.store = await anyio.to_thread.run_sync(Store, path)
        self.db = Database(self.store)
        self.started_at = self.clock.wall()  # due before this: missed while down (late)
        self.opened.set()

    async def close(self) -> None:
        if self.store is not None and self.db is not None:
            await self.db(self.store.close)

    async def warm_up(self) -> None:
        """dateparser loads its language data on first use (~0.1 s): not in a command."""
        with anyio.move_on_after(30):
            await anyio.to_thread.run_sync(parse_moment, "tomorrow 9:00", 0.0, ZoneInfo("UTC"))

    # --- what it listens to -----------------------------------------------------------

    async def on_guild(self, msg: GuildReady) -> None:
        self.guild_id, self.guild_name = msg.guild_id, msg.name
        self.channels = list(msg.channels)
        self.events_stale = True
        self.poke()

    async def on_vote_added(self, msg: PollVoteAdded) -> None:
        await self.opened.wait()
        assert self.store is not None
        await self.call_db(self.store.vote, msg.message_id, msg.answer_id, msg.user_id, True)

    async def on_vote_removed(self, msg: PollVoteRemoved) -> None:
        await self.opened.wait()
        assert self.store is not None
        await self.call_db(self.store.vote, msg.message_id, msg.answer_id, msg.user_id, False)

    async def on_poll_ended(self, msg: PollEnded) -> None:
        """Ended early (its author expired it) or on time: its results are due now."""
        await self.opened.wait()
        assert self.store is not None
        await self.call_db(self.store.poll_ended, msg.message_id, self.clock.wall())
        self.poke()

    async def on_event_changed(self, msg: ScheduledEventChanged) -> None:
        await self.opened.wait()
        assert self.store is not None
        if msg.change == "deleted":
            await self.call_db(self.store.delete_event, msg.event["id"])
        else:
            await self.call_db(self.store.upsert_event, msg.event)
        self.poke()

    async def on_interest(self, msg: ScheduledEventInterest) -> None:
        await self.opened.wait()
        assert self.store is not None
        await self.call_db(self.store.set_interest, msg.event_id, msg.user_id, msg.interested)

    # --- commands: reminders and time zones -------------------------------------------

    async def timezone_of(self, user_id: str) -> str:
        assert self.store is not None
        return await self.call_db(self.store.timezone, user_id) or self.settings.timezone

    async def remind(self, msg: CommandInvoked) -> CommandAnswer:
        assert self.store is not None
        text = " ".join(str(msg.options.get("text") or "").split())
        if not text:
            return say("Say what to remind you of: `/remind when:in 10 minutes text:stretch`.")
        if len(text) > TEXT_MAX:
            return say(f"That is {len(text):,} characters: keep a reminder under {TEXT_MAX:,}.")
        tz = await self.timezone_of(msg.user_id)
        now = self.clock.wall()
        try:
            when = await anyio.to_thread.run_sync(
                parse_when, str(msg.options.get("when") or ""), now, ZoneInfo(tz)
            )
        except WhenError as exc:
            return say(str(exc))
        mine = await self.call_db(self.store.active_reminders, msg.user_id)
        if len(mine) >= self.settings.max_reminders:
            return say(
                f"You have {len(mine)} reminders, the most one person may have: "
                "`/reminders cancel:NUMBER` makes room."
            )
        private = truthy(msg.options.get("private")) or msg.channel_id is None
        repeat = when.repeat.to_json() if when.repeat else None
        added = await self.call_db(
            self.store.add_reminder,
            msg.user_id,
            msg.channel_id,
            msg.guild_id,
            text,
            when.at,
            repeat,
            private,
            tz,
            now,
        )
        logger.info("reminder #{} for {} due at {:.0f}", added, msg.user_id, when.at)
        self.poke()
        return say(texts.scheduled(added, when.at, when.repeat, private, text))

    async def reminders(self, msg: CommandInvoked) -> CommandAnswer:
        assert self.store is not None
        cancel = msg.options.get("cancel")
        if cancel is not None:
            try:
                number = int(str(cancel).lstrip("#"))
            except ValueError:
                return say("Give the reminder's number, e.g. `/reminders cancel:3`.")
            gone = await self.call_db(self.store.cancel_reminder, number, msg.user_id)
            if gone is None:
                return say(f"You have no reminder #{number}: `/reminders` lists yours.")
            self.poke()
            return say(f"Cancelled reminder #{number}: {gone.text}")
        mine = await self.call_db(self.store.active_reminders, msg.user_id)
        return say(texts.reminder_list(mine, await self.timezone_of(msg.user_id)))

    async def timezone(self, msg: CommandInvoked) -> CommandAnswer:
        assert self.store is not None
        zone = str(msg.options.get("zone") or "").strip()
        if msg.subcommand == "set" or zone:
            found = await anyio.to_thread.run_sync(find_zone, zone)
            if found is None:
                return say(
                    f"`{zone}` is not a time zone: use an IANA name such as `Europe/Paris`, "
                    "`America/New_York` or `UTC`."
                )
            await self.call_db(self.store.set_timezone, msg.user_id, found)
            return say(f"Your time zone is now {found}: reminders and events read times in it.")
        mine = await self.call_db(self.store.timezone, msg.user_id)
        if mine is None:
            return say(
                f"You use the server's time zone, {self.settings.timezone}: "
                "`/timezone set zone:Europe/Paris` sets yours."
            )
        return say(f"Your time zone is {mine} (the server's: {self.settings.timezone}).")

    # --- commands: polls --------------------------------------------------------------

    async def poll(self, msg: CommandInvoked) -> CommandAnswer:
        assert self.store is not None
        if msg.channel_id is None:
            return say("Start a poll in a channel of the server.")
        question = " ".join(str(msg.options.get("question") or "").split())
        if not 1 <= len(question) <= POLL_QUESTION_MAX:
            return say(f"Ask a question of 1 to {POLL_QUESTION_MAX} characters: `question:Lunch?`.")
        answers = [a.strip() for a in str(msg.options.get("answers") or "").split(";")]
        answers = [a for a in answers if a]
        low, high = POLL_ANSWERS
        if len(answers) < low:
            return say(
                f"A poll needs {low} to {high} answers separated by `;`, "
                "e.g. `answers:pizza;sushi;salad`."
            )
        if len(answers) > high:
            return say(
                f"Discord polls take at most {high} answers (you gave {len(answers)}): "
                f"keep {high}, separated by `;`."
            )
        too_long = next((a for a in answers if len(a) > POLL_ANSWER_MAX), None)
        if too_long is not None:
            return say(
                f"`{too_long[:60]}` is over {POLL_ANSWER_MAX} characters, Discord's limit "
                "for an answer: shorten it."
            )
        if len({a.casefold() for a in answers}) < len(answers):
            return say("Give each answer once: `answers:pizza;sushi;salad`.")
        given = msg.options.get("hours")
        try:
            hours = self.settings.poll_hours if given in (None, "") else int(given)
        except (TypeError, ValueError):
            hours = -1
        if not 1 <= hours <= 768:
            return say("Give `hours:` as a whole number from 1 to 768 (32 days), e.g. `hours:24`.")
        multiple = truthy(msg.options.get("multiple"))
        ask = SendPoll(msg.channel_id, question, answers, hours, multiple)
        try:
            sent = await self.service.call(GATEWAY, ask, timeout=COMMAND_CALL_S)
        except RequestTimeout:
            return say("Discord is slow to answer: if the poll does not show up, try again.")
        except (BreakerOpen, RemoteError) as exc:
            logger.warning("/poll refused: {}", exc)
            return say("Discord did not take the poll; try again in a moment.")
        ids = (
            sent.answer_ids if len(sent.answer_ids) == len(answers) else range(1, len(answers) + 1)
        )
        poll = Poll(
            message_id=sent.message_id,
            channel_id=msg.channel_id,
            guild_id=msg.guild_id,
            creator_id=msg.user_id,
            question=question,
            answers=list(zip(ids, answers, strict=True)),
            multiple=multiple,
            ends_at=sent.expiry,
            state="open",
            refusals=0,
        )
        await self.call_db(self.store.add_poll, poll)
        self.poke()
        return say(
            f"📊 Poll posted; it ends {texts.stamp(sent.expiry, 'R')} "
            f"({texts.stamp(sent.expiry)}). `/endpoll` ends it early."
        )

    async def endpoll(self, msg: CommandInvoked) -> CommandAnswer:
        assert self.store is not None
        given = str(msg.options.get("poll") or "").strip()
        if given:
            poll = await self.call_db(self.store.poll, given.rsplit("/", 1)[-1])
        else:
            here = await self.call_db(self.store.open_polls, msg.channel_id or "")
            mine = [p for p in here if msg.by_admin or p.creator_id == msg.user_id]
            poll = mine[-1] if mine else None
        if poll is None or poll.state != "open":
            return say("No open poll of yours here: give its message id, `/endpoll poll:ID`.")
        if poll.creator_id != msg.user_id and not msg.by_admin:
            return say("Only the poll's creator or a server admin can end it early.")
        try:
            await self.service.call(
                GATEWAY, ExpirePoll(poll.channel_id, poll.message_id), timeout=COMMAND_CALL_S
            )
        except RemoteError as exc:
            if exc.reason != "bad_request":  # bad_request: it had ended already
                return say("Discord did not end the poll; try again in a moment.")
        except (RequestTimeout, BreakerOpen):
            return say("Discord did not answer; try again in a moment.")
        await self.call_db(self.store.poll_ended, poll.message_id, self.clock.wall())
        self.poke()
        return say(f"The poll **{poll.question}** has ended: its results follow.")

    # --- commands: scheduled events ---------------------------------------------------

    async def event(self, msg: CommandInvoked) -> CommandAnswer:
        if msg.subcommand not in (None, "create"):
            return say("Use `/event create name: start:` to make an event.")
        guild_id = msg.guild_id or self.guild_id
        if guild_id is None:
            return say("Events belong to a server: run `/event create` in one.")
        name = " ".join(str(msg.options.get("name") or "").split())
        if not 1 <= len(name) <= 100:
            return say("Give the event a name of 1 to 100 characters: `name:Movie night`.")
        tz = await self.timezone_of(msg.user_id)
        start_text = str(msg.options.get("start") or "")
        try:
            start = await anyio.to_thread.run_sync(
                parse_moment, start_text, self.clock.wall(), ZoneInfo(tz)
            )
            duration = (
                parse_duration(str(msg.options["duration"]))
                if msg.options.get("duration")
                else self.settings.event_duration_min * 60
            )
        except WhenError as exc:
            return say(str(exc))
        location = " ".join(str(msg.options.get("location") or "").split())
        location = location or self.settings.event_location
        description = str(msg.options.get("description") or "").strip()
        if len(location) > 100 or len(description) > 1000:
            return say("Keep the location under 100 characters and the description under 1,000.")
        ask = CreateScheduledEvent(guild_id, name, start, start + duration, location, description)
        try:
            made = await self.service.call(GATEWAY, ask, timeout=COMMAND_CALL_S)
        except RequestTimeout:
            return say("Discord is slow to answer: `/events` shows whether the event was made.")
        except (BreakerOpen, RemoteError) as exc:
            logger.warning("/event create refused: {}", exc)
            return say("Discord did not take the event; try again in a moment.")
        assert self.store is not None
        await self.call_db(self.store.upsert_event, made.event, msg.channel_id)
        self.poke()
        return CommandAnswer(texts.event_created(made.event, self.settings.event_reminder_min))

    async def events(self, msg: CommandInvoked) -> CommandAnswer:
        guild_id = msg.guild_id or self.guild_id
        if guild_id is None:
            return say("Events belong to a server: run `/events` in one.")
        upcoming = await self.upcoming(guild_id)
        if msg.subcommand == "ics" or truthy(msg.options.get("ics")):
            data = calendar(upcoming, self.guild_name, self.clock.wall())
            file = {
                "filename": "events.ics",
                "content_type": "text/calendar",
                "data_b64": base64.b64encode(data).decode(),
            }
            count = f"{len(upcoming)} upcoming event{'s' if len(upcoming) != 1 else ''}"
            # Shown to the channel: the file is as public as the events, and others want it too.
            return CommandAnswer(
                f"📅 {count} as a calendar file: import it in Google Calendar, Outlook or any "
                "calendar app.",
                files=[file],
            )
        return say(texts.event_list(upcoming))

    async def upcoming(self, guild_id: str) -> list[dict[str, Any]]:
        """Discord's list (the truth, with interest counts), or ours if it cannot answer."""
        now = self.clock.wall()
        try:
            found = await self.service.call(
                GATEWAY, ListScheduledEvents(guild_id), timeout=COMMAND_CALL_S
            )
            events = found.events
        except UNREACHABLE as exc:
            logger.info("events from the store: the gateway did not list them ({})", exc)
            assert self.store is not None
            events = [
                {**vars(e), "id": e.event_id, "user_count": None}
                for e in await self.call_db(self.store.events)
            ]
        live = [
            e
            for e in events
            if e.get("status") in ("scheduled", "active") and (e.get("end") or e["start"]) > now
        ]
        return sorted(live, key=lambda e: (e["start"], e["id"]))[:25]

    # --- what it does: the schedule ---------------------------------------------------

    async def run_schedule(self) -> None:
        """Deliver what is due, then sleep until the next thing is (or something changes:
        a command, an event, the clock moved)."""
        await self.opened.wait()
        while True:
            self._poked = False
            if self.events_stale and self.guild_id is not None:
                await self.sync_events()
            next_at = await self.deliver_due(self.clock.wall())
            if self._poked:
                continue
            await self.wakeup.sleep(min(max(next_at - self.clock.wall(), 0.0), 60.0))

    async def sync_events(self) -> None:
        """Events made or deleted while we were down (or in Discord's own interface)."""
        assert self.store is not None and self.guild_id is not None
        try:
            found = await self.service.call(GATEWAY, ListScheduledEvents(self.guild_id), timeout=10)
        except UNREACHABLE as exc:
            logger.info("scheduled events not read yet ({})", exc)
            return
        await self.call_db(self.store.replace_events, self.guild_id, found.events)
        self.events_stale = False

    async def deliver_due(self, now: float) -> float:
        """Everything due at `now`, each in turn; answers when to look again."""
        assert self.store is not None
        later = [now + 3600.0]
        for r in await self.call_db(self.store.due_reminders, now):
            if not self._deferred(f"reminder:{r.id}", now, later):
                await self.deliver_reminder(r, now)
        for p in await self.call_db(self.store.due_polls, now):
            if not self._deferred(f"poll:{p.message_id}", now, later):
                await self.report_poll(p, now)
        lead = self.settings.event_reminder_min * 60
        for e in await self.call_db(self.store.events):
            if lead <= 0 or e.status != "scheduled" or e.reminded_start == e.start:
                continue
            if e.start - lead > now:
                later.append(e.start - lead)
            elif not self._deferred(f"event:{e.event_id}", now, later):
                await self.remind_event(e, now)
        later += [t for t in self.retry_at.values() if t > now]
        for upcoming in (
            await self.call_db(self.store.next_reminder_at),
            await self.call_db(self.store.next_poll_end),
        ):
            if upcoming is not None and upcoming > now:
                later.append(upcoming)
        return min(later)

    def _deferred(self, what: str, now: float, later: list[float]) -> bool:
        not_before = self.retry_at.get(what, 0.0)
        if not_before > now:
            later.append(not_before)
            return True
        self.retry_at.pop(what, None)
        return False

    def _retry(self, what: str, outcome: Outcome | str) -> None:
        detail = outcome if isinstance(outcome, str) else outcome.detail
        wait = RECONNECT_S if detail == NOT_CONNECTED else RETRY_S
        self.retry_at[what] = self.clock.wall() + wait
        logger.info("{}: not delivered yet ({}); again in {:.0f}s", what, detail, wait)

    async def deliver_reminder(self, r: Reminder, now: float) -> None:
        assert self.store is not None
        what = f"reminder:{r.id}"
        if r.first_try_at is None:
            late = r.due_at < self.started_at - 1.0 or now - r.due_at > self.settings.late_after_s
            await self.call_db(self.store.start_occurrence, r.id, now, late)
            r.first_try_at, r.late = now, late
        channel, mentions = r.channel_id, pinging_only(r.user_id)
        if r.private or channel is None:
            mentions = NO_PINGS  # a DM reaches its person without a ping
            try:
                channel = await self.dm_channel(r.user_id)
            except RemoteError as exc:
                if exc.reason in DEFINITE:  # e.g. the user takes no DMs from the bot
                    return await self._reminder_refused(r, str(exc))
                return self._retry(what, str(exc))
            except UNREACHABLE as exc:
                return self._retry(what, str(exc))
        key = f"{what}:{int(r.due_at)}"
        outcome = await self.post_once(key, channel, texts.reminder(r), mentions)
        if outcome.done:
            tz = ZoneInfo(r.tz)
            next_due = (
                Repeat.from_json(r.repeat).next_after(max(now, r.due_at), tz) if r.repeat else None
            )
            await self.call_db(self.store.reminder_delivered, r.id, next_due)
            logger.info("reminder #{}: {}{}", r.id, outcome.detail, " (late)" if r.late else "")
        elif outcome.refused:
            await self._reminder_refused(r, outcome.detail)
        else:
            self._retry(what, outcome)

    async def _reminder_refused(self, r: Reminder, detail: str) -> None:
        assert self.store is not None
        if await self.call_db(self.store.reminder_refused, r.id, GIVE_UP_AFTER):
            logger.error(
                "reminder #{}: given up after {} refusals ({})", r.id, GIVE_UP_AFTER, detail
            )
        else:
            self._retry(f"reminder:{r.id}", detail)

    async def dm_channel(self, user_id: str) -> str:
        assert self.store is not None
        known = await self.call_db(self.store.dm_channel, user_id)
        if known is not None:
            return str(known)
        opened = await self.service.call(GATEWAY, OpenDirectMessage(user_id), timeout=10)
        await self.call_db(self.store.set_dm_channel, user_id, opened.channel_id)
        return opened.channel_id

    async def report_poll(self, p: Poll, now: float) -> None:
        assert self.store is not None
        what = f"poll:{p.message_id}"
        ask = PollVotersRequest(p.channel_id, p.message_id, [a for a, _ in p.answers])
        try:
            voters = (await self.service.call(GATEWAY, ask, timeout=15)).voters
        except RemoteError as exc:
            if exc.reason not in DEFINITE:
                return self._retry(what, str(exc))
            logger.info("{}: counted from the stored votes (Discord: {})", what, exc)
            voters = await self.call_db(self.store.votes, p.message_id)
        except (RequestTimeout, BreakerOpen) as exc:
            return self._retry(what, str(exc))
        text = texts.poll_results(p.question, p.answers, voters)
        outcome = await self.post_once(what, p.channel_id, text, NO_PINGS, reply_to=p.message_id)
        if outcome.done:
            await self.call_db(self.store.poll_reported, p.message_id)
            logger.info("{} results: {}", what, outcome.detail)
        elif outcome.refused and await self.call_db(
            self.store.poll_refused, p.message_id, GIVE_UP_AFTER
        ):
            logger.error("{}: results given up after {} refusals", what, GIVE_UP_AFTER)
        else:
            self._retry(what, outcome)

    async def remind_event(self, e: Event, now: float) -> None:
        assert self.store is not None
        what = f"event:{e.event_id}"
        if now >= e.start:  # it began while we were away: too late to remind
            logger.info("{}: started before its reminder could go out", what)
            return await self.call_db(self.store.event_reminded, e.event_id, e.start)
        guild_id = e.guild_id or self.guild_id
        try:
            if guild_id is None:
                raise RemoteError(GATEWAY, "not_found", "no guild known")
            ask = ScheduledEventUsers(guild_id, e.event_id)
            users = (await self.service.call(GATEWAY, ask, timeout=15)).user_ids
        except RemoteError as exc:
            if exc.reason not in DEFINITE:
                return self._retry(what, str(exc))
            users = await self.call_db(self.store.interested, e.event_id)
        except (RequestTimeout, BreakerOpen) as exc:
            return self._retry(what, str(exc))
        channel = e.channel_id or self.channel_named(self.settings.events_channel)
        if not users or channel is None:
            if users:
                logger.warning(
                    "{}: no channel {!r} for its reminder", what, self.settings.events_channel
                )
            return await self.call_db(self.store.event_reminded, e.event_id, e.start)
        for i in range(0, len(users), MENTIONS_PER_POST):
            group = users[i : i + MENTIONS_PER_POST]
            key = f"{what}:{int(e.start)}:{i // MENTIONS_PER_POST}"
            outcome = await self.post_once(
                key, channel, texts.event_reminder(e, group), pinging_only(*group)
            )
            if outcome.refused and await self.call_db(
                self.store.event_refused, e.event_id, GIVE_UP_AFTER
            ):
                logger.error("{}: reminder given up after {} refusals", what, GIVE_UP_AFTER)
                return
            if not outcome.done:
                return self._retry(what, outcome)
        await self.call_db(self.store.event_reminded, e.event_id, e.start)
        logger.info("{}: {} interested reminded", what, len(users))

    def channel_named(self, wanted: str) -> str | None:
        if wanted.isdigit():
            return wanted
        for ch in self.channels:
            if str(ch.get("name", "")).casefold() == wanted.lstrip("#").casefold():
                return str(ch["id"])
        return None

    # --- what it sends ----------------------------------------------------------------

    async def post_once(
        self,
        key: str,
        channel_id: str,
        content: str,
        mentions: dict[str, Any],
        reply_to: str | None = None,
    ) -> Outcome:
        """Post `content` in the channel exactly once under `key` (protocol/once.py)."""
        assert self.store is not None and self.service.bus is not None
        if not await self.service.bus.channel(GATEWAY).wait_connected(1.0):
            # Not claimed: nothing can be in flight, so nothing waits out a lease.
            return Outcome(False, NOT_CONNECTED)
        store = self.store

        async def send(header: str, embeds: list[dict[str, Any]]) -> str | None:
            # The nonce makes Discord answer a repeat of this post (within its few minutes)
            # with the message already made: a second line of defence behind the claim.
            nonce = nonce_for("scheduler", key)
            msg = SendMessage(channel_id, header, embeds, reply_to, mentions, nonce=nonce)
            return (await self.service.call(GATEWAY, msg, timeout=15)).message_id

        async def find(header: str, since: float) -> bool:
            query = RecentMessages(channel_id, limit=100, after_ts=since)
            found = await self.service.call(STORE, query, timeout=5)
            return any(m.get("author_bot") and m.get("content") == header for m in found.messages)

        poster = OncePoster(
            kv_get=lambda k: self.call_db(store.claim_get, k),
            kv_set=lambda k, value, absent: self.call_db(store.claim_set, k, value, absent),
            send=send,
            find_posted=find,
            wall=self.clock.wall,
        )
        return await poster.post_once(key, content, [])


_ZONES: dict[str, str] = {}


def find_zone(name: str) -> str | None:
    """The IANA zone called `name` (case does not matter), or None."""
    name = name.strip()
    if not name or name.startswith(("/", ".")) or ".." in name:
        return None
    try:
        ZoneInfo(name)
        return name
    except (ZoneInfoNotFoundError, ValueError):
        pass
    if not _ZONES:
        _ZONES.update({z.casefold(): z for z in available_timezones()})
    return _ZONES.get(name.casefold())


def build(clock: Clock | None = None) -> tuple[Service, Scheduler]:
    """A fresh service and its state (tests build one per simulated process run)."""
    service = Service("scheduler", Settings, clock)
    scheduler = Scheduler(service)

    service.event(GuildReady)(scheduler.on_guild)
    service.event(PollVoteAdded)(scheduler.on_vote_added)
    service.event(PollVoteRemoved)(scheduler.on_vote_removed)
    service.event(PollEnded)(scheduler.on_poll_ended)
    service.event(ScheduledEventChanged)(scheduler.on_event_changed)
    service.event(ScheduledEventInterest)(scheduler.on_interest)
    service.command("remind")(scheduler.remind)
    service.command("reminders")(scheduler.reminders)
    service.command("timezone")(scheduler.timezone)
    service.command("poll")(scheduler.poll)
    service.command("endpoll")(scheduler.endpoll)
    service.command("event")(scheduler.event)
    service.command("events")(scheduler.events)

    service.setup(scheduler.open)
    service.task(scheduler.warm_up)
    service.task(scheduler.run_schedule)
    service.teardown(scheduler.close)
    return service, scheduler
