"""End to end, the whole bot in the sandbox: counter channels, daily reports, alerts,
/status and /restart, and the rotating presence.

Each test runs `python run.py --sandbox` with every service and short intervals, acts
as Discord users through the emulator's control API, and moves time on where the bot
would otherwise wait minutes (the emulator's clock and the stats service's clock).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol.discord import CountsRequest
from protocol.messages import AdvanceClock
from tests.support.harness import Running, wait_for
from tests.support.sandbox import FAST_CORE, LLM_TABLE, Sandbox

ALERT_ROLE = "1191168914227200002"  # the sandbox guild's Admin role


def toml(heartbeat: str = "", llm: str = "", presence: str = "") -> str:
    """The default services with intervals short enough for a test; the arguments are
    extra lines for those services' tables."""
    return (
        FAST_CORE
        + LLM_TABLE
        + f"""{llm}

[services.stats]
module = "services.stats"
after = ["gateway", "persistence"]
subscribes = ["discord.guild.counts", "discord.guild.ready"]
[services.stats.settings]
report_channel = "stats"
report_time = "09:00"
timezone = "UTC"
weekly_day = "monday"
refresh_s = 300
[services.stats.settings.counters.members]
channel = "Members"
template = "Members: {{members:,}}"
[services.stats.settings.counters.online]
channel = "Online"
template = "Online: {{online:,}}"
[services.stats.settings.counters.bans]
channel = "Bans"
template = "Bans: {{bans:,}}"

[services.heartbeat]
module = "services.heartbeat"
after = ["gateway"]
subscribes = ["discord.connection", "discord.guild.ready", "supervisor.status"]
[services.heartbeat.settings]
admin_channel = "admin"
interval_s = 1
check_s = 0.5
alert_group_s = 1
{heartbeat}

[services.presence]
module = "services.presence"
after = ["gateway"]
subscribes = ["discord.guild.counts", "discord.guild.ready", "supervisor.status"]
[services.presence.settings]
interval_s = 15
{presence}
"""
    )


def start(tmp_path: Path, text: str) -> Sandbox:
    box = Sandbox(tmp_path, text)
    try:
        box.wait_all_running(30)
        box.wait_connected()
    except BaseException:
        box.cleanup()
        raise
    return box


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = start(tmp_path, toml())
    try:
        yield box
    finally:
        box.cleanup()


# --- helpers ------------------------------------------------------------------------------


def advance_stats(box: Sandbox, seconds: float) -> dict[str, Any]:
    """Moves the stats service's clock (a bus request; `Sandbox.call` is the HTTP one)."""
    return Running.call(box, "stats", AdvanceClock(seconds))


def channel_name(box: Sandbox, channel_id: str) -> str:
    return next(c["name"] for c in box.get("state")["channels"] if c["id"] == channel_id)


def renames(box: Sandbox, channel_id: str) -> list[dict[str, Any]]:
    return [
        r
        for r in box.get("requests")
        if r["method"] == "PATCH" and r["path"].endswith(f"/channels/{channel_id}")
    ]


def answer(box: Sandbox, user: str, name: str, **options: Any) -> dict[str, Any]:
    """Runs a slash command as `user`; the response that carries the answer."""
    body: dict[str, Any] = {
        "channel_id": box.channels["admin"],
        "user_id": box.users[user],
        "name": name,
    }
    if options:
        body["options"] = options
    iid = box.post("interactions", body)["id"]

    def answered() -> dict[str, Any] | None:
        responses = box.get(f"interactions/{iid}")["responses"]
        return next((r for r in responses if r["content"] or r["embeds"]), None)

    return wait_for(answered, 10, f"an answer to /{name} from {user}")


