"""/healthz and /metrics of a real supervisor with real service processes."""

from __future__ import annotations

import os
import signal
import threading
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.harness import Running

TOML = """
[supervisor]
heartbeat_interval_s = 0.2
metrics_address = "127.0.0.1:0"

[defaults]
max_restarts = 0
within_s = 30
stop_grace_s = 1
shutdown_timeout_s = 3

[services.echo]
module = "tests.support.services.echo"
subscribes = ["test.item", "test.note"]
critical = true

[services.producer]
module = "tests.support.services.producer"
after = ["echo"]
"""


def fetch(url: str) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None  # not listening (any more)


def test_healthz_is_503_naming_the_fatal_critical_service_until_the_supervisor_exits(
    tmp_path: Path,
) -> None:
    bot = Running(tmp_path, TOML)
    try:
        status = bot.wait_all_running()
        healthz = status["metrics_url"].removesuffix("/metrics") + "/healthz"
        assert fetch(healthz) == (200, "ok: 2 services running\n")
        text = fetch(status["metrics_url"])
        assert text is not None and 'bot_service_up{service="echo"} 1.0' in text[1]
        answers: list[tuple[int, str]] = []

        def poll() -> None:  # until the supervisor, stopping everything, stops serving
            while bot.proc.poll() is None:
                answer = fetch(healthz)
                if answer is None:
                    if answers:
                        return
                    continue
                answers.append(answer)

        poller = threading.Thread(target=poll)
        poller.start()
        os.kill(status["services"][0]["pid"], signal.SIGKILL)
        assert bot.proc.wait(15) == 1
        poller.join(5)
        fatal = [body for code, body in answers if code == 503 and "echo is FATAL" in body]
        assert fatal, f"no 503 naming echo FATAL among {answers[-3:]}"
        assert fatal[0].startswith("unavailable: echo is FATAL (killed by SIGKILL")
    finally:
        bot.cleanup()
