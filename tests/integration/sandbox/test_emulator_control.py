"""Rate limits (checked with plain aiohttp, so no test waits them out) and control-API hygiene."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from sandbox.discord import Clock, DiscordEmulator
from tests.support.emulator import (  # noqa: F401 - the emu, http, control fixtures
    Control,
    control_fixture,
    emu_fixture,
    http_fixture,
    running_bot,
    running_emulator,
)

pytestmark = pytest.mark.anyio


def auth(emu: DiscordEmulator) -> dict[str, str]:
    return {"Authorization": f"Bot {emu.token}"}


async def test_rename_limit_two_per_600s_then_clock_advance(
    emu: DiscordEmulator, http: aiohttp.ClientSession, control: Control
) -> None:
    url = f"{emu.api_base}/channels/{emu.world.channel_id('Members')}"
    for i in range(2):
        async with http.patch(url, json={"name": f"Members: {i}"}, headers=auth(emu)) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/json"
            # The rename limit is hidden, as on Discord: successes show the route's bucket.
            assert resp.headers["X-RateLimit-Limit"] != "2"
            assert (await resp.json())["name"] == f"Members: {i}"
    async with http.patch(url, json={"name": "Members: 2"}, headers=auth(emu)) as resp:
        assert resp.status == 429
        assert resp.headers["Via"] == "1.1 google"
        body = await resp.json()
        assert body["global"] is False and 590 < body["retry_after"] <= 600
    # a non-rename edit is not in the rename bucket
    async with http.patch(url, json={"position": 3}, headers=auth(emu)) as resp:
        assert resp.status == 200
    await control.ok("POST", "clock", {"advance_s": 600})
    async with http.patch(url, json={"name": "Members: 2"}, headers=auth(emu)) as resp:
        assert resp.status == 200
    assert emu.world.channels[emu.world.channel_id("Members")].name == "Members: 2"
    statuses = [r["status"] for r in await control.ok("GET", "requests") if r["method"] == "PATCH"]
    assert statuses == [200, 200, 429, 200, 200]


async def test_sixth_message_in_five_seconds_gets_429(http: aiohttp.ClientSession) -> None:
    clock = Clock(frozen=True)
    async with running_emulator(clock=clock) as emu:
        url = f"{emu.api_base}/channels/{emu.world.channel_id('general')}/messages"
        for i in range(5):
            async with http.post(url, json={"content": f"m{i}"}, headers=auth(emu)) as resp:
                assert resp.status == 200
                assert resp.headers["X-RateLimit-Remaining"] == str(4 - i)
                assert float(resp.headers["X-RateLimit-Reset-After"]) == 5.0
        async with http.post(url, json={"content": "m5"}, headers=auth(emu)) as resp:
            assert resp.status == 429 and resp.headers["Via"] == "1.1 google"
            assert (await resp.json())["retry_after"] == 5.0
        # another channel has its own bucket
        other = f"{emu.api_base}/channels/{emu.world.channel_id('admin')}/messages"
        async with http.post(other, json={"content": "x"}, headers=auth(emu)) as resp:
            assert resp.status == 200
        clock.advance(5)
        async with http.post(url, json={"content": "m5"}, headers=auth(emu)) as resp:
            assert resp.status == 200


async def test_pycord_waits_out_a_short_429(emu: DiscordEmulator, control: Control) -> None:
    """py-cord retries a 429 that carries Via; the message still arrives once."""
    general = emu.world.channel_id("general")
    async with running_bot(emu) as bot:
        emu.rest.limits.hit(f"messages:{general}", 5, 0.2)  # open a short window...
        for _ in range(4):
            emu.rest.limits.hit(f"messages:{general}", 5, 0.2)  # ...and use it up
        async with asyncio.timeout(3):
            await bot.get_channel(int(general)).send("after the wait")
    reqs = [r for r in await control.ok("GET", "requests") if r["method"] == "POST"]
    assert [r["status"] for r in reqs] == [429, 200]
    msgs = await control.ok("GET", f"channels/{general}/messages")
    assert [m["content"] for m in msgs] == ["after the wait"]


async def test_unknown_rest_route_is_discord_404(
    emu: DiscordEmulator, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{emu.api_base}/nope/nothing", headers=auth(emu)) as resp:
        assert resp.status == 404
        assert resp.headers["Content-Type"] == "application/json"
        assert await resp.json() == {"message": "404: Not Found", "code": 0}
    async with http.post(f"{emu.api_base}/nope") as resp:  # unknown beats unauthorized
        assert resp.status == 404
    async with http.get(f"{emu.api_base}/channels/1/messages", headers=auth(emu)) as resp:
        assert resp.status == 404 and (await resp.json())["code"] == 10003


GARBAGE: list[object] = [
    None,
    "not json",
    [],
    [1, 2],
    "null",
    {},
    {"channel_id": "abc"},
    {"channel_id": True, "author_id": 1.5, "content": 3},
    {"channel_id": "1", "author_id": "2", "content": "x"},
    {"channel_id": {"a": 1}, "user_id": [], "name": "", "options": 7},
    {"user_id": "99999", "status": "asleep"},
    {"user_id": "1", "status": "online"},
    {"username": ""},
    {"username": 12},
    {"code": "4000"},
    {"code": 99},
    {"advance_s": -1},
    {"advance_s": "600"},
    {"now": "yes"},
    {"options": {"a": [1]}, "channel_id": "1", "user_id": "1", "name": "x"},
]

ROUTES = [
    ("POST", "messages"),
    ("PATCH", "messages/{id}"),
    ("DELETE", "messages/{id}"),
    ("GET", "channels/{id}/messages"),
    ("POST", "members"),
    ("DELETE", "members/{id}"),
    ("POST", "bans"),
    ("DELETE", "bans/{id}"),
    ("POST", "presences"),
    ("POST", "interactions"),
    ("GET", "interactions/{id}"),
    ("POST", "clock"),
    ("POST", "gateway/disconnect"),
    ("POST", "gateway/invalidate"),
]


async def test_garbage_to_every_control_route_gets_400_or_404(
    emu: DiscordEmulator, http: aiohttp.ClientSession, control: Control
) -> None:
    before = await control.state()
    for method, route in ROUTES:
        for bad_id in ("12345", "abc", "-1", "1" * 40):
            path = route.replace("{id}", bad_id)
            for body in GARBAGE:
                kw: dict[str, object] = {}
                if isinstance(body, str):
                    kw["data"] = body.encode()
                elif body is not None:
                    kw["json"] = body
                async with http.request(method, f"{emu.base_url}/_sandbox/{path}", **kw) as resp:
                    assert resp.headers["Content-Type"] == "application/json"
                    data = await resp.json()
                    # disconnect/invalidate take defaults for a missing body or field
                    if resp.status == 200:
                        field = {"gateway/disconnect": "code", "gateway/invalidate": "now"}
                        assert route in field, (route, body)
                        assert body is None or (isinstance(body, dict) and field[route] not in body)
                    else:
                        assert resp.status in (400, 404), (method, path, body, resp.status)
                        assert isinstance(data["error"], str)
    for method, path in (("GET", "nope"), ("PUT", "state"), ("GET", "channels/x/y/z")):
        status, data = await control.call(method, path)
        assert status in (404, 405) and "error" in data
    # the world is unchanged and the server still serves
    assert await control.state() == before
    alice, general = emu.world.user_id("alice"), emu.world.channel_id("general")
    sent = await control.ok(
        "POST", "messages", {"channel_id": int(general), "author_id": alice, "content": "ok"}
    )
    assert sent["id"].isdigit()
