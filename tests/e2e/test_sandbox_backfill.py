"""End to end: when Discord refuses a RESUME, nothing said meanwhile is lost.

The gateway is SIGKILLed and every Discord session invalidated (`POST gateway/invalidate`),
so its successor's RESUME is refused and it identifies afresh: whatever was dispatched
in between never reaches it over the gateway. The backfill reads it back from Discord's
history (and compares members and bans), and the heartbeat names the gap in #admin.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import alive, wait_for
from tests.support.sandbox import FAST_CORE, Sandbox

HEARTBEAT = """
[services.heartbeat]
module = "services.heartbeat"
after = ["gateway"]
subscribes = ["discord.connection", "discord.gap.backfilled", "discord.guild.ready",
              "supervisor.status"]
[services.heartbeat.settings]
admin_channel = "admin"
interval_s = 60
alert_group_s = 1
"""

STATS = """
[services.stats]
module = "services.stats"
after = ["gateway", "persistence"]
subscribes = ["discord.guild.counts", "discord.guild.ready"]
[services.stats.settings]
report_channel = "stats"
counters = {}
"""

TOML = FAST_CORE + HEARTBEAT + STATS
GAP_LINE = re.compile(r"gap of ([\d.]+) s: (\d+) messages recovered(.*)")


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path, TOML)
    try:
        box.wait_all_running(30)
        box.wait_connected()
        yield box
    finally:
        box.cleanup()


def stored_ids(box: Sandbox) -> set[str]:
    return {r[0] for r in box.db("SELECT id FROM messages")}


def gap_lines(box: Sandbox) -> list[str]:
    """Every line of the bot's messages in #admin that names a gap."""
    return [
        line
        for m in box.bot_messages("admin")
        for line in m["content"].splitlines()
        if "gap of" in line
    ]


def kill_gateway(box: Sandbox, down_s: float) -> int:
    """SIGKILL the gateway, keep Discord's websocket refusing it for `down_s` seconds (an
    outage, so that what follows happens while no gateway is connected), and invalidate
    every session: its successor's RESUME will be refused."""
    pid = box.service("gateway")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), 5)
    box.post("gateway/disconnect", {"refuse_s": down_s})
    assert box.post("gateway/invalidate", {})["sessions"] >= 1
    return pid


def back_after_a_refused_resume(box: Sandbox, old_pid: int) -> bool:
    """The successor identifies afresh; whether all that was done came before it did."""
    all_in_the_gap = box.get("gateway/sessions")["identifies"] == 1
    box.wait_state("gateway", "RUNNING", pid_not=old_pid, timeout=20)
    wait_for(lambda: box.get("gateway/sessions")["identifies"] == 2, 30, "a fresh IDENTIFY")
    assert box.get("gateway/sessions")["refused_resumes"] >= 1
    return all_in_the_gap


