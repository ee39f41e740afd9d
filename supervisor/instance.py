"""One supervisor per data dir: an exclusive lock on DATA_DIR/supervisor.lock.

Two supervisors on one data dir would run every service twice over the same database,
outboxes and sockets. The lock is `flock`, so the kernel releases it when the holder
dies, even by SIGKILL: there is never a stale lock to clean up. Its file holds the
holder's pid, for the one line a second `run.py` prints before it exits 2. The
descriptor is close-on-exec, so no service inherits it: a service that outlived a
killed supervisor must not keep the next one from starting.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_NAME = "supervisor.lock"
PID_WAIT_S = 1.0  # the holder writes its pid just after it takes the lock


class DataDirInUse(Exception):
    def __init__(self, data_dir: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "a process that has not said its pid yet"
        super().__init__(
            f"data dir {data_dir} is in use by another run.py ({holder}): stop it, or start "
            "this one with another --data-dir"
        )
        self.pid = pid


class InstanceLock:
    """Held for the life of the process; `release` is for tests and orderly ends."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None


def hold(data_dir: Path) -> InstanceLock:
    """Take the data dir (creating it owner-only), or raise DataDirInUse naming the holder."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.set_inheritable(fd, False)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            pid = _holder_pid(fd)
        finally:
            os.close(fd)
        raise DataDirInUse(data_dir, pid) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return InstanceLock(path, fd)


def _holder_pid(fd: int) -> int | None:
    deadline = time.monotonic() + PID_WAIT_S
    while True:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
