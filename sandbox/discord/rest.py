"""The v10 REST routes a py-cord bot uses, with Discord's auth, errors and rate limits.

One middleware does what Discord's edge does for every ``/api/`` call: parse the body (JSON
or multipart ``payload_json`` + ``files[n]``), check ``Authorization: Bot <token>`` (webhook
and interaction-callback routes carry their token in the URL instead), apply the rate-limit
buckets, turn errors into Discord's JSON, and record ``{t, method, path, status, route,
query, body, form, files, error}`` for ``GET /_sandbox/requests``. Every response is
``Content-Type: application/json`` exactly (py-cord does not parse ``application/json;
charset=utf-8``). Message bodies are checked as Discord checks them (``checks.py``), and
interaction tokens expire after 15 minutes of the emulator's clock.

Buckets: message send+edit 5 per 5 s per channel; channel rename (name/topic) 2 per 600 s
per channel; everything else 50 per second per route and major id; 50 per second globally.
A 429 carries ``Via: 1.1 google`` and ``{message, retry_after, global}`` (py-cord only
retries such 429s).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import re
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .checks import check_message, has_something_to_show, refuse_empty
from .gateway import Gateway
from .ratelimit import Clock, Decision, RateLimiter
from .world import (
    NONCE_MAX_CHARS,
    TEXT,
    Forbidden,
    FormError,
    Interaction,
    Message,
    NotFound,
    Unauthorized,
    World,
    WorldError,
)

API_PREFIX = "/api/v10"
CATCH_ALL = "/{tail}"
log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: The parsed JSON body (or ``payload_json``) and the uploaded files, set by the middleware.
BODY: web.RequestKey[Any] = web.RequestKey("body", object)
FILES: web.RequestKey[list[dict[str, Any]]] = web.RequestKey("files", list)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """JSON with the exact Content-Type py-cord compares against."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def discord_error(
    status: int, message: str, code: int = 0, errors: dict[str, Any] | None = None
) -> web.Response:
    body: dict[str, Any] = {"message": message, "code": code}
    if errors is not None:
        body["errors"] = errors
    return json_response(body, status)


#: Interaction tokens (callback, follow-ups, edits) are valid for 15 minutes.
INTERACTION_TOKEN_TTL_S = 900.0


def no_content() -> web.Response:
    return web.Response(status=204)