@pytest.mark.action("backfill")
def test_300_messages_posted_while_the_gateway_was_down_and_its_resume_refused_all_land_once(
    sandbox: Sandbox,
) -> None:
    before = [sandbox.say(f"before {i}") for i in range(20)]
    wait_for(lambda: set(before) <= stored_ids(sandbox), 10, "the messages before the gap")
    t0 = time.monotonic()
    old = kill_gateway(sandbox, down_s=3.5)
    posted = [
        sandbox.say(f"during the gap {i}", user="bob" if i % 3 else "alice", channel=channel)
        for i in range(150)
        for channel in ("general", "stats")
    ]
    all_in_the_gap = back_after_a_refused_resume(sandbox, old)
    wait_for(lambda: set(posted) <= stored_ids(sandbox), 30, "all 300 messages stored")
    assert sandbox.db("SELECT id FROM messages GROUP BY id HAVING count(*) > 1") == []
    assert len(stored_ids(sandbox) & set(posted)) == 300
    row = sandbox.db("SELECT channel_id, author_id, content FROM messages WHERE id = ?", posted[1])
    assert row == [(sandbox.channels["stats"], sandbox.users["alice"], "during the gap 0")]
    # One line in #admin names the gap, with what it recovered.
    [line] = wait_for(lambda: gap_lines(sandbox), 20, "the gap named in #admin")
    seconds, recovered, _ = GAP_LINE.search(line).groups()  # type: ignore[union-attr]
    assert 3.5 <= float(seconds) <= time.monotonic() - t0 + 1  # the outage, and no more
    assert int(recovered) > 0
    # The 300, and what the bot itself posted meanwhile (the heartbeat's embed and alert
    # in #admin go out through the gateway's REST while its websocket is down).
    own = sandbox.bot_messages("admin")
    assert int(recovered) <= 300 + len(own)
    if all_in_the_gap:  # else a slow machine let some arrive live, after the READY
        assert int(recovered) >= 300
    everything = {m["id"] for c in ("general", "stats", "admin") for m in sandbox.messages(c)}
    wait_for(lambda: everything <= stored_ids(sandbox), 10, "every message in the guild stored")
    # The history was read with `after`, oldest first, from the newest stored message.
    reads = sandbox.requests(method="GET", route="/channels/{channel_id}/messages")
    general = [r for r in reads if sandbox.channels["general"] in r["path"]]
    assert f"after={before[-1]}" in general[0]["query"]
    # Messages after the gap arrive live as ever, and the gap stays named once.
    after = sandbox.say("after the gap")
    wait_for(lambda: after in stored_ids(sandbox), 10, "a live message after the gap")
    assert len(gap_lines(sandbox)) == 1
    assert "backfilling the gap" in sandbox.output()


@pytest.mark.action("backfill_members")
def test_a_join_and_a_ban_during_the_gap_are_stored_and_in_that_days_report(
    sandbox: Sandbox,
) -> None:
    # bob is a member before the gap and banned (so gone) after it: a ban of the gap.
    old = kill_gateway(sandbox, down_s=2)
    today = dt.datetime.now(dt.UTC).date()
    carol = sandbox.post("members", {"username": "carol"})["id"]
    sandbox.post("bans", {"user_id": sandbox.users["bob"], "reason": "spam"})
    said = sandbox.say("carol is here", user="alice")
    back_after_a_refused_resume(sandbox, old)

    def member_events() -> list[tuple[Any, ...]]:
        return sorted(sandbox.db("SELECT kind, user_id, username FROM member_events"))

    wait_for(
        lambda: (
            member_events()
            == [
                ("banned", sandbox.users["bob"], "bob"),
                ("joined", carol, "carol"),
                ("left", sandbox.users["bob"], "bob"),
            ]
        ),
        20,
        "the join, the ban and the leave stored",
    )
    assert sandbox.db("SELECT status FROM members WHERE user_id = ?", carol) == [("joined",)]
    wait_for(lambda: said in stored_ids(sandbox), 10)
    [line] = wait_for(lambda: gap_lines(sandbox), 20, "the gap named in #admin")
    assert "1 join" in line and "1 leave" in line and "1 ban" in line, line
    if dt.datetime.now(dt.UTC).date() != today:
        pytest.skip("the test straddled midnight UTC")
    answer = report(sandbox, today)
    fields = {f["name"]: f["value"] for f in answer["embeds"][0]["fields"]}
    assert fields["Joins"].startswith("**1** "), fields
    assert fields["Leaves"].startswith("**1** "), fields
    assert fields["Bans"].startswith("**1** "), fields
    assert fields["Joined"] == "carol" and fields["Banned"] == "bob"


def report(box: Sandbox, day: dt.date) -> dict[str, Any]:
    """/stats date: as alice: the day's member report."""
    body = {
        "channel_id": box.channels["general"],
        "user_id": box.users["alice"],
        "name": "stats",
        "options": {"date": day.isoformat()},
    }
    iid = box.post("interactions", body)["id"]

    def answered() -> dict[str, Any] | None:
        responses = box.get(f"interactions/{iid}")["responses"]
        return next((r for r in responses if r["embeds"]), None)

    return wait_for(answered, 10, "the /stats answer")
