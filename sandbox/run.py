"""`python run.py --sandbox`: the whole bot, every service under the real supervisor,
against the local Discord emulator and OpenAI-compatible stand-in.

The stand-ins run in the supervisor's process (they are test equipment, not
services); the services reach them exactly as they would reach Discord and
OpenAI, through the URLs and keys put into their environment.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import sys
from typing import Any

from loguru import logger

from sandbox.discord import DiscordEmulator
from sandbox.openai_standin import OpenAIStandin
from sandbox.web.page import SandboxPage
from supervisor.config import OVERRIDES_ENV, Config, load
from supervisor.supervisor import Supervisor


def sandbox_settings(owner_id: str) -> dict[str, dict[str, Any]]:
    """Settings only the sandbox changes: no 5 s pause before re-identifying, alice as
    the bot's owner, a model name the stand-in knows, and clocks that follow the
    emulator's (`POST clock` moves the stats schedule, the scheduler's reminders, polls
    and events, and the gateway's rename guard with it)."""
    return {
        "gateway": {"identify_delay_s": 0.2, "allow_clock_control": True, "owner_ids": [owner_id]},
        "llm": {"model": "sandbox-model"},
        "stats": {"allow_clock_control": True},
        "scheduler": {"allow_clock_control": True},
    }


# What the services are given as DISCORD_TOKEN and OPENAI_API_KEY; the stand-ins accept
# only these, and they must never show up in a log line or in status output.
TOKEN = "sandbox-token"
API_KEY = "sandbox-key"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


async def run_sandbox(config: Config, port: int, host: str = "127.0.0.1") -> int:
    if not is_loopback(host):
        logger.warning(
            "sandbox: --host {}: the emulator and the OpenAI stand-in are reachable beyond "
            "this machine, and anyone who reaches them can read and post as the bot, and "
            "kill its services from the web page",
            host,
        )
    emulator = DiscordEmulator(host=host, port=port, token=TOKEN)
    page = SandboxPage(emulator)  # served at / by the emulator
    llm = OpenAIStandin(host=host, port=0, api_key=API_KEY)
    try:
        await emulator.start()
    except OSError as exc:
        print(
            f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}); "
            "pick another with --port",
            file=sys.stderr,
        )
        return 2
    await llm.start()
    emulator.llm_url = llm.base_url
    env = {
        "DISCORD_TOKEN": emulator.token,
        "DISCORD_API_BASE": emulator.api_base,
        "OPENAI_API_KEY": llm.api_key,
        "OPENAI_BASE_URL": llm.base_url,
    }
    # In this process's environment too: the supervisor's reload reads the same overrides.
    os.environ[OVERRIDES_ENV] = json.dumps(sandbox_settings(emulator.world.owner_id))
    config = load(config.path, config.supervisor.data_dir)
    if config.supervisor.metrics_address is None:  # metrics on, at a free port
        shown = f"[{host}]" if ":" in host else host
        config = dataclasses.replace(
            config,
            supervisor=dataclasses.replace(config.supervisor, metrics_address=f"{shown}:0"),
        )
    supervisor = Supervisor(config, extra_env=env)
    page.supervisor = supervisor
    emulator.on_clock_advance = supervisor.advance_clocks  # every clock follows the emulator's
    metrics_url = await supervisor.serve_metrics()
    data = config.supervisor.data_dir.absolute()
    print(
        "\n".join(
            [
                f"sandbox: open {emulator.base_url}/ to watch the bot and talk to it",
                "  the bot runs against local stand-ins (Ctrl-C stops everything)",
                f"  Discord emulator   {emulator.base_url}  (control API: "
                f"{emulator.base_url}/_sandbox/state)",
                f"  OpenAI stand-in    {llm.base_url}",
                f"  metrics            {metrics_url}  (health: /healthz beside it)",
                f"  data dir           {data}  (database: {data / 'bot.sqlite3'})",
                "  status             python run.py status --data-dir "
                f"{config.supervisor.data_dir}",
                "  try it             curl -s -X POST "
                f'{emulator.base_url}/_sandbox/messages -d \'{{"channel_id": '
                f'"{emulator.world.channel_id("general")}", "author_id": '
                f'"{emulator.world.user_id("alice")}", "content": "hello"}}\'',
            ]
        ),
        flush=True,
    )
    try:
        return await supervisor.run()
    finally:
        logger.info("stopping the stand-ins")
        await emulator.stop()
        await llm.stop()
