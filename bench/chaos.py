"""Chaos run: steady load while services are SIGKILLed at random; prints a JSON report.

    python -m bench.chaos [--duration 60] [--rate 200] [--kill-every 2 3] [--seed 1]
                          [--refuse-resume]

The Discord emulator and the OpenAI stand-in run in this process; the bot runs as
`run.py` (all six services) pointed at them, so the supervisor itself can be
SIGKILLed once half-way and started again as systemd would (its children die
with it). Meanwhile users post messages at a steady rate, a share of them
mentioning the bot, and run slash commands.

Reported: messages posted vs stored (missing, duplicated); mentions vs answers
(missing, answered twice, and answered in full: the model's whole answer, not a
failure note); /ask vs answers (the original response showing the model's whole
answer; twice if a second message of the interaction shows it); other slash
commands vs responses (an ephemeral "restarting" counts as a response); the
longest time any service was not RUNNING after a kill, restarts per service, and
ERROR lines logged. A kill comes every 2 to 3 s (uniformly at random).

With `--refuse-resume`, every Discord session is invalidated just before each kill of
the gateway (or of the supervisor): the gateway's successor cannot RESUME, identifies
afresh, and must backfill what was said meanwhile from Discord's history.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bot_env, start_bot, stop_process
from sandbox.discord import DiscordEmulator
from sandbox.openai_standin import OpenAIStandin
from supervisor import control

# A kill is a crash, not a flap: let every service be restarted as often as it takes.
CHAOS_DEFAULTS = """
[supervisor]
heartbeat_interval_s = 0.5
memory_poll_s = 2.0

[defaults]
max_restarts = 1000
within_s = 60
backoff_initial_s = 0.1
backoff_max_s = 1.0
stable_after_s = 2
"""

OVERRIDES = {
    "gateway": {"identify_delay_s": 0.1},
    "llm": {
        "model": "sandbox-model",
        "user_rate": {"tokens": 10000, "per_s": 1},
        "guild_rate": {"tokens": 10000, "per_s": 1},
        "edit_interval_s": 0.2,
    },
    "heartbeat": {"interval_s": 5, "alert_group_s": 2},
    "stats": {"allow_clock_control": True},
}


def chaos_config() -> str:
    """The shipped services.toml with the [supervisor] and [defaults] tables replaced."""
    shipped = (ROOT / "services.toml").read_text()
    services = shipped[shipped.index("# Stores every message") :]
    return CHAOS_DEFAULTS + "\n" + services


class Bot:
    """`run.py` as systemd would run it; `restart()` after a SIGKILL of the supervisor."""

    def __init__(self, tmp: Path, emu: DiscordEmulator, llm: OpenAIStandin) -> None:
        self.tmp = tmp
        self.env = bot_env(emu, llm, OVERRIDES)
        self.log = (tmp / "bot.log").open("a")
        self.runtime = tmp / "data" / "run"
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        return start_bot(self.tmp, chaos_config(), self.env, self.log)

    def restart(self) -> None:
        self.proc.wait()
        self.proc = self._start()

    def stop(self) -> None:
        stop_process(self.proc, 30)
        self.log.close()

    def status(self) -> dict[str, Any] | None:
        try:
            return control.status(self.runtime).to_body()
        except Exception:
            return None


async def wait_all_running(bot: Bot, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = await asyncio.to_thread(bot.status)
        if st and all(s["state"] == "RUNNING" for s in st["services"]):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("the bot did not start")


class Watch:
    """Samples the supervisor's status to time each outage, from kill to RUNNING again."""

    def __init__(self) -> None:
        self.kills: list[tuple[str, int, float]] = []  # (service, old pid, time)
        self.recoveries: list[dict[str, Any]] = []
        self.pending: dict[str, tuple[int, float]] = {}
        self.restarts: Counter[str] = Counter()

    def killed(self, name: str, pid: int) -> None:
        now = time.monotonic()
        self.kills.append((name, pid, now))
        self.pending[name] = (pid, now)

    def observe(self, status: dict[str, Any]) -> None:
        now = time.monotonic()
        for s in status["services"]:
            pending = self.pending.get(s["name"])
            if pending and s["state"] == "RUNNING" and s["pid"] != pending[0]:
                self.recoveries.append({"service": s["name"], "down_s": round(now - pending[1], 3)})
                del self.pending[s["name"]]