class RestApi:
    """Route handlers plus the edge middleware; state lives in the shared World."""

    def __init__(
        self,
        world: World,
        gateway: Gateway,
        clock: Clock,
        token: Callable[[], str],
        gateway_url: Callable[[], str],
        *,
        global_limit: int | None = 50,
    ) -> None:
        self.world = world
        self.gateway = gateway
        self.clock = clock
        self._token = token
        self._gateway_url = gateway_url
        self.global_limit = global_limit
        self.limits = RateLimiter(clock)
        self.requests: deque[dict[str, Any]] = deque(maxlen=100_000)
        self.started_at = clock.now()
        #: Where uploaded files are served (``GET /attachments/{id}/{filename}``); the
        #: emulator sets it once it listens.
        self.cdn_base = "http://127.0.0.1"

    # ---- edge ----------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical.removeprefix(API_PREFIX) if resource is not None else None
        if route == CATCH_ALL:
            route = None
        response = await self._edge(request, handler, route)
        self.requests.append(
            {
                "t": round(self.clock.now() - self.started_at, 6),
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "route": route,
                "query": request.query_string,
                "body": request.get(BODY),
                "form": request.content_type.startswith("multipart/")
                or request.content_type == "application/x-www-form-urlencoded",
                "files": [f["filename"] for f in request.get(FILES) or []],
                "error": _error_of(response),
            }
        )
        return response

    async def _edge(
        self, request: web.Request, handler: Handler, route: str | None
    ) -> web.StreamResponse:
        if route is None or request.match_info.http_exception is not None:
            exc = request.match_info.http_exception
            if exc is not None and exc.status == 405:
                return discord_error(405, "405: Method Not Allowed")
            return discord_error(404, "404: Not Found")
        webhook = route.startswith(("/interactions/", "/webhooks/"))
        if not webhook and request.headers.get("Authorization") != f"Bot {self._token()}":
            return discord_error(401, "401: Unauthorized")
        try:
            request[BODY], files = await _read_body(request)
        except ValueError:
            return discord_error(400, "The request body contains invalid JSON.", 50109)
        request[FILES] = [self.keep_file(f) for f in files]
        decision = None
        if not webhook:
            if self.global_limit is not None:
                glob = self.limits.hit("global", self.global_limit, 1.0, scope="global")
                if not glob.allowed:
                    return self._too_many(glob)
            decision = self._bucket(request, route)
            if not decision.allowed:
                return self._too_many(decision)
        try:
            response = await handler(request)
        except WorldError as exc:
            response = discord_error(exc.status, exc.message, exc.code, exc.errors)
        except Exception:  # a bug here must look like a Discord 500, not kill the request
            log.exception("REST %s %s failed", request.method, request.path)
            response = discord_error(500, "500: Internal Server Error")
        if decision is not None:
            response.headers.update(decision.headers(self.clock))
        return response

    def _bucket(self, request: web.Request, route: str) -> Decision:
        mi = request.match_info
        method = request.method
        body = request[BODY]
        if (method == "POST" and route == "/channels/{channel_id}/messages") or (
            method == "PATCH" and route == "/channels/{channel_id}/messages/{message_id}"
        ):
            return self.limits.hit(f"messages:{mi['channel_id']}", 5, 5.0)
        if (
            method == "PATCH"
            and route == "/channels/{channel_id}"
            and isinstance(body, dict)
            and ("name" in body or "topic" in body)
        ):
            # Discord's rename limit is hidden (discord-api-docs #1900, #2208): successes
            # carry the route's usual headers, and only the third rename in ten minutes
            # shows it, as a 429 with a retry_after of up to 600 s.
            rename = self.limits.hit(f"channel-rename:{mi['channel_id']}", 2, 600.0)
            if not rename.allowed:
                return rename
        major = mi.get("channel_id") or mi.get("guild_id") or ""
        return self.limits.hit(f"{method} {route}:{major}", 50, 1.0)

    def _too_many(self, decision: Decision) -> web.Response:
        is_global = decision.scope == "global"
        retry_after = round(max(decision.reset_after, 0.001), 3)
        headers = decision.headers(self.clock)
        headers.update(
            {
                "Via": "1.1 google",
                "Retry-After": str(int(retry_after) + 1),
                "X-RateLimit-Scope": decision.scope,
            }
        )
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        body = {
            "message": "You are being rate limited.",
            "retry_after": retry_after,
            "global": is_global,
            "code": 0,
        }
        return json_response(body, 429, headers)

    def keep_file(self, upload: dict[str, Any]) -> dict[str, Any]:
        """Store an uploaded file's bytes; answers its attachment object (served at url)."""
        data: bytes = upload.pop("_data", b"")
        aid = self.world.ids.next()
        filename = upload.get("filename") or "file"
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        self.world.files[aid] = (filename, content_type, data)
        url = f"{self.cdn_base}/attachments/{aid}/{filename}"
        return {
            **upload,
            "id": aid,
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
            "content_type": content_type,
        }

    async def attachment(self, request: web.Request) -> web.Response:
        """The bytes of an uploaded file (Discord's CDN, without auth)."""
        found = self.world.files.get(request.match_info["attachment_id"])
        if found is None or found[0] != request.match_info["filename"]:
            return discord_error(404, "404: Not Found")
        _, content_type, data = found
        return web.Response(body=data, content_type=content_type)

    # ---- routes --------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        p = API_PREFIX
        r = app.router
        r.add_get("/attachments/{attachment_id:\\d+}/{filename}", self.attachment)
        r.add_get(p + "/users/@me", self.get_me)
        r.add_post(p + "/users/@me/channels", self.open_dm)
        r.add_get(p + "/users/{user_id:\\d+}", self.get_user)
        r.add_get(p + "/gateway", self.get_gateway)
        r.add_get(p + "/gateway/bot", self.get_gateway_bot)
        r.add_get(p + "/soundboard-default-sounds", self.empty_list)
        r.add_get(p + "/sticker-packs", self.sticker_packs)
        # application commands: global and guild scope share handlers
        for base in (
            "/applications/{app_id}/commands",
            "/applications/{app_id}/guilds/{guild_id}/commands",
        ):
            r.add_get(p + base, self.get_commands)
            r.add_put(p + base, self.put_commands)
            r.add_post(p + base, self.post_command)
            r.add_patch(p + base + "/{command_id}", self.post_command)
            r.add_delete(p + base + "/{command_id}", self.delete_command)
        # channels and messages
        r.add_get(p + "/channels/{channel_id}", self.get_channel)
        r.add_patch(p + "/channels/{channel_id}", self.patch_channel)
        r.add_post(p + "/channels/{channel_id}/typing", self.typing)
        r.add_get(p + "/channels/{channel_id}/messages", self.list_messages)
        r.add_post(p + "/channels/{channel_id}/messages", self.send_message)
        r.add_get(p + "/channels/{channel_id}/messages/{message_id}", self.get_message)
        r.add_patch(p + "/channels/{channel_id}/messages/{message_id}", self.edit_message)
        r.add_delete(p + "/channels/{channel_id}/messages/{message_id}", self.delete_message)
        polls = p + "/channels/{channel_id}/polls/{message_id}"
        r.add_post(polls + "/expire", self.expire_poll)
        r.add_get(polls + "/answers/{answer_id}", self.poll_voters)
        # guild
        g = p + "/guilds/{guild_id}"
        r.add_get(g, self.get_guild)
        r.add_get(g + "/channels", self.guild_channels)
        r.add_post(g + "/channels", self.create_channel)
        r.add_get(g + "/roles", self.guild_roles)
        r.add_get(g + "/members", self.list_members)
        r.add_get(g + "/members/{user_id}", self.get_member)
        r.add_delete(g + "/members/{user_id}", self.kick_member)
        r.add_get(g + "/bans", self.list_bans)
        r.add_get(g + "/bans/{user_id}", self.get_ban)
        r.add_put(g + "/bans/{user_id}", self.put_ban)
        r.add_delete(g + "/bans/{user_id}", self.delete_ban)
        events = g + "/scheduled-events"
        r.add_get(events, self.list_scheduled_events)
        r.add_post(events, self.create_scheduled_event)
        r.add_get(events + "/{event_id}", self.get_scheduled_event)
        r.add_patch(events + "/{event_id}", self.edit_scheduled_event)
        r.add_delete(events + "/{event_id}", self.delete_scheduled_event)
        r.add_get(events + "/{event_id}/users", self.scheduled_event_users)
        # interactions and their webhooks
        r.add_post(p + "/interactions/{interaction_id}/{token}/callback", self.callback)
        w = p + "/webhooks/{app_id}/{token}"
        r.add_post(w, self.followup)
        r.add_get(w + "/messages/{message_id}", self.get_webhook_message)
        r.add_patch(w + "/messages/{message_id}", self.edit_webhook_message)
        r.add_delete(w + "/messages/{message_id}", self.delete_webhook_message)
        r.add_route("*", p + CATCH_ALL.replace("}", ":.*}"), self.not_found)

    async def not_found(self, request: web.Request) -> web.Response:
        return discord_error(404, "404: Not Found")

    async def empty_list(self, request: web.Request) -> web.Response:
        return json_response([])

    async def sticker_packs(self, request: web.Request) -> web.Response:
        return json_response({"sticker_packs": []})

    async def get_me(self, request: web.Request) -> web.Response:
        world = self.world
        user = world.user_payload(world.users[world.bot_user_id])
        user.update(verified=True, mfa_enabled=False, flags=0, locale="en-US")
        return json_response(user)

    async def get_user(self, request: web.Request) -> web.Response:
        return json_response(
            self.world.user_payload(self.world.user(request.match_info["user_id"]))
        )

    async def get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self._gateway_url()})

    async def get_gateway_bot(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return json_response(
            {"url": self._gateway_url(), "shards": 1, "session_start_limit": limit}
        )

    # ---- commands ------------------------------------------------------------------------

    def _scope(self, request: web.Request) -> str:
        if request.match_info["app_id"] != self.world.bot_user_id:
            raise NotFound("Unknown Application", 10002)
        guild_id = request.match_info.get("guild_id")
        if guild_id is None:
            return "global"
        self._guild(guild_id)
        return guild_id

    async def get_commands(self, request: web.Request) -> web.Response:
        return json_response(self.world.commands.get(self._scope(request), []))

    async def put_commands(self, request: web.Request) -> web.Response:
        body = request[BODY]
        if not isinstance(body, list):
            raise WorldError("Expected a list of commands")
        return json_response(self.world.set_commands(self._scope(request), body))

    async def post_command(self, request: web.Request) -> web.Response:
        body = _require_dict(request[BODY])
        scope = self._scope(request)
        if "command_id" in request.match_info:
            existing = [
                c
                for c in self.world.commands.get(scope, [])
                if c["id"] == request.match_info["command_id"]
            ]
            if not existing:
                raise NotFound("Unknown application command", 10063)
            body = {**existing[0], **body}
        return json_response(self.world.upsert_command(scope, body), 201)

    async def delete_command(self, request: web.Request) -> web.Response:
        self.world.delete_command(self._scope(request), request.match_info["command_id"])
        return no_content()

    # ---- channels and messages -----------------------------------------------------------

    async def get_channel(self, request: web.Request) -> web.Response:
        return json_response(
            self.world.channel_payload(self.world.channel(request.match_info["channel_id"]))
        )

    async def patch_channel(self, request: web.Request) -> web.Response:
        channel = self.world.channel(request.match_info["channel_id"])
        self.world.update_channel(channel, _require_dict(request[BODY]))
        return json_response(self.world.channel_payload(channel))

    async def typing(self, request: web.Request) -> web.Response:
        self.world.channel(request.match_info["channel_id"])
        return no_content()

    async def list_messages(self, request: web.Request) -> web.Response:
        """Get Channel Messages as Discord answers it: ``limit`` 1-100 (default 50), one of
        ``around``/``before``/``after`` (that order wins if several are given), and every
        page sorted newest first, ``after`` pages too (discord-api-docs #7740). Message
        objects from REST carry no ``guild_id`` or ``member`` (only gateway events do)."""
        msgs = self.world.channel_messages(request.match_info["channel_id"])
        q = request.query
        limit = _int_param(q, "limit", 50, "NUMBER_TYPE_COERCE", "int")
        if not 1 <= limit <= 100:
            low = limit < 1
            raise FormError(
                "limit",
                "NUMBER_TYPE_MIN" if low else "NUMBER_TYPE_MAX",
                "Int value should be greater than or equal to 1."
                if low
                else "Int value should be less than or equal to 100.",
            )
        anchors = {
            k: _int_param(q, k, None, "NUMBER_TYPE_COERCE", "snowflake")
            for k in ("around", "before", "after")
        }
        if anchors["around"] is not None:
            older = [m for m in msgs if int(m.id) < anchors["around"]]
            newer = [m for m in msgs if int(m.id) >= anchors["around"]]
            n_new = min(len(newer), limit - min(len(older), limit // 2))
            n_old = min(len(older), limit - n_new)
            msgs = older[len(older) - n_old :] + newer[:n_new]
        elif anchors["before"] is not None:
            msgs = [m for m in msgs if int(m.id) < anchors["before"]][-limit:]
        elif anchors["after"] is not None:
            msgs = [m for m in msgs if int(m.id) > anchors["after"]][:limit]
        else:
            msgs = msgs[-limit:]
        page = []
        for m in reversed(msgs):
            payload = self.world.message_payload(m)
            payload.pop("guild_id", None)
            payload.pop("member", None)
            page.append(payload)
        return json_response(page)

    async def send_message(self, request: web.Request) -> web.Response:
        """Create Message. A ``nonce`` (an integer, or a string of up to 25 characters)
        with ``enforce_nonce: true`` makes a repeat of a create idempotent: the message the
        same author created with that nonce in the last few minutes is returned as it is
        now, and nothing new is posted (or dispatched)."""
        body = _require_dict(request[BODY])
        channel_id = request.match_info["channel_id"]
        self.world.channel(channel_id)
        nonce = _nonce(body)
        if nonce is not None and body.get("enforce_nonce") is True:
            existing = self.world.message_by_nonce(self.world.bot_user_id, nonce)
            if existing is not None:
                return json_response(self.world.message_payload(existing))
        msg = self._new_message(channel_id, body, request[FILES], nonce=nonce)
        return json_response(self.world.message_payload(msg))

    def _new_message(
        self,
        channel_id: str,
        body: dict[str, Any],
        files: list[dict[str, Any]],
        *,
        interaction: Interaction | None = None,
        extra_flags: int = 0,
        nonce: str | int | None = None,
    ) -> Message:
        check_message(body)
        content = body.get("content") or ""
        embeds = body.get("embeds") or ([body["embed"]] if body.get("embed") else [])
        components = body.get("components") or []
        if not has_something_to_show(
            content,
            embeds,
            files,
            components=components,
            sticker_ids=body.get("sticker_ids"),
            poll=body.get("poll"),
        ):
            raise refuse_empty()
        reply_to = None
        ref = body.get("message_reference")
        if isinstance(ref, dict) and ref.get("message_id") is not None:
            reply_to = str(ref["message_id"])
            if reply_to not in self.world.messages:
                if ref.get("fail_if_not_exists", True):
                    raise FormError(
                        "message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"
                    )
                reply_to = None
        flags = body.get("flags") or 0
        poll = self.world.make_poll(body["poll"]) if body.get("poll") is not None else None
        return self.world.post_message(
            channel_id,
            self.world.bot_user_id,
            content,
            embeds=embeds,
            attachments=files,
            components=components,
            allowed_mentions=body.get("allowed_mentions"),
            reply_to_id=reply_to,
            tts=bool(body.get("tts", False)),
            flags=flags | extra_flags,
            interaction_id=interaction.id if interaction else None,
            webhook_id=self.world.bot_user_id if interaction else None,
            poll=poll,
            nonce=nonce,
        )

    async def get_message(self, request: web.Request) -> web.Response:
        mi = request.match_info
        msg = self.world.message(mi["message_id"], mi["channel_id"])
        return json_response(self.world.message_payload(msg))

    async def edit_message(self, request: web.Request) -> web.Response:
        mi = request.match_info
        msg = self.world.message(mi["message_id"], mi["channel_id"])
        body = _require_dict(request[BODY])
        if msg.author_id != self.world.bot_user_id and set(body) - {"flags"}:
            raise Forbidden("Cannot edit a message authored by another user", 50005)
        self._apply_edit(msg, body, request[FILES])
        return json_response(self.world.message_payload(msg))

    def _apply_edit(self, msg: Message, body: dict[str, Any], files: list[dict[str, Any]]) -> None:
        """An edit as Discord checks it: valid fields, and something left to show."""
        check_message(body)
        attachments = files or (body["attachments"] if "attachments" in body else msg.attachments)
        if not has_something_to_show(
            body["content"] if "content" in body else msg.content,
            body["embeds"] if "embeds" in body else msg.embeds,
            attachments,
            components=body["components"] if "components" in body else msg.components,
        ):
            raise refuse_empty()
        if files or "attachments" in body:
            msg.attachments = list(attachments or [])
        self.world.edit_message(msg, body)

    async def delete_message(self, request: web.Request) -> web.Response:
        mi = request.match_info
        self.world.delete_message(self.world.message(mi["message_id"], mi["channel_id"]))
        return no_content()

    # ---- direct messages and polls -------------------------------------------------------

    async def open_dm(self, request: web.Request) -> web.Response:
        """Create DM: the bot's DM channel with ``recipient_id`` (the same one each time)."""
        recipient = _require_dict(request[BODY]).get("recipient_id")
        if not isinstance(recipient, str | int) or not str(recipient).isdigit():
            raise FormError("recipient_id", "NUMBER_TYPE_COERCE", "Value is not snowflake.")
        channel = self.world.open_dm(str(recipient))
        return json_response(self.world.channel_payload(channel))

    async def expire_poll(self, request: web.Request) -> web.Response:
        """End Poll: only its author may; a poll ends once."""
        mi = request.match_info
        msg = self.world.poll_message(mi["message_id"], mi["channel_id"])
        if msg.author_id != self.world.bot_user_id:
            raise Forbidden("Cannot expire another user's poll", 50005)
        self.world.finalize_due_polls()
        self.world.end_poll(msg)
        return json_response(self.world.message_payload(msg))

    async def poll_voters(self, request: web.Request) -> web.Response:
        """Get Answer Voters: ``{users}`` in id order, ``limit`` (1-100) after ``after``."""
        mi = request.match_info
        msg = self.world.poll_message(mi["message_id"], mi["channel_id"])
        assert msg.poll is not None
        limit, after = _page(request)
        answer_id = msg.poll.answer_id(int(mi["answer_id"]) if mi["answer_id"].isdigit() else -1)
        ids = sorted((u for u in msg.poll.votes.get(answer_id, []) if int(u) > after), key=int)
        users = [self.world.user_payload(self.world.user(u)) for u in ids[:limit]]
        return json_response({"users": users})

    # ---- guild scheduled events ----------------------------------------------------------

    async def list_scheduled_events(self, request: web.Request) -> web.Response:
        self._guild(request.match_info["guild_id"])
        count = request.query.get("with_user_count") in ("true", "True", "1")
        return json_response(
            [
                self.world.scheduled_event_payload(e, with_count=count)
                for e in self.world.scheduled_events.values()
            ]
        )

    async def create_scheduled_event(self, request: web.Request) -> web.Response:
        self._guild(request.match_info["guild_id"])
        body = _require_dict(request[BODY])
        event = self.world.create_scheduled_event(body, self.world.bot_user_id)
        return json_response(self.world.scheduled_event_payload(event, with_count=False))

    async def get_scheduled_event(self, request: web.Request) -> web.Response:
        self._guild(request.match_info["guild_id"])
        event = self.world.scheduled_event(request.match_info["event_id"])
        count = request.query.get("with_user_count") in ("true", "True", "1")
        return json_response(self.world.scheduled_event_payload(event, with_count=count))

    async def edit_scheduled_event(self, request: web.Request) -> web.Response:
        self._guild(request.match_info["guild_id"])
        event = self.world.scheduled_event(request.match_info["event_id"])
        self.world.update_scheduled_event(event, _require_dict(request[BODY]))
        return json_response(self.world.scheduled_event_payload(event, with_count=False))

    async def delete_scheduled_event(self, request: web.Request) -> web.Response:
        self._guild(request.match_info["guild_id"])
        event = self.world.scheduled_event(request.match_info["event_id"])
        self.world.delete_scheduled_event(event)
        return no_content()

    async def scheduled_event_users(self, request: web.Request) -> web.Response:
        """Get Guild Scheduled Event Users: ``[{guild_scheduled_event_id, user}]``."""
        self._guild(request.match_info["guild_id"])
        event = self.world.scheduled_event(request.match_info["event_id"])
        limit, after = _page(request)
        ids = sorted((u for u in event.interested if int(u) > after), key=int)[:limit]
        return json_response(
            [
                {
                    "guild_scheduled_event_id": event.id,
                    "user": self.world.user_payload(self.world.user(u)),
                }
                for u in ids
            ]
        )

    # ---- guild ---------------------------------------------------------------------------

    def _guild(self, guild_id: str) -> None:
        if guild_id != self.world.guild_id:
            raise NotFound("Unknown Guild", 10004)

    async def get_guild(self, request: web.Request) -> web.Response:
        self._guild(request.match_info["guild_id"])
        data = self.world.guild_payload()
        if request.query.get("with_counts") in ("true", "1", "True"):
            online = sum(1 for m in self.world.members.values() if m.status != "offline")
            data["approximate_presence_count"] = online
        return json_response(data)

    async def guild_channels(self, request: web.Request) -> web.Response:
        self._guild(request.match_info["guild_id"])
        return json_response([self.world.channel_payload(c) for c in self.world.channels.values()])

    async def create_channel(self, request: web.Request) -> web.Response:
        self._guild(request.match_info["guild_id"])
        body = _require_dict(request[BODY])
        kind = body.get("type", TEXT)
        parent = body.get("parent_id")
        channel = self.world.create_channel(
            body.get("name"),  # type: ignore[arg-type]  # validated by the world
            kind if isinstance(kind, int) else -1,
            topic=body.get("topic") if isinstance(body.get("topic"), str) else None,
            parent_id=str(parent) if parent is not None else None,
        )
        return json_response(self.world.channel_payload(channel), 201)

    async def guild_roles(self, request: web.Request) -> web.Response:
        self._guild(request.match_info["guild_id"])
        return json_response(list(self.world.roles.values()))

    async def list_members(self, request: web.Request) -> web.Response:
        self._guild(request.match_info["guild_id"])
        try:
            limit = min(max(int(request.query.get("limit", "1")), 1), 1000)
            after = int(request.query.get("after", "0"))
        except ValueError:
            raise WorldError("Invalid Form Body") from None
        ids = sorted((uid for uid in self.world.members if int(uid) > after), key=int)[:limit]
        return json_response([self.world.member_payload(uid) for uid in ids])

    async def get_member(self, request: web.Request) -> web.Response:
        self._guild(request.match_info["guild_id"])
        return json_response(self.world.member_payload(request.match_info["user_id"]))

    async def kick_member(self, request: web.Request) -> web.Response:
        self._guild(request.match_info["guild_id"])
        self.world.remove_member(request.match_info["user_id"])
        return no_content()

    def _ban_payload(self, user_id: str) -> dict[str, Any]:
        return {
            "reason": self.world.bans[user_id],
            "user": self.world.user_payload(self.world.users[user_id]),
        }

    async def list_bans(self, request: web.Request) -> web.Response:
        """Get Guild Bans: ``limit`` 1-1000 (default 1000), ``before``/``after`` a user id,
        sorted by user id."""
        self._guild(request.match_info["guild_id"])
        q = request.query
        limit = _int_param(q, "limit", 1000, "NUMBER_TYPE_COERCE", "int")
        if not 1 <= limit <= 1000:
            raise FormError("limit", "NUMBER_TYPE_MAX", "Int value should be between 1 and 1000.")
        before = _int_param(q, "before", None, "NUMBER_TYPE_COERCE", "snowflake")
        after = _int_param(q, "after", None, "NUMBER_TYPE_COERCE", "snowflake")
        ids = sorted(self.world.bans, key=int)
        if before is not None:
            ids = [u for u in ids if int(u) < before][-limit:]
        else:
            ids = [u for u in ids if after is None or int(u) > after][:limit]
        return json_response([self._ban_payload(uid) for uid in ids])

    async def get_ban(self, request: web.Request) -> web.Response:
        self._guild(request.match_info["guild_id"])
        uid = request.match_info["user_id"]
        if uid not in self.world.bans:
            raise NotFound("Unknown Ban", 10026)
        return json_response(self._ban_payload(uid))

    async def put_ban(self, request: web.Request) -> web.Response:
        self._guild(request.match_info["guild_id"])
        reason = request.headers.get("X-Audit-Log-Reason")
        self.world.ban(request.match_info["user_id"], reason)
        return no_content()

    async def delete_ban(self, request: web.Request) -> web.Response:
        self._guild(request.match_info["guild_id"])
        self.world.unban(request.match_info["user_id"])
        return no_content()

    # ---- interactions --------------------------------------------------------------------

    def _record(
        self,
        inter: Interaction,
        kind: str,
        rtype: int | None,
        msg: Message | None,
        data: dict[str, Any],
    ) -> None:
        flags = (
            msg.flags
            if msg is not None
            else data.get("flags", 0)
            if isinstance(data.get("flags"), int)
            else 0
        )
        inter.responses.append(
            {
                "kind": kind,
                "type": rtype,
                "content": msg.content if msg is not None else data.get("content"),
                "embeds": list(msg.embeds) if msg is not None else data.get("embeds") or [],
                "flags": flags,
                "ephemeral": bool(flags & 64),
                "attachments": list(msg.attachments) if msg is not None else [],
                "message_id": msg.id if msg is not None else None,
                "t": round(self.clock.now() - self.started_at, 6),
            }
        )

    async def callback(self, request: web.Request) -> web.Response:
        mi = request.match_info
        inter = self.world.interaction(mi["interaction_id"])
        if inter.token != mi["token"] or self._expired(inter):
            raise NotFound("Unknown interaction", 10062)
        if inter.acknowledged:
            raise WorldError("Interaction has already been acknowledged.", 40060)
        body = _require_dict(request[BODY])
        rtype = body.get("type")
        data = body.get("data") if isinstance(body.get("data"), dict) else {}
        if rtype not in (1, 4, 5, 6, 7, 8, 9, 10, 12):
            raise FormError(
                "type", "BASE_TYPE_CHOICES", "Value must be a valid interaction callback type."
            )
        inter.acknowledged = True
        ephemeral = bool(isinstance(data.get("flags"), int) and data["flags"] & 64)
        msg = None
        if rtype == 4:
            msg = self._new_message(inter.channel_id, data, request[FILES], interaction=inter)
            inter.original_message_id = msg.id
        elif rtype == 5:
            inter.deferred_flags = 64 if ephemeral else 0
        self._record(inter, "callback", rtype, msg, data)
        if request.query.get("with_response") not in ("true", "True", "1"):
            return no_content()
        result: dict[str, Any] = {
            "interaction": {
                "id": inter.id,
                "type": 2,
                "activity_instance_id": None,
                "response_message_id": msg.id if msg else None,
                "response_message_loading": rtype == 5,
                "response_message_ephemeral": ephemeral,
            },
            "resource": {"type": rtype},
        }
        if msg is not None:
            result["resource"]["message"] = self.world.message_payload(msg)
        return json_response(result)

    def _expired(self, inter: Interaction) -> bool:
        return self.clock.now() - inter.created_at > INTERACTION_TOKEN_TTL_S

    def _webhook_interaction(self, request: web.Request) -> Interaction:
        """The interaction behind an application webhook: 10015 for another application's
        id, 50027 (401) for a token that is unknown or older than 15 minutes."""
        if request.match_info["app_id"] != self.world.bot_user_id:
            raise NotFound("Unknown Webhook", 10015)
        iid = self.world.interactions_by_token.get(request.match_info["token"])
        inter = self.world.interactions.get(iid) if iid is not None else None
        if inter is None or self._expired(inter):
            raise Unauthorized("Invalid Webhook Token", 50027)
        return inter

    async def followup(self, request: web.Request) -> web.Response:
        """Create Followup Message: Execute Webhook with ``wait`` always true (the message is
        always returned). Before any response is sent there is nothing to follow up (10015);
        the first follow-up of a deferred response is its original message and takes its
        flags from the deferral, ignoring the body's."""
        inter = self._webhook_interaction(request)
        if not inter.acknowledged:
            raise NotFound("Unknown Webhook", 10015)
        body = _require_dict(request[BODY])
        deferred = inter.deferred_flags
        first_after_defer = deferred is not None and inter.original_message_id is None
        if first_after_defer:
            body = {k: v for k, v in body.items() if k != "flags"}
        msg = self._new_message(
            inter.channel_id,
            body,
            request[FILES],
            interaction=inter,
            extra_flags=deferred if first_after_defer else 0,
        )
        if first_after_defer:
            inter.original_message_id = msg.id
        self._record(inter, "followup", None, msg, body)
        return json_response(self.world.message_payload(msg))

    def _webhook_message(self, inter: Interaction, message_id: str) -> Message:
        if message_id == "@original":
            if inter.original_message_id is None:
                raise NotFound("Unknown Message", 10008)
            message_id = inter.original_message_id
        msg = self.world.message(message_id)
        if msg.interaction_id != inter.id:
            raise NotFound("Unknown Message", 10008)
        return msg

    async def get_webhook_message(self, request: web.Request) -> web.Response:
        inter = self._webhook_interaction(request)
        msg = self._webhook_message(inter, request.match_info["message_id"])
        return json_response(self.world.message_payload(msg))

    async def edit_webhook_message(self, request: web.Request) -> web.Response:
        inter = self._webhook_interaction(request)
        body = _require_dict(request[BODY])
        mid = request.match_info["message_id"]
        deferred = inter.deferred_flags
        if mid == "@original" and inter.original_message_id is None and deferred is not None:
            # editing the "thinking..." placeholder of a deferred response creates the message
            msg = self._new_message(
                inter.channel_id, body, request[FILES], interaction=inter, extra_flags=deferred
            )
            inter.original_message_id = msg.id
        else:
            msg = self._webhook_message(inter, mid)
            self._apply_edit(msg, body, request[FILES])
        self._record(inter, "edit", None, msg, body)
        return json_response(self.world.message_payload(msg))

    async def delete_webhook_message(self, request: web.Request) -> web.Response:
        inter = self._webhook_interaction(request)
        msg = self._webhook_message(inter, request.match_info["message_id"])
        self.world.delete_message(msg)
        self._record(inter, "delete", None, None, {"content": None})
        return no_content()


def _page(request: web.Request) -> tuple[int, int]:
    """``limit`` (1-100, default 25) and ``after`` (a user id, default 0) of a user list."""
    try:
        limit = min(max(int(request.query.get("limit", "25")), 1), 100)
        after = int(request.query.get("after", "0"))
    except ValueError:
        raise WorldError("Invalid Form Body") from None
    return limit, after


def _int_param(query: Any, name: str, default: Any, code: str, kind: str) -> Any:
    """A query parameter that must be an integer (a snowflake is one), as Discord checks."""
    raw = query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise FormError(name, code, f'Value "{raw}" is not {kind}.') from None


def _nonce(body: dict[str, Any]) -> str | int | None:
    """A create's ``nonce`` as Discord validates it (50035 naming the field otherwise)."""
    nonce = body.get("nonce")
    if nonce is None:
        return None
    if isinstance(nonce, bool) or not isinstance(nonce, str | int):
        raise FormError("nonce", "BASE_TYPE_STRING", "Must be a string or an integer.")
    if isinstance(nonce, str) and len(nonce) > NONCE_MAX_CHARS:
        raise FormError(
            "nonce", "BASE_TYPE_MAX_LENGTH", f"Must be {NONCE_MAX_CHARS} or fewer in length."
        )
    enforce = body.get("enforce_nonce")
    if enforce is not None and not isinstance(enforce, bool):
        raise FormError("enforce_nonce", "BASE_TYPE_BOOLEAN", "Must be either true or false.")
    return nonce


def _require_dict(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise WorldError("Invalid Form Body: expected a JSON object")
    return body


def _error_of(response: web.StreamResponse) -> dict[str, Any] | None:
    """``{code, message, errors?}`` of an error answer, for the request log."""
    if response.status < 400 or not isinstance(response, web.Response):
        return None
    try:
        data = json.loads(response.body)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


_FILE_FIELD = re.compile(r"files\[(\d+)\]")


async def _read_body(request: web.Request) -> tuple[Any, list[dict[str, Any]]]:
    """The JSON body and uploaded files, from JSON or multipart; ValueError if malformed."""
    if request.method in ("GET", "HEAD", "DELETE") or not request.body_exists:
        return None, []
    if request.content_type.startswith("multipart/"):
        body: Any = {}
        files: list[dict[str, Any]] = []
        reader = await request.multipart()
        async for part in reader:
            if part.name == "payload_json":  # type: ignore[union-attr]
                body = json.loads(await part.text())  # type: ignore[union-attr]
            elif part.name and _FILE_FIELD.fullmatch(part.name):  # type: ignore[union-attr]
                data = await part.read()  # type: ignore[union-attr]
                files.append({"filename": part.filename, "data": data})  # type: ignore[union-attr]
        attachments = body.get("attachments") if isinstance(body, dict) else None
        out = []
        for i, f in enumerate(files):
            meta = attachments[i] if isinstance(attachments, list) and i < len(attachments) else {}
            out.append(
                {
                    "filename": f["filename"] or f"file{i}",
                    "description": meta.get("description") if isinstance(meta, dict) else None,
                    "_data": f["data"],  # kept by RestApi.keep_file, which gives the id and url
                }
            )
        return body, out
    if request.content_type == "application/x-www-form-urlencoded":
        # aiohttp's FormData without files (e.g. an interaction callback) is urlencoded
        form = await request.post()
        payload = form.get("payload_json")
        return (json.loads(payload) if isinstance(payload, str) else None), []
    raw = await request.read()
    if not raw:
        return None, []
    return json.loads(raw), []
