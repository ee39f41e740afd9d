"""What one gateway process holds: built once by `build()`, shared by its service, its
actions and its tests."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup

from protocol.clock import Clock
from protocol.discord import Sent
from protocol.messages import Message
from protocol.runtime import Refused
from services.gateway.connection import GatewayClient
from services.gateway.guild_state import GuildState
from services.gateway.interactions import Invocation
from services.gateway.session import SavedSession, SessionFile

# Follow-ups remembered by nonce: far more than can be answered in an interaction's
# 15 minutes at Discord's rate limits.
FOLLOWUPS_KEPT = 5000


@dataclass(frozen=True)
class Position:
    """A place in a Discord session: what a successor RESUMEs from."""

    session_id: str
    seq: int
    resume_url: str | None


class Gateway:
    """The state one gateway process holds."""

    def __init__(self, clock: Clock) -> None:
        self.client: GatewayClient | None = None
        self.guilds = GuildState()
        self.session_file: SessionFile | None = None
        self.session_id: str | None = None
        self.resume_url: str | None = None
        self.bot_id: str | None = None
        self.resumed_from: SavedSession | None = None
        # Dispatches in arrival order, with the session they belong to: a READY after a
        # refused resume starts a new session while older events may still be queued.
        self.queue: deque[tuple[Position | None, list[Message]]] = deque()
        self.queue_wake = anyio.Event()
        self.queue_drained = anyio.Event()
        self.committed: Position | None = None  # every event up to here is in the outbox
        # Wall time of the latest event received (or, at start, of the stored position):
        # where a gap begins if Discord refuses the next RESUME.
        self.last_event_at: float | None = None
        self.seq_committed = anyio.Event()
        self.saved: Position | None = None
        self.save_lock = anyio.Lock()
        self.counts_dirty: set[str] = set()
        self.renames: dict[str, deque[float]] = {}
        self.interactions: dict[str, Invocation] = {}
        # Follow-ups posted, by the nonce their sender gave: asked again, answered again.
        self.followups: OrderedDict[str, Sent] = OrderedDict()
        self.unanswered: dict[str, int] = {}  # interaction id -> its sequence number
        self.tg: TaskGroup | None = None
        self.request_timeout_s = 15.0
        self.clock = clock  # the service's: the sandbox moves it
        self.logged_in = False
        self.login_done = anyio.Event()  # set with logged_in: requests wait for it

    def remember_followup(self, nonce: str, sent: Sent) -> None:
        self.followups[nonce] = sent
        while len(self.followups) > FOLLOWUPS_KEPT:
            self.followups.popitem(last=False)

    def http(self) -> Any:
        """py-cord's HTTP client; refused (for the caller to retry) while the gateway is
        still preparing it, just after a restart."""
        if self.client is None:
            raise Refused("not_connected", "the gateway is starting")
        return self.client.http
