"""Alerts: what triggers one, how a burst becomes one message, and what survives a restart."""

from __future__ import annotations

import copy
from typing import Any

from protocol.discord import ConnectionState, GapBackfilled
from protocol.messages import SupervisorStatus
from protocol.store import StorageHealth, Usage
from services.heartbeat.alerts import (
    Alert,
    AlertDetector,
    AlertGroup,
    Thresholds,
    alert_message,
)
from services.heartbeat.embed import Snapshot, status_embed, summary_text


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def svc(name: str, state: str = "RUNNING", restarts: int = 0, **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "pid": 100,
        "state": state,
        "restarts": restarts,
        "uptime_s": 5.0,
        "rss_mb": 40.0,
        "last_exit": kw.pop("last_exit", None),
        "critical": kw.pop("critical", False),
        "channels": kw.pop("channels", []),
    }


def status(*services: dict[str, Any], pid: int = 1) -> SupervisorStatus:
    return SupervisorStatus(
        {"pid": pid, "uptime_s": 60.0, "rss_mb": 30.0, "summary": ""}, list(services)
    )


HEALTHY = status(svc("gateway"), svc("persistence"), svc("stats"))


def test_a_crash_a_fatal_and_a_breaker_in_one_burst_become_one_message_then_one_recovery():
    clock = Clock()
    detector, group = AlertDetector(clock), AlertGroup(clock, group_s=5.0)
    assert detector.check(HEALTHY) == []
    open_breaker = [{"peer": "gateway", "breaker": "open"}]
    group.add(
        detector.check(
            status(
                svc("gateway", "BACKOFF", restarts=1, last_exit="killed by SIGKILL (hung)"),
                svc("persistence", "FATAL", critical=True, last_exit="exit 1"),
                svc("stats", channels=open_breaker),
            )
        )
    )
    clock.t += 2
    still_down = status(
        svc("gateway", "STARTING", restarts=1),
        svc("persistence", "FATAL", critical=True),
        svc("stats", channels=open_breaker),
    )
    group.add(detector.check(still_down))
    assert not group.due()
    clock.t += 3
    assert group.due()
    alerts = group.take()
    content, allowed = alert_message(alerts, "4242")
    assert content.startswith("<@&4242> **Alert**")
    assert "gateway** crashed (killed by SIGKILL (hung)); now BACKOFF" in content
    assert "persistence** (critical) is FATAL" in content
    assert "breaker stats->gateway is open" in content
    assert allowed == {"parse": [], "roles": ["4242"]}
    assert not detector.healthy
    recovered = detector.check(HEALTHY)
    content, allowed = alert_message(recovered, "4242")
    assert content.startswith("**Recovered**") and allowed["roles"] == []
    assert sorted(a.key for a in recovered) == [
        "breaker:stats->gateway",
        "up:gateway",
        "up:persistence",
    ]
    assert detector.healthy


def test_a_quick_crash_is_one_line_and_repeated_crashes_are_flapping():
    clock = Clock()
    detector = AlertDetector(clock, Thresholds(flap_restarts=3, flap_window_s=600))
    detector.check(HEALTHY)
    texts = []
    for n in (1, 2, 3, 4):
        clock.t += 60
        texts += [a.text for a in detector.check(status(svc("gateway", restarts=n)))]
    assert texts.count("**gateway** crashed (unknown) and is running again") == 4
    assert [t for t in texts if "flapping" in t] == [
        "**gateway** is flapping: 3 restarts in 10 min"
    ]
    clock.t += 700
    assert detector.check(status(svc("gateway", restarts=4))) == []
    assert detector.healthy


def test_memory_and_disk_alert_at_the_threshold_and_recover_below_it_with_margin():
    clock = Clock()
    detector = AlertDetector(clock, Thresholds(memory_percent=90, disk_percent=80))
    assert [a.key for a in detector.check(HEALTHY, 91, 81)] == ["memory", "disk"]
    assert detector.check(HEALTHY, 88, 79) == []  # within the margin: no flapping alerts
    recovered = detector.check(HEALTHY, 80, 70)
    assert [(a.key, a.recovery) for a in recovered] == [("memory", True), ("disk", True)]


def test_a_restarted_heartbeat_neither_repeats_alerts_nor_misses_a_crash_while_it_was_down():
    clock = Clock()
    first = AlertDetector(clock)
    first.check(HEALTHY)
    first.check(status(svc("gateway", "FATAL"), *HEALTHY.services[1:]))
    saved = copy.deepcopy(first.to_dict())
    second = AlertDetector(clock)
    second.restore(saved)
    # Still FATAL (no new alert), and stats crashed while the heartbeat was down.
    alerts = second.check(
        status(svc("gateway", "FATAL"), svc("persistence"), svc("stats", restarts=1))
    )
    assert [a.key for a in alerts] == ["crash:stats:1"]


