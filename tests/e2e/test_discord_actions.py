"""Every Discord action the gateway carries out, proven through the real py-cord client.

One `python run.py --sandbox` (persistence, gateway, llm) serves the module. Each test asks
the gateway for an action as another service would (a request on the bus) or acts as a
user through the emulator's control API (a slash command), then checks the request the
emulator received against Discord's documented shape (route, method, body fields,
`allowed_mentions`, flags) and what it did to the world. Refusals are checked too: what
Discord refuses comes back to the requesting service as a clear reason, never a crash.

Each test is marked with the action it proves (`@pytest.mark.action`), which is how
docs/discord-actions.md (python -m tools.discord_actions) names its tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from protocol.discord import (
    CountsRequest,
    CreateChannel,
    DeleteMessage,
    EditInteraction,
    EditMessage,
    GuildInfoRequest,
    InteractionFollowup,
    RenameChannel,
    SendMessage,
    SetPresence,
    Typing,
)
from sandbox.openai_standin import long_answer
from tests.support.harness import wait_for
from tests.support.sandbox import FAST_CORE, LLM_TABLE, Sandbox, running_sandbox

pytestmark = pytest.mark.timeout(90)

TOML = (
    FAST_CORE
    + LLM_TABLE
    + """[services.llm.settings]
edit_interval_s = 0.3
user_rate = { tokens = 100, per_s = 60 }
guild_rate = { tokens = 1000, per_s = 60 }
"""
)

NO_PINGS = {"parse": []}
EPHEMERAL = 64
# The emulator's route templates (its request log names them so).
MESSAGES = "/channels/{channel_id}/messages"
MESSAGE = "/channels/{channel_id}/messages/{message_id}"
TYPING = "/channels/{channel_id}/typing"
CHANNEL = "/channels/{channel_id}"
GUILD_CHANNELS = "/guilds/{guild_id}/channels"
BANS = "/guilds/{guild_id}/bans"
CALLBACK = "/interactions/{interaction_id}/{token}/callback"
FOLLOWUP = "/webhooks/{app_id}/{token}"
WEBHOOK_MESSAGE = "/webhooks/{app_id}/{token}/messages/{message_id}"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with running_sandbox(tmp_path_factory.mktemp("discord-actions"), TOML, commands=True) as box:
        yield box


@pytest.fixture(autouse=True)
def past_rate_limits(box: Sandbox) -> None:
    """Past the message buckets' 5 s windows, so no test waits out the last one's writes."""
    box.post("clock", {"advance_s": 6})


def only(requests: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(requests) == 1, requests
    return requests[0]


def command(box: Sandbox, name: str, user: str = "alice", **options: Any) -> str:
    """A user runs a slash command in #general; answers the interaction id."""
    body = {
        "channel_id": box.channels["general"],
        "user_id": box.users[user],
        "name": name,
        "options": options,
    }
    return box.post("interactions", body)["id"]


def responses(box: Sandbox, iid: str, count: int = 1, timeout: float = 15) -> list[dict[str, Any]]:
    """The interaction's responses once there are at least `count`."""
    return wait_for(
        lambda: (r := box.get(f"interactions/{iid}")["responses"]) and len(r) >= count and r,
        timeout,
        f"{count} responses to interaction {iid}",
    )


def message(box: Sandbox, message_id: str, channel: str = "general") -> dict[str, Any] | None:
    return next((m for m in box.messages(channel) if m["id"] == message_id), None)


# --- messages ---------------------------------------------------------------------------


@pytest.mark.action("send")
def test_send_creates_a_message_pinging_nobody(box: Sandbox) -> None:
    mark = box.mark()
    text = f"hello <@{box.users['alice']}> and @everyone"
    sent = box.bus("gateway", SendMessage(box.channels["general"], text))
    request = only(box.requests(mark, "POST", MESSAGES))
    assert request["path"] == f"/api/v10/channels/{box.channels['general']}/messages"
    assert request["status"] == 200 and request["form"] is False
    assert request["body"] == {"content": text, "allowed_mentions": NO_PINGS}
    stored = message(box, sent["message_id"])
    assert stored is not None and stored["content"] == text
    assert stored["allowed_mentions"] == NO_PINGS
    assert stored["author_id"] == box.state["bot_user_id"]


