"""The gateway websocket: HELLO, heartbeats, IDENTIFY/READY, RESUME with replay, op 9, op 3.

A :class:`Session` outlives its websockets. Every dispatched event gets the session's next
sequence number and is appended to the session's bounded buffer before it is (maybe) sent,
so events that happen while no socket is attached are kept. RESUME ``{session_id, seq,
token}`` from any socket, even from a new client process, attaches that socket to the session
and replays every buffered frame with a sequence above the client's ``seq``, then sends
RESUMED. Frames reach a socket through one writer task per connection, in dispatch order.

Answers are uncompressed TEXT frames even when the client asks for ``compress=zlib-stream``;
py-cord reads TEXT frames as plain JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .ratelimit import Clock, RateLimiter
from .world import World

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_MS = 41250
BUFFER_LIMIT = 10000
MAX_SESSIONS = 16

# opcodes
DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE, VOICE_STATE = 0, 1, 2, 3, 4
RESUME, RECONNECT, REQUEST_MEMBERS, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 6, 7, 8, 9, 10, 11

#: What a Gateway Presence Update (op 3) may say.
PRESENCE_STATUSES = ("online", "dnd", "idle", "invisible", "offline")
ACTIVITY_TYPES = range(0, 7)

#: Which intent bit an event needs (events not listed are always sent).
EVENT_INTENTS = {
    "CHANNEL_CREATE": 1 << 0,
    "CHANNEL_UPDATE": 1 << 0,
    "CHANNEL_DELETE": 1 << 0,
    "GUILD_MEMBER_ADD": 1 << 1,
    "GUILD_MEMBER_REMOVE": 1 << 1,
    "GUILD_BAN_ADD": 1 << 2,
    "GUILD_BAN_REMOVE": 1 << 2,
    "PRESENCE_UPDATE": 1 << 8,
    "MESSAGE_CREATE": 1 << 9,
    "MESSAGE_UPDATE": 1 << 9,
    "MESSAGE_DELETE": 1 << 9,
    "GUILD_SCHEDULED_EVENT_CREATE": 1 << 16,
    "GUILD_SCHEDULED_EVENT_UPDATE": 1 << 16,
    "GUILD_SCHEDULED_EVENT_DELETE": 1 << 16,
    "GUILD_SCHEDULED_EVENT_USER_ADD": 1 << 16,
    "GUILD_SCHEDULED_EVENT_USER_REMOVE": 1 << 16,
    "MESSAGE_POLL_VOTE_ADD": 1 << 24,
    "MESSAGE_POLL_VOTE_REMOVE": 1 << 24,
}
INTENT_MEMBERS, INTENT_PRESENCES, INTENT_MESSAGE_CONTENT = 1 << 1, 1 << 8, 1 << 15


class Connection:
    """One websocket plus the writer task that sends its queued frames in order."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.session: Session | None = None
        self._queue: asyncio.Queue[str | int] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write())
        self.closing = False

    def send(self, frame: str) -> None:
        if not self.closing:
            self._queue.put_nowait(frame)

    def send_json(self, payload: dict[str, Any]) -> None:
        self.send(json.dumps(payload))

    def close(self, code: int) -> None:
        """Close after the frames already queued (an int in the queue means 'close')."""
        if not self.closing:
            self.closing = True
            self._queue.put_nowait(code)

    async def wait_closed(self) -> None:
        """Wait (bounded) until the writer has sent the close frame."""
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._writer), 2.0)

    async def finish(self) -> None:
        """Stop the writer once the socket is gone; never leaves the task behind."""
        self.closing = True
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    async def _write(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                if isinstance(item, int):
                    await self.ws.close(code=item)
                    return
                await self.ws.send_str(item)
            except (ConnectionError, RuntimeError):
                return


@dataclass
class Session:
    """What survives a disconnect: the sequence, the event buffer, the identity."""

    session_id: str
    intents: int
    seq: int = 0
    buffer: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=BUFFER_LIMIT))
    conn: Connection | None = None
    resumes: int = 0
    invalid: bool = False

    def push(self, event: str, data: dict[str, Any]) -> None:
        self.seq += 1
        frame = json.dumps({"op": DISPATCH, "t": event, "s": self.seq, "d": data})
        self.buffer.append((self.seq, frame))
        if self.conn is not None:
            self.conn.send(frame)


