"""Slash commands: registered from the catalogue, each invocation routed to its owner.

Discord fails an interaction that is not acknowledged within 3 s. So: a command
declared slow is deferred at once and its answer edits the original response;
any other is given 2 s to answer; and when the owner is down (its channel is
not connected or its breaker is open) the user gets an ephemeral "restarting"
answer at once instead of a failed interaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from protocol.commands import CATALOGUE, Command

ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
EPHEMERAL = 1 << 6
RESPOND_WITH_MESSAGE = 4
RESPOND_DEFERRED = 5
NO_PINGS = {"parse": []}

RESTARTING = "That part of the bot is restarting, try again in a few seconds."
TOO_SLOW = "That took too long to answer, try again shortly."
UNKNOWN = "This command is not available right now."

OPTION_TYPES = {"string": 3, "integer": 4, "boolean": 5, "number": 10}


def command_payload(names: list[str]) -> list[dict[str, Any]]:
    """Discord's bulk-overwrite body for the commands enabled services answer."""
    return [_payload(CATALOGUE[n]) for n in sorted(names) if n in CATALOGUE]


def _payload(cmd: Command) -> dict[str, Any]:
    return {
        "name": cmd.name,
        "description": cmd.description,
        "type": 1,
        "options": [
            {
                "name": o.name,
                "description": o.description,
                "type": OPTION_TYPES[o.type],
                "required": o.required,
            }
            for o in cmd.options
        ],
    }


@dataclass
class Invocation:
    id: str
    token: str
    application_id: str
    command: str
    options: dict[str, Any]
    user_id: str
    user_name: str
    channel_id: str | None
    guild_id: str | None
    is_admin: bool
    created: float

    @classmethod
    def parse(cls, d: dict[str, Any]) -> Invocation | None:
        """None for interactions that are not slash commands (buttons, autocomplete...)."""
        if d.get("type") != 2 or not isinstance(d.get("data"), dict):
            return None
        member = d.get("member") or {}
        user = member.get("user") or d.get("user") or {}
        perms = int(member.get("permissions") or 0)
        return cls(
            id=str(d["id"]),
            token=str(d["token"]),
            application_id=str(d["application_id"]),
            command=str(d["data"].get("name", "")),
            options={
                str(o["name"]): o.get("value")
                for o in d["data"].get("options") or []
                if isinstance(o, dict) and "name" in o
            },
            user_id=str(user.get("id", "0")),
            user_name=str(user.get("global_name") or user.get("username") or "?"),
            channel_id=str(d["channel_id"]) if d.get("channel_id") else None,
            guild_id=str(d["guild_id"]) if d.get("guild_id") else None,
            is_admin=bool(perms & (ADMINISTRATOR | MANAGE_GUILD)),
            created=time.monotonic(),
        )


def message_data(
    content: str, embeds: list[dict[str, Any]] | None = None, ephemeral: bool = False
) -> dict[str, Any]:
    data: dict[str, Any] = {"content": content[:2000], "allowed_mentions": NO_PINGS}
    if embeds:
        data["embeds"] = embeds
    if ephemeral:
        data["flags"] = EPHEMERAL
    return data