@pytest.mark.action("send")
def test_send_passes_on_the_mentions_a_service_allows_and_its_embeds(box: Sandbox) -> None:
    mark = box.mark()
    allowed = {"parse": [], "users": [box.users["bob"]]}
    embed = {"title": "Report", "description": "all quiet", "color": 3066993}
    msg = SendMessage(box.channels["general"], "hi bob", [embed], allowed_mentions=allowed)
    box.bus("gateway", msg)
    request = only(box.requests(mark, "POST", MESSAGES))
    assert request["body"] == {"content": "hi bob", "embeds": [embed], "allowed_mentions": allowed}


@pytest.mark.action("send")
def test_a_send_repeated_with_its_nonce_posts_once(box: Sandbox) -> None:
    """A service sending again after a crash (its own or the gateway's) under the same
    nonce gets the message already posted: Discord's enforce_nonce."""
    mark = box.mark()
    msg = SendMessage(box.channels["general"], "only once", nonce="answer-42-0")
    first, again = box.bus("gateway", msg), box.bus("gateway", msg)
    assert again["message_id"] == first["message_id"]
    assert again["content"] == "only once", "what the message shows"
    posts = box.requests(mark, "POST", MESSAGES)
    assert [r["body"]["nonce"] for r in posts] == ["answer-42-0"] * 2
    assert all(r["body"]["enforce_nonce"] is True for r in posts)
    shown = [m for m in box.messages("general") if m["content"] == "only once"]
    assert [m["id"] for m in shown] == [first["message_id"]]
    too_long = box.refusal("gateway", SendMessage(box.channels["general"], "x", nonce="n" * 26))
    assert too_long.reason == "bad_request" and "25" in too_long.detail


@pytest.mark.action("send")
def test_send_refusals_reach_the_service_as_reasons(box: Sandbox) -> None:
    mark = box.mark()
    too_long = box.refusal("gateway", SendMessage(box.channels["general"], "x" * 2001))
    assert too_long.reason == "bad_request" and "2,000" in too_long.detail
    assert box.requests(mark, "POST", MESSAGES) == [], "refused before Discord is asked"

    empty = box.refusal("gateway", SendMessage(box.channels["general"], ""))
    assert empty.reason == "bad_request" and "50006" in empty.detail
    assert only(box.requests(mark, "POST", MESSAGES))["error"]["code"] == 50006

    unknown = box.refusal("gateway", SendMessage("123456789012345678", "anyone?"))
    assert unknown.reason == "not_found" and "10003" in unknown.detail

    voice = box.refusal("gateway", SendMessage(box.channels["Members"], "in a voice channel"))
    assert voice.reason == "bad_request" and "50008" in voice.detail


@pytest.mark.action("reply")
def test_a_reply_references_the_message_and_does_not_fail_if_it_is_gone(box: Sandbox) -> None:
    asked = box.say("a question")
    mark = box.mark()
    sent = box.bus("gateway", SendMessage(box.channels["general"], "an answer", reply_to_id=asked))
    request = only(box.requests(mark, "POST", MESSAGES))
    assert request["body"] == {
        "content": "an answer",
        "allowed_mentions": NO_PINGS,
        "message_reference": {"message_id": asked, "fail_if_not_exists": False},
    }
    assert message(box, sent["message_id"])["reply_to_id"] == asked  # type: ignore[index]

    box.call("DELETE", f"messages/{asked}")
    late = box.bus("gateway", SendMessage(box.channels["general"], "too late", reply_to_id=asked))
    stored = message(box, late["message_id"])
    assert stored is not None and stored["reply_to_id"] is None, "sent as a plain message"


