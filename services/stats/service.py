"""The stats service: counter channels, daily and weekly member reports, /stats.

Listens to: `discord.guild.ready` (channel ids and names), `discord.guild.counts`,
and the `/stats` command.
Does: keeps each counter channel's name showing its number, renaming only when
the number changed and never faster than Discord allows (counters.py); posts
each day's (and week's) member report once, catching up after downtime
(report.py, claims.py).
Sends: renames and reports to the gateway; claims, counter channel ids and
rename history to persistence, which also answers the member events it stored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import anyio
from loguru import logger

from protocol.breaker import BreakerOpen
from protocol.channel import RemoteError, RequestTimeout
from protocol.clock import Clock
from protocol.discord import (
    CommandAnswer,
    CommandInvoked,
    CountsRequest,
    GuildCounts,
    GuildInfoRequest,
    GuildReady,
    RenameChannel,
    SendMessage,
)
from protocol.runtime import Service
from protocol.store import KvGet, KvSet, MemberEvents, RecentMessages
from services.stats import report
from services.stats.claims import AMBIGUOUS, OncePoster, Outcome
from services.stats.claims import NAMESPACE as REPORT_NS
from services.stats.counters import (
    COUNT_FIELDS,
    CounterSpec,
    RenameThrottle,
    find_channel,
    parse_counters,
    render,
    retry_after_from,
)

GATEWAY = "gateway"
STORE = "persistence"
COUNTER_NS = "stats.counter"
UNREACHABLE = (RequestTimeout, BreakerOpen, RemoteError)
NO_PINGS = {"parse": []}
T = TypeVar("T")


class Stats:
    def __init__(self, service: Service, clock: Clock) -> None:
        self.service = service
        self.clock = clock
        self.throttle = RenameThrottle(clock.monotonic)
        self.counters: list[CounterSpec] = []
        self.counter_ids: dict[str, str] = {}  # kind -> channel id
        self.values: dict[str, int | None] = {}
        self.guild_id: str | None = None
        self.channels: list[dict[str, Any]] = []
        self.guild_known = anyio.Event()
        self.report_channel_id: str | None = None
        self.posted: set[str] = set()
        self._nudged = anyio.Event()
        self.poster = OncePoster(
            kv_get=lambda key: self._kv_get(REPORT_NS, key),
            kv_set=lambda key, value, absent: self._kv_set(REPORT_NS, key, value, absent),
            send=self._send_report,
            find_posted=self._find_posted,
            wall=clock.wall,
        )
        self.configure({})  # defaults until the runtime hands over the settings

    # --- settings -------------------------------------------------------------------

    def configure(self, settings: dict[str, Any]) -> None:
        self.counters = parse_counters(settings.get("counters", {}))
        self.tz = ZoneInfo(settings.get("timezone", "UTC"))
        self.report_time = report.parse_time(settings.get("report_time", "09:00"))
        self.weekly_day: str | None = settings.get("weekly_day", "monday") or None
        if self.weekly_day and self.weekly_day.lower() not in report.WEEKDAYS:
            raise ValueError(f"weekly_day {self.weekly_day!r} is not a day of the week")
        self.report_channel: str | None = settings.get("report_channel", "stats") or None
        self.refresh_s = float(settings.get("refresh_s", 300))

    # --- what it listens to ---------------------------------------------------------

    async def on_guild_ready(self, msg: GuildReady) -> None:
        self.learn_guild(msg.to_body())

    async def on_counts(self, msg: GuildCounts) -> None:
        self.learn_counts(msg.to_body())

    async def on_command(self, msg: CommandInvoked) -> CommandAnswer:
        if msg.command != "stats":
            return CommandAnswer(f"stats does not answer /{msg.command}", ephemeral=True)
        yesterday = report.local_date(self.clock.wall(), self.tz) - dt.timedelta(days=1)
        text = str(msg.options.get("date") or "").strip()
        try:
            day = dt.date.fromisoformat(text) if text else yesterday
        except ValueError:
            return CommandAnswer("Give the date as YYYY-MM-DD, e.g. 2024-05-01.", ephemeral=True)
        try:
            embed = await self.daily_report(day)
        except UNREACHABLE:
            return CommandAnswer("The member history is unavailable right now.", ephemeral=True)
        return CommandAnswer(embeds=[embed])

    def learn_guild(self, body: dict[str, Any]) -> None:
        """Channel names and ids: resolve counters and the report channel, note names."""
        self.guild_id = str(body.get("guild_id") or body.get("id") or "") or self.guild_id
        self.channels = list(body.get("channels") or [])
        for ch in self.channels:
            self.throttle.seen(str(ch["id"]), str(ch.get("name", "")))
        self.resolve_channels()
        self.guild_known.set()

    def learn_counts(self, body: dict[str, Any]) -> None:
        self.guild_id = self.guild_id or body.get("guild_id")
        for name in COUNT_FIELDS:
            if name in body and (body[name] is not None or name not in self.values):
                self.values[name] = body[name]
        self.want_names()

    # --- what it does: counters -----------------------------------------------------

    def resolve_channels(self) -> None:
        ids = {str(ch["id"]) for ch in self.channels}
        for spec in self.counters:
            known = self.counter_ids.get(spec.kind)
            if spec.channel_id is not None:
                self.counter_ids[spec.kind] = spec.channel_id
            elif known is None or (ids and known not in ids):
                found = find_channel(spec, self.channels)
                if found is not None:
                    self.counter_ids[spec.kind] = found
                elif self.channels:
                    logger.warning("counter {}: no channel named {!r}", spec.kind, spec.channel)
        if self.report_channel is not None:
            self.report_channel_id = self._text_channel(self.report_channel)
        self.want_names()

    def _text_channel(self, wanted: str) -> str | None:
        if wanted.isdigit():
            return wanted
        for ch in self.channels:
            if str(ch.get("name", "")).casefold() == wanted.casefold():
                return str(ch["id"])
        return None

    def want_names(self) -> None:
        for spec in self.counters:
            cid = self.counter_ids.get(spec.kind)
            name = render(spec, self.values)
            if cid is not None and name is not None and self.throttle.want(cid, name):
                self._nudge()

    def _nudge(self) -> None:
        self._nudged.set()
        self._nudged = anyio.Event()

    async def _wait(self, seconds: float | None) -> None:
        """Until `seconds` pass on the clock, or something new is wanted."""
        nudged = self._nudged
        async with anyio.create_task_group() as tg:

            async def on_nudge() -> None:
                await nudged.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(on_nudge)
            await self.clock.sleep(3600.0 if seconds is None else seconds)
            tg.cancel_scope.cancel()

    async def keep_counters(self) -> None:
        """Rename counter channels as their numbers change, within the window."""
        await self.load_counter_records()
        await self.guild_known.wait()
        while True:
            for channel_id, name in self.throttle.due():
                await self.rename(channel_id, name)
            await self._wait(self.throttle.next_due_in())

    async def load_counter_records(self) -> None:
        """Remembered channel ids (a renamed channel no longer has its configured name)
        and each channel's recent renames (a restart must not reset the window)."""

        async def load_all() -> dict[str, Any]:
            return {spec.kind: await self._kv_get(COUNTER_NS, spec.kind) for spec in self.counters}

        records = await self._patiently(load_all, "counter records", give_up_after_s=20.0) or {}
        for spec in self.counters:
            record = records.get(spec.kind)
            if not isinstance(record, dict) or record.get("channel") != spec.channel:
                continue  # nothing stored, persistence down, or the config changed
            cid = str(record["id"])
            self.counter_ids.setdefault(spec.kind, cid)
            mono, wall = self.clock.monotonic(), self.clock.wall()
            self.throttle.restore(cid, [mono - (wall - t) for t in record.get("renames", [])])
        self.resolve_channels()

    async def rename(self, channel_id: str, name: str) -> None:
        self.throttle.started(channel_id)
        await self.save_counter_record(channel_id)  # before: a crash right after still counts
        try:
            body = await self.service.call(GATEWAY, RenameChannel(channel_id, name), timeout=10)
        except RequestTimeout:
            self.throttle.failed(channel_id, maybe_applied=True)
            logger.warning("rename of {} to {!r} timed out", channel_id, name)
            return
        except BreakerOpen as exc:
            self.throttle.failed(channel_id, maybe_applied=False, retry_after=exc.retry_in_s + 1)
            return
        except RemoteError as exc:
            # The gateway's own Discord call timing out may still have renamed it.
            maybe = exc.reason in AMBIGUOUS
            retry = retry_after_from(exc.detail)
            self.throttle.failed(channel_id, maybe_applied=maybe, retry_after=retry)
            logger.warning("rename of {} to {!r} refused: {}", channel_id, name, exc)
            return
        if body.get("retry_after") is not None:  # a rate limit answered as a reply
            self.throttle.failed(
                channel_id, maybe_applied=False, retry_after=float(body["retry_after"])
            )
            return
        self.throttle.succeeded(channel_id, name)
        logger.info("renamed {} to {!r}", channel_id, name)

    async def save_counter_record(self, channel_id: str) -> None:
        wall, mono = self.clock.wall(), self.clock.monotonic()
        renames = [wall - (mono - t) for t in self.throttle.history(channel_id)]
        for spec in self.counters:
            if self.counter_ids.get(spec.kind) != channel_id:
                continue
            record = {"channel": spec.channel, "id": channel_id, "renames": renames}
            try:
                await self._kv_set(COUNTER_NS, spec.kind, record, False, timeout=2.0)
            except UNREACHABLE as exc:
                logger.warning("could not remember counter {}: {}", spec.kind, exc)

    async def refresh_counts(self) -> None:
        """Ask for the numbers now and then: a missed counts event is not missed for long."""
        while True:
            try:
                with_bans = any("{bans" in spec.template for spec in self.counters)
                ask = CountsRequest(self.guild_id, with_bans=with_bans)
                body = await self.service.call(GATEWAY, ask, timeout=15)
            except UNREACHABLE as exc:
                logger.info("counts unavailable: {}", exc)
                await self.clock.sleep(min(30.0, self.refresh_s))
                continue
            self.learn_counts(body)
            await self.clock.sleep(self.refresh_s)

    async def learn_guild_at_start(self) -> None:
        """The gateway published GuildReady before we ran: ask for it."""
        body = await self._patiently(
            lambda: self.service.call(GATEWAY, GuildInfoRequest(), timeout=5),
            "guild info",
            until=self.guild_known,
        )
        if body is not None and not self.guild_known.is_set():
            self.learn_guild(body)

    # --- what it does: reports ------------------------------------------------------

    async def post_reports(self) -> None:
        """Post each due report once; retry what failed; sleep until the next one."""
        if self.report_channel is None:
            return
        first_run = await self.first_run()
        await self.guild_known.wait()
        while True:
            now = self.clock.wall()
            jobs = report.due_reports(now, self.tz, self.report_time, self.weekly_day, first_run)
            self.posted &= {job.key for job in jobs}
            retry = False
            for job in jobs:
                if job.key in self.posted:
                    continue
                outcome = await self.post_report(job)
                logger.info("{} report {}: {}", job.kind, job.day, outcome.detail)
                if not outcome.done:
                    retry = True
                    break
                self.posted.add(job.key)
            until_next = report.next_due_at(now, self.tz, self.report_time) - now
            await self.clock.sleep(min(until_next, 30.0 if retry else 60.0))

    async def first_run(self) -> float:
        """When the bot first ran: reports due before then were never missed."""
        now = self.clock.wall()
        while True:
            try:
                await self._kv_set(REPORT_NS, "first_run", now, True)
                value = await self._kv_get(REPORT_NS, "first_run")
                return float(value if value is not None else now)
            except UNREACHABLE as exc:
                logger.info("persistence unavailable, reports wait: {}", exc)
                await self.clock.sleep(5.0)

    async def post_report(self, job: report.ReportJob) -> Outcome:
        if self.report_channel_id is None or self.guild_id is None:
            return Outcome(False, f"no channel {self.report_channel!r} found")
        try:
            if job.kind == "daily":
                embed = await self.daily_report(job.day)
            else:
                embed = await self.weekly_report(job.day)
        except UNREACHABLE as exc:
            return Outcome(False, f"member events unavailable: {exc}")
        return await self.poster.post_once(job.key, job.header, [embed])

    async def member_events(self, first: dt.date, days: int) -> list[report.DaySummary]:
        assert self.guild_id is not None
        since = report.day_start(first, self.tz)
        until = report.day_start(first + dt.timedelta(days=days), self.tz)
        body = await self.service.call(STORE, MemberEvents(self.guild_id, since, until), timeout=10)
        return report.summarise(body.get("events", []), first, days, self.tz)

    async def daily_report(self, day: dt.date) -> dict[str, Any]:
        if self.guild_id is None:
            raise RemoteError(GATEWAY, "not_ready", "the guild is not known yet")
        days = await self.member_events(day - dt.timedelta(days=7), 8)
        return report.daily_embed(days[-1], days[-2], days[:-1])

    async def weekly_report(self, first: dt.date) -> dict[str, Any]:
        days = await self.member_events(first - dt.timedelta(days=7), 14)
        return report.weekly_embed(days[7:], days[:7])

    # --- what it sends --------------------------------------------------------------

    async def _send_report(self, header: str, embeds: list[dict[str, Any]]) -> str | None:
        assert self.report_channel_id is not None
        msg = SendMessage(self.report_channel_id, header, embeds, allowed_mentions=NO_PINGS)
        body = await self.service.call(GATEWAY, msg, timeout=15)
        return body.get("id") or body.get("message_id")

    async def _find_posted(self, header: str, since: float) -> bool:
        assert self.report_channel_id is not None
        query = RecentMessages(self.report_channel_id, limit=50, after_ts=since)
        body = await self.service.call(STORE, query, timeout=5)
        messages = body.get("messages", []) if isinstance(body, dict) else body
        return any(m.get("author_bot") and m.get("content") == header for m in messages)

    async def _kv_get(self, namespace: str, key: str, timeout: float = 5.0) -> Any:
        body = await self.service.call(STORE, KvGet(namespace, key), timeout=timeout)
        return body.get("value")

    async def _kv_set(
        self, namespace: str, key: str, value: Any, only_if_absent: bool, timeout: float = 5.0
    ) -> bool:
        msg = KvSet(namespace, key, value, only_if_absent=only_if_absent)
        body = await self.service.call(STORE, msg, timeout=timeout)
        return bool(body.get("stored", True))

    async def _patiently(
        self,
        call: Callable[[], Awaitable[T]],
        what: str,
        give_up_after_s: float | None = None,
        until: anyio.Event | None = None,
    ) -> T | None:
        """Retry with backoff while a peer is down (it may be starting, or restarting)."""
        delay, waited = 0.5, 0.0
        while until is None or not until.is_set():
            try:
                return await call()
            except UNREACHABLE as exc:
                if give_up_after_s is not None and waited >= give_up_after_s:
                    logger.warning("{}: giving up for now ({})", what, exc)
                    return None
                logger.info("{}: retrying in {:.1f}s ({})", what, delay, exc)
            await self.clock.sleep(delay)
            waited += delay
            delay = min(delay * 2, 10.0)
        return None


def build(clock: Clock | None = None) -> tuple[Service, Stats]:
    """A fresh service and its state (tests build one per simulated process run)."""
    service = Service("stats")
    if clock is not None:
        service.clock = clock  # tests drive it; the runtime's clock control moves it too
    stats = Stats(service, service.clock)
    service.event(GuildReady)(stats.on_guild_ready)
    service.event(GuildCounts)(stats.on_counts)
    service.request(CommandInvoked)(stats.on_command)

    @service.setup
    async def configure() -> None:
        stats.configure(service.settings)

    service.task(stats.learn_guild_at_start)
    service.task(stats.keep_counters)
    service.task(stats.refresh_counts)
    service.task(stats.post_reports)
    return service, stats


def create_service(clock: Clock | None = None) -> Service:
    return build(clock)[0]
