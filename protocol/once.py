"""Posting a message exactly once, across restarts of the poster and the gateway.

Used by stats (each daily report) and the scheduler (each reminder, poll result and
event reminder). Each post has a key (`daily:2024-05-01`, `reminder:12:1767225600`) in
a store the poster owns (persistence's KV, or the scheduler's own SQLite), whose value
moves through three states:

    absent --claim--> posting --sent--> posted
    posting --definite failure--> failed --claimed again--> posting
    posting --crash or timeout--> stays "posting" (outcome unknown)

1. The report is built first (it needs persistence anyway), then claimed with
   `KvSet(only_if_absent=True)`: the atomic step, so two runs never both post.
2. If the key exists: "posted" means done forever. "failed" means the gateway
   surely did not post it (Discord refused it, or the breaker never let the
   request out), so it is claimed again by overwriting; no second process of
   the same service can race this, because the supervisor starts a service
   again only after the old process has exited.
3. "posting" means a run sent it and then died or timed out (here, or between
   the gateway and Discord), so whether it
   reached Discord is unknown. Reposting risks a double post, dropping risks a
   lost one; instead we look: the gateway's own messages are stored by
   persistence, so a bot message in the channel with the post's header (its
   content) since the claim means it went out (it is marked posted).
   If none is found after `lease_s` (time enough for the message to have
   reached the store), it did not, and it is posted again. If persistence
   cannot answer, we wait: nothing is posted without a claim.
4. After a successful send the key is marked "posted". If persistence is down
   at that moment the mark is retried later from memory; a crash before that
   leaves "posting", which step 3 resolves by finding the message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from protocol.breaker import BreakerOpen
from protocol.channel import UNREACHABLE, RemoteError, RequestTimeout

LEASE_S = 120.0

KvGet = Callable[[str], Awaitable[Any]]  # key -> value (None if absent); raises if down
KvSet = Callable[[str, Any, bool], Awaitable[bool]]  # key, value, only_if_absent -> stored
Send = Callable[[str, list[dict[str, Any]]], Awaitable[str | None]]  # -> message id
FindPosted = Callable[[str, float], Awaitable[bool]]  # header, since -> found; raises if down

# Gateway refusals after which the message may still have reached Discord.
AMBIGUOUS = ("timeout", "handler_error")
# Refusals that say Discord will not take this post as it is (a missing channel, no
# permission, a user who takes no DMs): trying again later will not change them.
DEFINITE = ("bad_request", "forbidden", "not_found", "unauthorized")


@dataclass
class Outcome:
    done: bool  # posted now or before: never try again
    detail: str
    # Not posted because Discord refused it for good (DEFINITE: the channel is gone, the
    # user takes no DMs...): trying again as is will not work.
    refused: bool = False


class OncePoster:
    def __init__(
        self,
        kv_get: KvGet,
        kv_set: KvSet,
        send: Send,
        find_posted: FindPosted,
        wall: Callable[[], float],
        lease_s: float = LEASE_S,
    ) -> None:
        self._get = kv_get
        self._set = kv_set
        self._send = send
        self._find = find_posted
        self._wall = wall
        self.lease_s = lease_s
        self.unmarked: dict[str, dict[str, Any]] = {}  # posted, but the mark is not stored

    async def post_once(self, key: str, header: str, embeds: list[dict[str, Any]]) -> Outcome:
        try:
            await self.flush_marks()
            claimed = await self._claim(key, header)
        except UNREACHABLE as exc:
            return Outcome(False, f"persistence unavailable: {exc}")
        if isinstance(claimed, Outcome):
            return claimed
        try:
            message_id = await self._send(header, embeds)
        except RequestTimeout:
            return Outcome(False, "gateway timed out: outcome unknown, left as posting")
        except RemoteError as exc:
            if exc.reason in AMBIGUOUS:  # e.g. Discord did not answer the gateway in time
                return Outcome(False, f"outcome unknown, left as posting: {exc}")
            return await self._release(key, exc)
        except BreakerOpen as exc:
            return await self._release(key, exc)
        self.unmarked[key] = {"state": "posted", "message_id": message_id, "at": self._wall()}
        try:
            await self.flush_marks()
        except UNREACHABLE as exc:
            logger.warning("{} posted; marking it is retried later ({})", key, exc)
        return Outcome(True, "posted")

    async def _release(self, key: str, exc: Exception) -> Outcome:
        """The gateway surely did not post: mark it failed so it is claimed again."""
        try:
            await self._set(key, {"state": "failed", "at": self._wall()}, False)
        except UNREACHABLE:
            pass  # left as "posting": found, or posted again after the lease
        definite = isinstance(exc, RemoteError) and exc.reason in DEFINITE
        return Outcome(False, f"gateway did not post: {exc}", refused=definite)

    async def flush_marks(self) -> None:
        for key, value in list(self.unmarked.items()):
            await self._set(key, value, False)
            del self.unmarked[key]

    async def _claim(self, key: str, header: str) -> Outcome | None:
        """None when this run now owns the post; an Outcome when it must not post now."""
        now = self._wall()
        posting = {"state": "posting", "at": now}
        if await self._set(key, posting, True):
            return None
        record = await self._get(key)
        state = record.get("state") if isinstance(record, dict) else None
        if state == "posted":
            return Outcome(True, "already posted")
        if state == "posting":
            since = float(record.get("at", 0.0)) - 60.0
            if await self._find(header, since):
                await self._set(key, {"state": "posted", "message_id": None, "at": now}, False)
                return Outcome(True, "found the post of an interrupted run")
            if now - float(record.get("at", 0.0)) < self.lease_s:
                return Outcome(False, "an earlier attempt may still arrive: waiting")
        # "failed", an expired "posting" that never arrived, or an unreadable record.
        await self._set(key, posting, False)
        return None