@pytest.mark.action("edit")
def test_edit_changes_the_bots_message_pinging_nobody(box: Sandbox) -> None:
    sent = box.bus("gateway", SendMessage(box.channels["general"], "draft"))["message_id"]
    mark = box.mark()
    box.bus("gateway", EditMessage(box.channels["general"], sent, "final <@&1> text"))
    request = only(box.requests(mark, "PATCH", MESSAGE))
    assert request["path"] == f"/api/v10/channels/{box.channels['general']}/messages/{sent}"
    assert request["status"] == 200
    assert request["body"] == {"content": "final <@&1> text", "allowed_mentions": NO_PINGS}
    stored = message(box, sent)
    assert stored is not None and stored["content"] == "final <@&1> text"
    assert stored["edited_at"] is not None

    embed = {"title": "now an embed"}
    box.bus("gateway", EditMessage(box.channels["general"], sent, embeds=[embed]))
    assert box.requests(mark, "PATCH", MESSAGE)[-1]["body"] == {
        "embeds": [embed],
        "allowed_mentions": NO_PINGS,
    }


@pytest.mark.action("edit")
def test_edit_refusals_reach_the_service_as_reasons(box: Sandbox) -> None:
    general = box.channels["general"]
    theirs = box.say("alice wrote this")
    mark = box.mark()
    forbidden = box.refusal("gateway", EditMessage(general, theirs, "rewritten"))
    assert forbidden.reason == "forbidden" and "50005" in forbidden.detail
    assert only(box.requests(mark, "PATCH", MESSAGE))["status"] == 403
    assert message(box, theirs)["content"] == "alice wrote this"  # type: ignore[index]

    ours = box.bus("gateway", SendMessage(general, "keep me"))["message_id"]
    empty = box.refusal("gateway", EditMessage(general, ours, ""))
    assert empty.reason == "bad_request" and "50006" in empty.detail
    too_long = box.refusal("gateway", EditMessage(general, ours, "y" * 2001))
    assert too_long.reason == "bad_request" and "2,000" in too_long.detail
    assert message(box, ours)["content"] == "keep me", "never cut short"  # type: ignore[index]

    gone = box.refusal("gateway", EditMessage(general, "123456789012345678", "hm"))
    assert gone.reason == "not_found" and "10008" in gone.detail


@pytest.mark.action("delete")
def test_delete_removes_the_message_and_an_unknown_one_is_not_found(box: Sandbox) -> None:
    general = box.channels["general"]
    sent = box.bus("gateway", SendMessage(general, "short-lived"))["message_id"]
    mark = box.mark()
    box.bus("gateway", DeleteMessage(general, sent))
    request = only(box.requests(mark, "DELETE", MESSAGE))
    assert request["path"] == f"/api/v10/channels/{general}/messages/{sent}"
    assert request["status"] == 204 and request["body"] is None
    assert message(box, sent) is None

    again = box.refusal("gateway", DeleteMessage(general, sent))
    assert again.reason == "not_found" and "10008" in again.detail


@pytest.mark.action("typing")
def test_typing_triggers_the_indicator(box: Sandbox) -> None:
    mark = box.mark()
    box.bus("gateway", Typing(box.channels["general"]))
    request = only(box.requests(mark, "POST", TYPING))
    assert request["path"] == f"/api/v10/channels/{box.channels['general']}/typing"
    assert request["status"] == 204 and request["body"] is None
    unknown = box.refusal("gateway", Typing("123456789012345678"))
    assert unknown.reason == "not_found"


# --- channels ---------------------------------------------------------------------------


@pytest.mark.action("rename")
def test_rename_modifies_the_channel_and_a_third_within_ten_minutes_is_refused(
    box: Sandbox,
) -> None:
    channel = box.channels["Online"]
    mark = box.mark()
    for name in ("Online: 3", "Online: 4"):
        assert box.bus("gateway", RenameChannel(channel, name)) == {}
    renames = box.requests(mark, "PATCH", CHANNEL)
    assert [r["body"] for r in renames] == [{"name": "Online: 3"}, {"name": "Online: 4"}]
    assert all(r["status"] == 200 and r["path"] == f"/api/v10/channels/{channel}" for r in renames)
    named = {c["id"]: c["name"] for c in box.get("state")["channels"]}
    assert named[channel] == "Online: 4"

    third = box.refusal("gateway", RenameChannel(channel, "Online: 5"))
    assert third.reason == "rate_limited" and third.detail.startswith("retry_after=")
    assert len(box.requests(mark, "PATCH", CHANNEL)) == 2, "Discord was not asked a third time"


