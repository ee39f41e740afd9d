"""Mentions answered by the language model: this project vs a single-process bot; prints JSON.

    python -m bench.llm [--quick]

Both setups run against the same code in this process: a Discord emulator and an OpenAI
stand-in (a fresh pair for each setup, so neither sees the other's history). Mentions are
posted through the emulator's world directly (no HTTP to the control API), and the
world's `post_message` / `edit_message` are wrapped to timestamp what the bot writes, in
the same event loop, so every time below is one `perf_counter` difference in this process.

- `first_reply`: the stand-in answers at once (token_delay_s = 0); one mention at a time,
  from posting it to the emulator storing the bot's first message replying to it; p50 and
  p99 after a warm-up of one mention per channel. The answer is one word (`!echo pong-N`),
  so each answer is exactly one message write. Mentions rotate over CHANNELS channels and
  a channel is reused only COOL_S after its last mention: both bots pace writes per
  channel (1 s, the project's default edit_interval_s and llmcord's edit delay) and the
  emulator allows 5 message writes per 5 s per channel, like Discord; neither limit is
  what is measured here.
- `stream`: token_delay_s = STREAM_DELAY_S per streamed piece and a 60-word answer
  (~1.2 s of streaming); one mention at a time. Measured from the stand-in writing the
  first content chunk of the answer (hooked where it paces pieces, just before the write)
  to the emulator receiving the first message carrying text (`first_token_to_first_text`),
  and to the first edit of it (`first_token_to_first_edit`, which mostly shows the 1 s
  edit pacing of both bots).

The project runs as `run.py` with persistence, gateway and llm, its per-user and per-guild
rate limits raised through BOT_SETTINGS_OVERRIDES (200 mentions from one user would trip
them); all other llm settings are the defaults (edit_interval_s = 1.0). The baseline is
bench/baseline_llm_bot.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bot_env, rss_by_process, start_bot, stop_process
from sandbox.discord import DiscordEmulator
from sandbox.discord.world import Message, World
from sandbox.openai_standin import OpenAIStandin

MODEL = "sandbox-model"
CHANNELS = 40
COOL_S = 2.2
STREAM_DELAY_S = 0.02
STREAM_WORDS = 60

PROJECT_TOML = """
[supervisor]
heartbeat_interval_s = 1.0
[services.persistence]
module = "services.persistence"
subscribes = ["discord.message.created", "discord.message.edited", "discord.message.deleted",
              "llm.exchange"]
[services.gateway]
module = "services.gateway"
after = ["persistence"]
env_required = ["DISCORD_TOKEN"]
[services.llm]
module = "services.llm"
after = ["gateway", "persistence"]
subscribes = ["discord.message.created", "discord.message.edited", "discord.message.deleted",
              "discord.guild.ready", "discord.connection"]
env_required = ["OPENAI_API_KEY"]
"""

OVERRIDES = {
    "gateway": {"identify_delay_s": 0.1},
    "llm": {
        "model": MODEL,
        "user_rate": {"tokens": 1_000_000, "per_s": 1},
        "guild_rate": {"tokens": 1_000_000, "per_s": 1},
    },
}

_first_chunk: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "first_chunk", default=None
)


class TimedStandin(OpenAIStandin):
    """The stand-in, noting when each streamed answer's first content piece goes out."""

    def __init__(self) -> None:
        super().__init__(port=0)
        self.first_chunks: list[float] = []  # one per streamed answer, in order

    async def _stream(self, *args: Any, **kwargs: Any) -> Any:
        token = _first_chunk.set([])
        try:
            return await super()._stream(*args, **kwargs)
        finally:
            _first_chunk.reset(token)

    async def _pause(self, seconds: float) -> bool:
        # In _stream, the pause before content piece i (i >= 1); the write follows at once.
        stopped = await super()._pause(seconds)
        seen = _first_chunk.get()
        if seen is not None and not seen:
            seen.append(time.perf_counter())
            self.first_chunks.append(seen[0])
        return stopped


@dataclass
class Written:
    """The bot's first message answering a mention, and when its text first changed."""

    message: Message
    posted: float
    edits: list[float] = field(default_factory=list)


class Watch:
    """Wraps the world's writes: when the bot replies to a mention, and edits the reply."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.replies: dict[str, Written] = {}  # mention id -> the bot's reply
        self._by_id: dict[str, Written] = {}
        self._waiters: dict[str, asyncio.Event] = {}
        post, edit = world.post_message, world.edit_message

        def post_message(channel_id: str, author_id: str, content: str, **kw: Any) -> Message:
            msg = post(channel_id, author_id, content, **kw)
            mention = kw.get("reply_to_id")
            if author_id == world.bot_user_id and mention and mention not in self.replies:
                self.replies[mention] = self._by_id[msg.id] = Written(msg, time.perf_counter())
                if event := self._waiters.get(mention):
                    event.set()
            return msg

        def edit_message(msg: Message, changes: dict[str, Any]) -> Message:
            before = msg.content
            out = edit(msg, changes)
            written = self._by_id.get(msg.id)
            if written is not None and msg.content != before:
                written.edits.append(time.perf_counter())
            return out

        world.post_message = post_message  # type: ignore[method-assign]
        world.edit_message = edit_message  # type: ignore[method-assign]

    async def reply(self, mention_id: str, timeout: float = 10) -> Written:
        if mention_id not in self.replies:
            event = self._waiters.setdefault(mention_id, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), timeout)
            finally:
                self._waiters.pop(mention_id, None)
        return self.replies[mention_id]


class Setup:
    def __init__(self, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.name, self.proc, self.log = name, proc, log

    def rss_mb(self) -> dict[str, float]:
        return rss_by_process(self.proc, self.name)

    def stop(self) -> None:
        stop_process(self.proc)


def start_project(emu: DiscordEmulator, llm: OpenAIStandin, tmp: Path) -> Setup:
    log = tmp / "log.txt"
    proc = start_bot(tmp, PROJECT_TOML, bot_env(emu, llm, OVERRIDES), log.open("w"))
    return Setup("project", proc, log)


def start_baseline(emu: DiscordEmulator, llm: OpenAIStandin, tmp: Path) -> Setup:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp / "log.txt"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.baseline_llm_bot",
            emu.api_base,
            emu.token,
            llm.base_url,
            llm.api_key,
            MODEL,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    return Setup("baseline", proc, log)


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) in milliseconds."""
    ordered = sorted(values)
    rank = max(1, round(p / 100 * len(ordered)))
    return round(ordered[min(rank, len(ordered)) - 1] * 1000, 2)


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": pct(values, 50),
        "p99_ms": pct(values, 99),
        "mean_ms": round(statistics.fmean(values) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }


