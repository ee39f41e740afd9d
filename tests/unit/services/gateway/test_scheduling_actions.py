"""The gateway's side of reminders, polls and events: their dispatch events converted,
subcommands registered and parsed, and the new actions over py-cord's HTTP client."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol.clock import fixed
from protocol.commands import CATALOGUE
from protocol.discord import (
    CreateScheduledEvent,
    DirectChannel,
    MessageEdited,
    OpenDirectMessage,
    PollEnded,
    PollVoteAdded,
    PollVoteRemoved,
    PollVotersRequest,
    ScheduledEventChanged,
    ScheduledEventInterest,
    ScheduledEventUsers,
    SendPoll,
)
from services.gateway.actions import Actions
from services.gateway.convert import convert
from services.gateway.interactions import Invocation, command_payload, help_text
from services.gateway.state import Gateway

NOW = 1_714_550_400.0
GUILD = "100"


def converted(event: str, d: dict[str, Any]) -> list[Any]:
    return convert(event, d, "900", NOW, {})


# --- dispatch events ------------------------------------------------------------------


def test_poll_votes_become_vote_events() -> None:
    d = {"user_id": "12", "channel_id": "200", "message_id": "300", "guild_id": GUILD}
    [added] = converted("MESSAGE_POLL_VOTE_ADD", {**d, "answer_id": 2})
    assert added == PollVoteAdded("300", "200", GUILD, "12", 2, NOW)
    [removed] = converted("MESSAGE_POLL_VOTE_REMOVE", {**d, "answer_id": 1})
    assert removed == PollVoteRemoved("300", "200", GUILD, "12", 1, NOW)
    assert added.DURABLE and removed.DURABLE


def test_a_finalized_poll_is_a_poll_ended_not_an_edit() -> None:
    d = {
        "id": "300",
        "channel_id": "200",
        "guild_id": GUILD,
        "content": "",
        "edited_timestamp": None,
        "poll": {"results": {"is_finalized": True, "answer_counts": []}},
    }
    assert converted("MESSAGE_UPDATE", d) == [PollEnded("300", "200", GUILD, NOW)]
    open_poll = {**d, "poll": {"results": {"is_finalized": False}}}
    assert converted("MESSAGE_UPDATE", open_poll) == [
        MessageEdited("300", "200", GUILD, "", NOW)
    ], "an unfinished poll's update stays what it was"


def test_scheduled_events_and_interest_are_converted_from_discords_json() -> None:
    d = {
        "id": "55",
        "guild_id": GUILD,
        "name": "Party",
        "description": None,
        "scheduled_start_time": "2026-05-09T18:00:00+00:00",
        "scheduled_end_time": "2026-05-09T20:00:00+00:00",
        "status": 1,
        "entity_type": 3,
        "entity_metadata": {"location": "Park"},
        "creator_id": "900",
        "user_count": 2,
    }
    [created] = converted("GUILD_SCHEDULED_EVENT_CREATE", d)
    assert isinstance(created, ScheduledEventChanged) and created.change == "created"
    assert created.event == {
        "id": "55",
        "guild_id": GUILD,
        "name": "Party",
        "description": "",
        "start": 1778349600.0,
        "end": 1778356800.0,
        "location": "Park",
        "status": "scheduled",
        "user_count": 2,
        "creator_id": "900",
        "channel_id": None,
    }
    [deleted] = converted("GUILD_SCHEDULED_EVENT_DELETE", {**d, "status": 4})
    assert deleted.change == "deleted" and deleted.event["status"] == "canceled"
    interest = {"guild_scheduled_event_id": "55", "user_id": "12", "guild_id": GUILD}
    assert converted("GUILD_SCHEDULED_EVENT_USER_ADD", interest) == [
        ScheduledEventInterest(GUILD, "55", "12", True, NOW)
    ]
    [gone] = converted("GUILD_SCHEDULED_EVENT_USER_REMOVE", interest)
    assert gone.interested is False


# --- subcommands ----------------------------------------------------------------------


def test_a_command_with_subcommands_is_registered_as_discord_nests_them() -> None:
    [event] = command_payload(["event"])
    [create] = event["options"]
    assert (create["name"], create["type"]) == ("create", 1)
    assert [(o["name"], o["required"]) for o in create["options"]] == [
        ("name", True),
        ("start", True),
        ("duration", False),
        ("location", False),
        ("description", False),
    ]


def test_help_shows_each_subcommand_with_its_options() -> None:
    text = help_text(CATALOGUE["event"].tier, {"scheduler"})
    assert "`/event create name: start: [duration:] [location:] [description:]`" in text
    assert "`/timezone set zone:` · `/timezone show`" in text


def test_an_invocation_of_a_subcommand_carries_its_name_and_its_options() -> None:
    inv = Invocation.parse(
        {
            "id": "1",
            "token": "t",
            "application_id": "900",
            "type": 2,
            "guild_id": GUILD,
            "member": {"user": {"id": "11"}, "permissions": "0"},
            "data": {
                "name": "event",
                "options": [
                    {
                        "name": "create",
                        "type": 1,
                        "options": [{"name": "name", "type": 3, "value": "Party"}],
                    }
                ],
            },
        }
    )
    assert inv is not None
    assert (inv.command, inv.subcommand, inv.options) == ("event", "create", {"name": "Party"})


# --- actions --------------------------------------------------------------------------


class Http:
    """py-cord's HTTPClient as far as these actions use it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.voters = {1: [str(100 + i) for i in range(150)], 2: ["7"]}

    async def start_private_message(self, *args: Any) -> dict[str, Any]:
        self.calls.append(("start_private_message", args, {}))
        return {"id": "444", "type": 1}

    async def send_message(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("send_message", args, kwargs))
        poll = kwargs["poll"]
        answers = [{"answer_id": i, **a} for i, a in enumerate(poll["answers"], 1)]
        return {
            "id": "800",
            "poll": {**poll, "answers": answers, "expiry": "2024-05-01T09:00:00+00:00"},
        }

    async def get_answer_voters(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("get_answer_voters", args, kwargs))
        _, _, answer_id, limit = args
        after = kwargs.get("after")
        ids = [u for u in self.voters[answer_id] if after is None or int(u) > int(after)]
        return {"users": [{"id": u} for u in ids[:limit]]}

    async def create_scheduled_event(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("create_scheduled_event", args, kwargs))
        return {
            "id": "55",
            "guild_id": args[0],
            "name": kwargs["name"],
            "scheduled_start_time": kwargs["scheduled_start_time"],
            "scheduled_end_time": kwargs["scheduled_end_time"],
            "entity_metadata": kwargs["entity_metadata"],
            "status": 1,
        }

    async def get_scheduled_event_users(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        self.calls.append(("get_scheduled_event_users", args, kwargs))
        _, _, limit = args
        after = kwargs.get("after")
        ids = [str(u) for u in range(1, 131) if after is None or u > int(after)]
        return [{"user": {"id": u}} for u in ids[:limit]]

    async def request(self, route: Any, **kwargs: Any) -> None:
        self.calls.append(("request", (route.method, route.path), kwargs))


class Client:
    def __init__(self) -> None:
        self.http = Http()


def actions() -> tuple[Actions, Http]:
    gw = Gateway(fixed(NOW))
    gw.client = Client()  # type: ignore[assignment]
    gw.logged_in = True
    return Actions(gw), gw.client.http  # type: ignore[union-attr, return-value]


pytestmark = pytest.mark.anyio


async def test_a_dm_channel_is_opened_for_a_user() -> None:
    act, http = actions()
    assert await act.open_dm(OpenDirectMessage("12")) == DirectChannel("444")
    assert http.calls == [("start_private_message", ("12",), {})]


async def test_a_poll_goes_as_pycords_poll_object_and_answers_its_expiry() -> None:
    act, http = actions()
    sent = await act.send_poll(SendPoll("200", "Lunch?", ["pizza", "sushi"], hours=1))
    [(_, args, kwargs)] = http.calls
    assert args == ("200", None)
    assert kwargs["poll"] == {
        "question": {"text": "Lunch?"},
        "answers": [{"poll_media": {"text": "pizza"}}, {"poll_media": {"text": "sushi"}}],
        "duration": 1,
        "allow_multiselect": False,
        "layout_type": 1,
    }
    assert kwargs["allowed_mentions"] == {"parse": []}
    assert (sent.message_id, sent.expiry, sent.answer_ids) == ("800", NOW + 3600, [1, 2])


async def test_voters_are_read_page_by_page() -> None:
    act, http = actions()
    votes = await act.poll_voters(PollVotersRequest("200", "800", [1, 2]))
    assert len(votes.voters["1"]) == 150 and votes.voters["2"] == ["7"]
    pages = [kw.get("after") for name, _, kw in http.calls if name == "get_answer_voters"]
    assert pages == [None, "199", None]


async def test_an_event_is_created_external_with_iso_times() -> None:
    act, http = actions()
    made = await act.create_scheduled_event(
        CreateScheduledEvent(GUILD, "Party", NOW + 3600, NOW + 7200, "Park")
    )
    [(_, args, kwargs)] = http.calls
    assert args == (GUILD,)
    assert kwargs["entity_type"] == 3 and kwargs["privacy_level"] == 2
    assert kwargs["scheduled_start_time"] == "2024-05-01T09:00:00+00:00"
    assert kwargs["entity_metadata"] == {"location": "Park"}
    assert (made.event["id"], made.event["start"]) == ("55", NOW + 3600)


async def test_interested_users_are_read_page_by_page() -> None:
    act, _ = actions()
    users = await act.scheduled_event_users(ScheduledEventUsers(GUILD, "55"))
    assert users.user_ids == [str(u) for u in range(1, 131)]


async def test_an_answer_with_files_is_one_multipart_callback() -> None:
    act, http = actions()
    inv = Invocation.parse(
        {"id": "7", "token": "tok", "application_id": "900", "type": 2, "data": {"name": "events"}}
    )
    assert inv is not None
    files = [{"filename": "events.ics", "data_b64": "QkVHSU46VkNBTEVOREFS"}]
    await act.respond_with_files(inv, {"content": "here", "flags": 64}, files)
    [(_, (method, path), kwargs)] = http.calls
    assert (method, path) == ("POST", "/interactions/{interaction_id}/{interaction_token}/callback")
    payload, upload = kwargs["form"]
    assert json.loads(payload["value"]) == {
        "type": 4,
        "data": {
            "content": "here",
            "flags": 64,
            "attachments": [{"id": 0, "filename": "events.ics"}],
        },
    }
    assert upload["name"] == "files[0]" and upload["filename"] == "events.ics"
    assert [f.filename for f in kwargs["files"]] == ["events.ics"]