@pytest.mark.action("rename")
def test_rename_to_a_name_discord_refuses_is_a_bad_request(box: Sandbox) -> None:
    mark = box.mark()
    bad = box.refusal("gateway", RenameChannel(box.channels["Bans"], "n" * 101))
    assert bad.reason == "bad_request" and "50035" in bad.detail
    error = only(box.requests(mark, "PATCH", CHANNEL))["error"]
    assert error["code"] == 50035 and error["message"] == "Invalid Form Body"
    assert error["errors"]["name"]["_errors"][0]["code"] == "BASE_TYPE_BAD_LENGTH"


@pytest.mark.action("create_channel")
def test_create_channel_makes_text_and_voice_channels(box: Sandbox) -> None:
    guild = box.state["guild_id"]
    mark = box.mark()
    text = box.bus("gateway", CreateChannel(guild, "reports-archive"))
    voice = box.bus("gateway", CreateChannel(guild, "Members: 3", kind="voice"))
    made = box.requests(mark, "POST", GUILD_CHANNELS)
    assert [r["body"] for r in made] == [
        {"type": 0, "name": "reports-archive"},
        {"type": 2, "name": "Members: 3"},
    ]
    assert all(
        r["status"] == 201 and r["path"] == f"/api/v10/guilds/{guild}/channels" for r in made
    )
    kinds = {c["id"]: (c["name"], c["type"]) for c in box.get("state")["channels"]}
    assert kinds[text["channel_id"]] == ("reports-archive", 0)
    assert kinds[voice["channel_id"]] == ("Members: 3", 2)

    stage = box.refusal("gateway", CreateChannel(guild, "stage", kind="stage"))
    assert stage.reason == "bad_request"
    assert len(box.requests(mark, "POST", GUILD_CHANNELS)) == 2


# --- presence ---------------------------------------------------------------------------


@pytest.mark.action("presence")
def test_presence_is_sent_as_a_gateway_presence_update(box: Sandbox) -> None:
    before = box.get("gateway/sessions")["presence_updates"]
    box.bus("gateway", SetPresence("dnd", "12 members", "custom"))
    presence = wait_for(
        lambda: (p := box.get("presence"))["status"] == "dnd" and p, 5, "the presence update"
    )
    assert presence["activities"] == [{"type": 4, "state": "12 members", "name": "Custom Status"}]
    assert presence["afk"] is False and presence["since"] == 0

    box.bus("gateway", SetPresence("online", "the logs", "watching"))
    presence = wait_for(
        lambda: (p := box.get("presence"))["status"] == "online" and p, 5, "the second update"
    )
    [activity] = presence["activities"]
    assert (activity["type"], activity["name"]) == (3, "the logs")  # 3: watching
    sessions = box.get("gateway/sessions")
    assert sessions["presence_updates"] == before + 2
    assert any(s["connected"] for s in sessions["sessions"]), "valid updates keep the socket open"

    bad = box.refusal("gateway", SetPresence("sleeping"))
    assert bad.reason == "bad_request"


@pytest.mark.action("presence")
def test_presence_while_the_connection_is_down_answers_not_connected(box: Sandbox) -> None:
    box.post("gateway/disconnect", {"code": 4000, "refuse_s": 30})
    wait_for(
        lambda: box.get("gateway/sessions")["refused_connections"] >= 1,
        10,
        "the bot's reconnect to be refused",
    )
    refused = box.refusal("gateway", SetPresence("idle", "reconnecting", "custom"))
    assert refused.reason == "not_connected"

    box.post("clock", {"advance_s": 31})  # the outage ends: the bot resumes
    box.wait_connected()
    wait_for(lambda: box.bus("gateway", SetPresence("online")) == {}, 10, "presence again")
    assert box.service("gateway")["restarts"] == 0


# --- guild counts: bans from Discord, members from the gateway's cache --------------------


