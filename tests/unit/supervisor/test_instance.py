"""The data dir lock: taken once, refused to a second taker naming the holder's pid,
free again when released, and never inherited by a child process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from supervisor.instance import LOCK_NAME, DataDirInUse, hold


def test_a_second_taker_is_refused_naming_the_holders_pid(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lock = hold(data)
    try:
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / LOCK_NAME).stat().st_mode) == 0o600
        with pytest.raises(DataDirInUse) as refused:
            hold(data)
        assert refused.value.pid == os.getpid()
        assert f"pid {os.getpid()}" in str(refused.value) and str(data) in str(refused.value)
    finally:
        lock.release()
    hold(data).release()  # free again


def test_a_child_process_does_not_inherit_the_lock(tmp_path: Path) -> None:
    code = (
        "import json, os\n"
        "links = []\n"
        "for fd in os.listdir('/proc/self/fd'):\n"
        "    try: links.append(os.readlink('/proc/self/fd/' + fd))\n"
        "    except OSError: pass\n"
        "print(json.dumps(links))\n"
    )
    lock = hold(tmp_path)
    try:
        assert str(tmp_path / LOCK_NAME) in [f.path for f in psutil.Process().open_files()]
        # close_fds=False: only close-on-exec keeps it from the child.
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            close_fds=False,
        )
        assert str(tmp_path / LOCK_NAME) not in json.loads(done.stdout)
    finally:
        lock.release()
