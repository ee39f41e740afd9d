"""Runs the real supervisor (`run.py`) with real service processes for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import psutil

from protocol.bus import request_once
from protocol.messages import Request
from supervisor import control
from supervisor.config import load

ROOT = Path(__file__).resolve().parents[2]


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 15.0,
    what: str = "",
    context: Callable[[], str] | None = None,
) -> Any:
    """Poll until `predicate` is truthy; on timeout, fail saying what (and `context()`)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # status may fail while things restart
            last = exc
        else:
            if last:
                return last
        time.sleep(0.05)
    extra = f"\n{context()}" if context else ""
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or predicate}: {last!r}{extra}"
    )


class Running:
    """`python run.py --config services.toml` in a temp dir, with helpers to poke it."""

    def __init__(
        self,
        tmp_path: Path,
        toml: str,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        umask: int = -1,
    ) -> None:
        self.dir = tmp_path
        self.config_path = tmp_path / "services.toml"
        self.config_path.write_text(toml)
        self.data = tmp_path / "data"
        self.runtime = self.data / "run"
        self.log = tmp_path / "supervisor.log"
        self.config = load(self.config_path, self.data)
        child_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        child_env.pop("NOTIFY_SOCKET", None) if "NOTIFY_SOCKET" not in (env or {}) else None
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "run.py"),
                    "--config",
                    str(self.config_path),
                    "--data-dir",
                    str(self.data),
                    "--env-file",
                    str(tmp_path / ".env"),
                    *args,
                ],
                cwd=tmp_path,
                env=child_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                umask=umask,
            )

    def status(self) -> dict[str, Any]:
        return control.status(self.runtime).to_body()

    def service(self, name: str) -> dict[str, Any]:
        return next(s for s in self.status()["services"] if s["name"] == name)

    def wait_state(
        self, name: str, state: str, timeout: float = 15.0, pid_not: int | None = None
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            s = self.service(name)
            return s if s["state"] == state and (pid_not is None or s["pid"] != pid_not) else None

        return wait_for(check, timeout, f"{name} {state}")

    def wait_all_running(self, timeout: float = 20.0) -> dict[str, Any]:
        return wait_for(
            lambda: (
                (st := self.status())
                and all(s["state"] == "RUNNING" for s in st["services"])
                and st
            ),
            timeout,
            "all services RUNNING",
        )

    def call(self, service: str, msg: Request[Any], timeout: float = 5.0) -> dict[str, Any]:
        """A request from outside, over the real bus, as another service would send it."""

        reply = anyio.run(
            request_once, f"tester-{os.getpid()}", self.config.topology(), service, msg, timeout
        )
        return reply.to_body()

    def children(self) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def output(self) -> str:
        return self.log.read_text()

    def cleanup(self) -> None:
        pids = self.children()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