@pytest.mark.action("bans")
@pytest.mark.action("members")
def test_counts_fetch_the_bans_once_and_count_members_from_the_cache(box: Sandbox) -> None:
    carol = box.post("members", {"username": "carol"})["id"]
    box.post("bans", {"user_id": carol})
    mark = box.mark()
    counts = box.bus("gateway", CountsRequest())
    fetch = only(box.requests(mark, "GET", BANS))
    assert fetch["path"] == f"/api/v10/guilds/{box.state['guild_id']}/bans"
    assert fetch["query"] == "limit=1000" and fetch["status"] == 200
    assert counts["bans"] == 1

    members = box.get("state")["members"]
    assert counts["members"] == len(members)
    assert counts["bots"] == sum(m["bot"] for m in members)
    assert counts["humans"] == counts["members"] - counts["bots"]
    assert counts["online"] == sum(m["status"] != "offline" for m in members)

    dave = box.post("members", {"username": "dave"})["id"]
    box.post("bans", {"user_id": dave})
    later = wait_for(
        lambda: (c := box.bus("gateway", CountsRequest()))["bans"] == 2 and c,
        5,
        "the second ban counted",
    )
    assert later["members"] == counts["members"], "dave joined and was banned"
    assert len(box.requests(mark, "GET", BANS)) == 1, "kept up to date from GUILD_BAN_ADD"


@pytest.mark.action("members")
def test_guild_info_comes_from_the_gateways_cache(box: Sandbox) -> None:
    mark = box.mark()
    info = box.bus("gateway", GuildInfoRequest())
    assert info["guild_id"] == box.state["guild_id"]
    assert info["bot_user_id"] == box.state["bot_user_id"]
    names = {c["name"] for c in info["channels"]}
    assert {"general", "admin", "stats"} <= names
    assert info["member_count"] == len(box.get("state")["members"])
    assert box.requests(mark) == [], "no REST call: GUILD_CREATE and events keep it"


# --- slash commands: the gateway's own answers ----------------------------------------------


@pytest.mark.action("answer")
def test_a_quick_command_is_answered_with_a_message_pinging_nobody(box: Sandbox) -> None:
    mark = box.mark()
    iid = command(box, "reset")
    (response,) = responses(box, iid)
    assert (response["kind"], response["type"]) == ("callback", 4)
    assert response["content"].startswith("Fresh start") and response["ephemeral"] is False
    request = only(box.requests(mark, "POST", CALLBACK))
    token = f"sandbox-interaction-{iid}"
    assert request["path"] == f"/api/v10/interactions/{iid}/{token}/callback"
    assert request["status"] == 204 and request["form"] is False
    assert request["body"] == {
        "type": 4,
        "data": {"content": response["content"], "allowed_mentions": NO_PINGS},
    }


@pytest.mark.action("answer")
def test_an_unknown_command_gets_an_ephemeral_answer(box: Sandbox) -> None:
    mark = box.mark()
    iid = command(box, "nosuchcommand")
    (response,) = responses(box, iid)
    assert response["type"] == 4 and response["ephemeral"] is True
    body = only(box.requests(mark, "POST", CALLBACK))["body"]
    assert body["type"] == 4
    assert body["data"]["flags"] == EPHEMERAL and body["data"]["allowed_mentions"] == NO_PINGS
    assert body["data"]["content"] == "This command is not available right now."


@pytest.mark.action("answer")
def test_a_second_delivery_of_a_command_is_refused_by_discord_and_the_gateway_carries_on(
    box: Sandbox,
) -> None:
    iid = command(box, "reset")
    responses(box, iid)
    mark = box.mark()
    box.post(f"interactions/{iid}/redeliver", {})
    second = wait_for(
        lambda: box.requests(mark, "POST", CALLBACK), 10, "the second initial response"
    )
    assert only(second)["status"] == 400 and second[0]["error"]["code"] == 40060
    assert len(box.get(f"interactions/{iid}")["responses"]) == 1
    assert box.bus("gateway", Typing(box.channels["general"])) == {}
    assert box.service("gateway")["restarts"] == 0


# --- slow commands: deferred, then the original edited, then follow-ups -------------------


def answered(box: Sandbox, iid: str, timeout: float = 60) -> list[dict[str, Any]]:
    """The responses once the /ask is over: the llm records its outcome once its last
    write (the last edit of the original, and every follow-up) is done."""
    wait_for(
        lambda: box.db("SELECT outcome FROM llm_exchanges WHERE id = ?", iid),
        timeout,
        f"the llm's outcome of {iid}",
    )
    return box.get(f"interactions/{iid}")["responses"]


