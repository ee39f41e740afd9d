"""Soak: the whole bot under a modest load; RSS of every process each second; prints JSON.

    python -m bench.soak [--duration 600] [--warmup 60] [--rate 20]

Growth per process compares the median RSS of the first minute after warm-up with
the median of the last minute. The bar: no process grows more than 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chaos import Bot, wait_all_running
from sandbox.discord import DiscordEmulator
from sandbox.openai_standin import OpenAIStandin


def processes(bot: Bot) -> dict[str, psutil.Process]:
    out = {"supervisor": psutil.Process(bot.proc.pid)}
    for child in out["supervisor"].children():
        cmd = child.cmdline()
        if "supervisor.child" in cmd:
            out[cmd[-1]] = child
    return out


async def soak(
    duration: float = 600, warmup: float = 60, rate: float = 20, window: float = 60
) -> dict[str, Any]:
    emu = DiscordEmulator(port=0, global_limit=None)
    llm = OpenAIStandin(port=0)
    await emu.start()
    await llm.start()
    world = emu.world
    general, alice = world.channel_id("general"), world.user_id("alice")
    chat = world.create_channel("chat-soak").id
    samples: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        bot = Bot(Path(tmpdir), emu, llm)
        try:
            await wait_all_running(bot)
            procs = processes(bot)
            start = time.monotonic()
            stop_at = start + duration
            n = 0
            next_sample = start
            while time.monotonic() < stop_at:
                world.post_message(general, alice, f"soak {n} " + "x" * 80)
                if n % int(rate * 5) == 0:
                    world.post_message(chat, alice, f"<@{world.bot_user_id}> soak question {n}")
                if n % int(rate * 10) == 0:
                    world.create_interaction(general, alice, "status", [])
                n += 1
                now = time.monotonic()
                if now >= next_sample:
                    for name, p in procs.items():
                        try:
                            samples.setdefault(name, []).append(
                                (now - start, p.memory_info().rss / 1e6)
                            )
                        except psutil.Error:
                            pass
                    next_sample += 1.0
                await asyncio.sleep(1 / rate)
            status = await asyncio.to_thread(bot.status) or {"services": []}
        finally:
            bot.stop()
            await emu.stop()
            await llm.stop()
    report: dict[str, Any] = {
        "config": {
            "duration_s": duration,
            "warmup_s": warmup,
            "rate_per_s": rate,
            "window_s": window,
        },
        "messages_posted": n,
        "processes": {},
    }
    for name, series in samples.items():
        after = [rss for t, rss in series if t >= warmup]
        if len(after) < 2:
            continue
        per_window = max(1, min(int(window), len(after) // 2))
        first = statistics.median(after[:per_window])
        last = statistics.median(after[-per_window:])
        report["processes"][name] = {
            "rss_first_mb": round(first, 1),
            "rss_last_mb": round(last, 1),
            "growth_percent": round((last - first) / first * 100, 1),
            "max_mb": round(max(rss for _, rss in series), 1),
        }
    report["restarts"] = {s["name"]: s["restarts"] for s in status["services"]}
    report["bar"] = {
        "no_process_grew_over_10_percent": all(
            p["growth_percent"] <= 10 for p in report["processes"].values()
        )
    }
    return report


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=600)
    p.add_argument("--warmup", type=float, default=60)
    p.add_argument("--rate", type=float, default=20)
    a = p.parse_args()
    print(json.dumps(asyncio.run(soak(a.duration, a.warmup, a.rate)), indent=2))


if __name__ == "__main__":
    main()
