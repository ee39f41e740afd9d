"""End to end, the real py-cord client against the emulator: every message stored, none lost.

Each test runs `python run.py --sandbox` with only the gateway and persistence (and
for slash commands a small test service), and acts as Discord users through the
emulator's control API.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import alive, wait_for
from tests.support.sandbox import FAST_CORE, Sandbox

TOML = FAST_CORE


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path, TOML)
    try:
        box.wait_all_running()
        box.wait_connected()
        yield box
    finally:
        box.cleanup()


def stored_ids(box: Sandbox) -> list[str]:
    return [r[0] for r in box.db("SELECT id FROM messages")]


def test_a_user_message_lands_in_the_database_and_so_do_edits_and_deletes(
    sandbox: Sandbox,
) -> None:
    mid = sandbox.say("hello, bot ✨ \u202eRTL\u202c")
    row = wait_for(
        lambda: sandbox.db("SELECT channel_id, author_id, content FROM messages WHERE id = ?", mid),
        10,
    )
    assert row == [
        (sandbox.channels["general"], sandbox.users["alice"], "hello, bot ✨ \u202eRTL\u202c")
    ]
    sandbox.call("PATCH", f"messages/{mid}", {"content": "hello, edited"})
    wait_for(
        lambda: (
            sandbox.db("SELECT content FROM messages WHERE id = ?", mid) == [("hello, edited",)]
        ),
        10,
        "the edit",
    )
    sandbox.call("DELETE", f"messages/{mid}")
    wait_for(
        lambda: sandbox.db("SELECT deleted FROM messages WHERE id = ?", mid) == [(1,)],
        10,
        "the delete flag",
    )


def test_odd_input_is_stored_and_nothing_crashes(sandbox: Sandbox) -> None:
    odd = ["x" * 4000, "null\x00byte", "e\u0301\u0301\u0301 combining", "🧪" * 500, ""]
    ids = [sandbox.say(text) for text in odd if text] + [sandbox.say(" ")]
    wait_for(lambda: set(ids) <= set(stored_ids(sandbox)), 10, "odd messages stored")
    assert sandbox.db("SELECT length(content) FROM messages WHERE id = ?", ids[0]) == [(4000,)]
    assert all(s["restarts"] == 0 for s in sandbox.status()["services"])


def test_2000_messages_while_persistence_is_killed_twice_all_land_exactly_once(
    sandbox: Sandbox,
) -> None:
    ids: list[str] = []
    for round_ in range(3):
        ids += [sandbox.say(f"burst {round_}-{i}") for i in range(667)]
        if round_ < 2:
            pid = sandbox.service("persistence")["pid"]
            os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: len(set(ids) & set(stored_ids(sandbox))) == len(ids),
        60,
        f"all {len(ids)} messages stored",
    )
    rows = sandbox.db("SELECT id, count(*) FROM messages GROUP BY id HAVING count(*) > 1")
    assert rows == []  # exactly once
    assert sandbox.service("persistence")["restarts"] == 2


def test_gateway_killed_during_a_burst_resumes_and_nothing_is_missing(sandbox: Sandbox) -> None:
    ids = [sandbox.say(f"before {i}") for i in range(300)]
    pid = sandbox.service("gateway")["pid"]
    os.kill(pid, signal.SIGKILL)
    # While no gateway runs, Discord keeps sending to the session; the emulator buffers.
    ids += [sandbox.say(f"while down {i}") for i in range(300)]
    wait_for(lambda: not alive(pid), 5)
    sandbox.wait_state("gateway", "RUNNING", pid_not=pid)
    ids += [sandbox.say(f"after {i}") for i in range(300)]
    wait_for(lambda: set(ids) <= set(stored_ids(sandbox)), 60, "every message stored")
    sessions = sandbox.get("gateway/sessions")
    assert sessions["identifies"] == 1  # the successor RESUMEd; it did not identify afresh
    assert sessions["resumes"] >= 1
    assert sandbox.db("SELECT count(*) FROM messages")[0][0] == len(set(ids))


def test_a_refused_resume_falls_back_to_identify_and_backfills_the_gap(
    sandbox: Sandbox,
) -> None:
    sandbox.post("gateway/invalidate", {})
    pid = sandbox.service("gateway")["pid"]
    os.kill(pid, signal.SIGKILL)
    sandbox.wait_state("gateway", "RUNNING", pid_not=pid)
    wait_for(lambda: sandbox.get("gateway/sessions")["identifies"] == 2, 15, "a new IDENTIFY")
    mid = sandbox.say("after the gap")
    wait_for(lambda: mid in stored_ids(sandbox), 10)
    assert "backfilling the gap" in sandbox.output()
    wait_for(lambda: "backfill done: gap of" in sandbox.output(), 10, "the backfill")


COMMANDS_TOML = (
    TOML
    + """
[services.heartbeat]
module = "tests.support.services.commander"
max_restarts = 0
"""
)


def test_a_slash_command_to_a_dead_service_gets_an_ephemeral_answer_within_3s(
    tmp_path: Path,
) -> None:
    box = Sandbox(tmp_path, COMMANDS_TOML)
    try:
        box.wait_all_running()
        box.wait_connected()
        wait_for(lambda: box.get("commands")["global"], 10, "commands registered")
        alice, general = box.users["alice"], box.channels["general"]
        live = box.post("interactions", {"channel_id": general, "user_id": alice, "name": "status"})
        answer = wait_for(lambda: box.get(f"interactions/{live['id']}")["responses"], 5)
        assert answer[0]["content"] == "all good" and not answer[0]["ephemeral"]
        pid = box.service("heartbeat")["pid"]
        os.kill(pid, signal.SIGKILL)
        box.wait_state("heartbeat", "FATAL", timeout=5)
        t0 = time.monotonic()
        dead = box.post("interactions", {"channel_id": general, "user_id": alice, "name": "status"})
        answer = wait_for(lambda: box.get(f"interactions/{dead['id']}")["responses"], 5)
        assert time.monotonic() - t0 < 3
        assert answer[0]["ephemeral"] and "restarting" in answer[0]["content"]
    finally:
        box.cleanup()


def test_a_slash_command_pending_when_the_gateway_dies_is_answered_by_its_successor(
    tmp_path: Path,
) -> None:
    box = Sandbox(tmp_path, COMMANDS_TOML)
    try:
        box.wait_all_running()
        box.wait_connected()
        wait_for(lambda: box.get("commands")["global"], 10, "commands registered")
        pid = box.service("gateway")["pid"]
        pending = box.post(
            "interactions",
            {
                "channel_id": box.channels["general"],
                "user_id": box.users["alice"],
                "name": "restart",
                "options": {"service": "slow"},
            },
        )
        time.sleep(0.5)  # the gateway has it and waits for the (slow) owner
        assert box.get(f"interactions/{pending['id']}")["responses"] == []
        os.kill(pid, signal.SIGKILL)
        answer = wait_for(
            lambda: box.get(f"interactions/{pending['id']}")["responses"],
            15,
            "an answer from the gateway's successor",
        )
        assert answer[0]["content"] in (
            "all good",
            "That took too long to answer, try again shortly.",
        )
        assert box.get("gateway/sessions")["resumes"] >= 1
    finally:
        box.cleanup()
