"""One supervisor per data dir: a second `run.py` on a data dir that a running one holds
exits 2 at once naming the holder, which carries on untouched; a SIGKILLed supervisor
leaves no stale lock, and no service keeps the lock's descriptor."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from supervisor.instance import LOCK_NAME
from tests.support.harness import alive, wait_for
from tests.support.sandbox import FAST_CORE, ROOT, Sandbox, free_port


def second_run(box: Sandbox) -> tuple[subprocess.CompletedProcess[str], float]:
    """`run.py --sandbox` on the same data dir, on a port of its own (so that only the
    data dir can stop it), and how long it took to answer."""
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "--sandbox",
            "--config",
            str(box.config_path),
            "--data-dir",
            str(box.data),
            "--env-file",
            str(box.dir / ".env"),
            "--port",
            str(free_port()),
        ],
        cwd=box.dir,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done, time.monotonic() - started


def holds_the_lock(pid: int, lock: Path) -> bool:
    try:
        return any(Path(f.path) == lock for f in psutil.Process(pid).open_files())
    except psutil.NoSuchProcess:
        return False


def test_a_second_run_on_the_same_data_dir_exits_2_naming_the_holder(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, FAST_CORE)
    try:
        before = box.wait_all_running()
        lock = box.data / LOCK_NAME
        assert lock.read_text().strip() == str(box.proc.pid)
        done, took = second_run(box)
        print(f"second run.py answered in {took:.2f} s")
        assert done.returncode == 2, done.stdout + done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert f"pid {box.proc.pid}" in lines[0] and str(box.data) in lines[0]
        assert "sandbox:" not in done.stdout  # it started nothing
        # The first is untouched: same processes, all running, still answering.
        after = box.wait_all_running()
        assert box.proc.poll() is None
        assert [s["pid"] for s in after["services"]] == [s["pid"] for s in before["services"]]
        status = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), "status", "--data-dir", str(box.data)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0 and "persistence" in status.stdout, status.stderr
        assert lock.read_text().strip() == str(box.proc.pid)
        # The services did not inherit the lock: only the supervisor holds it.
        assert holds_the_lock(box.proc.pid, lock)
        children = box.children()
        assert children and not [pid for pid in children if holds_the_lock(pid, lock)]
    finally:
        box.cleanup()


def test_after_the_supervisor_is_sigkilled_a_new_one_starts_on_the_same_data_dir(
    tmp_path: Path,
) -> None:
    first = Sandbox(tmp_path, FAST_CORE)
    second = None
    try:
        first.wait_all_running()
        children = first.children()
        first.proc.kill()
        first.proc.wait()
        wait_for(lambda: not any(alive(pid) for pid in children), 10, "the services to die")
        second = Sandbox(tmp_path, FAST_CORE)
        second.wait_all_running()
        assert (first.data / LOCK_NAME).read_text().strip() == str(second.proc.pid)
        assert second.stop() == 0
    finally:
        first.cleanup()
        if second is not None:
            second.cleanup()