class Gateway:
    """Owns the sessions and websockets; the world's events arrive through :meth:`dispatch`."""

    def __init__(self, world: World, clock: Clock, token: Callable[[], str]) -> None:
        self.world = world
        self.clock = clock
        self._token = token
        self.url = ""
        self.sessions: dict[str, Session] = {}
        self.connections: set[Connection] = set()
        self.identifies = 0
        self.resumes = 0
        self.refused_resumes = 0
        #: Frames sent again on RESUME (tests use it to see that replay really happened).
        self.replayed = 0
        #: The bot's presence as last sent (IDENTIFY presence or op 3).
        self.presence: dict[str, Any] = {
            "status": "online",
            "activities": [],
            "since": None,
            "afk": False,
        }
        #: Every op 3 received, as sent (``d``), valid or not.
        self.presence_updates: list[Any] = []
        #: Until this time on the clock, websocket upgrades are answered 503 (an outage).
        self.refuse_until = 0.0
        self.refused_connections = 0
        self._limits = RateLimiter(clock)

    # ---- the world's side ----------------------------------------------------------------

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Queue ``event`` on every session (attached or not), filtered by its intents."""
        need = EVENT_INTENTS.get(event, 0)
        for session in self.sessions.values():
            if need and not session.intents & need:
                continue
            payload = data
            if event in ("MESSAGE_CREATE", "MESSAGE_UPDATE"):
                payload = self._without_content(session, data)
            session.push(event, payload)

    def _without_content(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        """Without MESSAGE_CONTENT, Discord blanks content unless the bot is involved."""
        if session.intents & INTENT_MESSAGE_CONTENT:
            return data
        bot = self.world.bot_user_id
        if data["author"]["id"] == bot or any(m["id"] == bot for m in data["mentions"]):
            return data
        return {**data, "content": "", "embeds": [], "attachments": [], "components": []}

    def disconnect(self, code: int, refuse_s: float = 0.0) -> int:
        """Close every bot websocket with ``code``; the sessions stay resumable. For
        ``refuse_s`` seconds after, new websockets are refused (the bot is left with a
        closed socket while it retries)."""
        self.refuse_until = max(self.refuse_until, self.clock.now() + refuse_s)
        conns = list(self.connections)
        for conn in conns:
            self._detach(conn)
            conn.close(code)
        return len(conns)

    def invalidate(self, *, now: bool = False) -> int:
        """Refuse each current session's next RESUME; ``now`` also sends op 9 at once."""
        for session in self.sessions.values():
            session.invalid = True
            if now and session.conn is not None:
                session.conn.send_json({"op": INVALID_SESSION, "d": False})
        return len(self.sessions)

    async def close_all(self, code: int = 1001) -> None:
        conns = list(self.connections)
        for conn in conns:
            self._detach(conn)
            conn.close(code)
        await asyncio.gather(*(c.wait_closed() for c in conns))

    def describe(self) -> dict[str, Any]:
        return {
            "identifies": self.identifies,
            "resumes": self.resumes,
            "refused_resumes": self.refused_resumes,
            "replayed": self.replayed,
            "connections": len(self.connections),
            "refused_connections": self.refused_connections,
            "presence_updates": len(self.presence_updates),
            "sessions": [
                {
                    "session_id": s.session_id,
                    "seq": s.seq,
                    "connected": s.conn is not None,
                    "resumes": s.resumes,
                    "buffered": len(s.buffer),
                    "intents": s.intents,
                    "invalid": s.invalid,
                }
                for s in self.sessions.values()
            ],
        }

    # ---- the websocket's side ------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.clock.now() < self.refuse_until:
            self.refused_connections += 1
            return web.Response(status=503, text="sandbox: gateway outage")
        ws = web.WebSocketResponse(max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        conn = Connection(ws)
        self.connections.add(conn)
        conn.send_json({"op": HELLO, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}})
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    self._on_frame(conn, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
                if conn.closing:
                    await conn.wait_closed()
                    break
        finally:
            self._detach(conn)
            self.connections.discard(conn)
            await conn.finish()
            if not ws.closed:
                await ws.close()
        return ws

    def _on_frame(self, conn: Connection, raw: str | bytes) -> None:
        try:
            msg = json.loads(raw)
            op = msg["op"]
            data = msg.get("d")
        except (ValueError, TypeError, KeyError):
            conn.close(4002)  # decode error
            return
        decision = self._limits.hit(f"conn:{id(conn)}", 120, 60.0)
        if not decision.allowed:
            conn.close(4008)  # rate limited
            return
        if op == HEARTBEAT:
            conn.send_json({"op": HEARTBEAT_ACK})
        elif op == IDENTIFY:
            self._identify(conn, data)
        elif op == RESUME:
            self._resume(conn, data)
        elif conn.session is None:
            conn.close(4003)  # not authenticated
        elif op == PRESENCE:
            self._presence(data, conn)
        elif op == REQUEST_MEMBERS:
            self._request_members(conn.session, data)
        elif op == VOICE_STATE:
            pass
        else:
            conn.close(4001)  # unknown opcode

    def _token_ok(self, token: Any) -> bool:
        if not isinstance(token, str):
            return False
        return token.removeprefix("Bot ") == self._token()

    def _identify(self, conn: Connection, data: Any) -> None:
        if conn.session is not None:
            conn.close(4005)  # already authenticated
            return
        if not isinstance(data, dict) or not self._token_ok(data.get("token")):
            conn.close(4004)  # authentication failed
            return
        intents = data.get("intents")
        if not isinstance(intents, int):
            conn.close(4013)  # invalid intents
            return
        if isinstance(data.get("presence"), dict):
            self._presence(data["presence"])
        self.identifies += 1
        session = Session(session_id=secrets.token_hex(16), intents=intents)
        self._forget_old_sessions()
        self.sessions[session.session_id] = session
        self._attach(conn, session)
        world = self.world
        session.push(
            "READY",
            {
                "v": 10,
                "user": world.user_payload(world.users[world.bot_user_id]),
                "guilds": [{"id": world.guild_id, "unavailable": True}],
                "session_id": session.session_id,
                "resume_gateway_url": self.url,
                "session_type": "normal",
                "application": {"id": world.bot_user_id, "flags": 0},
                "private_channels": [],
                "relationships": [],
                "presences": [],
                "guild_join_requests": [],
                "geo_ordered_rtc_regions": [],
                "user_settings": {},
                "_trace": ["sandbox-gateway"],
            },
        )
        session.push(
            "GUILD_CREATE",
            world.guild_create_payload(presences=bool(intents & INTENT_PRESENCES)),
        )

    def _resume(self, conn: Connection, data: Any) -> None:
        if conn.session is not None:
            conn.close(4005)
            return
        if not isinstance(data, dict) or not self._token_ok(data.get("token")):
            conn.close(4004)
            return
        session = self.sessions.get(data.get("session_id"))  # type: ignore[arg-type]
        seq = data.get("seq")
        if not isinstance(seq, int):
            seq = 0
        oldest = session.buffer[0][0] if session and session.buffer else 1
        if session is None or session.invalid or seq > session.seq or seq + 1 < oldest:
            self.refused_resumes += 1
            if session is not None:
                self.sessions.pop(session.session_id, None)
                if session.conn is not None:
                    session.conn.close(4009)
            conn.send_json({"op": INVALID_SESSION, "d": False})
            return
        if session.conn is not None:  # the old socket has not noticed it is gone yet
            old = session.conn
            self._detach(old)
            old.close(4009)
        self.resumes += 1
        session.resumes += 1
        for frame_seq, frame in session.buffer:
            if frame_seq > seq:
                conn.send(frame)
                self.replayed += 1
        self._attach(conn, session)
        session.push("RESUMED", {"_trace": ["sandbox-gateway"]})

    def _presence(self, data: Any, conn: Connection | None = None) -> None:
        """Gateway Presence Update: ``{since, activities, status, afk}``, all four required;
        anything else closes the socket with 4002 (decode error), as Discord does."""
        if conn is not None:
            self.presence_updates.append(data)
        if not _valid_presence(data):
            if conn is not None:
                conn.close(4002)
            return
        self.presence = {
            "status": data["status"],
            "activities": data["activities"],
            "since": data["since"],
            "afk": data["afk"],
        }
        member = self.world.members.get(self.world.bot_user_id)
        if member is not None and self.presence["status"] in ("online", "idle", "dnd"):
            member.status = self.presence["status"]
            member.activities = list(self.presence["activities"])
        elif member is not None and self.presence["status"] == "invisible":
            member.status = "offline"

    def _request_members(self, session: Session, data: Any) -> None:
        data = data if isinstance(data, dict) else {}
        world = self.world
        chunk: dict[str, Any] = {
            "guild_id": world.guild_id,
            "members": [world.member_payload(uid) for uid in world.members],
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if data.get("presences"):
            chunk["presences"] = [
                world.presence_payload(m) for m in world.members.values() if m.status != "offline"
            ]
        if "nonce" in data:
            chunk["nonce"] = data["nonce"]
        session.push("GUILD_MEMBERS_CHUNK", chunk)

    def _attach(self, conn: Connection, session: Session) -> None:
        conn.session = session
        session.conn = conn

    def _detach(self, conn: Connection) -> None:
        session = conn.session
        if session is not None and session.conn is conn:
            session.conn = None
        conn.session = None

    def _forget_old_sessions(self) -> None:
        """Keep memory bounded: drop the oldest detached sessions beyond MAX_SESSIONS."""
        while len(self.sessions) >= MAX_SESSIONS:
            for sid, s in self.sessions.items():
                if s.conn is None:
                    del self.sessions[sid]
                    break
            else:
                return


def _valid_presence(d: Any) -> bool:
    if not isinstance(d, dict) or not {"since", "activities", "status", "afk"} <= set(d):
        return False
    since, activities = d["since"], d["activities"]
    return (
        d["status"] in PRESENCE_STATUSES
        and isinstance(d["afk"], bool)
        # unix ms or null; py-cord sends 0.0 when not idle, which Discord accepts
        and (since is None or (isinstance(since, int | float) and not isinstance(since, bool)))
        and isinstance(activities, list)
        and all(
            isinstance(a, dict)
            and isinstance(a.get("name"), str)
            and a.get("type") in ACTIVITY_TYPES
            for a in activities
        )
    )
