"""End to end: the sandbox serves its web page, Prometheus metrics and /healthz, and the
metrics follow what happens to the services (a SIGKILL, an answer, a stored message)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.harness import ROOT, wait_for
from tests.support.sandbox import FAST_CORE, LLM_TABLE, Sandbox

SUBSCRIBES = 'subscribes = ["llm.exchange", "discord.connection"]\n'
TOML = (
    FAST_CORE.replace("[supervisor]\n", "[supervisor]\n" + SUBSCRIBES, 1).replace(
        'module = "services.persistence"\n', 'module = "services.persistence"\ncritical = true\n'
    )
    + LLM_TABLE
)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One sandbox for this module's tests: each looks at what changes, not at totals."""
    sandbox = Sandbox(tmp_path_factory.mktemp("metrics"), TOML)
    try:
        sandbox.wait_all_running()
        sandbox.wait_connected()
        yield sandbox
    finally:
        sandbox.cleanup()


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, text = fetch(url)
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def svc(name: str) -> frozenset[tuple[str, str]]:
    return frozenset({("service", name)})


def metrics_url(box: Sandbox) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "status", "--json", "--data-dir", str(box.data)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    url = json.loads(out.stdout)["metrics_url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    return url


def test_the_sandbox_serves_its_page_at_the_url_it_prints_first(box: Sandbox) -> None:
    first_line = wait_for(lambda: box.output().split("\n", 1)[0] if "\n" in box.output() else "")
    assert (
        first_line == f"sandbox: open http://127.0.0.1:{box.port}/ to watch the bot and talk to it"
    )
    status, html = fetch(f"http://127.0.0.1:{box.port}/")
    assert status == 200 and '<script src="/static/app.js">' in html
    status, script = fetch(f"http://127.0.0.1:{box.port}/static/app.js")
    assert status == 200 and 'new EventSource("/_sandbox/events")' in script
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from outside


def test_metrics_show_llm_up_and_its_restart_after_a_sigkill(box: Sandbox) -> None:
    url = metrics_url(box)
    assert 'bot_service_up{service="llm"} 1' in fetch(url)[1]
    before = scrape(url)[("bot_service_restarts_total", svc("llm"))]
    old = box.service("llm")
    os.kill(old["pid"], signal.SIGKILL)
    box.wait_state("llm", "RUNNING", pid_not=old["pid"])
    after = scrape(url)
    assert after[("bot_service_restarts_total", svc("llm"))] == before + 1
    assert after[("bot_service_up", svc("llm"))] == 1
    healthz = url.removesuffix("/metrics") + "/healthz"
    assert wait_for(lambda: fetch(healthz) == (200, "ok: 3 services running\n"), 10)


def test_metrics_count_answers_their_latency_tokens_and_stored_messages(box: Sandbox) -> None:
    url = metrics_url(box)
    ok = frozenset({("outcome", "ok")})
    before = scrape(url)
    box.say(f"<@{box.state['bot_user_id']}> how fast are you?")
    wait_for(lambda: any("how fast" in m["content"] for m in box.bot_messages()), 20, "answer")

    def answered() -> dict | None:
        m = scrape(url)
        return (
            m
            if m.get(("bot_llm_answers_total", ok), 0)
            > before.get(("bot_llm_answers_total", ok), 0)
            else None
        )

    m = wait_for(answered, 10, "the answer counted")
    assert m[("bot_llm_answer_latency_seconds_count", frozenset())] >= 1
    prompt = frozenset({("outcome", "ok"), ("kind", "prompt")})
    assert m[("bot_llm_tokens_total", prompt)] > 0
    stored = ("bot_messages_stored_total", svc("persistence"))
    wait_for(
        lambda: scrape(url).get(stored, 0) >= before.get(stored, 0) + 2,
        10,
        "alice's message and the answer counted as stored",
    )
    m = wait_for(
        lambda: (m := scrape(url)).get(("bot_discord_connected", frozenset())) == 1 and m,
        20,
        "the gateway's connection state",
    )
    assert m[("bot_discord_latency_seconds", frozenset())] >= 0


def test_healthz_says_503_and_why_while_the_critical_service_is_down(box: Sandbox) -> None:
    healthz = metrics_url(box).removesuffix("/metrics") + "/healthz"
    assert fetch(healthz)[0] == 200
    answers: list[tuple[int, str]] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            answers.append(fetch(healthz))
            time.sleep(0.005)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        old = box.service("persistence")
        os.kill(old["pid"], signal.SIGKILL)
        box.wait_state("persistence", "RUNNING", pid_not=old["pid"])
    finally:
        done.set()
        poller.join()
    down = [body for status, body in answers if status == 503]
    assert down, f"no 503 among {len(answers)} answers while persistence restarted"
    assert all(body.startswith("unavailable: persistence is ") for body in down)
    wait_for(lambda: fetch(healthz)[0] == 200, 10, "healthz 200 again")


def test_chaos_from_the_page_kills_running_services_in_turn_and_all_come_back(
    box: Sandbox,
) -> None:
    box.wait_all_running()
    before = {s["name"]: s["restarts"] for s in box.status()["services"]}
    assert box.post("chaos", {"every_s": 1, "for_s": 2.5})["running"] is True
    chaos = wait_for(
        lambda: (c := box.get("health")["chaos"]) and not c["running"] and c, 10, "chaos to end"
    )
    killed = [k["service"] for k in chaos["kills"]]
    assert sorted(killed) == ["gateway", "llm", "persistence"]  # each once, not one thrice
    status = box.wait_all_running()
    for s in status["services"]:
        assert s["restarts"] == before[s["name"]] + 1 and s["last_exit"] == "killed by SIGKILL", s
    assert box.get("health")["healthy"] is True
    # One service by hand, and the answers for a name that is not a service.
    pid = box.post("services/llm/kill", {})["pid"]
    box.wait_state("llm", "RUNNING", pid_not=pid)
    for path in ("services/nope/kill", "services/nope/restart"):
        with pytest.raises(AssertionError, match=r": 404 "):
            box.post(path, {})
