"""Fallback providers end to end, in one process: the real llm and persistence services
over real ZeroMQ, the real openai SDK against two OpenAI stand-ins (each with its own
API key), and the fake gateway. When the first provider fails (after its retries) the
second answers; while the first's breaker is open it is not asked at all; once the
breaker's reset has passed and it works again, it answers again. Who answered is in
each stored exchange, in `llm.stats` and in /usage."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from protocol.bus import Topology
from protocol.commands import Tier
from protocol.discord import CommandAnswer, CommandInvoked, MessageCreated
from protocol.messages import Ping
from protocol.runtime import RuntimeContext, Service
from sandbox.openai_standin import OpenAIStandin, answer_for
from services.llm import build as build_llm
from services.llm.messages import LlmStats, StatsRequest
from services.persistence import build as build_persistence
from services.persistence.service import STORED_EVENTS
from tests.support.fakes import BOT_USER, CHANNELS, GUILD, StreamingGateway

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

GENERAL = next(c["id"] for c in CHANNELS if c["name"] == "general")
FIRST_KEY, BACKUP_KEY = "first-key", "backup-key"
BREAKER_RESET_S = 1.0


@dataclass
class World:
    first: OpenAIStandin
    backup: OpenAIStandin
    llm: Service
    gateway: StreamingGateway
    asked: int = 0
    ids: Any = field(default_factory=lambda: itertools.count(1))

    async def mention(self, text: str) -> MessageCreated:
        msg = MessageCreated(
            id=str(next(self.ids)),
            channel_id=GENERAL,
            guild_id=GUILD,
            author_id="100",
            author_name="ann",
            author_bot=False,
            content=f"<@{BOT_USER}> {text}",
            created_at=time.time(),
            mentions_bot=True,
        )
        await self.gateway.service.publish(msg)
        return msg

    async def answered(self, msg: MessageCreated) -> str:
        """What the reply shows once the answer is complete (its exchange recorded)."""
        self.asked += 1
        with anyio.fail_after(15):
            while (await self.stats()).requests < self.asked:
                await anyio.sleep(0.02)
        replies = [i for i, m in enumerate(self.gateway.sent) if m.reply_to_id == msg.id]
        assert len(replies) == 1, replies
        return self.gateway.showing[str(5001 + replies[0])]  # the fake's message ids

    async def stats(self) -> LlmStats:
        return await self.gateway.service.call("llm", StatsRequest(), timeout=5)

    async def usage(self) -> CommandAnswer:
        cmd = CommandInvoked(
            str(next(self.ids)), "usage", {}, "100", "ann", GENERAL, GUILD, Tier.MEMBER.value
        )
        return await self.gateway.service.call("llm", cmd, timeout=5)


@asynccontextmanager
async def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    monkeypatch.setenv("OPENAI_API_KEY", FIRST_KEY)
    monkeypatch.setenv("BACKUP_OPENAI_KEY", BACKUP_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    names = ("llm", "gateway", "persistence")
    subscribers: dict[str, list[str]] = {t.TYPE: ["persistence"] for t in STORED_EVENTS}
    for event in ("discord.message.created", "discord.guild.ready", "discord.connection"):
        subscribers[event] = [*subscribers.get(event, []), "llm"]
    topology = Topology({n: f"ipc://{tmp_path}/{n}.sock" for n in names}, subscribers)
    async with (
        OpenAIStandin(port=0, api_key=FIRST_KEY) as first,
        OpenAIStandin(port=0, api_key=BACKUP_KEY) as backup,
    ):
        settings = {
            "base_url": first.base_url,
            "model": "sandbox-model",
            "provider_name": "primary",
            "fallbacks": [
                {
                    "name": "backup",
                    "base_url": backup.base_url,
                    "model": "backup-model",
                    "api_key_env": "BACKUP_OPENAI_KEY",
                }
            ],
            "max_attempts": 2,
            "retry_initial_s": 0.01,
            "breaker_failures": 2,
            "breaker_reset_s": BREAKER_RESET_S,
            "edit_interval_s": 0.05,
            "request_timeout_s": 5.0,
            "user_rate": {"tokens": 100, "per_s": 60},
        }
        llm, _ = build_llm()
        persistence, _ = build_persistence()
        world = World(first, backup, llm, StreamingGateway())
        services = {"llm": (llm, settings), "persistence": (persistence, {})}
        services["gateway"] = (world.gateway.service, {})
        async with anyio.create_task_group() as tg:
            for name, (service, own) in services.items():
                ctx = RuntimeContext(name, topology, tmp_path / name, own)
                tg.start_soon(service.run, ctx)
            with anyio.fail_after(10):
                for service, _ in services.values():
                    await service.ready.wait()
                await world.gateway.service.call("llm", Ping(), timeout=5)
                await world.gateway.service.call("persistence", Ping(), timeout=5)
            await anyio.sleep(0.05)  # the gateway's retained GuildReady reaches the llm
            try:
                yield world
            finally:
                for service, _ in services.values():
                    service.stop()
                with anyio.move_on_after(3):
                    while any(
                        s.bus is not None and s.bus._tg is not None for s, _ in services.values()
                    ):
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()


def outcomes(standin: OpenAIStandin) -> list[str]:
    return [c.outcome for c in standin.calls]


async def test_the_second_provider_answers_while_the_first_fails_and_the_first_again_once_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch) as world:
        first, backup = world.first, world.backup
        shown = await world.answered(await world.mention("one"))
        assert shown == answer_for(first.calls[-1].messages, first.settings)
        assert (outcomes(first), outcomes(backup)) == (["ok"], [])

        first.queue_faults([{"kind": "500"}] * 100)
        shown = await world.answered(await world.mention("two"))
        # The first was tried with its retries (two 500s opened its breaker), then the
        # second answered, with its own key and model, and nothing of the failure shows.
        assert outcomes(first) == ["ok", "500", "500"]
        assert outcomes(backup) == ["ok"] and backup.calls[0].model == "backup-model"
        assert shown == answer_for(backup.calls[-1].messages, backup.settings)
        stats = await world.stats()
        assert stats.last_provider == "backup" and stats.breaker == "open"
        assert [(p["name"], p["breaker"], p["answered"], p["failed"]) for p in stats.providers] == [
            ("primary", "open", 1, 1),
            ("backup", "closed", 1, 0),
        ]

        started = time.monotonic()
        await world.answered(await world.mention("three"))
        assert len(first.calls) == 3, "the open breaker kept the first from being asked"
        assert outcomes(backup) == ["ok", "ok"]
        print(f"answered by the second provider in {time.monotonic() - started:.2f} s")

        first.reset()  # it works again: no more 500s
        await anyio.sleep(BREAKER_RESET_S + 0.1)
        shown = await world.answered(await world.mention("four"))
        assert outcomes(first)[-1] == "ok" and len(backup.calls) == 2
        assert shown == answer_for(first.calls[-1].messages, first.settings)
        stats = await world.stats()
        assert (stats.last_provider, stats.breaker) == ("primary", "closed")

        # What persistence stored (the exchanges are durable events), as /usage tells it.
        with anyio.fail_after(5):
            while "4 questions" not in (answer := await world.usage()).content:
                await anyio.sleep(0.05)
        assert "answered by backup: 2, primary: 2" in answer.content


async def test_a_provider_failing_after_text_was_shown_does_not_hand_the_answer_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch) as world:
        world.first.update_settings(token_delay_s=0.01)
        world.first.queue_faults([{"kind": "truncated_stream", "abort": True}])
        shown = await world.answered(await world.mention("tell me a long story !long 400"))
        assert world.backup.calls == []  # a second answer cannot continue the first's
        assert shown.endswith("*The model sent back a broken answer. Please try again.*")
        assert (await world.stats()).outcomes == {"bad_response": 1}
