"""The control API under ``/_sandbox/``: how tests and acceptance checks act as users.

All bodies and answers are JSON. Errors are ``{"error": str, "status": int}`` with 400 for
malformed JSON or missing/wrongly typed fields, 404 for unknown ids or routes, 405 for a
wrong method; bad input never reaches the world half-validated, and an unexpected bug
answers 500 instead of taking the emulator down. Ids are accepted as digit strings or
non-negative integers and always returned as strings.

Routes (``->`` is the answer; the event in brackets is what the bot receives):

- ``GET state`` -> ``{guild_id, bot_user_id, llm_url, api_base, base_url, gateway_url,
  token, channels: [{id, name, type, topic}], members: [{id, username, bot, status}]}``
- ``POST messages {channel_id, author_id, content, reply_to_id?, embeds?}`` -> ``{id}``
  [MESSAGE_CREATE]
- ``PATCH messages/{id} {content}`` -> ``{id}`` [MESSAGE_UPDATE];
  ``DELETE messages/{id}`` -> ``{id}`` [MESSAGE_DELETE]
- ``GET channels/{id}/messages`` -> ``[{id, author_id, content, embeds, edited_at,
  reply_to_id, allowed_mentions, attachments, flags, interaction_id, timestamp}]`` oldest
  first; deleted and ephemeral messages are left out; ``allowed_mentions`` is exactly what
  the bot sent (``null`` when it sent none or a user wrote the message)
- ``POST members {username}`` (or ``{user_id}`` to re-join) -> ``{id, username}``
  [GUILD_MEMBER_ADD]; ``DELETE members/{id}`` -> ``{id}`` [GUILD_MEMBER_REMOVE]
- ``POST bans {user_id, reason?}`` -> ``{user_id}`` [GUILD_BAN_ADD, then
  GUILD_MEMBER_REMOVE if a member]; ``DELETE bans/{user_id}`` -> ``{user_id}``
  [GUILD_BAN_REMOVE]
- ``POST presences {user_id, status, activities?}`` -> ``{user_id, status}``
  [PRESENCE_UPDATE]
- ``POST interactions {channel_id, user_id, name, options?}`` -> ``{id, token,
  command_id}`` [INTERACTION_CREATE]; options are a list of Discord option objects or a
  ``{name: value}`` object (types inferred: str 3, int 4, bool 5, float 10)
- ``GET interactions/{id}`` -> ``{id, name, channel_id, user_id, command_id, options,
  acknowledged, responses: [{kind, type, content, embeds, flags, ephemeral, message_id,
  t}]}`` in order; ``kind`` is callback (``type`` = callback type: 4 message, 5 deferred,
  ...), followup, edit (of the original or a follow-up) or delete
- ``POST interactions/{id}/redeliver`` -> ``{id}`` [INTERACTION_CREATE again, same id and
  token]: a duplicate delivery, whose second initial response Discord refuses (40060)
- ``GET requests[?since=t&method=M&route=R]`` -> ``[{t, method, path, status, route, query,
  body, form, files, error}]``: every REST call, 429s and refusals included; ``t`` is clock
  seconds since start, ``path`` the full request path (``/api/v10/...``), ``route`` the
  template (``/channels/{channel_id}/messages``), ``body`` the JSON body as received (for a
  form, its ``payload_json``; null without a body), ``form`` whether it came as a form,
  ``files`` the uploaded file names, ``error`` Discord's error JSON (``{code, message,
  errors?}``) when refused, else null
- ``GET presence`` -> ``{status, activities, since, afk}`` as the bot last sent it
- ``GET commands`` -> ``{global: [...], guild: [...]}``: the synced application commands
- ``GET clock`` / ``POST clock {advance_s}`` -> ``{now}``
- ``POST gateway/disconnect {code?, refuse_s?}`` (1000-4999, default 4000) -> ``{closed}``;
  for ``refuse_s`` seconds of the clock after, new websockets get 503 (an outage: the bot
  keeps its closed socket while it retries)
- ``POST gateway/invalidate {now?}`` -> ``{sessions}``: each session's next RESUME gets
  op 9 ``d:false``; ``now: true`` also sends op 9 to the connected sockets at once
- ``POST gateway/dispatch {t, d}`` -> ``{dispatched}``: sends event ``t`` with payload
  ``d`` exactly as given (no checks): for feeding the bot malformed events
- ``GET gateway/sessions`` -> ``{identifies, resumes, refused_resumes, replayed, connections,
  refused_connections, presence_updates, sessions: [{session_id, seq, connected, resumes,
  buffered, intents, invalid}]}`` (``presence_updates``: op 3 frames received)

- ``POST dms {author_id, content}`` -> ``{id, channel_id}`` [MESSAGE_CREATE without
  guild_id]: a user writes to the bot in their DM channel (created on first use);
  ``GET users/{id}/dms`` -> that channel's messages as in ``channels/{id}/messages``
  (``[]`` before any)
- ``POST polls/{message_id}/votes {user_id, answer}`` -> ``{message_id, user_id,
  answer_id}`` [MESSAGE_POLL_VOTE_ADD; in a single-choice poll a vote for another answer
  removes the first: MESSAGE_POLL_VOTE_REMOVE before]; ``answer`` is the answer's text or
  its 1-based id; ``DELETE polls/{message_id}/votes {user_id, answer}`` takes it back
  [MESSAGE_POLL_VOTE_REMOVE]; a poll that has ended answers 400
- ``POST polls/{message_id}/expire`` -> ``{message_id}`` [MESSAGE_UPDATE, finalized]: its
  author ends it early, as Discord's "End poll now" does. Polls also end by themselves
  when the clock passes their expiry
- ``GET scheduled-events`` -> ``[{id, name, start, end, location, description, status,
  interested}]`` (times ISO-8601, ``interested`` the user ids);
  ``POST scheduled-events/{id}/interested {user_id}`` / ``DELETE
  scheduled-events/{id}/interested {user_id}`` -> ``{id, interested}``
  [GUILD_SCHEDULED_EVENT_USER_ADD / _REMOVE]
- Messages in ``channels/{id}/messages`` also carry ``poll`` (``{question, answers:
  [{answer_id, text, votes}], expiry, allow_multiselect, finalized}`` or null) and
  ``attachments`` (``[{id, filename, content_type, size, url}]``: the url serves the
  bytes); ``POST messages`` takes ``attachments: [{filename, content_type?, data_b64}]``
- ``POST interactions`` with a ``name`` of several words (``"event create"``) runs that
  subcommand: its options are nested in a SUB_COMMAND option, as Discord sends them

Interaction tokens live 15 minutes of the emulator's clock (``POST clock`` moves it): after
that a callback gets 10062 and a follow-up or edit 401 with code 50027.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .rest import json_response
from .world import STATUSES, Message, NotFound, Poll, WorldError, iso_at

if TYPE_CHECKING:
    from .server import DiscordEmulator

log = logging.getLogger(__name__)
PREFIX = "/_sandbox"
_DIGITS = re.compile(r"[0-9]{1,20}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_OPTION_TYPES: tuple[tuple[type, int], ...] = ((bool, 5), (int, 4), (float, 10), (str, 3))


class BadInput(WorldError):
    """Malformed control input: always 400."""


def _error(status: int, message: str) -> web.Response:
    return json_response({"error": message, "status": status}, status)


async def _body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The JSON object body; ``optional`` lets an empty body mean ``{}``."""
    raw = await request.read()
    if optional and not raw.strip():
        return {}
    try:
        data = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise BadInput("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadInput("body must be a JSON object")
    return data


def _id(body: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise BadInput(f"{key} is required")
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return value
    raise BadInput(f"{key} must be an id (a string of digits)")


def _str(body: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise BadInput(f"{key} must be a string")
    return value


def _path_id(request: web.Request, key: str) -> str:
    value = request.match_info[key]
    if not _DIGITS.fullmatch(value):
        raise NotFound(f"unknown id {value!r}")
    return value


def _options(raw: Any) -> list[dict[str, Any]]:
    """Slash-command options from a Discord option list or a ``{name: value}`` dict."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        out = []
        for name, value in raw.items():
            kind = next((t for cls, t in _OPTION_TYPES if isinstance(value, cls)), None)
            if kind is None:
                raise BadInput(f"option {name!r} must be a string, number or boolean")
            out.append({"name": name, "type": kind, "value": value})
        return out
    if isinstance(raw, list) and all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw
    ):
        return [{"type": 3, **o} for o in raw]
    raise BadInput("options must be a list of {name, type, value} or a {name: value} object")


def _poll_view(poll: Poll | None) -> dict[str, Any] | None:
    if poll is None:
        return None
    return {
        "question": poll.question,
        "answers": [
            {"answer_id": i, "text": text, "votes": len(poll.votes.get(i, []))}
            for i, text in enumerate(poll.answers, 1)
        ],
        "expiry": iso_at(poll.expiry),
        "allow_multiselect": poll.allow_multiselect,
        "finalized": poll.finalized,
    }


def _message_view(msg: Message) -> dict[str, Any]:
    return {
        "id": msg.id,
        "author_id": msg.author_id,
        "content": msg.content,
        "embeds": msg.embeds,
        "edited_at": msg.edited_at,
        "reply_to_id": msg.reply_to_id,
        "allowed_mentions": msg.allowed_mentions,
        "attachments": msg.attachments,
        "flags": msg.flags,
        "interaction_id": msg.interaction_id,
        "timestamp": msg.timestamp,
        "poll": _poll_view(msg.poll),
    }


class ControlApi:
    """Routes that change the world as users would, and read back what the bot did."""

    def __init__(self, emulator: DiscordEmulator) -> None:
        self.emu = emulator

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(PREFIX + "/") and request.path != PREFIX:
            return await handler(request)
        exc = request.match_info.http_exception
        if exc is not None:
            return _error(
                exc.status, "method not allowed" if exc.status == 405 else "no such route"
            )
        try:
            return await handler(request)
        except WorldError as err:
            return _error(err.status, str(err))
        except Exception:
            log.exception("control route %s %s failed", request.method, request.path)
            return _error(500, "internal error in the emulator")

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        p = PREFIX + "/"
        r.add_get(p + "state", self.state)
        r.add_post(p + "messages", self.post_message)
        r.add_patch(p + "messages/{id}", self.edit_message)
        r.add_delete(p + "messages/{id}", self.delete_message)
        r.add_get(p + "channels/{id}/messages", self.channel_messages)
        r.add_post(p + "members", self.add_member)
        r.add_delete(p + "members/{id}", self.remove_member)
        r.add_post(p + "bans", self.ban)
        r.add_delete(p + "bans/{id}", self.unban)
        r.add_post(p + "presences", self.presence_update)
        r.add_post(p + "interactions", self.interaction)
        r.add_get(p + "interactions/{id}", self.interaction_responses)
        r.add_post(p + "interactions/{id}/redeliver", self.redeliver_interaction)
        r.add_get(p + "requests", self.requests)
        r.add_get(p + "presence", self.bot_presence)
        r.add_get(p + "commands", self.commands)
        r.add_get(p + "clock", self.clock)
        r.add_post(p + "clock", self.clock)
        r.add_post(p + "gateway/disconnect", self.disconnect)
        r.add_post(p + "gateway/invalidate", self.invalidate)
        r.add_get(p + "gateway/sessions", self.sessions)
        r.add_post(p + "gateway/dispatch", self.raw_dispatch)
        r.add_post(p + "dms", self.post_dm)
        r.add_get(p + "users/{id}/dms", self.user_dms)
        r.add_post(p + "polls/{id}/votes", self.vote)
        r.add_delete(p + "polls/{id}/votes", self.unvote)
        r.add_post(p + "polls/{id}/expire", self.expire_poll)
        r.add_get(p + "scheduled-events", self.scheduled_events)
        r.add_post(p + "scheduled-events/{id}/interested", self.interested)
        r.add_delete(p + "scheduled-events/{id}/interested", self.interested)

    async def state(self, request: web.Request) -> web.Response:
        emu, world = self.emu, self.emu.world
        return json_response(
            {
                "guild_id": world.guild_id,
                "bot_user_id": world.bot_user_id,
                "llm_url": emu.llm_url,
                "base_url": emu.base_url,
                "api_base": emu.api_base,
                "gateway_url": emu.gateway_url,
                "token": emu.token,
                "channels": [
                    {"id": c.id, "name": c.name, "type": c.type, "topic": c.topic}
                    for c in world.channels.values()
                ],
                "members": [
                    {
                        "id": uid,
                        "username": world.users[uid].username,
                        "bot": world.users[uid].bot,
                        "status": m.status,
                    }
                    for uid, m in world.members.items()
                ],
            }
        )

    async def post_message(self, request: web.Request) -> web.Response:
        body = await _body(request)
        channel_id = _id(body, "channel_id")
        author_id = _id(body, "author_id")
        content = _str(body, "content")
        reply_to = _id(body, "reply_to_id", required=False)
        embeds = body.get("embeds", [])
        if not isinstance(embeds, list) or not all(isinstance(e, dict) for e in embeds):
            raise BadInput("embeds must be a list of objects")
        assert channel_id and author_id and content is not None
        world = self.emu.world
        world.channel(channel_id)
        world.member(author_id)
        if reply_to is not None:
            world.message(reply_to)
        attachments = self._uploads(body.get("attachments", []))
        msg = world.post_message(
            channel_id,
            author_id,
            content,
            embeds=embeds,
            reply_to_id=reply_to,
            attachments=attachments,
        )
        return json_response({"id": msg.id})

    def _uploads(self, raw: Any) -> list[dict[str, Any]]:
        """``[{filename, content_type?, data_b64}]`` as attachment objects (bytes kept)."""
        if not isinstance(raw, list) or not all(isinstance(a, dict) for a in raw):
            raise BadInput("attachments must be a list of {filename, data_b64} objects")
        out = []
        for item in raw:
            filename = item.get("filename")
            if not isinstance(filename, str) or not filename or "/" in filename:
                raise BadInput("each attachment needs a filename (no slashes)")
            try:
                data = base64.b64decode(str(item.get("data_b64", "")), validate=True)
            except (binascii.Error, ValueError):
                raise BadInput(f"{filename}: data_b64 is not base64") from None
            kept = self.emu.rest.keep_file({"filename": filename, "_data": data})
            if isinstance(item.get("content_type"), str):
                kept["content_type"] = item["content_type"]
                name, _, stored = self.emu.world.files[kept["id"]]
                self.emu.world.files[kept["id"]] = (name, item["content_type"], stored)
            out.append(kept)
        return out

    async def edit_message(self, request: web.Request) -> web.Response:
        msg = self.emu.world.message(_path_id(request, "id"))
        content = _str(await _body(request), "content")
        self.emu.world.edit_message(msg, {"content": content})
        return json_response({"id": msg.id})

    async def delete_message(self, request: web.Request) -> web.Response:
        msg = self.emu.world.message(_path_id(request, "id"))
        self.emu.world.delete_message(msg)
        return json_response({"id": msg.id})

    async def channel_messages(self, request: web.Request) -> web.Response:
        msgs = self.emu.world.channel_messages(_path_id(request, "id"))
        return json_response([_message_view(m) for m in msgs])

    async def add_member(self, request: web.Request) -> web.Response:
        body = await _body(request)
        world = self.emu.world
        if "user_id" in body:
            uid = _id(body, "user_id")
            assert uid is not None
            world.rejoin(uid)
            return json_response({"id": uid, "username": world.users[uid].username})
        username = _str(body, "username")
        assert username is not None
        if not 1 <= len(username) <= 32:
            raise BadInput("username must be 1-32 characters")
        user = world.add_member(username)
        return json_response({"id": user.id, "username": user.username})

    async def remove_member(self, request: web.Request) -> web.Response:
        uid = _path_id(request, "id")
        self.emu.world.remove_member(uid)
        return json_response({"id": uid})

    async def ban(self, request: web.Request) -> web.Response:
        body = await _body(request)
        uid = _id(body, "user_id")
        reason = _str(body, "reason", required=False)
        assert uid is not None
        self.emu.world.ban(uid, reason)
        return json_response({"user_id": uid})

    async def unban(self, request: web.Request) -> web.Response:
        uid = _path_id(request, "id")
        self.emu.world.unban(uid)
        return json_response({"user_id": uid})

    async def presence_update(self, request: web.Request) -> web.Response:
        body = await _body(request)
        uid = _id(body, "user_id")
        status = _str(body, "status")
        activities = body.get("activities", [])
        if status not in STATUSES:
            raise BadInput(f"status must be one of {', '.join(STATUSES)}")
        if not isinstance(activities, list) or not all(isinstance(a, dict) for a in activities):
            raise BadInput("activities must be a list of objects")
        assert uid is not None
        self.emu.world.set_status(uid, status, activities)
        return json_response({"user_id": uid, "status": status})

    async def interaction(self, request: web.Request) -> web.Response:
        body = await _body(request)
        channel_id = _id(body, "channel_id")
        user_id = _id(body, "user_id")
        name = _str(body, "name")
        if not name or not name.strip():
            raise BadInput("name must be a non-empty string")
        options = _options(body.get("options"))
        # "/event create": the command, then its subcommand (and group) as Discord nests them
        name, *path = name.split()
        for sub in reversed(path):
            options = [{"name": sub, "type": 1 if sub == path[-1] else 2, "options": options}]
        assert channel_id and user_id
        inter = self.emu.world.create_interaction(channel_id, user_id, name, options)
        return json_response({"id": inter.id, "token": inter.token, "command_id": inter.command_id})

    async def interaction_responses(self, request: web.Request) -> web.Response:
        inter = self.emu.world.interaction(_path_id(request, "id"))
        return json_response(
            {
                "id": inter.id,
                "name": inter.name,
                "channel_id": inter.channel_id,
                "user_id": inter.user_id,
                "command_id": inter.command_id,
                "options": inter.options,
                "acknowledged": inter.acknowledged,
                "responses": inter.responses,
            }
        )

    async def redeliver_interaction(self, request: web.Request) -> web.Response:
        """INTERACTION_CREATE once more for an existing interaction (a duplicate delivery)."""
        world = self.emu.world
        inter = world.interaction(_path_id(request, "id"))
        world.dispatch("INTERACTION_CREATE", world.interaction_payload(inter))
        return json_response({"id": inter.id})

    async def requests(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            since = float(q.get("since", "-inf"))
        except ValueError:
            raise BadInput("since must be a number") from None
        method, route = q.get("method"), q.get("route")
        return json_response(
            [
                r
                for r in self.emu.rest.requests
                if r["t"] >= since
                and (method is None or r["method"] == method.upper())
                and (route is None or r["route"] == route)
            ]
        )

    async def bot_presence(self, request: web.Request) -> web.Response:
        return json_response(self.emu.gateway.presence)

    async def commands(self, request: web.Request) -> web.Response:
        world = self.emu.world
        return json_response(
            {
                "global": world.commands.get("global", []),
                "guild": world.commands.get(world.guild_id, []),
            }
        )

    async def clock(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            advance = (await _body(request)).get("advance_s")
            if (
                isinstance(advance, bool)
                or not isinstance(advance, int | float)
                or not 0 <= advance <= 10**9
            ):
                raise BadInput("advance_s must be a number between 0 and 1e9")
            await self.emu.advance(float(advance))
        return json_response({"now": self.emu.clock.now()})

    async def disconnect(self, request: web.Request) -> web.Response:
        body = await _body(request, optional=True)
        code, refuse_s = body.get("code", 4000), body.get("refuse_s", 0)
        if isinstance(code, bool) or not isinstance(code, int) or not 1000 <= code <= 4999:
            raise BadInput("code must be an integer websocket close code (1000-4999)")
        if isinstance(refuse_s, bool) or not isinstance(refuse_s, int | float):
            raise BadInput("refuse_s must be a number of seconds")
        if not 0 <= refuse_s <= 3600:
            raise BadInput("refuse_s must be between 0 and 3600")
        closed = self.emu.gateway.disconnect(code, float(refuse_s))
        return json_response({"closed": closed})

    async def invalidate(self, request: web.Request) -> web.Response:
        body = await _body(request, optional=True)
        now = body.get("now", False)
        if not isinstance(now, bool):
            raise BadInput("now must be a boolean")
        return json_response({"sessions": self.emu.gateway.invalidate(now=now)})

    async def raw_dispatch(self, request: web.Request) -> web.Response:
        """Send any event as given, unchecked: how fuzz tests feed the bot odd payloads."""
        body = await _body(request)
        event, data = body.get("t"), body.get("d")
        if not isinstance(event, str) or not event:
            raise BadInput("t must be a non-empty string")
        self.emu.gateway.dispatch(event, data)  # type: ignore[arg-type]
        return json_response({"dispatched": event})

    async def sessions(self, request: web.Request) -> web.Response:
        return json_response(self.emu.gateway.describe())

    # ---- DMs, polls, scheduled events -----------------------------------------------------

    async def post_dm(self, request: web.Request) -> web.Response:
        body = await _body(request)
        author_id = _id(body, "author_id")
        content = _str(body, "content")
        assert author_id is not None and content is not None
        world = self.emu.world
        world.user(author_id)
        channel = world.open_dm(author_id)
        msg = world.post_message(channel.id, author_id, content)
        return json_response({"id": msg.id, "channel_id": channel.id})

    async def user_dms(self, request: web.Request) -> web.Response:
        msgs = self.emu.world.dm_messages(_path_id(request, "id"))
        return json_response([_message_view(m) for m in msgs])

    def _vote_input(self, body: dict[str, Any]) -> tuple[str, Any]:
        user_id = _id(body, "user_id")
        answer = body.get("answer")
        if isinstance(answer, bool) or not isinstance(answer, str | int):
            raise BadInput("answer must be the answer's text or its 1-based id")
        assert user_id is not None
        return user_id, answer

    async def vote(self, request: web.Request) -> web.Response:
        message_id = _path_id(request, "id")
        user_id, answer = self._vote_input(await _body(request))
        answer_id = self.emu.world.vote(message_id, user_id, answer)
        return json_response({"message_id": message_id, "user_id": user_id, "answer_id": answer_id})

    async def unvote(self, request: web.Request) -> web.Response:
        message_id = _path_id(request, "id")
        user_id, answer = self._vote_input(await _body(request))
        answer_id = self.emu.world.unvote(message_id, user_id, answer)
        return json_response({"message_id": message_id, "user_id": user_id, "answer_id": answer_id})

    async def expire_poll(self, request: web.Request) -> web.Response:
        world = self.emu.world
        msg = world.poll_message(_path_id(request, "id"))
        world.end_poll(msg)
        return json_response({"message_id": msg.id})

    async def scheduled_events(self, request: web.Request) -> web.Response:
        return json_response(
            [
                {
                    "id": e.id,
                    "name": e.name,
                    "start": iso_at(e.start),
                    "end": iso_at(e.end) if e.end is not None else None,
                    "location": e.location,
                    "description": e.description,
                    "status": e.status,
                    "interested": list(e.interested),
                }
                for e in self.emu.world.scheduled_events.values()
            ]
        )

    async def interested(self, request: web.Request) -> web.Response:
        event_id = _path_id(request, "id")
        user_id = _id(await _body(request), "user_id")
        assert user_id is not None
        world = self.emu.world
        world.set_interest(event_id, user_id, request.method == "POST")
        return json_response(
            {"id": event_id, "interested": world.scheduled_event(event_id).interested}
        )