def pinged(allowed_mentions: dict[str, Any] | None) -> set[str]:
    """Who a message could ping: a message sent without allowed_mentions pings everyone
    it mentions, so that counts as everything."""
    if allowed_mentions is None:
        return {"everything"}
    return {
        *(f"parse:{p}" for p in allowed_mentions.get("parse", [])),
        *(f"role:{r}" for r in allowed_mentions.get("roles", [])),
        *(f"user:{u}" for u in allowed_mentions.get("users", [])),
    }


def table_row(embed: dict[str, Any], service: str) -> list[str]:
    """A service's row of the status embed's table: name, state, pid, rst, rss, cpu, ..."""
    for line in embed["description"].splitlines():
        cells = line.split()
        if cells and cells[0] == service:
            return cells
    raise AssertionError(f"no row for {service} in {embed['description']!r}")


# --- counters -----------------------------------------------------------------------------


def test_a_burst_of_50_joins_costs_at_most_two_renames_and_the_last_name_is_right(
    sandbox: Sandbox,
) -> None:
    members = sandbox.channels["Members"]

    def refused(name: str = "") -> list[str]:
        """Renames stats asked for and the gateway refused (it keeps its own window)."""
        return [
            line
            for line in sandbox.output().splitlines()
            if " stats " in line
            and f"rename of {members} to '{name}" in line
            and "refused: gateway: rate_limited" in line
        ]

    # At start the counter is named after the guild as it is (3 members).
    wait_for(lambda: channel_name(sandbox, members) == "Members: 3", 10, "the first rename")
    # The first half of the burst: the window's second rename goes out at once ...
    for i in range(25):
        sandbox.post("members", {"username": f"raider{i}"})
    wait_for(lambda: channel_name(sandbox, members) != "Members: 3", 10, "a rename after joins")
    # ... and the second half (the gateway has seen all 50, and its counts reach stats
    # within a second or two) must wait for the ten minutes to pass.
    for i in range(25, 50):
        sandbox.post("members", {"username": f"raider{i}"})
    wait_for(
        lambda: Running.call(sandbox, "gateway", CountsRequest())["members"] == 53,
        10,
        "the gateway counting 53 members",
    )
    time.sleep(2.5)  # time for stats to want "Members: 53": it must hold it back
    before = renames(sandbox, members)
    assert len(before) == 2, before
    assert all(r["status"] == 200 for r in before), before  # never ran into Discord's 429
    shown = int(channel_name(sandbox, members).removeprefix("Members: "))
    assert 3 < shown <= 28

    assert not refused()  # it did not even ask the gateway (which would refuse, too)

    # Ten minutes later, on every clock that counts renames: Discord's, the gateway's
    # guard and the stats throttle.
    sandbox.post("clock", {"advance_s": 600})
    Running.call(sandbox, "gateway", AdvanceClock(600))
    advance_stats(sandbox, 600)
    wait_for(
        lambda: channel_name(sandbox, members) == "Members: 53",
        10,
        "the final value",
        context=lambda: "\n".join(refused() or sandbox.output().splitlines()[-15:]),
    )
    after = renames(sandbox, members)
    assert len(after) == 3 and after[-1]["status"] == 200, after
    assert all(r["status"] != 429 for r in sandbox.get("requests"))
    # No 600 s window (on Discord's clock) holds more than two renames.
    times = [r["t"] for r in after]
    assert all(b - a >= 600 for a, b in zip(times, times[2:], strict=False)), times


# --- daily report -------------------------------------------------------------------------


def seconds_until_report(wall: float) -> float:
    """From `wall` to just after 09:00 UTC of the next day, when today's report is due."""
    today = dt.datetime.fromtimestamp(wall, dt.UTC).date()
    due = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(9, 0, 30), tzinfo=dt.UTC)
    return due.timestamp() - wall


