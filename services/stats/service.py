"""The stats service: counter channels, daily and weekly member reports, /stats.

Listens to: `discord.guild.ready` (channel ids and names; retained, so it also
arrives when the stats service starts after the gateway), `discord.guild.counts`,
and the `/stats` command.
Does: keeps each counter channel's name showing its number, renaming only when
the number changed and never faster than Discord allows (counters.py); posts
each day's (and week's) member report once, catching up after downtime
(report.py; once per report by protocol/once.py).
Sends: renames and reports to the gateway; claims, counter channel ids and
rename history to persistence, which also answers the member events it stored.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import anyio
from loguru import logger

from protocol.breaker import BreakerOpen
from protocol.channel import UNREACHABLE, RemoteError, RequestTimeout
from protocol.clock import Clock, Wakeup
from protocol.discord import (
    COUNT_FIELDS,
    GATEWAY,
    NO_PINGS,
    CommandAnswer,
    CommandInvoked,
    CountsRequest,
    GuildCounts,
    GuildReady,
    RenameChannel,
    SendMessage,
    nonce_for,
)
from protocol.once import AMBIGUOUS, OncePoster, Outcome
from protocol.runtime import Service
from protocol.store import STORE, KvGet, KvSet, MemberEvents, RecentMessages
from services.stats import report
from services.stats.counters import (
    CounterSpec,
    RenameThrottle,
    counter_specs,
    find_channel,
    render,
    retry_after_from,
)
from services.stats.settings import Settings

COUNTER_NS = "stats.counter"
REPORT_NS = "stats.report"  # the reports' claims (protocol/once.py)


class Stats:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.clock = service.clock
        self.throttle = RenameThrottle(self.clock.monotonic)
        self.counters: list[CounterSpec] = []
        self.counter_ids: dict[str, str] = {}  # kind -> channel id
        self.values: dict[str, int | None] = {}
        self.guild_id: str | None = None
        self.channels: list[dict[str, Any]] = []
        self.guild_known = anyio.Event()
        self.report_channel_id: str | None = None
        self.posted: set[str] = set()
        self.wakeup = Wakeup(self.clock)
        self.poster = OncePoster(
            kv_get=lambda key: self._kv_get(REPORT_NS, key),
            kv_set=lambda key, value, absent: self._kv_set(REPORT_NS, key, value, absent),
            send=self._send_report,
            find_posted=self._find_posted,
            wall=self.clock.wall,
        )
        self.configure(service.settings)

    @property
    def settings(self) -> Settings:
        return self.service.settings

    # --- settings (at start and after each reload) -----------------------------------

    def configure(self, settings: Settings) -> None:
        self.tz = ZoneInfo(settings.timezone)
        self.report_time = report.parse_time(settings.report_time)
        self.weekly_day: str | None = settings.weekly_day or None
        self.report_channel: str | None = settings.report_channel or None
        counters = counter_specs(settings.counters)
        before = {spec.kind: spec.channel for spec in self.counters}
        for spec in counters:
            if before.get(spec.kind, spec.channel) != spec.channel:
                self.counter_ids.pop(spec.kind, None)  # pointed at another channel now
        self.counters = counters
        if self.guild_known.is_set():
            self.resolve_channels()

    # --- what it listens to ---------------------------------------------------------

    async def on_guild_ready(self, msg: GuildReady) -> None:
        self.learn_guild(msg)

    async def on_counts(self, msg: GuildCounts) -> None:
        self.learn_counts(msg)

    async def on_stats_command(self, msg: CommandInvoked) -> CommandAnswer:
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

    def learn_guild(self, guild: GuildReady) -> None:
        """Channel names and ids: resolve counters and the report channel, note names."""
        self.guild_id = guild.guild_id
        self.channels = list(guild.channels)
        for ch in self.channels:
            self.throttle.seen(str(ch["id"]), str(ch.get("name", "")))
        self.resolve_channels()
        self.guild_known.set()

    def learn_counts(self, counts: GuildCounts) -> None:
        self.guild_id = self.guild_id or counts.guild_id
        for name in COUNT_FIELDS:
            value = getattr(counts, name)
            if value is not None or name not in self.values:  # bans: None when not asked
                self.values[name] = value
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
        self.report_channel_id = (
            None if self.report_channel is None else self._text_channel(self.report_channel)
        )
        self.want_names()

    def _text_channel(self, wanted: str) -> str | None:
        if wanted.isdigit():
            return wanted
        for ch in self.channels:
            if str(ch.get("name", "")).casefold() == wanted.lstrip("#").casefold():
                return str(ch["id"])
        return None

    def want_names(self) -> None:
        for spec in self.counters:
            cid = self.counter_ids.get(spec.kind)
            name = render(spec, self.values)
            if cid is not None and name is not None and self.throttle.want(cid, name):
                self.wakeup.set()

    async def keep_counters(self) -> None:
        """Rename counter channels as their numbers change, within the window."""
        await self.load_counter_records()
        await self.guild_known.wait()
        while True:
            for channel_id, name in self.throttle.due():
                await self.rename(channel_id, name)
            due_in = self.throttle.next_due_in()
            await self.wakeup.sleep(3600.0 if due_in is None else due_in)

    async def load_counter_records(self) -> None:
        """Remembered channel ids (a renamed channel no longer has its configured name)
        and each channel's recent renames (a restart must not reset the window)."""

        async def load_all() -> dict[str, Any]:
            return {spec.kind: await self._kv_get(COUNTER_NS, spec.kind) for spec in self.counters}

        records = await self.service.patiently(load_all, "counter records", give_up_after_s=20.0)
        for spec in self.counters:
            record = (records or {}).get(spec.kind)
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
            await self.service.call(GATEWAY, RenameChannel(channel_id, name), timeout=10)
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
        """Ask for the numbers now and then: a missed counts event is not missed for long,
        and the bans are only counted on request."""
        while True:
            refresh_s = self.settings.refresh_s
            try:
                with_bans = any("{bans" in spec.template for spec in self.counters)
                ask = CountsRequest(self.guild_id, with_bans=with_bans)
                counts = await self.service.call(GATEWAY, ask, timeout=15)
            except UNREACHABLE as exc:
                logger.info("counts unavailable: {}", exc)
                await self.clock.sleep(min(30.0, refresh_s))
                continue
            self.learn_counts(counts)
            await self.clock.sleep(refresh_s)

    # --- what it does: reports ------------------------------------------------------

    async def post_reports(self) -> None:
        """Post each due report once; retry what failed; sleep until the next one."""
        first_run = await self.first_run()
        await self.guild_known.wait()
        while True:
            now = self.clock.wall()
            retry = False
            if self.report_channel is not None:  # reports can be turned on by a reload
                jobs = report.due_reports(
                    now, self.tz, self.report_time, self.weekly_day, first_run
                )
                self.posted &= {job.key for job in jobs}
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

        async def claim() -> float:
            await self._kv_set(REPORT_NS, "first_run", now, True)
            value = await self._kv_get(REPORT_NS, "first_run")
            return float(value if value is not None else now)

        first = await self.service.patiently(claim, "the first run's time")
        return now if first is None else first

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
        query = MemberEvents(self.guild_id, since, until)
        found = await self.service.call(STORE, query, timeout=10)
        return report.summarise(found.events, first, days, self.tz)

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
        # Sent again after a crash (either side's) within minutes: posted once all the same.
        msg = SendMessage(
            self.report_channel_id,
            header,
            embeds,
            allowed_mentions=NO_PINGS,
            nonce=nonce_for("stats", self.report_channel_id, header),
        )
        sent = await self.service.call(GATEWAY, msg, timeout=15)
        return sent.message_id

    async def _find_posted(self, header: str, since: float) -> bool:
        assert self.report_channel_id is not None
        query = RecentMessages(self.report_channel_id, limit=50, after_ts=since)
        found = await self.service.call(STORE, query, timeout=5)
        return any(m.get("author_bot") and m.get("content") == header for m in found.messages)

    async def _kv_get(self, namespace: str, key: str, timeout: float = 5.0) -> Any:
        found = await self.service.call(STORE, KvGet(namespace, key), timeout=timeout)
        return found.value

    async def _kv_set(
        self, namespace: str, key: str, value: Any, only_if_absent: bool, timeout: float = 5.0
    ) -> bool:
        msg = KvSet(namespace, key, value, only_if_absent=only_if_absent)
        stored = await self.service.call(STORE, msg, timeout=timeout)
        return stored.stored


def build(clock: Clock | None = None) -> tuple[Service, Stats]:
    """A fresh service and its state (tests build one per simulated process run)."""
    service = Service("stats", Settings, clock)
    stats = Stats(service)
    service.on_settings(stats.configure)

    service.event(GuildReady)(stats.on_guild_ready)
    service.event(GuildCounts)(stats.on_counts)
    service.command("stats")(stats.on_stats_command)

    service.task(stats.keep_counters)
    service.task(stats.refresh_counts)
    service.task(stats.post_reports)
    return service, stats
