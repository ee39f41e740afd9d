"""Slash commands as declared once (protocol/commands.py), in the sandbox with the shipped
services.toml: /help lists exactly what the caller may run, and the gateway refuses a
command above the caller's tier before its owner is asked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.harness import wait_for
from tests.support.sandbox import Sandbox, running_sandbox


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with running_sandbox(tmp_path_factory.mktemp("commands"), commands=True) as box:
        yield box


def run(box: Sandbox, user: str, name: str, **options: str) -> dict:
    body = {"channel_id": box.channels["general"], "user_id": box.users[user], "name": name}
    asked = box.post("interactions", {**body, "options": options})
    return wait_for(lambda: box.get(f"interactions/{asked['id']}")["responses"], 10)[0]


def test_help_lists_for_bob_what_a_member_may_run_and_not_restart(sandbox: Sandbox) -> None:
    answer = run(sandbox, "bob", "help")
    assert answer["ephemeral"]
    assert "/ask prompt:" in answer["content"] and "/stats" in answer["content"]
    assert "/restart" not in answer["content"]


def test_help_lists_restart_for_alice_the_admin_and_owner(sandbox: Sandbox) -> None:
    answer = run(sandbox, "alice", "help")
    assert "/restart service:" in answer["content"] and "/ask prompt:" in answer["content"]


def test_restart_by_bob_is_refused_by_the_gateway_with_the_reason(sandbox: Sandbox) -> None:
    before = sandbox.service("llm")
    answer = run(sandbox, "bob", "restart", service="llm")
    assert answer["ephemeral"] and "Manage Server" in answer["content"]
    assert sandbox.service("llm")["pid"] == before["pid"]


def test_commands_are_registered_from_their_declarations_with_discord_permissions(
    sandbox: Sandbox,
) -> None:
    registered = {c["name"]: c for c in sandbox.get("commands")["global"]}
    assert set(registered) == {"help", "ask", "reset", "usage", "stats", "status", "restart"} | {
        "remind",
        "reminders",
        "timezone",
        "poll",
        "endpoll",
        "event",
        "events",
    }
    assert [o["type"] for o in registered["event"]["options"]] == [1]  # the subcommand create
    # The sandbox names alice an owner, so Discord must not hide /restart from owners
    # without Manage Server: the gateway's own tier check is what refuses bob.
    assert registered["restart"].get("default_member_permissions") is None
    assert registered["restart"]["contexts"] == [0] and registered["help"]["contexts"] == [0, 1, 2]