def test_the_daily_report_counts_a_scripted_day_and_is_posted_once_across_a_restart(
    sandbox: Sandbox,
) -> None:
    today = dt.datetime.now(dt.UTC).date()
    header = f"**Daily member report for {today.isoformat()}**"
    ids = {
        name: sandbox.post("members", {"username": name})["id"]
        for name in ("carol", "dave", "erin")
    }
    sandbox.call("DELETE", f"members/{ids['dave']}")
    sandbox.post("bans", {"user_id": ids["erin"], "reason": "spam"})
    wait_for(
        lambda: (
            sorted(sandbox.db("SELECT kind, username FROM member_events"))
            == [
                ("banned", "erin"),
                ("joined", "carol"),
                ("joined", "dave"),
                ("joined", "erin"),
                ("left", "dave"),
                ("left", "erin"),
            ]
        ),
        10,
        "the day's member events stored",
    )
    if dt.datetime.now(dt.UTC).date() != today:
        pytest.skip("the scripted day straddled midnight UTC")

    def reports() -> list[dict[str, Any]]:
        return [m for m in sandbox.bot_messages("stats") if m["content"] == header]

    moved = advance_stats(sandbox, seconds_until_report(time.time()))
    assert dt.datetime.fromtimestamp(moved["wall"], dt.UTC).date() == today + dt.timedelta(1)
    [posted] = wait_for(reports, 15, "the daily report")
    fields = {f["name"]: f["value"] for f in posted["embeds"][0]["fields"]}
    assert fields["Joins"].startswith("**3** (+3 vs the day before"), fields
    assert fields["Leaves"].startswith("**2** "), fields  # dave, and erin through the ban
    assert fields["Bans"].startswith("**1** "), fields
    assert fields["Net change"].startswith("**+1** "), fields
    assert fields["Joined"] == "carol, dave, erin"
    assert fields["Left"] == "dave, erin"
    assert fields["Banned"] == "erin"
    assert posted["allowed_mentions"] is not None and not pinged(posted["allowed_mentions"])

    # A new stats process starts with the real clock again; move it to the same morning.
    pid = sandbox.service("stats")["pid"]
    os.kill(pid, signal.SIGKILL)
    sandbox.wait_state("stats", "RUNNING", pid_not=pid)
    log_before = sandbox.output().count(f"daily report {today.isoformat()}: already posted")
    advance_stats(sandbox, seconds_until_report(time.time()))
    wait_for(
        lambda: (
            sandbox.output().count(f"daily report {today.isoformat()}: already posted") > log_before
        ),
        15,
        "the restarted stats service to find the report already posted",
    )
    assert len(reports()) == 1


# --- alerts and the status embed ----------------------------------------------------------


