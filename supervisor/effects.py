"""Every side effect the supervisor has, behind one small interface.

As in supervisord's `options`: spawning, signalling, reading memory and the
clock go through an `Effects` object, so tests can drive the supervisor with
fakes and no processes, and the real implementation stays this short.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Protocol

import anyio
import psutil
from anyio.abc import Process


class Child(Protocol):
    pid: int

    async def wait(self) -> int: ...

    def signal(self, sig: int) -> None: ...


class Effects(Protocol):
    async def spawn(self, argv: list[str], env: dict[str, str], cwd: Path) -> Child: ...

    def rss_mb(self, pid: int) -> float | None: ...

    def forget(self, pid: int) -> None: ...

    def now(self) -> float: ...

    def random(self) -> float: ...


class OSChild:
    def __init__(self, process: Process) -> None:
        self._process = process
        self.pid = process.pid

    async def wait(self) -> int:
        return await self._process.wait()

    def signal(self, sig: int) -> None:
        try:
            self._process.send_signal(signal.Signals(sig))
        except ProcessLookupError:
            pass  # already gone: its exit is being reported


class OSEffects:
    def __init__(self) -> None:
        self._ps: dict[int, psutil.Process] = {}

    async def spawn(self, argv: list[str], env: dict[str, str], cwd: Path) -> Child:
        # A session of its own: Ctrl-C in a terminal reaches only the supervisor,
        # which then stops the services in order instead of all at once.
        process = await anyio.open_process(
            argv, env=env, cwd=cwd, stdin=None, stdout=None, stderr=None, start_new_session=True
        )
        return OSChild(process)

    def rss_mb(self, pid: int) -> float | None:
        proc = self._ps.get(pid)
        try:
            if proc is None:
                proc = self._ps[pid] = psutil.Process(pid)
            return proc.memory_info().rss / 1e6
        except psutil.Error:
            self._ps.pop(pid, None)
            return None

    def forget(self, pid: int) -> None:
        """The process is gone: drop what was kept to read its memory."""
        self._ps.pop(pid, None)

    def now(self) -> float:
        return time.monotonic()

    def random(self) -> float:
        return random.random()


def child_argv(name: str) -> list[str]:
    return [sys.executable, "-m", "supervisor.child", name]


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    # Services import the project's packages wherever the supervisor was started from.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env
