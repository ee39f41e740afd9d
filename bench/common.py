"""What every side-by-side benchmark does the same way: run the project as `run.py`
against stand-ins that live in the benchmark's own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

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
