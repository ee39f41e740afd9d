"""What every side-by-side benchmark does the same way: run the project as `run.py`
against stand-ins that live in the benchmark's own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import psutil

from sandbox.discord import DiscordEmulator
from sandbox.openai_standin import OpenAIStandin

ROOT = Path(__file__).resolve().parent.parent


def bot_env(
    emu: DiscordEmulator, llm: OpenAIStandin | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, str]:
    """The environment `run.py --sandbox` would give the services, for these stand-ins."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DISCORD_TOKEN": emu.token,
        "DISCORD_API_BASE": emu.api_base,
        "BOT_SETTINGS_OVERRIDES": json.dumps(overrides or {}),
    }
    if llm is not None:
        env.update(OPENAI_API_KEY=llm.api_key, OPENAI_BASE_URL=llm.base_url)
    return env


def start_bot(tmp: Path, toml: str, env: dict[str, str], log: IO[Any]) -> subprocess.Popen:
    """`run.py` with `toml` as its services.toml and its data in `tmp`."""
    (tmp / "services.toml").write_text(toml)
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "--config",
            str(tmp / "services.toml"),
            "--data-dir",
            str(tmp / "data"),
            "--env-file",
            str(tmp / ".env"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


def rss_by_process(proc: subprocess.Popen, name: str) -> dict[str, float]:
    """RSS in MB of a setup's process and, for the project, each service by name."""
    out: dict[str, float] = {}
    try:
        root = psutil.Process(proc.pid)
        for p in [root, *root.children(recursive=True)]:
            cmd = p.cmdline()
            label = cmd[-1] if "supervisor.child" in " ".join(cmd) else name
            out[label] = round(p.memory_info().rss / 1e6, 1)
    except psutil.Error:
        pass
    return out


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, as systemd would; SIGKILL if it does not stop in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