@pytest.mark.parametrize("role", [None, ALERT_ROLE], ids=["no-role", "alert-role"])
def test_a_killed_service_is_alerted_then_recovered_and_the_embed_shows_the_restarts(
    tmp_path: Path, role: str | None
) -> None:
    # llm restarts at once the first time, then waits 3 s: long enough to be seen down.
    box = start(
        tmp_path,
        toml(
            heartbeat=f'alert_role_id = "{role}"' if role else "",
            llm="backoff_initial_s = 3\nbackoff_max_s = 3",
        ),
    )
    try:

        def status_message() -> dict[str, Any] | None:
            return next((m for m in box.bot_messages("admin") if m["embeds"]), None)

        embed_id = wait_for(status_message, 10, "the status embed")["id"]
        first = box.service("llm")["pid"]
        os.kill(first, signal.SIGKILL)
        second = box.wait_state("llm", "RUNNING", pid_not=first)["pid"]
        os.kill(second, signal.SIGKILL)
        box.wait_state("llm", "BACKOFF", timeout=2)
        third = box.wait_state("llm", "RUNNING", pid_not=second)["pid"]

        def alerts() -> list[dict[str, Any]]:
            return [m for m in box.bot_messages("admin") if m["content"]]

        def alert_then_recovery() -> list[dict[str, Any]] | None:
            found = alerts()
            crash = next(
                (
                    i
                    for i, m in enumerate(found)
                    if "**llm** crashed" in m["content"] and "now BACKOFF" in m["content"]
                ),
                None,
            )
            if crash is None:
                return None
            later = [m for m in found[crash + 1 :] if "**llm** is running again" in m["content"]]
            return found if later else None

        found = wait_for(alert_then_recovery, 10, "an alert and then a recovery")
        crashes = [m["content"] for m in found if "crashed" in m["content"]]
        assert all("killed by SIGKILL" in c for c in crashes), crashes
        for m in found:
            problem = "**Alert**" in m["content"]
            if role and problem:
                assert m["content"].startswith(f"<@&{role}> **Alert**")
                assert pinged(m["allowed_mentions"]) == {f"role:{role}"}, m
            else:
                assert "<@" not in m["content"]
                assert pinged(m["allowed_mentions"]) == set(), m
        assert any("**Recovered**" in m["content"] for m in found)

        # The status embed is edited in place and shows llm running with two restarts.
        def embed_shows_restarts() -> dict[str, Any] | None:
            message = status_message()
            if message is None:
                return None
            row = table_row(message["embeds"][0], "llm")
            return message if row[1:4] == ["RUNNING", str(third), "2"] else None

        message = wait_for(embed_shows_restarts, 10, "the embed showing 2 restarts of llm")
        assert message["id"] == embed_id
        assert message["edited_at"] is not None
        # (by id: the embed may be edited again between two reads)
        assert [m["id"] for m in box.bot_messages("admin") if m["embeds"]] == [message["id"]]
        assert not pinged(message["allowed_mentions"])
    finally:
        box.cleanup()


# --- /status and /restart -----------------------------------------------------------------


def test_status_shows_admins_more_and_restart_is_refused_for_a_member_but_works_for_an_admin(
    sandbox: Sandbox,
) -> None:
    pids = [str(s["pid"]) for s in sandbox.status()["services"]]
    summary = answer(sandbox, "bob", "status")
    assert summary["ephemeral"] and not summary["embeds"], summary
    assert "services running" in summary["content"], summary
    assert not any(pid in summary["content"] for pid in pids), summary  # no details for bob

    full = answer(sandbox, "alice", "status")
    assert full["ephemeral"], full
    [embed] = full["embeds"]
    for s in sandbox.status()["services"]:  # every pid, which bob was not shown
        assert table_row(embed, s["name"])[2] == str(s["pid"])

    before = sandbox.service("presence")
    refused = answer(sandbox, "bob", "restart", service="presence")
    assert refused["ephemeral"] and "admin" in refused["content"].lower(), refused
    # The gateway refuses before asking heartbeat: a restart would show by now.
    after = sandbox.service("presence")
    assert (after["pid"], after["state"]) == (before["pid"], "RUNNING")
    assert "presence RUNNING -> STOPPING" not in sandbox.output()

    done = answer(sandbox, "alice", "restart", service="presence")
    assert done["ephemeral"] and done["content"].startswith("Restarting"), done
    sandbox.wait_state("presence", "RUNNING", pid_not=before["pid"])
    assert "presence RUNNING -> STOPPING (restart)" in sandbox.output()


# --- presence -----------------------------------------------------------------------------


def test_presence_rotates_through_its_templates_with_the_member_count(tmp_path: Path) -> None:
    box = start(
        tmp_path, toml(presence='templates = ["{members:,} members", "{members} in the guild"]')
    )
    try:

        def activity() -> str | None:
            activities = box.get("presence")["activities"] or [{}]
            return activities[0].get("state")

        wait_for(lambda: activity() == "3 members", 20, "the first template")
        box.post("members", {"username": "frank"})
        box.post("members", {"username": "grace"})
        # The rotation interval cannot go below 15 s (Discord's presence limit).
        wait_for(lambda: activity() == "5 in the guild", 25, "the next template, with 5")
        assert box.get("presence")["status"] == "online"
    finally:
        box.cleanup()
