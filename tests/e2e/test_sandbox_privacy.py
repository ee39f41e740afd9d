"""Private by default, end to end: `run.py --sandbox` started with umask 022 leaves nothing
under its data dir that other users can read, and nothing it writes or prints carries
the Discord token or the OpenAI API key.

One sandbox serves the module: it runs the gateway, persistence and the llm, stores a
message and answers a mention (so the database, its WAL, the journal, the outboxes, the
logs and the gateway's session file all exist), is asked for `status --json`, and stops.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox.run import API_KEY, TOKEN
from tests.support.harness import wait_for
from tests.support.sandbox import FAST_CORE, LLM_TABLE, ROOT, Sandbox

TOML = FAST_CORE + LLM_TABLE


@dataclass
class Finished:
    data: Path
    output: str  # the supervisor's stdout and stderr, the services' included
    status_json: str
    token: str


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Finished]:
    tmp = tmp_path_factory.mktemp("privacy")
    (tmp / ".env").write_text("SOME_OTHER_SECRET=x\n")
    (tmp / ".env").chmod(0o644)
    box = Sandbox(tmp, TOML, umask=0o022)
    try:
        box.wait_all_running()
        box.wait_connected()
        mid = box.say("a message only the bot's own user may read")
        wait_for(lambda: box.db("SELECT id FROM messages WHERE id = ?", mid), 10, "the message")
        box.say(f"<@{box.state['bot_user_id']}> hello")
        wait_for(lambda: box.bot_messages(), 15, "the bot's answer")
        status = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), "status", "--json", "--data-dir", str(box.data)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert box.stop() == 0
        yield Finished(box.data, box.output(), status.stdout + status.stderr, box.state["token"])
    finally:
        box.cleanup()


def test_nothing_under_the_data_dir_is_readable_by_group_or_others(finished: Finished) -> None:
    data = finished.data
    written = {p.relative_to(data).as_posix() for p in data.rglob("*")}
    assert {"bot.sqlite3", "gateway-session.json", "logs/supervisor.log", "logs/llm.log"} <= written
    assert any(p.startswith("journal/") for p in written)
    assert any(p.startswith("outbox/") for p in written)
    open_to_others = [
        f"{p} {stat.S_IMODE(p.lstat().st_mode):04o}"
        for p in [data, *data.rglob("*")]
        if not p.is_symlink() and p.lstat().st_mode & 0o077
    ]
    assert open_to_others == []


def test_no_log_journal_or_status_output_contains_the_token_or_the_api_key(
    finished: Finished,
) -> None:
    assert finished.token == TOKEN  # the emulator takes the token the services were given
    assert '"services"' in finished.status_json
    written = [
        (p.relative_to(finished.data).as_posix(), p.read_bytes())
        for p in finished.data.rglob("*")
        if p.is_file()
    ]
    assert len(written) >= 8
    written += [
        ("stdout+stderr", finished.output.encode()),
        ("status", finished.status_json.encode()),
    ]
    for secret in (TOKEN, API_KEY):
        assert [name for name, content in written if secret.encode() in content] == []


def test_start_up_warns_once_that_a_world_readable_env_file_needs_chmod_600(
    finished: Finished,
) -> None:
    warnings = [line for line in finished.output.splitlines() if "chmod 600" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0]
