"""Raw Discord gateway payloads to protocol events: the only place that reads Discord's JSON.

Working from the raw payloads (not py-cord's objects) means nothing depends on
py-cord's cache: after a new process RESUMEs an old session, the replayed events
convert the same as live ones, although that process never saw a GUILD_CREATE.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from protocol.discord import (
    MemberBanned,
    MemberJoined,
    MemberLeft,
    MemberUnbanned,
    MessageCreated,
    MessageDeleted,
    MessageEdited,
    PollEnded,
    PollVoteAdded,
    PollVoteRemoved,
    ScheduledEventChanged,
    ScheduledEventInterest,
)
from protocol.messages import Message

# Discord's channel types, named for the protocol.
CHANNEL_KINDS = {0: "text", 1: "dm", 2: "voice", 4: "category", 5: "news", 13: "stage", 15: "forum"}
EVENT_STATUSES = {1: "scheduled", 2: "active", 3: "completed", 4: "canceled"}
EVENT_CHANGES = {
    "GUILD_SCHEDULED_EVENT_CREATE": "created",
    "GUILD_SCHEDULED_EVENT_UPDATE": "updated",
    "GUILD_SCHEDULED_EVENT_DELETE": "deleted",
}


def timestamp(iso: str | None, default: float) -> float:
    if not iso:
        return default
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return default


def _user(data: dict[str, Any]) -> dict[str, Any]:
    user = data.get("user") or data.get("author") or {}
    return user if isinstance(user, dict) else {}


def _name(user: dict[str, Any]) -> str:
    return str(user.get("global_name") or user.get("username") or user.get("id") or "?")


def scheduled_event(d: dict[str, Any]) -> dict[str, Any]:
    """A Guild Scheduled Event object as the protocol's plain dict (ScheduledEventList)."""
    start = timestamp(d.get("scheduled_start_time"), 0.0)
    end = timestamp(d.get("scheduled_end_time"), 0.0) or None
    metadata = d.get("entity_metadata") or {}
    return {
        "id": str(d["id"]),
        "guild_id": str(d["guild_id"]) if d.get("guild_id") else None,
        "name": str(d.get("name") or ""),
        "description": str(d.get("description") or ""),
        "start": start,
        "end": end,
        "location": str(metadata.get("location") or "") if isinstance(metadata, dict) else "",
        "status": EVENT_STATUSES.get(d.get("status"), "scheduled"),  # type: ignore[arg-type]
        "user_count": d.get("user_count") if isinstance(d.get("user_count"), int) else None,
        "creator_id": str(d["creator_id"]) if d.get("creator_id") else None,
        "channel_id": str(d["channel_id"]) if d.get("channel_id") else None,
    }


def _poll_finalized(d: dict[str, Any]) -> bool:
    poll = d.get("poll")
    results = poll.get("results") if isinstance(poll, dict) else None
    return isinstance(results, dict) and results.get("is_finalized") is True


def _guild(d: dict[str, Any]) -> str | None:
    return str(d["guild_id"]) if d.get("guild_id") else None


