"""Discord actions over py-cord's HTTP client: each call bounded, each failure a Refused
with a reason the caller can act on, mentions off unless asked for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import discord
import pytest

from protocol.clock import Clock, fixed
from protocol.discord import (
    MESSAGE_LIMIT,
    NO_PINGS,
    RENAME_WINDOW_S,
    ChannelCreated,
    CountsRequest,
    CreateChannel,
    DeleteMessage,
    EditInteraction,
    EditMessage,
    GuildCounts,
    InteractionFollowup,
    RenameChannel,
    SendMessage,
    Sent,
    Typing,
    pinging_only,
)
from protocol.messages import Done
from protocol.runtime import Refused
from services.gateway.actions import Actions
from services.gateway.interactions import Invocation
from services.gateway.state import Gateway

pytestmark = pytest.mark.anyio

GUILD = "100"


@dataclass
class FakeResponse:
    """What discord.HTTPException reads from aiohttp's response."""

    status: int
    reason: str


def http_error(status: int, text: str = "") -> discord.HTTPException:
    return discord.HTTPException(FakeResponse(status, "Some Reason"), text)


class FakeHttp:
    """py-cord's HTTPClient, as far as the actions use it: records each call, answers
    like Discord, or raises the error a test queued."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.fail: Exception | None = None
        self.bans = [{"user": {"id": "1"}}, {"user": {"id": "2"}}]

    def _record(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        self.calls.append((method, args, kwargs))
        if self.fail is not None:
            raise self.fail

    def named(self, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return [(a, k) for n, a, k in self.calls if n == name]

    async def send_message(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._record("send_message", *args, **kwargs)
        return {"id": "800", "channel_id": args[0]}

    async def edit_message(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._record("edit_message", *args, **kwargs)
        return {"id": args[1]}

    async def delete_message(self, *args: Any, **kwargs: Any) -> None:
        self._record("delete_message", *args, **kwargs)

    async def edit_channel(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._record("edit_channel", *args, **kwargs)
        return {"id": args[0]}

    async def create_channel(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._record("create_channel", *args, **kwargs)
        return {"id": "810"}

    async def send_typing(self, *args: Any, **kwargs: Any) -> None:
        self._record("send_typing", *args, **kwargs)

    async def get_bans(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        self._record("get_bans", *args, **kwargs)
        return self.bans

    async def send_multipart_helper(self, route: Any, **kwargs: Any) -> dict[str, Any]:
        self._record("send_multipart_helper", route.method, route.url, **kwargs)
        return {"id": "820"}

    async def edit_original_interaction_response(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._record("edit_original_interaction_response", *args, **kwargs)
        return {"id": "@original"}


class FakeClient:
    def __init__(self) -> None:
        self.http = FakeHttp()


def actions(clock: Clock | None = None, logged_in: bool = True) -> tuple[Actions, FakeHttp]:
    gw = Gateway(clock or fixed(1_714_550_400.0))
    client = FakeClient()
    gw.client = client  # type: ignore[assignment]
    gw.logged_in = logged_in
    return Actions(gw), client.http


def with_guild(act: Actions) -> None:
    act.gw.guilds.apply(
        "GUILD_CREATE",
        {
            "id": GUILD,
            "name": "g",
            "members": [{"user": {"id": "1"}}, {"user": {"id": "2", "bot": True}}],
            "presences": [{"user": {"id": "1"}, "status": "online"}],
            "channels": [],
        },
    )


def with_interaction(act: Actions) -> Invocation:
    inv = Invocation.parse(
        {
            "id": "700",
            "token": "tok",
            "application_id": "900",
            "type": 2,
            "data": {"name": "ask"},
            "user": {"id": "11"},
        }
    )
    assert inv is not None
    act.gw.interactions[inv.id] = inv
    return inv


async def refusal(call: Any) -> Refused:
    with pytest.raises(Refused) as caught:
        await call
    return caught.value


async def test_send_returns_the_sent_message_id_and_pings_nobody_by_default() -> None:
    act, http = actions()
    assert await act.send_message(SendMessage("200", "hi @everyone")) == Sent("800")
    ((args, kwargs),) = http.named("send_message")
    assert args == ("200", "hi @everyone")
    assert kwargs["allowed_mentions"] == NO_PINGS
    assert kwargs["message_reference"] is None


async def test_send_pings_exactly_whom_the_caller_allows() -> None:
    act, http = actions()
    await act.send_message(SendMessage("200", "<@11>", allowed_mentions=pinging_only("11")))
    ((_, kwargs),) = http.named("send_message")
    assert kwargs["allowed_mentions"] == {"parse": [], "users": ["11"]}


async def test_a_reply_references_its_message_without_failing_if_it_is_gone() -> None:
    act, http = actions()
    await act.send_message(SendMessage("200", "yes", reply_to_id="299"))
    ((_, kwargs),) = http.named("send_message")
    assert kwargs["message_reference"] == {"message_id": "299", "fail_if_not_exists": False}


async def test_content_over_the_message_limit_is_refused_before_discord_is_asked() -> None:
    act, http = actions()
    refused = await refusal(act.send_message(SendMessage("200", "x" * (MESSAGE_LIMIT + 1))))
    assert refused.reason == "bad_request"
    assert http.calls == []


async def test_content_of_exactly_the_limit_is_sent() -> None:
    act, http = actions()
    await act.send_message(SendMessage("200", "x" * MESSAGE_LIMIT))
    assert len(http.named("send_message")) == 1


async def test_edit_and_delete_reach_discord_and_answer_done() -> None:
    act, http = actions()
    assert await act.edit_message(EditMessage("200", "800", content="new")) == Done()
    assert await act.delete_message(DeleteMessage("200", "800")) == Done()
    ((args, kwargs),) = http.named("edit_message")
    assert args == ("200", "800")
    assert kwargs == {"allowed_mentions": NO_PINGS, "content": "new"}
    assert http.named("delete_message") == [(("200", "800"), {})]


async def test_the_third_rename_within_the_window_is_refused_with_retry_after() -> None:
    clock = fixed(1_714_550_400.0)
    act, http = actions(clock)
    await act.rename_channel(RenameChannel("201", "Members: 1"))
    clock.advance(60)
    await act.rename_channel(RenameChannel("201", "Members: 2"))
    refused = await refusal(act.rename_channel(RenameChannel("201", "Members: 3")))
    assert refused.reason == "rate_limited"
    # counted from the oldest rename in the window, a minute ago
    assert f"retry_after={RENAME_WINDOW_S - 60:.0f}" in refused.detail
    assert len(http.named("edit_channel")) == 2


async def test_a_rename_is_allowed_again_once_the_window_has_passed() -> None:
    clock = fixed(1_714_550_400.0)
    act, http = actions(clock)
    for n in range(2):
        await act.rename_channel(RenameChannel("201", f"Members: {n}"))
    clock.advance(RENAME_WINDOW_S + 1)
    assert await act.rename_channel(RenameChannel("201", "Members: 9")) == Done()
    assert http.named("edit_channel")[-1] == (("201",), {"name": "Members: 9"})


async def test_renames_are_limited_per_channel() -> None:
    act, _ = actions()
    for n in range(2):
        await act.rename_channel(RenameChannel("201", f"Members: {n}"))
    assert await act.rename_channel(RenameChannel("202", "Online: 1")) == Done()


async def test_discord_not_found_becomes_refused_not_found() -> None:
    act, http = actions()
    http.fail = http_error(404, "Unknown Channel")
    refused = await refusal(act.send_message(SendMessage("999", "hi")))
    assert refused.reason == "not_found"
    assert "Unknown Channel" in refused.detail


@pytest.mark.parametrize(
    ("status", "reason"),
    [(400, "bad_request"), (403, "forbidden"), (429, "rate_limited"), (503, "discord_error")],
)
async def test_discord_errors_map_to_reasons(status: int, reason: str) -> None:
    act, http = actions()
    http.fail = http_error(status)
    assert (await refusal(act.delete_message(DeleteMessage("200", "800")))).reason == reason


async def test_requests_before_login_are_refused_not_connected() -> None:
    act, http = actions(logged_in=False)
    refused = await refusal(act.send_message(SendMessage("200", "hi")))
    assert refused.reason == "not_connected"
    assert refused.detail
    assert http.calls == []  # the call is never awaited


async def test_a_channel_is_created_with_discords_kind_number() -> None:
    act, http = actions()
    reply = await act.create_channel(CreateChannel(GUILD, "Members: 3", kind="voice"))
    assert reply == ChannelCreated("810")
    assert http.named("create_channel") == [((GUILD, 2), {"name": "Members: 3"})]


async def test_an_unknown_channel_kind_is_refused_bad_request() -> None:
    act, http = actions()
    refused = await refusal(act.create_channel(CreateChannel(GUILD, "x", kind="forum")))
    assert refused.reason == "bad_request"
    assert http.calls == []


async def test_typing_reaches_the_channel() -> None:
    act, http = actions()
    assert await act.typing(Typing("200")) == Done()
    assert http.named("send_typing") == [(("200",), {})]


async def test_counts_fetch_bans_once_when_unknown() -> None:
    act, http = actions()
    with_guild(act)
    first = await act.counts(CountsRequest(GUILD))
    again = await act.counts(CountsRequest())
    assert first == again == GuildCounts(GUILD, 2, 1, 1, 1, bans=2)
    assert len(http.named("get_bans")) == 1


async def test_counts_without_bans_do_not_ask_discord() -> None:
    act, http = actions()
    with_guild(act)
    assert (await act.counts(CountsRequest(GUILD, with_bans=False))).bans is None
    assert http.calls == []


async def test_counts_of_an_unknown_guild_are_refused_not_found() -> None:
    act, _ = actions()
    assert (await refusal(act.counts(CountsRequest("999")))).reason == "not_found"


async def test_a_followup_posts_to_the_webhook_with_no_files_pinging_nobody() -> None:
    act, http = actions()
    with_interaction(act)
    assert await act.interaction_followup(InteractionFollowup("700", "more")) == Sent("820")
    assert await act.interaction_followup(InteractionFollowup("700", "psst", ephemeral=True))
    (args, kwargs), (_, private) = http.named("send_multipart_helper")
    assert args[0] == "POST" and args[1].endswith("/webhooks/900/tok")
    assert kwargs["files"] == []  # py-cord 2.8.1 iterates it
    assert kwargs["content"] == "more" and kwargs["flags"] is None
    assert kwargs["allowed_mentions"] == NO_PINGS
    assert private["flags"] == 64  # ephemeral


async def test_an_interaction_edit_rewrites_the_original_response() -> None:
    act, http = actions()
    with_interaction(act)
    assert await act.edit_interaction(EditInteraction("700", "answer")) == Done()
    ((args, kwargs),) = http.named("edit_original_interaction_response")
    assert args == ("900", "tok")
    assert kwargs["content"] == "answer"
    assert kwargs["allowed_mentions"] == NO_PINGS


async def test_an_unknown_interaction_is_refused_not_found() -> None:
    act, http = actions()
    refused = await refusal(act.interaction_followup(InteractionFollowup("nope", "x")))
    assert refused.reason == "not_found"
    assert (await refusal(act.edit_interaction(EditInteraction("nope", "x")))).reason == "not_found"
    assert http.calls == []


async def test_a_send_that_arrives_while_the_gateway_prepares_is_refused_not_connected() -> None:
    act, _ = actions()
    act.gw.client = None  # a request handled before prepare() built the client
    with pytest.raises(Refused) as refused:
        await act.send_message(SendMessage("200", "hi"))
    assert refused.value.reason == "not_connected"