class Channels:
    """Round-robin over the bench channels, each reused only COOL_S after its last use."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.last = dict.fromkeys(ids, float("-inf"))
        self.i = 0

    async def next(self) -> str:
        channel = self.ids[self.i % len(self.ids)]
        self.i += 1
        wait = self.last[channel] + COOL_S - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self.last[channel] = time.monotonic()
        return channel


async def ask(
    world: World, watch: Watch, channel: str, author: str, text: str, timeout: float = 10
) -> tuple[float, Written]:
    t0 = time.perf_counter()
    mention = world.post_message(channel, author, f"<@{world.bot_user_id}> {text}")
    written = await watch.reply(mention.id, timeout)
    return t0, written


async def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.005)


async def measure(
    setup: Setup,
    emu: DiscordEmulator,
    llm: TimedStandin,
    watch: Watch,
    channels: Channels,
    n_latency: int,
    n_stream: int,
) -> dict[str, Any]:
    world = emu.world
    author = world.user_id("alice")
    # Ready when a first mention gets an answer.
    deadline = time.monotonic() + 60
    while True:
        try:
            await ask(world, watch, await channels.next(), author, "!echo ready", timeout=2)
            break
        except TimeoutError:
            if setup.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{setup.name} never answered; see {setup.log}") from None
    for i in range(len(channels.ids)):  # warm-up: one mention in every channel
        await ask(world, watch, await channels.next(), author, f"!echo warm-{i}")

    latencies = []
    for i in range(n_latency):
        t0, written = await ask(world, watch, await channels.next(), author, f"!echo pong-{i}")
        latencies.append(written.posted - t0)
        assert written.message.content == f"pong-{i}", written.message.content

    llm.update_settings(token_delay_s=STREAM_DELAY_S)
    answer = " ".join(f"w{i}" for i in range(STREAM_WORDS))
    to_text, to_edit = [], []
    for i in range(n_stream):
        chunks = len(llm.first_chunks)
        _, written = await ask(world, watch, await channels.next(), author, f"!echo s{i} {answer}")
        await wait_until(
            lambda w=written, i=i: w.message.content == f"s{i} {answer}",
            STREAM_WORDS * STREAM_DELAY_S + 10,
            "the whole streamed answer",
        )
        assert len(llm.first_chunks) == chunks + 1, "one model call per mention"
        first = llm.first_chunks[-1]
        to_text.append(written.posted - first)
        if written.edits:
            to_edit.append(written.edits[0] - first)
    llm.update_settings(token_delay_s=0.0)
    return {
        "first_reply": summary(latencies),
        "stream": {
            "first_token_to_first_text": summary(to_text),
            "first_token_to_first_edit": summary(to_edit) if to_edit else None,
        },
        "rss_mb": setup.rss_mb(),
    }


async def run(quick: bool) -> dict[str, Any]:
    n_latency, n_stream = (60, 8) if quick else (200, 20)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count()},
        "setup": {
            "mentions": n_latency,
            "warm_up": CHANNELS,
            "channels": CHANNELS,
            "channel_reuse_after_s": COOL_S,
            "stream_token_delay_s": STREAM_DELAY_S,
            "stream_pieces": STREAM_WORDS + 1,
            "streamed_mentions": n_stream,
            "project_overrides": OVERRIDES["llm"],
        },
    }
    for name, start in (("project", start_project), ("baseline", start_baseline)):
        with tempfile.TemporaryDirectory() as tmp:
            emu = DiscordEmulator(port=0, global_limit=None)
            ids = [emu.world.create_channel(f"bench-{i}").id for i in range(CHANNELS)]
            watch = Watch(emu.world)
            llm = TimedStandin()
            await emu.start()
            await llm.start()
            setup = start(emu, llm, Path(tmp))
            try:
                report[name] = await measure(
                    setup, emu, llm, watch, Channels(ids), n_latency, n_stream
                )
            finally:
                setup.stop()
                await llm.stop()
                await emu.stop()
    p, b = report["project"], report["baseline"]
    ratio = round(p["first_reply"]["p50_ms"] / b["first_reply"]["p50_ms"], 2)
    report["ratio_first_reply_p50"] = ratio
    report["ratio_first_reply_p99"] = round(
        p["first_reply"]["p99_ms"] / b["first_reply"]["p99_ms"], 2
    )
    ps, bs = p["stream"]["first_token_to_first_text"], b["stream"]["first_token_to_first_text"]
    report["ratio_first_token_to_first_text_p50"] = round(ps["p50_ms"] / bs["p50_ms"], 2)
    report["targets"] = {
        "first_reply_p50_within_2x_baseline": ratio <= 2,
        "first_reply_p99<50ms": p["first_reply"]["p99_ms"] < 50,
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.quick)), indent=2))


if __name__ == "__main__":
    main()
