"""Slash commands: parsed from Discord's interactions, each caller given a tier, /help and
the registration body derived from the declarations."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.commands import CATALOGUE, Tier
from services.gateway.interactions import (
    ADMINISTRATOR,
    EPHEMERAL,
    GUILD_ONLY,
    MANAGE_GUILD,
    Invocation,
    command_payload,
    help_text,
    message_data,
)

GUILD = "100"
ALL_OWNERS = {c.owner for c in CATALOGUE.values()}


def interaction(
    permissions: int = 0, roles: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": "700",
        "token": "tok",
        "application_id": "900",
        "type": 2,
        "channel_id": "200",
        "guild_id": GUILD,
        "data": {
            "name": "ask",
            "options": [{"name": "prompt", "type": 3, "value": "why?"}],
        },
        "member": {
            "user": {"id": "11", "username": "alice", "global_name": "Alice"},
            "roles": roles or [],
            "permissions": str(permissions),
        },
    }
    d.update(extra)
    return d


def parsed(d: dict[str, Any]) -> Invocation:
    inv = Invocation.parse(d)
    assert inv is not None
    return inv


def test_a_slash_command_is_parsed_with_its_options_caller_and_place() -> None:
    inv = parsed(interaction(roles=["55"]))
    assert (inv.id, inv.token, inv.application_id) == ("700", "tok", "900")
    assert inv.command == "ask"
    assert inv.options == {"prompt": "why?"}
    assert (inv.user_id, inv.user_name) == ("11", "Alice")
    assert (inv.channel_id, inv.guild_id) == ("200", GUILD)
    assert inv.roles == ("55",)
    assert not inv.is_admin


@pytest.mark.parametrize("permission", [MANAGE_GUILD, ADMINISTRATOR, MANAGE_GUILD | 1])
def test_manage_server_or_administrator_makes_the_caller_an_admin(permission: int) -> None:
    assert parsed(interaction(permissions=permission)).is_admin


def test_a_dm_command_is_parsed_from_the_user_without_guild() -> None:
    d = interaction(user={"id": "12", "username": "bob"})
    del d["member"], d["guild_id"]
    inv = parsed(d)
    assert (inv.user_id, inv.user_name, inv.guild_id) == ("12", "bob", None)
    assert not inv.is_admin


@pytest.mark.parametrize(
    "d",
    [
        interaction(type=3),  # a button
        interaction(type=4),  # autocomplete
        interaction(data=None),
    ],
)
def test_interactions_that_are_not_slash_commands_are_not_parsed(d: dict[str, Any]) -> None:
    assert Invocation.parse(d) is None


def test_an_owner_is_owner_even_without_admin_rights() -> None:
    assert parsed(interaction()).tier({"11"}, ()) is Tier.OWNER


def test_manage_server_gives_the_admin_tier() -> None:
    assert parsed(interaction(permissions=MANAGE_GUILD)).tier((), ()) is Tier.ADMIN


def test_a_configured_admin_role_gives_the_admin_tier() -> None:
    inv = parsed(interaction(roles=["55", "66"]))
    assert inv.tier((), {"66"}) is Tier.ADMIN
    assert inv.tier((), {"77"}) is Tier.MEMBER


def test_a_plain_guild_member_is_a_member() -> None:
    assert parsed(interaction()).tier({"12"}, ()) is Tier.MEMBER


def test_a_dm_caller_is_public_but_an_owner_stays_owner() -> None:
    d = interaction(user={"id": "11", "username": "alice"})
    del d["member"], d["guild_id"]
    inv = parsed(d)
    assert inv.tier((), ()) is Tier.PUBLIC
    assert inv.tier({"11"}, ()) is Tier.OWNER


def commands_in(text: str) -> set[str]:
    return {line.split("`/")[1].split()[0].rstrip("`") for line in text.splitlines()[1:]}


def test_help_lists_for_a_member_ask_but_not_restart() -> None:
    listed = commands_in(help_text(Tier.MEMBER, ALL_OWNERS))
    assert {"ask", "help", "stats", "usage"} <= listed
    assert "restart" not in listed


def test_help_lists_for_an_admin_restart_too() -> None:
    assert "restart" in commands_in(help_text(Tier.ADMIN, ALL_OWNERS))


def test_help_lists_in_a_dm_only_public_commands() -> None:
    listed = commands_in(help_text(Tier.PUBLIC, ALL_OWNERS))
    assert listed == {c.name for c in CATALOGUE.values() if c.tier is Tier.PUBLIC}


def test_help_lists_only_commands_of_enabled_services() -> None:
    listed = commands_in(help_text(Tier.OWNER, {"gateway", "heartbeat"}))
    assert listed == {"help", "status", "restart"}


def test_help_shows_required_and_optional_options() -> None:
    text = help_text(Tier.MEMBER, ALL_OWNERS)
    assert "`/ask prompt:`" in text
    assert "`/stats [date:]`" in text


def test_admin_commands_are_registered_guild_only_behind_manage_server() -> None:
    (restart,) = command_payload(["restart"])
    assert restart["default_member_permissions"] == str(MANAGE_GUILD)
    assert restart["contexts"] == GUILD_ONLY
    assert restart["options"] == [
        {"name": "service", "description": "Service name", "type": 3, "required": True}
    ]


def test_public_commands_are_registered_for_everyone_everywhere() -> None:
    (ask,) = command_payload(["ask"])
    assert "default_member_permissions" not in ask
    assert ask["contexts"] == [0, 1, 2]


def test_member_commands_are_guild_only_but_visible_to_everyone() -> None:
    (stats,) = command_payload(["stats"])
    assert stats["contexts"] == GUILD_ONLY
    assert "default_member_permissions" not in stats


def test_registration_skips_undeclared_names_and_sorts() -> None:
    assert [p["name"] for p in command_payload(["status", "nope", "ask"])] == ["ask", "status"]


def test_interaction_messages_ping_nobody_and_fit_discord() -> None:
    data = message_data("x" * 2500, ephemeral=True)
    assert len(data["content"]) == 2000
    assert data["allowed_mentions"] == {"parse": []}
    assert data["flags"] == EPHEMERAL


def test_admin_commands_need_manage_server_in_discord_unless_owners_or_roles_are_set() -> None:
    hidden = {c["name"]: c for c in command_payload(["restart", "ask"])}
    assert hidden["restart"]["default_member_permissions"] == "32"
    assert "default_member_permissions" not in hidden["ask"]
    shown = {c["name"]: c for c in command_payload(["restart"], hide_from_members=False)}
    assert "default_member_permissions" not in shown["restart"]


def test_help_in_a_dm_lists_only_what_runs_there_even_for_an_owner() -> None:
    text = help_text(Tier.OWNER, {"llm", "heartbeat", "gateway", "stats"}, in_guild=False)
    assert "/ask" in text and "/restart" not in text and "/stats" not in text
