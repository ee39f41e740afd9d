"""A throwaway PostgreSQL cluster in a temp dir on a free port, for the tests that need a
real server (`.ci/run` installs one); they skip, saying why, without one.

As root the server runs as the `postgres` user (it refuses root), through runuser.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def _bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    """`start()` once (initdb and start), then `stop()` and `start()` again to restart the
    server in the middle of a test; `remove()` at the end."""

    def __init__(self) -> None:
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            pytest.skip("psycopg2 is not installed (pip install psycopg2-binary)")
        bindir = _bindir()
        if bindir is None:
            pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            runuser = shutil.which("runuser")
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                runuser = None
            if runuser is None:
                pytest.skip("running as root without runuser and a postgres user to run it")
            self.prefix = [runuser, "-u", "postgres", "--"]
        self.root = Path(tempfile.mkdtemp(prefix="persistence-pg-"))
        if self.prefix:
            shutil.chown(self.root, "postgres")
        self.bindir = bindir
        self.data = self.root / "data"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._initialized = False

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        argv = [*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args]
        return subprocess.run(argv, capture_output=True)

    def start(self) -> None:
        if not self._initialized:
            subprocess.run(
                [
                    *self.prefix,
                    str(self.bindir / "initdb"),
                    *("-D", str(self.data), "-A", "trust", "-E", "UTF8", "-U", "postgres"),
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
            )
            self._initialized = True
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        done = self._pg_ctl("-o", options, "-l", str(self.root / "log"), "-w", "-t", "30", "start")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.decode()[-500:]}")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: clients are disconnected, the server shuts down cleanly (a restart);
        `immediate`: as if it crashed."""
        self._pg_ctl("-m", mode, "-w", "stop")

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
