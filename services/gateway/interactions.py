"""Slash commands: registered from their declarations, each invocation checked against
its permission tier and routed to its owner.

Discord fails an interaction that is not acknowledged within 3 s. So: a command
declared slow is deferred at once and its answer edits the original response;
any other is given 2 s to answer; and when the owner is down (its channel is
not connected or its breaker is open) the user gets an ephemeral "restarting"
answer at once instead of a failed interaction. A caller below the command's
tier gets an ephemeral reason, and the owner is never asked.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from protocol.commands import CATALOGUE, Command, Option, Tier, runnable_by
from protocol.discord import MESSAGE_LIMIT, NO_PINGS

ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
EPHEMERAL = 1 << 6
RESPOND_WITH_MESSAGE = 4
RESPOND_DEFERRED = 5
# Discord's interaction contexts: a guild, the bot's DM, other private channels.
GUILD_ONLY, ANYWHERE = [0], [0, 1, 2]

RESTARTING = "That part of the bot is restarting, try again in a few seconds."
TOO_SLOW = "That took too long to answer, try again shortly."
UNKNOWN = "This command is not available right now."

OPTION_TYPES = {"string": 3, "integer": 4, "boolean": 5, "number": 10}
SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2


def command_payload(names: list[str], hide_from_members: bool = True) -> list[dict[str, Any]]:
    """Discord's bulk-overwrite body for the commands enabled services answer.
    `hide_from_members`: admin commands need Manage Server in Discord itself; off when
    admin roles or owners are configured (Discord would refuse them before we could)."""
    return [_payload(CATALOGUE[n], hide_from_members) for n in sorted(names) if n in CATALOGUE]


def _payload(cmd: Command, hide_from_members: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "name": cmd.name,
        "description": cmd.description,
        "type": 1,
        "contexts": ANYWHERE if cmd.tier is Tier.PUBLIC else GUILD_ONLY,
        "options": [
            {
                "name": sub.name,
                "description": sub.description,
                "type": SUB_COMMAND,
                "options": _options(sub.options),
            }
            for sub in cmd.subcommands
        ]
        or _options(cmd.options),
    }
    if hide_from_members and cmd.tier in (Tier.ADMIN, Tier.OWNER):
        # Discord hides it from members without Manage Server (admins may override per
        # role in Server Settings); the gateway checks the tier itself either way.
        payload["default_member_permissions"] = str(MANAGE_GUILD)
    return payload


def _options(options: tuple[Option, ...]) -> list[dict[str, Any]]:
    return [
        {
            "name": o.name,
            "description": o.description,
            "type": OPTION_TYPES[o.type],
            "required": o.required,
        }
        for o in options
    ]


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
    is_admin: bool  # Manage Server or Administrator in this guild
    roles: tuple[str, ...]
    created: float
    subcommand: str | None = None  # "create" in `/event create`; "group sub" in a group

    def tier(self, owner_ids: Collection[str], admin_roles: Collection[str]) -> Tier:
        """The caller's highest permission tier."""
        if self.user_id in owner_ids:
            return Tier.OWNER
        if self.is_admin or any(r in admin_roles for r in self.roles):
            return Tier.ADMIN
        return Tier.MEMBER if self.guild_id else Tier.PUBLIC

    @classmethod
    def parse(cls, d: dict[str, Any], now: float = 0.0) -> Invocation | None:
        """None for interactions that are not slash commands (buttons, autocomplete...)."""
        if d.get("type") != 2 or not isinstance(d.get("data"), dict):
            return None
        member = d.get("member") or {}
        user = member.get("user") or d.get("user") or {}
        perms = int(member.get("permissions") or 0)
        options, path = d["data"].get("options") or [], []
        # A subcommand (or a group holding one) carries the options the user gave.
        while (
            len(options) == 1
            and isinstance(options[0], dict)
            and options[0].get("type") in (SUB_COMMAND, SUB_COMMAND_GROUP)
        ):
            path.append(str(options[0].get("name", "")))
            options = options[0].get("options") or []
        return cls(
            id=str(d["id"]),
            token=str(d["token"]),
            application_id=str(d["application_id"]),
            command=str(d["data"].get("name", "")),
            options={
                str(o["name"]): o.get("value")
                for o in options
                if isinstance(o, dict) and "name" in o
            },
            user_id=str(user.get("id", "0")),
            user_name=str(user.get("global_name") or user.get("username") or "?"),
            channel_id=str(d["channel_id"]) if d.get("channel_id") else None,
            guild_id=str(d["guild_id"]) if d.get("guild_id") else None,
            is_admin=bool(perms & (ADMINISTRATOR | MANAGE_GUILD)),
            roles=tuple(str(r) for r in member.get("roles") or []),
            created=now,  # the gateway's monotonic clock
            subcommand=" ".join(path) or None,
        )


def message_data(
    content: str, embeds: list[dict[str, Any]] | None = None, ephemeral: bool = False
) -> dict[str, Any]:
    data: dict[str, Any] = {"content": content[:MESSAGE_LIMIT], "allowed_mentions": NO_PINGS}
    if embeds:
        data["embeds"] = embeds
    if ephemeral:
        data["flags"] = EPHEMERAL
    return data


def help_text(tier: Tier, enabled: Collection[str], in_guild: bool = True) -> str:
    """/help: exactly the commands this caller may run here, from their declarations (in
    a DM only the public ones: the others run in a server)."""
    tier = tier if in_guild else Tier.PUBLIC
    lines = [f"Commands you can run here ({tier.value}):"]
    for cmd in runnable_by(tier, enabled):
        usages = " · ".join(f"`{usage}`" for usage in cmd.usages())
        lines.append(f"- {usages} {cmd.description}")
    return "\n".join(lines)
