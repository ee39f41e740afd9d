"""After a gap, what Discord did not send, read back from its history.

A gap is a fresh IDENTIFY that follows a stored position: Discord refused to RESUME
(the session expired, was invalidated, or Discord chose to), so whatever it dispatched
meanwhile is gone from the gateway. What can be read back is:

- **messages**: for every text channel, thread and DM the bot reads, the history after
  the channel's newest stored message (`GET /channels/{id}/messages?after=`), oldest
  first, up to the first message received live since the READY. A channel with nothing
  stored is read from its newest message back to the start of the gap. Each message
  becomes the `MessageCreated` a live MESSAGE_CREATE would (convert.py), marked
  `backfilled`, plus a `MessageEdited` when Discord says it was edited (persistence
  keeps the newest edit).
- **members and bans**: the members Discord listed after the READY (GUILD_CREATE and
  chunks) and its ban list (`GET /guilds/{id}/bans`) against the gateway's own view from
  before the gap: joins (`joined_at` within the gap), leaves, bans and unbans, marked
  `backfilled`, leaving out those persistence already has (received live, or stored
  just before the gap).

What cannot be read back (a message posted and deleted during the gap, edits of older
messages, reactions) is named in the README.

Progress (each channel's place, what was found) is written to the gateway's outbox in
the same transaction as each page's events, as the Discord position is: a gateway
killed during a backfill leaves its successor exactly the rest. Bounded per channel and
in all (settings.py), paced between pages, run as a background task: live events never
wait for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import anyio
import anyio.lowlevel
from loguru import logger

from protocol.discord import (
    GapBackfilled,
    MemberBanned,
    MemberJoined,
    MemberLeft,
    MemberUnbanned,
    MessageCreated,
)
from protocol.messages import Message, Request
from protocol.runtime import Refused, Service
from protocol.store import MemberEvents, NewestMessages, NewestStored
from services.gateway.actions import Actions
from services.gateway.convert import convert, timestamp
from services.gateway.settings import Settings
from services.gateway.state import Gateway

PROGRESS_KEY = "gateway.backfill"  # in the gateway's outbox, beside its position
BASELINE_KEY = "gateway.backfill.baseline"
PAGE = 100  # Discord's largest page of channel history
BANS_PAGE = 1000
# Channel kinds with a message history (convert.CHANNEL_KINDS; threads by number).
READABLE = {"text", "news", "voice", "stage", "10", "11", "12"}
THREAD_TYPES = {10, 11, 12}
# Discord's times and ours may differ a little: read this much more before a gap.
MARGIN_S = 60.0
# A page holding messages from after the READY, or this fresh, waits this long for their
# live events.
SETTLE_WINDOW_S = 2.0
SETTLE_S = 1.0
GUILDS_WAIT_S = 30.0  # for GUILD_CREATE (and member chunks) after a READY
MAX_SEEN_LIVE = 200_000
MAX_NAME_LOOKUPS = 50
TRIES = 5  # a history page that keeps failing: the channel is left out (and said so)
MEMBER_EVENTS = ("GUILD_MEMBER_ADD", "GUILD_MEMBER_REMOVE", "GUILD_BAN_ADD", "GUILD_BAN_REMOVE")


def snowflake(value: str | None) -> int:
    """Ids compare as numbers; an odd one sorts first rather than failing."""
    try:
        return int(value or 0)
    except ValueError:
        return 0


@dataclass
class ChannelPlan:
    guild_id: str | None
    after: str | None  # the next page starts after this id (None: go back by time)
    stop: str | None = None  # the first id received live since the READY
    fetched: int = 0
    done: bool = False


@dataclass
class Gap:
    """One backfill: when the gap was, what is left to read, what was found."""

    id: str
    start: float | None  # wall time of the last event stored before the gap
    end: float  # wall time of the READY after it
    members_done: bool = False
    channels: dict[str, ChannelPlan] | None = None  # None: not planned yet
    joins: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # gid -> uid -> ...
    threads: dict[str, str] = field(default_factory=dict)  # thread id -> guild id
    messages: int = 0
    joined: int = 0
    left: int = 0
    banned: int = 0
    unbanned: int = 0
    truncated: bool = False
    announced: bool = False

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start) if self.start is not None else 0.0

    def since(self) -> float:
        """Where "during the gap" begins, with a margin for clocks that differ."""
        return (self.start if self.start is not None else self.end) - MARGIN_S

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Gap:
        d = json.loads(text)
        channels = d.pop("channels")
        gap = cls(**d)
        if channels is not None:
            gap.channels = {cid: ChannelPlan(**p) for cid, p in channels.items()}
        return gap

    def report(self, at: float, done: bool) -> GapBackfilled:
        return GapBackfilled(
            self.id,
            round(self.seconds, 1),
            self.messages,
            self.joined,
            self.left,
            self.banned,
            self.unbanned,
            self.truncated,
            done,
            at,
        )


class Backfill:
    """The gateway's backfill: told of gaps by the dispatch path, run as one task."""

    def __init__(self, service: Service, gw: Gateway, actions: Actions) -> None:
        self.service = service
        self.gw = gw
        self.actions = actions
        self.gap: Gap | None = None
        self.baseline: dict[str, dict[str, Any]] = {}  # gid -> {members: {uid: bot}, banned}
        self._baseline_dirty = False
        # Since the latest READY (or since this process started, for a pending backfill):
        self.live_floor: dict[str, str] = {}  # channel id -> first message id received live
        self.seen_live: set[str] = set()
        self.live_members: set[tuple[str, str]] = set()  # (guild, user) with live events
        self.guilds_pending: set[str] = set()
        self.guilds_created = anyio.Event()
        self.connected = anyio.Event()  # a READY or RESUMED in this process
        self.wake = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._lookups = 0  # names asked of Discord in this backfill

    @property
    def settings(self) -> Settings:
        return self.service.settings

    # --- told by the dispatch path (synchronous, in Discord's order) --------------------

    async def load(self) -> None:
        """A backfill its predecessor did not finish: go on with it once connected."""
        outbox = self.service.bus.outbox if self.service.bus else None
        if outbox is None:
            return
        progress = await outbox.get_meta(PROGRESS_KEY)
        if not progress:
            return
        try:
            self.gap = Gap.from_json(progress)
            self.baseline = json.loads(await outbox.get_meta(BASELINE_KEY) or "{}")
        except (ValueError, TypeError, KeyError) as exc:
            logger.error("unreadable backfill progress ({!r}): that gap stays as it is", exc)
            self.gap = None
            return
        logger.info("a backfill was left unfinished (gap {}): going on with it", self.gap.id)
        self.wake.set()

    def gap_found(
        self, start: float | None, end: float, session_id: str, guild_ids: list[str]
    ) -> None:
        """A READY after a stored position: a new gap, or a longer one if one is pending."""
        gap = self.gap
        if gap is None:
            gap = self.gap = Gap(f"{session_id[:8]}-{int(end)}", start, end)
            self._take_baseline()
        else:
            gap.end = end  # still backfilling: one gap from the first start to this READY
            for plan in (gap.channels or {}).values():
                plan.stop, plan.done = None, False  # read on past the old session's messages
            if gap.members_done or not self.baseline:
                self._take_baseline()  # else the older one covers the whole gap
        gap.members_done = False
        self.live_floor, self.seen_live, self.live_members = {}, set(), set()
        self.guilds_pending = set(guild_ids)
        self.guilds_created = anyio.Event()
        if not self.guilds_pending:
            self.guilds_created.set()
        self.connected.set()
        if self._scope is not None:
            self._scope.cancel()  # start over with this session's view
        self.wake.set()

    def _take_baseline(self) -> None:
        """The gateway's view of each guild before the gap, to compare with Discord's."""
        self.baseline = {
            gid: {
                "members": dict(g.members),
                "banned": None if g.banned is None else sorted(g.banned),
            }
            for gid, g in self.gw.guilds.guilds.items()
        }
        self._baseline_dirty = True

    def resumed(self) -> None:
        self.connected.set()
        self.guilds_created.set()

    def observe(self, event: str, d: dict[str, Any]) -> None:
        """Each dispatch while a backfill is pending: where live messages begin, who had
        live member events, and who Discord lists as members now (with join times)."""
        gap = self.gap
        if gap is None:
            return
        if event == "MESSAGE_CREATE":
            cid, mid = str(d.get("channel_id")), str(d.get("id"))
            floor = self.live_floor.get(cid)
            if floor is None or snowflake(mid) < snowflake(floor):
                self.live_floor[cid] = mid
            if len(self.seen_live) < MAX_SEEN_LIVE:
                self.seen_live.add(mid)
        elif event in MEMBER_EVENTS:
            user = d.get("user") or {}
            self.live_members.add((str(d.get("guild_id")), str(user.get("id"))))
        elif event in ("GUILD_CREATE", "GUILD_MEMBERS_CHUNK"):
            gid = str(d.get("id") if event == "GUILD_CREATE" else d.get("guild_id"))
            if not gap.members_done:
                self._note_joins(gap, gid, d.get("members") or [])
            if event == "GUILD_CREATE":
                for t in d.get("threads") or []:
                    if isinstance(t, dict) and t.get("type") in THREAD_TYPES and t.get("id"):
                        gap.threads[str(t["id"])] = gid
                self.guilds_pending.discard(gid)
                if not self.guilds_pending:
                    self.guilds_created.set()

    def _note_joins(self, gap: Gap, gid: str, members: list[Any]) -> None:
        known = (self.baseline.get(gid) or {}).get("members") or {}
        for m in members:
            user = m.get("user") if isinstance(m, dict) else None
            uid = str(user.get("id") or "") if isinstance(user, dict) else ""
            if not uid or uid in known:
                continue
            at = timestamp(m.get("joined_at"), 0.0)
            if at > gap.since():
                name = str(user.get("global_name") or user.get("username") or uid)
                gap.joins.setdefault(gid, {})[uid] = [name, bool(user.get("bot", False)), at]

    # --- the task ------------------------------------------------------------------------

    async def run(self) -> None:
        """Backfills each gap once connected; a new gap restarts it with the new view."""
        while True:
            await self.wake.wait()
            self.wake = anyio.Event()
            await self.connected.wait()
            gap = self.gap
            if gap is None:
                continue
            try:
                with anyio.CancelScope() as scope:
                    self._scope = scope
                    await self._fill(gap)
            except Exception:
                # Live events matter more: a backfill that fails for good is given up (what
                # it fed is stored, and the report says not all) rather than crash-looping.
                logger.exception("backfill of gap {} failed: given up", gap.id)
                gap.truncated = True
                await self._finish(gap)
            self._scope = None

    async def _fill(self, gap: Gap) -> None:
        if not gap.announced:
            gap.announced = True
            await self._save(gap, [gap.report(self.service.clock.wall(), done=False)])
        with anyio.move_on_after(GUILDS_WAIT_S):
            await self.guilds_created.wait()
        if not gap.members_done:
            events = []
            for gid in list(self.gw.guilds.guilds):
                events += await self._members(gap, gid)
            gap.members_done = True
            await self._save(gap, events)
        if gap.channels is None:
            gap.channels = await self._plan(gap)
            await self._save(gap, [])
        for cid, plan in list(gap.channels.items()):
            while not plan.done:
                events = await self._page(gap, cid, plan)
                await self._save(gap, events)
                if not plan.done and self.settings.backfill_page_pause_s:
                    await anyio.sleep(self.settings.backfill_page_pause_s)
        await self._finish(gap)

    async def _finish(self, gap: Gap) -> None:
        """The report, and the progress cleared, in one outbox transaction."""
        # A READY that lengthened this gap meanwhile cancels us here, before it is dropped.
        await anyio.lowlevel.checkpoint()
        report = gap.report(self.service.clock.wall(), done=True)
        logger.info("backfill done: {}", report.line())
        self.gap, self.baseline, self._lookups = None, {}, 0
        self.live_floor, self.seen_live, self.live_members = {}, set(), set()
        meta = {PROGRESS_KEY: "", BASELINE_KEY: ""}
        await self.service.publish_many([report], meta)

    async def _save(self, gap: Gap, events: list[Message]) -> None:
        """The events and the progress they reach, in one outbox transaction."""
        meta = {PROGRESS_KEY: gap.to_json()}
        if self._baseline_dirty:
            meta[BASELINE_KEY] = json.dumps(self.baseline)
            self._baseline_dirty = False
        await self.service.publish_many(events, meta)

    async def _ask_store(self, request: Request[Any], what: str) -> Any:
        call: Callable[[], Any] = lambda: self.service.call("persistence", request, timeout=10)  # noqa: E731
        while True:
            answer = await self.service.patiently(call, what, give_up_after_s=60)
            if answer is not None:
                return answer

    # --- members and bans ----------------------------------------------------------------

    async def _members(self, gap: Gap, gid: str) -> list[Message]:
        guild = self.gw.guilds.get(gid)
        base = self.baseline.get(gid)
        if guild is None or base is None:
            return []  # a guild the gateway did not know before the gap: nothing to compare
        complete = await self._members_complete(gid)
        now = self.service.clock.wall()
        stored_events = await self._ask_store(
            MemberEvents(gid, gap.since(), now + MARGIN_S), "member events around the gap"
        )
        stored = {(e["user_id"], e["kind"]) for e in stored_events.events}
        live = {uid for g, uid in self.live_members if g == gid}
        before: dict[str, bool] = base.get("members") or {}
        current = set(guild.members)
        bans = await self._bans(gid)
        events: list[Message] = []
        for uid, (name, bot, at) in sorted((gap.joins.get(gid) or {}).items()):
            if uid in current and uid not in live and (uid, "joined") not in stored:
                events.append(MemberJoined(gid, uid, name, bot, at, backfilled=True))
        if bans is not None:
            before_banned = base.get("banned")
            if before_banned is None:  # not known before: only members who vanished banned
                newly = {u for u in bans if u in before and u not in current}
            else:
                newly = set(bans) - set(before_banned)
            for uid in sorted(newly - live):
                if (uid, "banned") not in stored:
                    events.append(MemberBanned(gid, uid, bans[uid], gap.end, backfilled=True))
        if not complete:
            logger.warning("guild {}: member list incomplete; leaves in the gap not checked", gid)
        else:
            for uid in sorted(set(before) - current):
                if uid in live or {(uid, "left"), (uid, "banned")} & stored:
                    continue
                name = (bans or {}).get(uid) or await self._name(uid)
                events.append(MemberLeft(gid, uid, name, before[uid], gap.end, backfilled=True))
        if bans is not None and base.get("banned") is not None:
            for uid in sorted(set(base["banned"]) - set(bans) - live):
                if (uid, "unbanned") not in stored:
                    name = await self._name(uid)
                    events.append(MemberUnbanned(gid, uid, name, gap.end, backfilled=True))
        for e in events:
            if isinstance(e, MemberJoined):
                gap.joined += 1
            elif isinstance(e, MemberLeft):
                gap.left += 1
            elif isinstance(e, MemberBanned):
                gap.banned += 1
            else:
                gap.unbanned += 1
        return events

    async def _members_complete(self, gid: str) -> bool:
        """Discord sends a large guild's members in chunks after GUILD_CREATE."""
        with anyio.move_on_after(GUILDS_WAIT_S):
            while True:
                guild = self.gw.guilds.get(gid)
                if guild is None or len(guild.members) >= guild.member_count:
                    return True
                await anyio.sleep(0.5)
        return False

    async def _bans(self, gid: str) -> dict[str, str] | None:
        """Every ban (user id -> name), page by page; None if Discord would not say."""
        bans: dict[str, str] = {}
        after: str | None = None
        try:
            while True:
                page = await self.actions.call_discord(
                    self.gw.http().get_bans(gid, limit=BANS_PAGE, after=after)
                )
                for b in page:
                    user = b.get("user") or {}
                    bans[str(user["id"])] = str(
                        user.get("global_name") or user.get("username") or user["id"]
                    )
                if len(page) < BANS_PAGE:
                    break
                after = max((str(b["user"]["id"]) for b in page), key=snowflake)
        except Refused as exc:
            logger.warning(
                "guild {}: bans not readable ({}); bans in the gap not checked", gid, exc
            )
            return None
        guild = self.gw.guilds.get(gid)
        if guild is not None:
            guild.bans, guild.banned = len(bans), set(bans)
            self.gw.counts_dirty.add(gid)  # the ban counter may have moved during the gap
        return bans

    async def _name(self, uid: str) -> str:
        """A departed member's name, for the report (the id if Discord will not say)."""
        self._lookups += 1
        if self._lookups > MAX_NAME_LOOKUPS:
            return uid
        try:
            user = await self.actions.call_discord(self.gw.http().get_user(uid))
        except Refused:
            return uid
        return str(user.get("global_name") or user.get("username") or uid)

    # --- messages ------------------------------------------------------------------------

    async def _plan(self, gap: Gap) -> dict[str, ChannelPlan]:
        """Every readable channel and where its history is read from: after the newest
        stored message that was not received live since the READY."""
        floors = dict(self.live_floor)
        stored: NewestStored = await self._ask_store(
            NewestMessages(below=floors), "the newest stored messages"
        )
        newest = dict(stored.newest)
        # A channel whose first live message came while persistence answered may have had
        # that one counted as the newest stored: ask again, below it.
        late = {
            cid: floor
            for cid, floor in self.live_floor.items()
            if cid not in floors and snowflake(newest.get(cid)) >= snowflake(floor)
        }
        if late:
            again: NewestStored = await self._ask_store(
                NewestMessages(below=late), "the newest stored messages"
            )
            for cid in late:
                if cid in again.newest:
                    newest[cid] = again.newest[cid]
                else:
                    newest.pop(cid, None)
        plan: dict[str, ChannelPlan] = {}
        for gid, guild in self.gw.guilds.guilds.items():
            for cid, channel in guild.channels.items():
                if channel.get("type") in READABLE:
                    plan[cid] = ChannelPlan(gid, newest.get(cid))
        for cid, gid in gap.threads.items():
            plan.setdefault(cid, ChannelPlan(gid, newest.get(cid)))
        for cid in stored.dm_channels:
            plan.setdefault(cid, ChannelPlan(None, newest.get(cid)))
        return plan

    async def _page(self, gap: Gap, cid: str, plan: ChannelPlan) -> list[Message]:
        """The next page of one channel's history, as events; marks the channel done."""
        plan.stop = plan.stop or self.live_floor.get(cid)
        room = min(
            self.settings.backfill_channel_limit - plan.fetched,
            self.settings.backfill_total_limit - gap.messages,
        )
        if room <= 0:
            logger.warning("backfill of channel {}: limit reached, older messages left out", cid)
            gap.truncated, plan.done = True, True
            return []
        try:
            if plan.after is None:
                found, more = await self._back_to_gap(gap, cid, plan, room)
                plan.done = True
            else:
                found, more = await self._after(cid, plan, room)
        except Refused as exc:
            if exc.reason in ("forbidden", "not_found"):
                logger.info("backfill: channel {} not readable ({}): skipped", cid, exc.reason)
            else:
                logger.warning("backfill: channel {} failed ({}): left out", cid, exc)
                gap.truncated = True
            plan.done = True
            return []
        fresh = self.service.clock.wall() - SETTLE_WINDOW_S
        if any(timestamp(m.get("timestamp"), 0.0) >= min(gap.end, fresh) for m in found):
            # Sent after the READY, or just now: its live event may be on its way. Let it
            # come, so the message is neither fed twice nor taken for a late one.
            await anyio.sleep(SETTLE_S)
            plan.stop = plan.stop or self.live_floor.get(cid)
            if plan.stop is not None:
                before_live = [m for m in found if snowflake(m["id"]) < snowflake(plan.stop)]
                if len(before_live) < len(found):
                    found, more, plan.done = before_live, False, True
        if more:
            logger.warning("backfill of channel {}: limit reached, newer messages left out", cid)
            gap.truncated, plan.done = True, True
        events: list[Message] = []
        for payload in found:
            plan.fetched += 1
            if str(payload.get("id")) in self.seen_live:
                continue  # received live since the READY: stored already
            events += self._convert(payload, plan.guild_id)
        gap.messages += sum(1 for e in events if isinstance(e, MessageCreated))
        return events

    async def _fetch(self, cid: str, **where: str | None) -> list[dict[str, Any]]:
        """One page, oldest first (Discord sorts each page newest first, whatever asked)."""
        for attempt in range(TRIES):
            try:
                page = await self.actions.call_discord(self.gw.http().logs_from(cid, PAGE, **where))
                return sorted(
                    (m for m in page if isinstance(m, dict)), key=lambda m: snowflake(m.get("id"))
                )
            except Refused as exc:
                if exc.reason in ("forbidden", "not_found", "bad_request") or attempt + 1 == TRIES:
                    raise
                await anyio.sleep(2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _after(
        self, cid: str, plan: ChannelPlan, room: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Messages after the channel's place, before the live ones; (page, more left)."""
        page = await self._fetch(cid, after=plan.after)
        wanted = [m for m in page if plan.stop is None or snowflake(m["id"]) < snowflake(plan.stop)]
        reached_live = len(wanted) < len(page)
        if page:
            plan.after = str(page[-1]["id"])
        if len(wanted) > room:
            wanted = wanted[:room]
            plan.after = str(wanted[-1]["id"])
            return wanted, True
        plan.done = reached_live or len(page) < PAGE
        return wanted, False

    async def _back_to_gap(
        self, gap: Gap, cid: str, plan: ChannelPlan, room: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """A channel with nothing stored: from its newest message (before the live ones)
        back to the start of the gap, by Discord's timestamps; (oldest first, more left)."""
        found: list[dict[str, Any]] = []
        before = plan.stop
        while True:
            page = await self._fetch(cid, before=before)
            page.reverse()  # newest first, to walk back
            older = [m for m in page if timestamp(m.get("timestamp"), 0.0) < gap.since()]
            found += [m for m in page if timestamp(m.get("timestamp"), 0.0) >= gap.since()]
            if older or len(page) < PAGE or len(found) > room:
                break
            before = str(page[-1]["id"])
        found.reverse()
        if found:
            plan.after = str(found[-1]["id"])
        return found[:room], len(found) > room

    def _convert(self, payload: dict[str, Any], guild_id: str | None) -> list[Message]:
        """The events a live MESSAGE_CREATE of this message would have been, backfilled."""
        d = dict(payload)
        if guild_id is not None:
            d.setdefault("guild_id", guild_id)  # the history route leaves it out
        now = self.service.clock.wall()
        names = self.gw.guilds.channel_names()
        try:
            events = convert("MESSAGE_CREATE", d, self.gw.bot_id, now, names)
            if d.get("edited_timestamp"):
                events += convert("MESSAGE_UPDATE", d, self.gw.bot_id, now, names)
        except (KeyError, TypeError, ValueError) as exc:
            logger.error("backfill: dropped malformed message {}: {!r}", d.get("id"), exc)
            return []
        return [replace(e, backfilled=True) if isinstance(e, MessageCreated) else e for e in events]