def full_answer(content: str | None, question: str) -> bool:
    """The stand-in's whole answer to `question` ("Echo: [who: ]<question> [turn T, M
    messages]"), with no failure note after it."""
    return (
        content is not None
        and content.startswith("Echo: ")
        and f"{question} [turn " in content
        and content.endswith(" messages]")
    )


async def chaos(
    duration: float = 60,
    rate: float = 200,
    kill_every: tuple[float, float] = (2.0, 3.0),
    mention_every: float = 1.0,
    command_every: float = 1.0,
    kill_supervisor: bool = True,
    seed: int = 1,
    settle_s: float = 45,
    kill_order: list[str] | None = None,
    refuse_resume: bool = False,
) -> dict[str, Any]:
    """Run the load and the kills; `kill_order` cycles through services instead of
    choosing at random (so a short run still kills each one)."""
    rng = random.Random(seed)
    emu = DiscordEmulator(port=0, global_limit=None)
    llm = OpenAIStandin(port=0)
    await emu.start()
    await llm.start()
    world = emu.world
    general, alice, bob = (
        world.channel_id("general"),
        world.user_id("alice"),
        world.user_id("bob"),
    )
    # Discord lets a bot post about 5 messages and edits per 5 s in one channel, so
    # mentions go round several channels: the limit, not the bot, would drop answers.
    chat = [world.create_channel(f"chat-{i}").id for i in range(4)]
    rng.shuffle(chat)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        bot = Bot(tmp, emu, llm)
        watch = Watch()
        posted: list[str] = []
        mentions: dict[str, str] = {}  # message id -> the question in it
        interactions: list[str] = []  # other slash commands
        asks: dict[str, str] = {}  # interaction id -> its prompt
        try:
            await wait_all_running(bot)
            bot_mention = f"<@{world.bot_user_id}>"
            stop_at = time.monotonic() + duration
            supervisor_kill_at = time.monotonic() + duration / 2 if kill_supervisor else None
            supervisor_outage: dict[str, Any] = {}

            async def load() -> None:
                interval = 1 / rate
                next_post = next_command = next_mention = time.monotonic()
                n = 0
                while time.monotonic() < stop_at:
                    author = alice if n % 2 else bob
                    if time.monotonic() >= next_mention:
                        where = chat[len(mentions) % len(chat)]
                        msg = world.post_message(where, author, f"{bot_mention} question {n}")
                        mentions[msg.id] = f"question {n}"
                        next_mention += mention_every
                    else:
                        msg = world.post_message(general, author, f"chatter {n}")
                    posted.append(msg.id)
                    n += 1
                    if time.monotonic() >= next_command:
                        if (len(interactions) + len(asks)) % 2:
                            inter = world.create_interaction(general, alice, "status", [])
                            interactions.append(inter.id)
                        else:
                            prompt = {"name": "prompt", "type": 3, "value": f"q{n}"}
                            inter = world.create_interaction(general, alice, "ask", [prompt])
                            asks[inter.id] = f"q{n}"
                        next_command += command_every
                    next_post += interval
                    await asyncio.sleep(max(0.0, next_post - time.monotonic()))

            async def killer() -> None:
                nonlocal supervisor_kill_at
                while time.monotonic() < stop_at:
                    await asyncio.sleep(rng.uniform(*kill_every))
                    if time.monotonic() >= stop_at:
                        return
                    if supervisor_kill_at and time.monotonic() >= supervisor_kill_at:
                        supervisor_kill_at = None
                        children = psutil.Process(bot.proc.pid).children()
                        t0 = time.monotonic()
                        if refuse_resume:
                            emu.gateway.invalidate()
                        bot.proc.kill()
                        await asyncio.to_thread(bot.restart)
                        await wait_all_running(bot)
                        supervisor_outage.update(
                            all_running_again_s=round(time.monotonic() - t0, 3),
                            orphans=sum(
                                1
                                for c in children
                                if c.is_running() and c.status() != psutil.STATUS_ZOMBIE
                            ),
                        )
                        continue
                    st = await asyncio.to_thread(bot.status)
                    if not st:
                        continue
                    candidates = [
                        s
                        for s in st["services"]
                        if s["state"] == "RUNNING" and s["name"] not in watch.pending
                    ]
                    if not candidates:
                        continue
                    if kill_order:
                        wanted = kill_order[len(watch.kills) % len(kill_order)]
                        candidates = [c for c in candidates if c["name"] == wanted]
                        if not candidates:
                            continue
                    victim = rng.choice(candidates)
                    if refuse_resume and victim["name"] == "gateway":
                        emu.gateway.invalidate()  # its successor's RESUME is refused
                    try:
                        os.kill(victim["pid"], signal.SIGKILL)
                        watch.killed(victim["name"], victim["pid"])
                    except ProcessLookupError:
                        pass

            async def monitor() -> None:
                while time.monotonic() < stop_at + settle_s:
                    st = await asyncio.to_thread(bot.status)
                    if st:
                        watch.observe(st)
                        for s in st["services"]:
                            watch.restarts[s["name"]] = max(
                                watch.restarts[s["name"]], s["restarts"]
                            )
                    if time.monotonic() > stop_at and not watch.pending:
                        return
                    await asyncio.sleep(0.1)

            await asyncio.gather(load(), killer(), monitor())
            report = await settle(bot, emu, tmp, posted, mentions, asks, interactions, settle_s)
        finally:
            bot.stop()
            await emu.stop()
            await llm.stop()
        log = (tmp / "bot.log").read_text().splitlines()
        errors = [line for line in log if re.search(r"\bERROR\b", line)]
        backfills = [
            line.split("backfill done: ", 1)[1] for line in log if "backfill done: " in line
        ]
        sessions = emu.gateway.describe()
    downs = [r["down_s"] for r in watch.recoveries]
    report.update(
        {
            "config": {
                "duration_s": duration,
                "rate_per_s": rate,
                "kill_every_s": list(kill_every),
                "mention_every_s": mention_every,
                "command_every_s": command_every,
                "seed": seed,
                "refuse_resume": refuse_resume,
            },
            "discord_sessions": {
                k: sessions[k] for k in ("identifies", "resumes", "refused_resumes", "replayed")
            },
            "backfills": backfills,
            "kills": Counter(name for name, _, _ in watch.kills),
            "not_recovered": sorted(watch.pending),
            "longest_not_running_s": max(downs, default=0.0),
            "recovery_p50_s": sorted(downs)[len(downs) // 2] if downs else None,
            "supervisor_kill": supervisor_outage or None,
            "errors_logged": len(errors),
            "error_samples": errors[:5],
        }
    )
    report["bar"] = {
        "zero_missing_or_duplicated_messages": report["messages"]["missing"] == 0
        and report["messages"]["duplicated"] == 0,
        "every_mention_answered_in_full": report["mentions"]["answered_in_full"]
        == report["mentions"]["posted"],
        "no_mention_answered_twice": report["mentions"]["answered_twice"] == 0,
        "every_ask_answered_in_full": report["asks"]["answered_in_full"] == report["asks"]["run"],
        "no_ask_answered_twice": report["asks"]["answered_twice"] == 0,
        "every_slash_command_answered": report["slash_commands"]["unanswered"] == 0,
        "every_service_back_within_5s": not watch.pending and report["longest_not_running_s"] <= 5,
    }
    return report


async def settle(
    bot: Bot,
    emu: DiscordEmulator,
    tmp: Path,
    posted: list[str],
    mentions: dict[str, str],
    asks: dict[str, str],
    interactions: list[str],
    settle_s: float,
) -> dict[str, Any]:
    """Wait for the stored count to reach what was posted and for the answers to stop
    changing, then count everything."""
    db = tmp / "data" / "bot.sqlite3"

    def stored() -> dict[str, int]:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            rows = con.execute("SELECT id, count(*) FROM messages GROUP BY id").fetchall()
        finally:
            con.close()
        return dict(rows)

    wanted = set(posted)
    deadline = time.monotonic() + settle_s
    rows: dict[str, int] = {}
    while time.monotonic() < deadline:
        rows = await asyncio.to_thread(stored)
        if wanted <= rows.keys():
            break
        await asyncio.sleep(0.5)
    world = emu.world

    def answers() -> dict[str, list[str]]:
        """What the bot shows for each question: the content of each message answering it
        (a reply to a mention; a message of an /ask's interaction)."""
        shown: dict[str, list[str]] = {}
        for m in list(world.messages.values()):
            if m.author_id != world.bot_user_id:
                continue
            key = m.interaction_id if m.interaction_id in asks else m.reply_to_id
            if key is not None:
                shown.setdefault(key, []).append(m.content)
        return shown

    def done(shown: dict[str, list[str]]) -> bool:
        return all(
            any(full_answer(c, q) for c in shown.get(i, []))
            for i, q in [*mentions.items(), *asks.items()]
        )

    # Answers still streaming, or resumed by a restarted llm: wait until nothing changes.
    last, quiet_since = answers(), time.monotonic()
    while time.monotonic() < deadline + 30 and not (
        done(last) and time.monotonic() - quiet_since >= 3
    ):
        if time.monotonic() - quiet_since >= 15:
            break  # nothing moved for 15 s: what is missing will not come
        await asyncio.sleep(0.5)
        now = answers()
        if now != last:
            last, quiet_since = now, time.monotonic()

    def count(questions: dict[str, str]) -> dict[str, int]:
        shown = {i: last.get(i, []) for i in questions}
        return {
            "answered": sum(1 for i in questions if shown[i]),
            "answered_in_full": sum(
                1 for i, q in questions.items() if any(full_answer(c, q) for c in shown[i])
            ),
            "missing": sum(1 for i in questions if not shown[i]),
            "answered_twice": sum(1 for i in questions if len(shown[i]) > 1),
        }

    unanswered_commands = [i for i in interactions if not world.interaction(i).responses]
    return {
        "messages": {
            "posted": len(posted),
            "stored": len(wanted & rows.keys()),
            "missing": len(wanted - rows.keys()),
            "duplicated": sum(1 for i in wanted if rows.get(i, 0) > 1),
        },
        "mentions": {"posted": len(mentions), **count(mentions)},
        "asks": {"run": len(asks), **count(asks)},
        "slash_commands": {
            "run": len(interactions),
            "answered": len(interactions) - len(unanswered_commands),
            "unanswered": len(unanswered_commands),
        },
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--rate", type=float, default=200)
    p.add_argument("--kill-every", type=float, nargs=2, default=[2.0, 3.0], metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-supervisor-kill", action="store_true")
    p.add_argument(
        "--refuse-resume",
        action="store_true",
        help="invalidate every Discord session at each gateway (or supervisor) kill",
    )
    a = p.parse_args()
    report = asyncio.run(
        chaos(
            a.duration,
            a.rate,
            tuple(a.kill_every),
            seed=a.seed,
            kill_supervisor=not a.no_supervisor_kill,
            refuse_resume=a.refuse_resume,
        )
    )
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
