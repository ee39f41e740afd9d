"""Prometheus metrics and /healthz, served by a real Supervisor object over real HTTP,
its services' state machines driven by hand (no processes)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from protocol.discord import ConnectionState
from protocol.store import LlmExchange
from supervisor.config import ConfigError, parse
from supervisor.process import ServiceProcess
from supervisor.supervisor import Supervisor

PID = os.getpid()  # a process that exists, so RSS and CPU are read for real


def config(tmp_path: Path, **supervisor: Any) -> Any:
    return parse(
        {
            "supervisor": {"metrics_address": "127.0.0.1:0", **supervisor},
            "defaults": {"max_restarts": 1, "within_s": 60},
            "services": {
                "db": {"module": "m.db", "critical": True},
                "web": {"module": "m.web", "after": ["db"]},
            },
        },
        tmp_path / "services.toml",
        tmp_path / "data",
    )


def running(proc: ServiceProcess, now: float = 1.0) -> None:
    proc.spawned(PID, now)
    proc.ready(now + 0.1)


def crash(proc: ServiceProcess, now: float = 2.0) -> None:
    proc.exited(-9, now)


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_healthz_is_200_while_every_critical_service_runs_and_503_with_the_reason_when_it_is_fatal(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        sup = Supervisor(config(tmp_path))
        url = await sup.serve_metrics()
        assert url is not None and url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        healthz = url.removesuffix("/metrics") + "/healthz"
        try:
            assert (await get(healthz))[0] == 503  # nothing runs yet
            db, web = sup.procs["db"], sup.procs["web"]
            running(db)
            running(web)
            assert await get(healthz) == (200, "ok: 2 services running\n")
            crash(web)  # not critical: still healthy, and says what is down
            status, body = await get(healthz)
            assert status == 200 and body.startswith("ok, degraded: web is BACKOFF")
            crash(db)
            running(db, 2.5)
            crash(db, 3.0)  # a second crash within the window: FATAL
            assert db.state.value == "FATAL"
            status, body = await get(healthz)
            assert status == 503
            assert body.startswith("unavailable: db is FATAL (killed by SIGKILL; more than 1")
        finally:
            await sup.metrics_server.stop()  # type: ignore[union-attr]

    anyio.run(main)


async def populated_scrape(tmp_path: Path) -> str:
    """A scrape of a supervisor whose services ran, crashed, reported and were subscribed."""
    sup = Supervisor(config(tmp_path))
    url = await sup.serve_metrics()
    assert url is not None
    try:
        db, web = sup.procs["db"], sup.procs["web"]
        running(db)
        running(web)
        crash(web)
        running(web, 3.0)
        db.channels = [
            {"peer": "web", "breaker": "open", "sent": 5, "failed": 2, "retried": 1,
             "dropped": 0, "acked": 3, "unacked": 2, "connected": True},
        ]  # fmt: skip
        db.figures = {"messages_stored_total": 7, "Not A Name": 1, "queue_depth": 3}
        sup.metrics.observe(LlmExchange("1", None, None, "u", "m", 10, 20, 1500.0, "ok", 0))
        sup.metrics.observe(LlmExchange("2", None, None, "u", "m", 5, 0, 30.0, "timeout", 0))
        sup.metrics.observe(ConnectionState("connected", 42.0, 0.0))
        status, text = await get(url)
    finally:
        await sup.metrics_server.stop()  # type: ignore[union-attr]
    assert status == 200
    return text


def test_metrics_show_state_restarts_memory_channels_figures_and_subscribed_events(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        text = await populated_scrape(tmp_path)
        m = samples(text)
        assert m[("bot_service_up", (("service", "db"),))] == 1
        assert m[("bot_service_up", (("service", "web"),))] == 1
        assert m[("bot_service_restarts_total", (("service", "web"),))] == 1
        assert m[("bot_service_restarts_total", (("service", "db"),))] == 0
        assert m[("bot_service_state", (("service", "web"), ("state", "RUNNING")))] == 1
        assert m[("bot_service_state", (("service", "web"), ("state", "FATAL")))] == 0
        assert m[("bot_service_critical", (("service", "db"),))] == 1
        assert m[("bot_service_resident_memory_bytes", (("service", "db"),))] > 1e6
        assert m[("bot_service_cpu_seconds_total", (("service", "db"),))] > 0
        assert m[("bot_breaker_state", (("peer", "web"), ("service", "db")))] == 2
        assert m[("bot_bus_failed_total", (("peer", "web"), ("service", "db")))] == 2
        assert m[("bot_bus_unacked", (("peer", "web"), ("service", "db")))] == 2
        assert m[("bot_messages_stored_total", (("service", "db"),))] == 7
        assert m[("bot_queue_depth", (("service", "db"),))] == 3
        assert not any("Not A Name" in name or "not_a_name" in name for name, _ in m)
        assert m[("bot_llm_answers_total", (("outcome", "ok"),))] == 1
        assert m[("bot_llm_answers_total", (("outcome", "timeout"),))] == 1
        assert m[("bot_llm_tokens_total", (("kind", "completion"), ("outcome", "ok")))] == 20
        assert m[("bot_llm_answer_latency_seconds_count", ())] == 2
        assert m[("bot_llm_answer_latency_seconds_bucket", (("le", "2.0"),))] == 2
        assert m[("bot_llm_answer_latency_seconds_bucket", (("le", "1.0"),))] == 1
        assert m[("bot_discord_connected", ())] == 1
        assert m[("bot_discord_latency_seconds", ())] == pytest.approx(0.042)
        assert m[("bot_healthy", ())] == 1
        assert ("process_resident_memory_bytes", ()) in m  # the supervisor itself

    anyio.run(main)


def test_a_figure_a_service_stops_reporting_goes_with_its_process(tmp_path: Path) -> None:
    async def main() -> None:
        sup = Supervisor(config(tmp_path))
        web = sup.procs["web"]
        running(web)
        web.figures = {"messages_stored_total": 7}
        crash(web)
        assert web.figures == {}
        assert "bot_messages_stored" not in sup.metrics.text().decode()

    anyio.run(main)


def test_the_status_carries_the_metrics_url_and_each_state_change_reaches_watchers(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        sup = Supervisor(config(tmp_path))
        seen: list[dict[str, Any]] = []
        sup.watchers.append(seen.append)
        assert sup.status().metrics_url is None  # not serving yet
        url = await sup.serve_metrics()
        try:
            assert sup.status().metrics_url == url
            running(sup.procs["db"])
            crash(sup.procs["db"])
        finally:
            await sup.metrics_server.stop()  # type: ignore[union-attr]
        moves = [(c["service"], c["from"], c["to"]) for c in seen]
        assert moves == [
            ("db", "STOPPED", "STARTING"),
            ("db", "STARTING", "RUNNING"),
            ("db", "RUNNING", "BACKOFF"),
        ]
        assert [c["seq"] for c in sup.history] == [1, 2, 3]
        assert "killed by SIGKILL" in seen[-1]["why"]

    anyio.run(main)


def test_no_metrics_are_served_unless_an_address_is_configured(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = parse(
            {"services": {"db": {"module": "m"}}}, tmp_path / "services.toml", tmp_path / "data"
        )
        sup = Supervisor(cfg)
        assert await sup.serve_metrics() is None
        assert sup.status().metrics_url is None

    anyio.run(main)


def test_an_address_in_use_is_one_error_line_and_the_bot_runs_on(tmp_path: Path) -> None:
    async def main() -> None:
        first = Supervisor(config(tmp_path))
        url = await first.serve_metrics()
        assert url is not None
        port = url.split(":")[2].split("/")[0]
        try:
            second = Supervisor(config(tmp_path, metrics_address=f"127.0.0.1:{port}"))
            assert await second.serve_metrics() is None
        finally:
            await first.metrics_server.stop()  # type: ignore[union-attr]

    anyio.run(main)


@pytest.mark.parametrize("address", ["9464", "localhost", "127.0.0.1:99999", ":9464", 9464])
def test_a_bad_metrics_address_is_a_config_problem_naming_the_fix(
    tmp_path: Path, address: Any
) -> None:
    with pytest.raises(ConfigError) as err:
        config(tmp_path, metrics_address=address)
    assert "supervisor.metrics_address: must be HOST:PORT" in str(err.value)


def test_supervisor_subscriptions_join_the_topology(tmp_path: Path) -> None:
    cfg = config(tmp_path, subscribes=["llm.exchange"], metrics_address="[::1]:9464")
    assert cfg.supervisor.metrics_address == "[::1]:9464"
    assert cfg.topology().subscribers == {"llm.exchange": ["supervisor"]}


def test_the_grafana_dashboard_queries_only_metrics_the_supervisor_exports(
    tmp_path: Path,
) -> None:
    dashboard = (
        Path(__file__).resolve().parents[3] / "deploy" / "grafana-dashboard.json"
    ).read_text()
    queried = set(re.findall(r"\b(?:bot|process)_[a-z_]+", dashboard))
    exported = {name for name, _ in samples(anyio.run(populated_scrape, tmp_path))}
    assert queried and queried <= exported, queried - exported
