"""docs/discord-actions.md is the generator's output, and the generator refuses gaps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.gateway.routes import DiscordCall
from tools.discord_actions import marked_tests, problems

ROOT = Path(__file__).resolve().parents[3]


def test_the_committed_table_of_discord_actions_is_the_generated_one() -> None:
    generated = subprocess.run(
        [sys.executable, "-m", "tools.discord_actions"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    committed = (ROOT / "docs" / "discord-actions.md").read_text()
    fix = "python -m tools.discord_actions > docs/discord-actions.md"
    assert committed == generated, f"docs/discord-actions.md is stale: {fix}"


def test_an_action_without_a_test_or_a_request_without_a_row_is_reported(tmp_path: Path) -> None:
    tests = tmp_path / "test_some.py"
    tests.write_text(
        "import pytest\n\n"
        "@pytest.mark.action('send')\n@pytest.mark.action('ghost')\n"
        "def test_sends() -> None: ...\n"
    )
    found = marked_tests([tests])
    assert found == {"send": ["test_some.py::test_sends"], "ghost": ["test_some.py::test_sends"]}
    calls = [
        DiscordCall("send", "discord.send", "Create Message", "POST", "/x", ""),
        DiscordCall("edit", "discord.edit", "Edit Message", "PATCH", "/y", ""),
    ]
    assert problems(calls, ["discord.send", "discord.edit", "discord.typing"], found) == [
        "discord.typing: served by the gateway but in no row of routes.CALLS",
        "edit: no test marked @pytest.mark.action('edit')",
        "ghost: tests are marked with it (test_some.py::test_sends) but it is not an action",
    ]