def last_edit(got: list[dict[str, Any]]) -> dict[str, Any]:
    """The original response as last edited."""
    return [r for r in got if r["kind"] == "edit"][-1]


@pytest.mark.action("defer")
@pytest.mark.action("edit_original")
def test_a_slow_command_is_deferred_then_its_original_response_edited(box: Sandbox) -> None:
    mark = box.mark()
    iid = command(box, "ask", prompt="!echo the answer <@123> @everyone")
    got = answered(box, iid)
    assert (got[0]["kind"], got[0]["type"]) == ("callback", 5)
    assert [r["kind"] for r in got[1:]] == ["edit"] * (len(got) - 1)
    defer = box.requests(mark, "POST", CALLBACK)[0]
    assert defer["body"] == {"type": 5} and defer["status"] == 204

    edits = box.requests(mark, "PATCH", WEBHOOK_MESSAGE)
    token = f"sandbox-interaction-{iid}"
    app = box.state["bot_user_id"]
    assert edits and all(
        r["path"] == f"/api/v10/webhooks/{app}/{token}/messages/@original" for r in edits
    )
    assert all(r["status"] == 200 and r["form"] is True for r in edits), "payload_json"
    assert all(r["body"]["allowed_mentions"] == NO_PINGS for r in edits)
    final = last_edit(got)["content"]
    assert final == "the answer <@123> @\u200beveryone", "the llm defuses mass pings too"
    assert message(box, last_edit(got)["message_id"])["content"] == final  # type: ignore[index]


@pytest.mark.action("edit_original")
def test_a_service_edits_an_original_response_and_refusals_are_clear(box: Sandbox) -> None:
    iid = command(box, "ask", prompt="!echo first version")
    answered(box, iid)
    mark = box.mark()
    assert box.bus("gateway", EditInteraction(iid, "second version")) == {}
    edit = only(box.requests(mark, "PATCH", WEBHOOK_MESSAGE))
    assert edit["path"].endswith("/messages/@original") and edit["form"] is True
    assert edit["body"] == {"content": "second version", "allowed_mentions": NO_PINGS}
    assert box.get(f"interactions/{iid}")["responses"][-1]["content"] == "second version"

    too_long = box.refusal("gateway", EditInteraction(iid, "z" * 2001))
    assert too_long.reason == "bad_request" and "2,000" in too_long.detail
    unknown = box.refusal("gateway", EditInteraction("123456789012345678", "hello?"))
    assert unknown.reason == "not_found"
    assert len(box.requests(mark, "PATCH", WEBHOOK_MESSAGE)) == 1


@pytest.mark.action("followup")
@pytest.mark.action("defer")
@pytest.mark.action("edit_original")
def test_ask_for_5000_characters_arrives_whole_in_the_response_and_its_followups(
    box: Sandbox,
) -> None:
    mark = box.mark()
    iid = command(box, "ask", prompt="!long 5000")
    got = answered(box, iid)
    followups = [r for r in got if r["kind"] == "followup"]
    assert len(followups) >= 2
    original = last_edit(got)["content"]
    parts = [original] + [r["content"] for r in followups]
    assert sum(len(p) for p in parts) >= 4500
    assert all(0 < len(p) < 2000 for p in parts)
    assert all(p.count("```") % 2 == 0 for p in parts), "every part closes its code block"
    joined = "\n".join(parts)
    for line in filter(None, (ln.strip() for ln in long_answer(5000).splitlines())):
        assert line in joined, f"lost: {line!r}"
    assert all(r["ephemeral"] is False for r in followups)

    posts = box.requests(mark, "POST", FOLLOWUP)
    app, token = box.state["bot_user_id"], f"sandbox-interaction-{iid}"
    assert [r["status"] for r in posts] == [200] * len(followups), "each sent once, accepted"
    for post, followup in zip(posts, followups, strict=True):
        assert post["path"] == f"/api/v10/webhooks/{app}/{token}" and post["form"] is True
        assert post["body"] == {
            "tts": False,
            "content": followup["content"],
            "allowed_mentions": NO_PINGS,
            "attachments": [],
        }
    shown = [m["content"] for m in box.messages() if m["interaction_id"] == iid]
    assert shown == parts, "the channel shows the whole answer, in order"


