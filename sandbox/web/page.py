"""The sandbox's web page: the guild as a person sees it, a composer, and the health panel.

Served by the emulator's aiohttp app at `/` (the URL the sandbox prints first). The page
acts as users through the control API (`/_sandbox/messages`, `members`, `bans`,
`presences`, `interactions`) and watches through one stream of server-sent events. The
sandbox runs in the supervisor's process, so the health panel reads the Supervisor
object itself, and its kill buttons signal the services' processes directly.

Routes besides the control API:

- `GET /`: the page; `GET /static/...`: its script and style (nothing from the internet)
- `GET /_sandbox/events`: server-sent events: `snapshot` first (everything the page
  shows), then `message` (created or changed, ephemeral ones too), `message_deleted`,
  `channels`, `members`, `commands`, `presence` (the bot's), `interaction`, `health`
  (every second), `transition` (each state change of a service), `kill`, `chaos`
- `GET /_sandbox/health`: what the health panel shows, as JSON
- `POST /_sandbox/services/{name}/kill`: SIGKILL the service's process -> `{service, pid}`
- `POST /_sandbox/services/{name}/restart`: as `run.py restart` -> `{ok, detail}`
- `POST /_sandbox/chaos {every_s?: 2, for_s?: 30}`: SIGKILL a running service every
  `every_s` seconds for `for_s` seconds (spread over the services, so that no service
  is killed more often than the others) -> the chaos state; `DELETE /_sandbox/chaos`
  stops it
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sandbox.discord.control import PREFIX, BadInput, _body, _message_view
from sandbox.discord.world import Message, NotFound, WorldError
from supervisor.metrics import health

if TYPE_CHECKING:
    from sandbox.discord.server import DiscordEmulator
    from supervisor.supervisor import Supervisor

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
TICK_S = 0.25  # interactions' responses, the bot's presence, the commands
HEALTH_EVERY_S = 1.0
KEEPALIVE_S = 15.0
QUEUE_MAX = 2000  # events waiting for one page; beyond, it reconnects for a snapshot
MESSAGES_PER_CHANNEL = 200  # in a snapshot
WATCH_INTERACTIONS = 50
CHANNEL_EVENTS = {"CHANNEL_CREATE", "CHANNEL_UPDATE", "CHANNEL_DELETE"}
MEMBER_EVENTS = {
    "GUILD_MEMBER_ADD",
    "GUILD_MEMBER_REMOVE",
    "GUILD_MEMBER_UPDATE",
    "PRESENCE_UPDATE",
    "GUILD_BAN_ADD",
    "GUILD_BAN_REMOVE",
}


class Unavailable(WorldError):
    status = 503


class Conflict(WorldError):
    status = 409


class SandboxPage:
    """The page's routes and its event stream, over the emulator's world and the
    supervisor (attached once it exists: `page.supervisor = ...`)."""

    def __init__(self, emulator: DiscordEmulator) -> None:
        self.emu = emulator
        self.world = emulator.world
        self._supervisor: Supervisor | None = None
        self.clients: set[asyncio.Queue[bytes | None]] = set()
        self.watching: OrderedDict[str, int] = OrderedDict()  # interaction id -> responses
        self.chaos: dict[str, Any] = {"running": False, "kills": []}
        self._chaos_task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._presence: str = ""
        self._commands: str = ""
        # Everything the world tells the gateway, the page hears too.
        tell_gateway = self.world.dispatch

        def dispatch(event: str, data: dict[str, Any]) -> None:
            tell_gateway(event, data)
            try:
                self._on_world_event(event, data)
            except Exception:  # the page must never break the emulator
                log.exception("the web page failed on %s", event)

        self.world.dispatch = dispatch
        emulator.extra_routes.append(self.add_routes)

    @property
    def supervisor(self) -> Supervisor | None:
        return self._supervisor

    @supervisor.setter
    def supervisor(self, sup: Supervisor) -> None:
        self._supervisor = sup
        sup.watchers.append(lambda change: self.broadcast("transition", change))

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self.index)
        r.add_static("/static/", STATIC)
        p = PREFIX + "/"
        r.add_get(p + "events", self.events)
        r.add_get(p + "health", self.health_json)
        r.add_post(p + "services/{name}/kill", self.kill)
        r.add_post(p + "services/{name}/restart", self.restart)
        r.add_post(p + "chaos", self.start_chaos)
        r.add_delete(p + "chaos", self.stop_chaos)
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._close_streams)
        app.on_cleanup.append(self._stop)

    # --- lifetime -------------------------------------------------------------------

    async def _start(self, app: web.Application) -> None:
        self._ticker = asyncio.create_task(self._tick())

    async def _close_streams(self, app: web.Application) -> None:
        for queue in list(self.clients):
            self._hang_up(queue)

    async def _stop(self, app: web.Application) -> None:
        for task in (self._ticker, self._chaos_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # --- what the page shows ----------------------------------------------------------

    def message_view(self, msg: Message) -> dict[str, Any]:
        view = _message_view(msg)
        user = self.world.users.get(msg.author_id)
        view["channel_id"] = msg.channel_id
        view["author"] = {
            "id": msg.author_id,
            "username": user.username if user else "deleted-user",
            "bot": bool(user and user.bot),
        }
        view["ephemeral"] = msg.ephemeral
        view["components"] = msg.components
        inter = self.world.interactions.get(msg.interaction_id or "")
        if inter is not None:
            view["interaction"] = {"id": inter.id, "name": inter.name, "user_id": inter.user_id}
        return view

    def channels(self) -> list[dict[str, Any]]:
        return [
            {
                "id": c.id,
                "name": c.name,
                "type": c.type,
                "position": c.position,
                "parent_id": c.parent_id,
                "topic": c.topic,
            }
            for c in self.world.channels.values()
        ]

    def members(self) -> list[dict[str, Any]]:
        """Every user the guild has known: members, those who left, the banned."""
        world = self.world
        out = []
        for uid, user in world.users.items():
            member = world.members.get(uid)
            out.append(
                {
                    "id": uid,
                    "username": user.username,
                    "bot": user.bot,
                    "member": member is not None,
                    "banned": uid in world.bans,
                    "owner": uid == world.owner_id,
                    "status": member.status if member else "offline",
                    "activities": member.activities if member else [],
                }
            )
        return out

    def commands(self) -> list[dict[str, Any]]:
        world = self.world
        seen: dict[str, dict[str, Any]] = {}
        for scope in ("global", world.guild_id):
            for cmd in world.commands.get(scope, []):
                seen[cmd["name"]] = {
                    "name": cmd["name"],
                    "description": cmd.get("description", ""),
                    "options": cmd.get("options") or [],
                }
        return sorted(seen.values(), key=lambda c: c["name"])

    def interaction_view(self, iid: str) -> dict[str, Any] | None:
        inter = self.world.interactions.get(iid)
        if inter is None:
            return None
        return {
            "id": inter.id,
            "name": inter.name,
            "channel_id": inter.channel_id,
            "user_id": inter.user_id,
            "options": inter.options,
            "acknowledged": inter.acknowledged,
            "responses": inter.responses,
            "message_id": inter.original_message_id,
        }

    def health(self) -> dict[str, Any]:
        sup = self._supervisor
        if sup is None:
            return {"services": [], "supervisor": {}, "healthy": False, "reason": "starting"}
        status = sup.status()
        healthy, reason = health(status)
        return {
            "supervisor": status.supervisor,
            "services": status.services,
            "metrics_url": status.metrics_url,
            "healthy": healthy,
            "reason": reason,
            "chaos": self.chaos,
        }

    def snapshot(self) -> dict[str, Any]:
        world = self.world
        per_channel: dict[str, list[Message]] = {}
        for msg in world.messages.values():
            per_channel.setdefault(msg.channel_id, []).append(msg)
        messages = [
            self.message_view(m)
            for msgs in per_channel.values()
            for m in msgs[-MESSAGES_PER_CHANNEL:]
        ]
        sup = self._supervisor
        return {
            "now": time.time(),
            "guild": {"id": world.guild_id, "name": world.guild_name},
            "bot_user_id": world.bot_user_id,
            "owner_id": world.owner_id,
            "channels": self.channels(),
            "members": self.members(),
            "commands": self.commands(),
            "presence": self.emu.gateway.presence,
            "messages": messages,
            "interactions": [
                v for iid in list(world.interactions)[-50:] if (v := self.interaction_view(iid))
            ],
            "health": self.health(),
            "history": list(sup.history) if sup is not None else [],
        }

    # --- the event stream -------------------------------------------------------------

    def broadcast(self, kind: str, data: Any) -> None:
        if not self.clients:
            return
        frame = f"event: {kind}\ndata: {json.dumps(data, default=str)}\n\n".encode()
        for queue in list(self.clients):
            try:
                queue.put_nowait(frame)
            except asyncio.QueueFull:  # a page that stopped reading: it will reconnect
                self._hang_up(queue)

    def _hang_up(self, queue: asyncio.Queue[bytes | None]) -> None:
        self.clients.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)

    async def events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_MAX)
        self.clients.add(queue)
        try:
            snapshot = json.dumps(self.snapshot(), default=str)
            await resp.write(f"event: snapshot\ndata: {snapshot}\n\n".encode())
            while True:
                try:
                    frame = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    frame = b": keepalive\n\n"
                if frame is None:
                    break
                await resp.write(frame)
        except ConnectionError:
            pass  # the page went away
        finally:
            self.clients.discard(queue)
        return resp

    def _on_world_event(self, event: str, data: Any) -> None:
        if not isinstance(data, dict):
            return
        world = self.world
        if event in ("MESSAGE_DELETE", "MESSAGE_DELETE_BULK"):
            for mid in data.get("ids") or [data.get("id")]:
                self.broadcast("message_deleted", {"id": mid, "channel_id": data.get("channel_id")})
        elif event.startswith("MESSAGE_"):  # created, edited, reactions, poll votes
            msg = world.messages.get(str(data.get("message_id") or data.get("id")))
            if msg is not None:
                self.broadcast("message", self.message_view(msg))
        elif event in CHANNEL_EVENTS:
            self.broadcast("channels", self.channels())
        elif event in MEMBER_EVENTS:
            self.broadcast("members", self.members())
        elif event == "INTERACTION_CREATE" and isinstance(data.get("id"), str):
            self.watching[data["id"]] = -1
            while len(self.watching) > WATCH_INTERACTIONS:
                self.watching.popitem(last=False)

    async def _tick(self) -> None:
        """What the world does not announce: interaction responses (ephemeral ones are
        not dispatched), the bot's presence and its commands; and the health panel."""
        next_health = 0.0
        while True:
            await asyncio.sleep(TICK_S)
            if not self.clients:
                continue
            try:
                self._check_interactions()
                presence = json.dumps(self.emu.gateway.presence, sort_keys=True, default=str)
                if presence != self._presence:
                    self._presence = presence
                    self.broadcast("presence", self.emu.gateway.presence)
                    self.broadcast("members", self.members())  # the bot's own status too
                commands = self.commands()
                fingerprint = json.dumps(commands, sort_keys=True)
                if fingerprint != self._commands:
                    self._commands = fingerprint
                    self.broadcast("commands", commands)
                now = time.monotonic()
                if now >= next_health:
                    next_health = now + HEALTH_EVERY_S
                    self.broadcast("health", self.health())
            except Exception:  # a bug here must not stop the page's updates
                log.exception("the web page's updates failed")
                await asyncio.sleep(1)

    def _check_interactions(self) -> None:
        for iid, seen in list(self.watching.items()):
            inter = self.world.interactions.get(iid)
            if inter is None:
                del self.watching[iid]
                continue
            if len(inter.responses) == seen:
                continue
            self.watching[iid] = len(inter.responses)
            for response in inter.responses[max(seen, 0) :]:
                msg = self.world.messages.get(str(response.get("message_id")))
                if msg is not None and msg.ephemeral:  # the world did not announce it
                    self.broadcast("message", self.message_view(msg))
            self.broadcast("interaction", self.interaction_view(iid))

    # --- routes -----------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def health_json(self, request: web.Request) -> web.Response:
        sup = self._supervisor
        return web.json_response(
            {**self.health(), "history": list(sup.history) if sup is not None else []},
            dumps=lambda d: json.dumps(d, default=str),
        )

    def _require_supervisor(self) -> Supervisor:
        if self._supervisor is None:
            raise Unavailable("the supervisor is not running yet")
        return self._supervisor

    def _sigkill(self, name: str, by: str) -> int:
        sup = self._require_supervisor()
        proc = sup.procs.get(name)
        if proc is None:
            raise NotFound(f"no service named {name!r}")
        pid = proc.pid
        if pid is None:
            raise Conflict(f"{name} has no process right now ({proc.state.value})")
        os.kill(pid, signal.SIGKILL)
        self.broadcast("kill", {"t": time.time(), "service": name, "pid": pid, "by": by})
        return pid

    async def kill(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        pid = self._sigkill(name, "page")
        return web.json_response({"service": name, "pid": pid})

    async def restart(self, request: web.Request) -> web.Response:
        sup = self._require_supervisor()
        if request.match_info["name"] not in sup.procs:
            raise NotFound(f"no service named {request.match_info['name']!r}")
        ok, detail = sup.restart(request.match_info["name"])
        return web.json_response({"ok": ok, "detail": detail}, status=200 if ok else 409)

    async def start_chaos(self, request: web.Request) -> web.Response:
        self._require_supervisor()
        body = await _body(request, optional=True)
        every = _seconds(body, "every_s", 2.0, 0.5, 60)
        lasting = _seconds(body, "for_s", 30.0, 1, 600)
        if self._chaos_task is not None and not self._chaos_task.done():
            raise Conflict("chaos is already running; DELETE /_sandbox/chaos stops it")
        self.chaos = {
            "running": True,
            "every_s": every,
            "for_s": lasting,
            "started": time.time(),
            "until": time.time() + lasting,
            "kills": [],
        }
        self._chaos_task = asyncio.create_task(self._chaos(every, lasting))
        self.broadcast("chaos", self.chaos)
        return web.json_response(self.chaos)

    async def stop_chaos(self, request: web.Request) -> web.Response:
        task = self._chaos_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return web.json_response(self.chaos)

    async def _chaos(self, every: float, lasting: float) -> None:
        sup = self._require_supervisor()
        deadline = time.monotonic() + lasting
        counts: dict[str, int] = {}
        try:
            while time.monotonic() < deadline:
                running = [
                    p.name for p in sup.procs.values() if p.state.value == "RUNNING" and p.pid
                ]
                if running:
                    fewest = min(counts.get(n, 0) for n in running)
                    name = random.choice([n for n in running if counts.get(n, 0) == fewest])
                    try:
                        pid = self._sigkill(name, "chaos")
                    except (WorldError, ProcessLookupError):
                        pass
                    else:
                        counts[name] = counts.get(name, 0) + 1
                        self.chaos["kills"].append({"t": time.time(), "service": name, "pid": pid})
                        self.broadcast("chaos", self.chaos)
                await asyncio.sleep(min(every, max(0.0, deadline - time.monotonic())))
        finally:
            self.chaos["running"] = False
            self.broadcast("chaos", self.chaos)


def _seconds(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadInput(f"{key} must be a number of seconds between {low:g} and {high:g}")
    return float(value)
