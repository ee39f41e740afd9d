"""systemd's notify protocol, spoken to a real AF_UNIX datagram socket as systemd would listen."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.support.harness import Running

TOML = """
[supervisor]
heartbeat_interval_s = 0.2

[services.echo]
module = "tests.support.services.echo"

[services.producer]
module = "tests.support.services.producer"
after = ["echo"]
"""


def test_ready_status_watchdog_and_stopping_are_sent(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(0.2)
    bot = Running(tmp_path, TOML, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})
    messages: list[str] = []
    try:
        deadline = time.monotonic() + 15

        def watchdogs_after_ready() -> int:
            ready_at = next((i for i, m in enumerate(messages) if "READY=1" in m), None)
            return 0 if ready_at is None else sum("WATCHDOG=1" in m for m in messages[ready_at:])

        while time.monotonic() < deadline and watchdogs_after_ready() < 3:
            try:
                messages.append(listener.recv(4096).decode())
            except TimeoutError:
                pass
        ready = [m for m in messages if "READY=1" in m]
        assert len(ready) == 1
        assert "STATUS=2 running" in ready[0]
        before_ready = messages[: messages.index(ready[0])]
        assert any("STATUS=" in m and "starting" in m for m in before_ready)
        assert bot.stop() == 0
        listener.settimeout(1)
        tail = []
        try:
            while True:
                tail.append(listener.recv(4096).decode())
        except TimeoutError:
            pass
        assert any(m.startswith("STOPPING=1") for m in tail)
    finally:
        bot.cleanup()
        listener.close()