@pytest.mark.action("followup")
def test_a_service_sends_followups_plain_and_ephemeral(box: Sandbox) -> None:
    iid = command(box, "reset")
    responses(box, iid)
    mark = box.mark()
    sent = box.bus("gateway", InteractionFollowup(iid, "more, for everyone"))
    secret = box.bus("gateway", InteractionFollowup(iid, "just for you", ephemeral=True))
    plain_post, secret_post = box.requests(mark, "POST", FOLLOWUP)
    assert plain_post["body"] == {
        "tts": False,
        "content": "more, for everyone",
        "allowed_mentions": NO_PINGS,
        "attachments": [],
    }
    assert secret_post["body"]["flags"] == EPHEMERAL
    got = box.get(f"interactions/{iid}")["responses"]
    assert [(r["kind"], r["content"], r["ephemeral"]) for r in got[1:]] == [
        ("followup", "more, for everyone", False),
        ("followup", "just for you", True),
    ]
    assert got[1]["message_id"] == sent["message_id"]
    assert got[2]["message_id"] == secret["message_id"]
    assert message(box, secret["message_id"]) is None, "not shown in the channel"


@pytest.mark.action("followup")
@pytest.mark.action("edit_original")
def test_followups_with_a_nonce_are_posted_once_and_a_webhook_can_come_with_the_request(
    box: Sandbox,
) -> None:
    """An owner that restarted sends its follow-up again: posted once. And it may bring
    the interaction's webhook, for a gateway that never saw the interaction."""
    iid = command(box, "reset")
    responses(box, iid)
    mark = box.mark()
    followup = InteractionFollowup(iid, "part two", nonce="ask-7-1")
    first, again = box.bus("gateway", followup), box.bus("gateway", followup)
    assert again["message_id"] == first["message_id"]
    assert len(box.requests(mark, "POST", FOLLOWUP)) == 1
    unknown_here = "123456789012345678"  # not an interaction this gateway process saw
    token = f"sandbox-interaction-{iid}"
    edit = EditInteraction(
        unknown_here, "edited", interaction_token=token, application_id=box.state["bot_user_id"]
    )
    box.bus("gateway", edit)
    assert box.get(f"interactions/{iid}")["responses"][-1]["content"] == "edited"


@pytest.mark.action("followup")
def test_followup_refusals_reach_the_service_as_reasons(box: Sandbox) -> None:
    iid = command(box, "reset")
    responses(box, iid)
    mark = box.mark()
    empty = box.refusal("gateway", InteractionFollowup(iid, ""))
    assert empty.reason == "bad_request" and "50006" in empty.detail
    assert only(box.requests(mark, "POST", FOLLOWUP))["error"]["code"] == 50006
    too_long = box.refusal("gateway", InteractionFollowup(iid, "w" * 2001))
    assert too_long.reason == "bad_request" and "2,000" in too_long.detail
    unknown = box.refusal("gateway", InteractionFollowup("123456789012345678", "hello?"))
    assert unknown.reason == "not_found"
    assert len(box.requests(mark, "POST", FOLLOWUP)) == 1


@pytest.mark.action("followup")
@pytest.mark.action("edit_original")
def test_after_fifteen_minutes_followups_and_edits_are_refused_as_expired(box: Sandbox) -> None:
    iid = command(box, "reset")
    responses(box, iid)
    box.post("clock", {"advance_s": 901})  # interaction tokens live 15 minutes
    mark = box.mark()
    late = box.refusal("gateway", InteractionFollowup(iid, "still there?"))
    assert late.reason == "expired" and "50027" in late.detail
    edit = box.refusal("gateway", EditInteraction(iid, "edited late"))
    assert edit.reason == "expired"
    webhooks = [r for r in box.requests(mark) if r["route"].startswith("/webhooks/")]
    assert [(r["status"], r["error"]["code"]) for r in webhooks] == [(401, 50027)] * 2
    assert len(box.get(f"interactions/{iid}")["responses"]) == 1


def test_no_service_restarted_along_the_way(box: Sandbox) -> None:
    assert {s["name"]: s["restarts"] for s in box.status()["services"]} == {
        "persistence": 0,
        "gateway": 0,
        "llm": 0,
    }
