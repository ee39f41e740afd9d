"""Storage faults end to end, in the sandbox: a full disk (SQLite over its page quota) and
a PostgreSQL restart in the middle of a burst of messages. While storage refuses writes,
persistence refuses the events, which stay in the gateway's outbox; one alert reaches
#admin; when storage is back every message is stored once, each journaled once, and
#admin hears that it recovered."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from services.persistence.journal import read_journal
from supervisor import control
from tests.support.harness import wait_for
from tests.support.postgres import PostgresCluster
from tests.support.sandbox import FAST_CORE, Sandbox

ALERT = "**storage** refuses writes"
RECOVERED = "**storage** writes again"
BURST = 600


def toml(persistence_settings: str) -> str:
    return (
        FAST_CORE
        + f"""
[services.persistence.settings]
storage_alert_after_s = 6  # above the gateway's longest retransmit interval (5 s)
{persistence_settings}

[services.heartbeat]
module = "services.heartbeat"
after = ["gateway"]
subscribes = ["discord.connection", "discord.guild.ready", "supervisor.status", "store.health"]
[services.heartbeat.settings]
admin_channel = "admin"
interval_s = 30
alert_group_s = 0.5
state_wait_s = 2
"""
    )


def admin_lines(box: Sandbox, text: str) -> list[str]:
    """The lines of the bot's #admin messages that contain `text`."""
    return [
        line
        for m in box.bot_messages("admin")
        for line in (m["content"] or "").splitlines()
        if text in line
    ]


def gateway_unacked(box: Sandbox) -> int:
    gateway = box.service("gateway")
    return sum(c["unacked"] for c in gateway.get("channels") or [] if c["peer"] == "persistence")


def post_burst(box: Sandbox, posted: list[str], count: int = BURST) -> None:
    for i in range(count):
        posted.append(box.say(f"burst message {i}: " + "lorem ipsum dolor sit amet " * 4))


def journaled_ids(box: Sandbox) -> Counter[str]:
    return Counter(
        r.body["id"]
        for r in read_journal(box.data / "journal")
        if r.type == "discord.message.created"
    )


def check_nothing_missing_or_doubled(
    box: Sandbox, posted: list[str], stored: list[tuple[Any, ...]]
) -> dict[str, int]:
    ids = [str(row[0]) for row in stored]
    journal = journaled_ids(box)
    figures = {
        "posted": len(posted),
        "missing": len(set(posted) - set(ids)),
        "doubled": len(ids) - len(set(ids)),
        "journaled_twice": sum(1 for i in posted if journal[i] > 1),
        "not_journaled": sum(1 for i in posted if journal[i] == 0),
    }
    print(json.dumps(figures))
    assert figures == {
        "posted": BURST,
        "missing": 0,
        "doubled": 0,
        "journaled_twice": 0,
        "not_journaled": 0,
    }
    return figures


def test_a_full_disk_keeps_events_in_the_outbox_alerts_once_and_loses_nothing(
    tmp_path: Path,
) -> None:
    full = toml("sqlite_max_pages = 40")
    box = Sandbox(tmp_path, full)
    try:
        box.wait_all_running()
        box.wait_connected()
        posted: list[str] = []
        post_burst(box, posted)
        wait_for(lambda: admin_lines(box, ALERT), 40, "the storage alert in #admin")
        assert "database or disk is full" in admin_lines(box, ALERT)[0]
        # Refused, not lost: the gateway still holds what persistence could not store.
        waiting = wait_for(lambda: gateway_unacked(box), 5, "events in the gateway's outbox")
        stored = box.db("SELECT COUNT(*) FROM messages")[0][0]
        print(f"disk full: {stored} stored, {waiting} waiting in the gateway's outbox")
        assert stored < BURST

        # Room again (a reload lifts the quota), and everything arrives.
        box.config_path.write_text(toml(""))
        assert control.reload(box.runtime).ok
        wait_for(
            lambda: len(box.db("SELECT id FROM messages")) >= BURST and not gateway_unacked(box),
            30,
            "every message stored",
        )
        wait_for(lambda: admin_lines(box, RECOVERED), 40, "the recovery in #admin")
        check_nothing_missing_or_doubled(box, posted, box.db("SELECT id FROM messages"))
        assert len(admin_lines(box, ALERT)) == 1 and len(admin_lines(box, RECOVERED)) == 1
    finally:
        box.cleanup()


@pytest.fixture
def postgres() -> Any:
    cluster = PostgresCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.remove()


def pg_rows(url: str) -> list[tuple[Any, ...]]:
    import psycopg2

    try:
        with psycopg2.connect(url) as db, db.cursor() as cur:
            cur.execute("SELECT id FROM messages")
            return cur.fetchall()
    except psycopg2.Error:
        return []


def test_a_postgresql_restart_mid_burst_alerts_once_and_loses_nothing(
    tmp_path: Path, postgres: PostgresCluster
) -> None:
    box = Sandbox(tmp_path, toml(""), env={"DATABASE_URL": postgres.url})
    try:
        box.wait_all_running()
        box.wait_connected()
        posted: list[str] = []
        burst = threading.Thread(target=post_burst, args=(box, posted))
        burst.start()
        try:
            wait_for(lambda: len(posted) >= BURST // 4, 30, "the burst under way")
            postgres.stop("fast")  # clients are cut off; the server goes away
            print(f"PostgreSQL stopped after {len(posted)} messages posted")
        finally:
            burst.join(60)
        wait_for(lambda: admin_lines(box, ALERT), 40, "the storage alert in #admin")
        waiting = wait_for(lambda: gateway_unacked(box), 5, "events in the gateway's outbox")
        print(f"PostgreSQL down: {waiting} events waiting in the gateway's outbox")

        postgres.start()
        wait_for(
            lambda: len(pg_rows(postgres.url)) >= BURST and not gateway_unacked(box),
            30,
            "every message stored",
        )
        wait_for(lambda: admin_lines(box, RECOVERED), 40, "the recovery in #admin")
        check_nothing_missing_or_doubled(box, posted, pg_rows(postgres.url))
        assert len(admin_lines(box, ALERT)) == 1 and len(admin_lines(box, RECOVERED)) == 1
        assert box.service("persistence")["restarts"] == 0  # it waited; it did not crash
    finally:
        box.cleanup()