def test_a_new_supervisor_starts_counting_from_zero_without_false_alerts():
    clock = Clock()
    detector = AlertDetector(clock)
    detector.check(status(svc("gateway", restarts=3)))
    alerts = detector.check(status(svc("gateway", restarts=0), pid=2))
    assert [a.text for a in alerts] == ["The whole bot restarted."]


def test_storage_refusing_writes_is_one_alert_per_incident_then_one_recovery():
    detector = AlertDetector(Clock())
    failing = StorageHealth(False, "OperationalError: database or disk is full", 1_714_550_400.0)
    (alert,) = detector.storage(failing)
    assert "database or disk is full" in alert.text and "<t:1714550400:T>" in alert.text
    assert not alert.recovery and not detector.healthy
    assert detector.storage(failing) == []  # said again (persistence restarted): no repeat
    restarted = AlertDetector(Clock())  # the heartbeat restarted in the middle
    restarted.restore(copy.deepcopy(detector.to_dict()))
    assert restarted.storage(failing) == []
    (recovered,) = restarted.storage(StorageHealth(True, "", 1_714_550_500.0))
    assert recovered.recovery and recovered.text == "**storage** writes again"
    assert restarted.storage(StorageHealth(True, "", 1_714_550_500.0)) == []
    assert restarted.healthy


def test_alerts_that_could_not_be_sent_go_first_in_the_next_message():
    clock = Clock()
    group = AlertGroup(clock, group_s=5)
    group.add([Alert("a", "first")])
    clock.t += 5
    failed = group.take()
    group.add([Alert("b", "second")])
    group.put_back(failed)
    assert [a.text for a in group.pending] == ["first", "second"]


def test_without_a_role_nobody_is_pinged_and_long_bursts_are_capped():
    alerts = [Alert(f"k{i}", f"problem {i}") for i in range(30)]
    content, allowed = alert_message(alerts, None)
    assert "<@&" not in content and allowed == {"parse": [], "roles": []}
    assert content.endswith("... and 10 more")


def test_the_status_embed_shows_every_service_and_anyone_gets_only_a_summary():
    snap = Snapshot(
        at=1_714_550_400.0,
        status=status(
            svc("gateway", channels=[{"peer": "persistence", "breaker": "open"}]),
            svc("llm", "FATAL", last_exit="exit 1"),
        ),
        cpu={100: 2.5},
        connection=ConnectionState("connected", 41.7, 0.0),
        db_bytes=12_500_000,
        llm=Usage(10, 5000, 900, {"ok": 9, "timeout": 1}, 850.0, {"backup": 2, "primary": 7}),
    )
    embed = status_embed(snap)
    assert embed["title"] == "Down"
    assert "gateway" in embed["description"] and "exit 1" in embed["description"]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Discord"] == "connected · 42 ms"
    assert fields["Database"] == "12.5MB"
    assert "p50 850 ms · errors 10%" in fields["LLM"]
    assert fields["LLM"].endswith("\nby primary 7, backup 2")  # which provider answered
    assert "gateway→persistence: open" in fields["Breakers"]
    summary = summary_text(snap)
    assert summary.startswith("Having trouble: 1/2 services running")
    assert "exit 1" not in summary and "100" not in summary


def test_a_backfilled_gap_is_one_line_once_even_when_redelivered_and_shows_in_the_embed():
    clock = Clock()
    group = AlertGroup(clock, group_s=1.0)
    done = GapBackfilled("s-1", 42.4, 300, joined=1, banned=1, left=1, at=clock.t)
    line = Alert(f"gap:{done.gap_id}", done.line(), recovery=True)
    group.add([line])
    group.add([line])  # the event delivered again after a restart
    group.put_back([line])  # and the saved pending alerts restored
    content, _ = alert_message(group.take(), None)
    assert content == (
        "**Recovered**\n✅ gap of 42 s: 300 messages recovered, 1 join, 1 leave, 1 ban"
    )
    running = GapBackfilled("s-2", 7.04, 0, done=False, at=clock.t)
    assert running.line() == "gap of 7.0 s: backfilling from Discord's history"
    snap = Snapshot(
        at=clock.t + 120,
        status=HEALTHY,
        connection=ConnectionState("connected", 40.0, clock.t + 120),
        gap=done,
    )
    discord = next(f for f in status_embed(snap)["fields"] if f["name"] == "Discord")
    assert discord["value"].splitlines()[1].startswith("gap of 42 s: 300 messages recovered")
    assert "ago" in discord["value"]
    assert "300 messages recovered" in summary_text(snap)