def convert(
    event: str, d: dict[str, Any], bot_id: str | None, now: float, channel_names: dict[str, str]
) -> list[Message]:
    """The protocol events for one dispatch; [] for events nobody subscribes to."""
    if event == "MESSAGE_CREATE":
        author = _user(d)
        mentions = [
            str(m["id"]) for m in d.get("mentions") or [] if isinstance(m, dict) and "id" in m
        ]
        ref = d.get("message_reference") or {}
        referenced = d.get("referenced_message") or {}
        channel_id = str(d["channel_id"])
        guild_id = d.get("guild_id")
        return [
            MessageCreated(
                id=str(d["id"]),
                channel_id=channel_id,
                guild_id=str(guild_id) if guild_id else None,
                author_id=str(author.get("id", "0")),
                author_name=_name(author),
                author_bot=bool(author.get("bot", False)),
                content=str(d.get("content") or ""),
                created_at=timestamp(d.get("timestamp"), now),
                mentions=mentions,
                mention_roles=[str(r) for r in d.get("mention_roles") or []],
                mention_everyone=bool(d.get("mention_everyone", False)),
                mentions_bot=bot_id is not None and bot_id in mentions,
                reply_to_id=str(ref["message_id"]) if ref.get("message_id") else None,
                reply_to_author_id=str(_user(referenced).get("id")) if _user(referenced) else None,
                channel_name=channel_names.get(channel_id),
                is_dm=not guild_id,
                attachments=[
                    {
                        "url": a.get("url", ""),
                        "filename": a.get("filename", ""),
                        "size": int(a.get("size", 0)),
                    }
                    for a in d.get("attachments") or []
                    if isinstance(a, dict)
                ],
            )
        ]
    if event == "MESSAGE_UPDATE" and _poll_finalized(d):
        # A poll ended: Discord updates the message with the final counts; its text
        # changed only if it says it was edited.
        ended: list[Message] = [PollEnded(str(d["id"]), str(d["channel_id"]), _guild(d), now)]
        if d.get("edited_timestamp") and "content" in d:
            ended.append(
                MessageEdited(
                    str(d["id"]),
                    str(d["channel_id"]),
                    _guild(d),
                    str(d.get("content") or ""),
                    timestamp(d.get("edited_timestamp"), now),
                )
            )
        return ended
    if event in ("MESSAGE_POLL_VOTE_ADD", "MESSAGE_POLL_VOTE_REMOVE"):
        vote_cls = PollVoteAdded if event == "MESSAGE_POLL_VOTE_ADD" else PollVoteRemoved
        return [
            vote_cls(
                str(d["message_id"]),
                str(d["channel_id"]),
                _guild(d),
                str(d["user_id"]),
                int(d["answer_id"]),
                now,
            )
        ]
    if event in EVENT_CHANGES:
        return [ScheduledEventChanged(EVENT_CHANGES[event], scheduled_event(d))]
    if event in ("GUILD_SCHEDULED_EVENT_USER_ADD", "GUILD_SCHEDULED_EVENT_USER_REMOVE"):
        return [
            ScheduledEventInterest(
                str(d["guild_id"]),
                str(d["guild_scheduled_event_id"]),
                str(d["user_id"]),
                event == "GUILD_SCHEDULED_EVENT_USER_ADD",
                now,
            )
        ]
    if event == "MESSAGE_UPDATE":
        if "content" not in d:  # an embed unfurl, not an edit of the text
            return []
        return [
            MessageEdited(
                id=str(d["id"]),
                channel_id=str(d["channel_id"]),
                guild_id=str(d["guild_id"]) if d.get("guild_id") else None,
                content=str(d.get("content") or ""),
                edited_at=timestamp(d.get("edited_timestamp"), now),
            )
        ]
    if event == "MESSAGE_DELETE":
        return [
            MessageDeleted(
                str(d["id"]),
                str(d["channel_id"]),
                str(d["guild_id"]) if d.get("guild_id") else None,
                now,
            )
        ]
    if event == "MESSAGE_DELETE_BULK":
        guild = str(d["guild_id"]) if d.get("guild_id") else None
        return [MessageDeleted(str(i), str(d["channel_id"]), guild, now) for i in d["ids"]]
    if event in ("GUILD_MEMBER_ADD", "GUILD_MEMBER_REMOVE"):
        user = _user(d)
        cls = MemberJoined if event == "GUILD_MEMBER_ADD" else MemberLeft
        at = timestamp(d.get("joined_at"), now) if cls is MemberJoined else now
        return [
            cls(str(d["guild_id"]), str(user["id"]), _name(user), bool(user.get("bot", False)), at)
        ]
    if event in ("GUILD_BAN_ADD", "GUILD_BAN_REMOVE"):
        user = _user(d)
        ban_cls = MemberBanned if event == "GUILD_BAN_ADD" else MemberUnbanned
        return [ban_cls(str(d["guild_id"]), str(user["id"]), _name(user), now)]
    return []
