"""Messages from Discord to the database: this project vs a single-process bot; prints JSON.

    python -m bench.messages [--quick]

Both run against the same Discord emulator code (a fresh one each, in this
process; messages are posted through its world directly, so HTTP to the control
API costs neither side). Measured per setup:
- latency: one message at a time, posted to row committed in `bot.sqlite3`
  (found by polling the database every 0.5 ms, the same for both), p50 and p99;
- throughput: N messages posted as fast as the emulator dispatches them, until
  every row is there; messages per second, and missing / duplicated rows (zero loss);
- RSS of every process of the setup at the end.
The project runs as `run.py` with only gateway and persistence enabled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bot_env, rss_by_process, start_bot, stop_process
from sandbox.discord import DiscordEmulator

PROJECT_TOML = """
[supervisor]
heartbeat_interval_s = 1.0
[services.persistence]
module = "services.persistence"
subscribes = ["discord.message.created", "discord.message.edited", "discord.message.deleted"]
[services.gateway]
module = "services.gateway"
after = ["persistence"]
env_required = ["DISCORD_TOKEN"]
"""


class Setup:
    def __init__(self, name: str, db: Path, proc: subprocess.Popen) -> None:
        self.name, self.db, self.proc = name, db, proc

    def rows(self, sql: str, *args: object) -> list[tuple]:
        if not self.db.exists():
            return []
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            con.close()

    def rss_mb(self) -> dict[str, float]:
        return rss_by_process(self.proc, self.name)

    def stop(self) -> None:
        stop_process(self.proc)


def start_project(emu: DiscordEmulator, tmp: Path) -> Setup:
    env = bot_env(emu, overrides={"gateway": {"identify_delay_s": 0.1}})
    proc = start_bot(tmp, PROJECT_TOML, env, (tmp / "log.txt").open("w"))
    return Setup("project", tmp / "data" / "bot.sqlite3", proc)


def start_baseline(emu: DiscordEmulator, tmp: Path) -> Setup:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.baseline_bot",
            emu.api_base,
            emu.token,
            str(tmp / "bot.sqlite3"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "log.txt", "w"),
    )
    return Setup("baseline", tmp / "bot.sqlite3", proc)


async def wait_row(setup: Setup, message_id: str, timeout: float = 10) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if setup.rows("SELECT 1 FROM messages WHERE id = ?", message_id):
            return time.perf_counter()
        await asyncio.sleep(0.0005)
    raise TimeoutError(f"{setup.name}: message {message_id} never stored")


async def measure(setup: Setup, emu: DiscordEmulator, latency_n: int, burst_n: int) -> dict:
    world = emu.world
    channel, author = world.channel_id("general"), world.user_id("alice")
    # Ready when a first message makes it through.
    deadline = time.monotonic() + 30
    while True:
        probe = world.post_message(channel, author, "warm-up")
        try:
            await wait_row(setup, probe.id, timeout=1)
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
    for _ in range(20):  # warm-up
        await wait_row(setup, world.post_message(channel, author, "warm").id)
    latencies = []
    for i in range(latency_n):
        t0 = time.perf_counter()
        msg = world.post_message(channel, author, f"latency {i}")
        latencies.append(await wait_row(setup, msg.id) - t0)
    before = setup.rows("SELECT count(*) FROM messages")[0][0]
    ids = []
    t0 = time.perf_counter()
    for i in range(burst_n):
        ids.append(world.post_message(channel, author, f"burst {i} " + "x" * 100).id)
        if i % 50 == 0:
            await asyncio.sleep(0)  # let the emulator's websocket writer run
    posted_s = time.perf_counter() - t0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        n = setup.rows("SELECT count(*) FROM messages")[0][0] - before
        if n >= burst_n:
            break
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - t0
    stored = setup.rows(
        f"SELECT id, count(*) FROM messages WHERE id IN ({','.join('?' * len(ids))}) GROUP BY id",
        *ids,
    )
    return {
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "latency_p99_ms": round(sorted(latencies)[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "burst_messages": burst_n,
        "burst_posted_in_s": round(posted_s, 2),
        "stored_msg_per_s": round(burst_n / elapsed),
        "missing": burst_n - len(stored),
        "duplicated": sum(1 for _, c in stored if c > 1),
        "rss_mb": setup.rss_mb(),
    }


async def run(quick: bool) -> dict:
    latency_n, burst_n = (100, 3000) if quick else (300, 10000)
    report: dict = {"machine": {"cpus": os.cpu_count()}}
    for name, start in (("project", start_project), ("baseline", start_baseline)):
        with tempfile.TemporaryDirectory() as tmp:
            emu = DiscordEmulator(port=0, global_limit=None)
            await emu.start()
            setup = start(emu, Path(tmp))
            try:
                report[name] = await measure(setup, emu, latency_n, burst_n)
            finally:
                setup.stop()
                await emu.stop()
    p, b = report["project"], report["baseline"]
    report["ratio_latency_p50"] = round(p["latency_p50_ms"] / b["latency_p50_ms"], 2)
    report["targets"] = {
        "stored>=2000/s": p["stored_msg_per_s"] >= 2000,
        "zero_loss": p["missing"] == 0 and p["duplicated"] == 0,
        "p50<=10ms": p["latency_p50_ms"] <= 10,
        "p50_within_3x_baseline": report["ratio_latency_p50"] <= 3,
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.quick)), indent=2))


if __name__ == "__main__":
    main()
