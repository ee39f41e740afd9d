"""The llm service end to end, in one process: the real service over real ZeroMQ, the
real openai SDK against the OpenAI stand-in, and small fake gateway and persistence
services that answer the requests and record what they were sent."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from loguru import logger

from protocol.bus import Topology
from protocol.discord import (
    CommandAnswer,
    CommandInvoked,
    EditInteraction,
    EditMessage,
    GuildReady,
    InteractionFollowup,
    MessageCreated,
    SendMessage,
    Typing,
)
from protocol.messages import Message, Ping
from protocol.runtime import RuntimeContext, Service
from protocol.store import KvGet, KvSet, LlmExchange, RecentMessages, ReplyChain, UsageRequest
from sandbox.openai_standin import OpenAIStandin, answer_for
from services.llm.messages import StatsRequest
from services.llm.outcomes import Outcome
from services.llm.service import build_service

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

KEY = "sandbox-key"
BOT = "900"
GUILD = "500"
GENERAL = "600"
NO_PINGS = {"parse": [], "replied_user": False}
FAST = {
    "model": "sandbox-model",
    "edit_interval_s": 0.1,
    "retry_initial_s": 0.01,
    "breaker_reset_s": 1.0,
    "store_timeout_s": 0.5,
    "gateway_timeout_s": 2.0,
    "request_timeout_s": 2.0,
    "typing_interval_s": 0.5,
}


@dataclass
class Write:
    t: float
    msg: Message


@dataclass
class FakeGateway:
    """Serves discord.send/edit/typing and interaction edits; remembers every one."""

    service: Service = field(default_factory=lambda: Service("gateway"))
    writes: list[Write] = field(default_factory=list)
    shown: dict[str, str] = field(default_factory=dict)  # message id -> content
    ids: Any = field(default_factory=lambda: itertools.count(10_000))

    def __post_init__(self) -> None:
        self.service.request(SendMessage)(self.send)
        self.service.request(EditMessage)(self.edit)
        self.service.request(Typing)(self.record)
        self.service.request(EditInteraction)(self.record)
        self.service.request(InteractionFollowup)(self.record)

    async def send(self, msg: SendMessage) -> dict[str, Any]:
        self.writes.append(Write(time.monotonic(), msg))
        message_id = str(next(self.ids))
        self.shown[message_id] = msg.content
        return {"message_id": message_id}  # as services/gateway answers

    async def edit(self, msg: EditMessage) -> dict[str, Any]:
        self.writes.append(Write(time.monotonic(), msg))
        assert msg.message_id in self.shown, "edit of a message never sent"
        self.shown[msg.message_id] = msg.content or ""
        return {}

    async def record(self, msg: Message) -> dict[str, Any]:
        self.writes.append(Write(time.monotonic(), msg))
        return {}

    def of(self, kind: type[Message]) -> list[Any]:
        return [w.msg for w in self.writes if isinstance(w.msg, kind)]

    def messages(self) -> list[str]:
        """What the channel shows now, in the order the messages were sent."""
        return [self.shown[k] for k in sorted(self.shown)]


@dataclass
class FakeStore:
    """Serves the persistence queries from lists; records exchanges and queries."""

    service: Service = field(default_factory=lambda: Service("persistence"))
    rows: list[dict[str, Any]] = field(default_factory=list)
    chain: list[dict[str, Any]] = field(default_factory=list)
    kv: dict[tuple[str, str], Any] = field(default_factory=dict)
    queries: list[Message] = field(default_factory=list)
    exchanges: dict[str, LlmExchange] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.service.request(RecentMessages)(self.recent)
        self.service.request(ReplyChain)(self.reply_chain)
        self.service.request(KvGet)(self.kv_get)
        self.service.request(KvSet)(self.kv_set)
        self.service.request(UsageRequest)(self.usage)
        self.service.event(LlmExchange)(self.exchange)

    async def recent(self, q: RecentMessages) -> dict[str, Any]:
        self.queries.append(q)
        return {"messages": self.rows}

    async def reply_chain(self, q: ReplyChain) -> dict[str, Any]:
        self.queries.append(q)
        return {"messages": self.chain}

    async def kv_get(self, q: KvGet) -> dict[str, Any]:
        return {"value": self.kv.get((q.namespace, q.key))}

    async def kv_set(self, q: KvSet) -> dict[str, Any]:
        self.kv[(q.namespace, q.key)] = q.value
        return {"stored": True}

    async def usage(self, q: UsageRequest) -> dict[str, Any]:
        self.queries.append(q)
        return {
            "exchanges": 2,
            "prompt_tokens": 30,
            "completion_tokens": 12,
            "by_outcome": {"ok": 2},
            "latency_p50_ms": 150.0,
        }

    async def exchange(self, ev: LlmExchange) -> None:
        self.exchanges[ev.id] = ev


@dataclass
class World:
    llm: OpenAIStandin
    service: Service
    gateway: FakeGateway
    store: FakeStore
    ids: Any = field(default_factory=lambda: itertools.count(1))

    async def say(
        self, content: str, *, author: str = "100", name: str = "ann", **kw: Any
    ) -> MessageCreated:
        """A user posts a message, as the gateway would publish it."""
        msg = MessageCreated(
            id=str(next(self.ids)),
            channel_id=kw.pop("channel_id", GENERAL),
            guild_id=kw.pop("guild_id", GUILD),
            author_id=author,
            author_name=name,
            author_bot=kw.pop("author_bot", False),
            content=content,
            created_at=time.time(),
            **kw,
        )
        await self.gateway.service.publish(msg)
        return msg

    async def mention(self, text: str, **kw: Any) -> MessageCreated:
        return await self.say(f"<@{BOT}> {text}", mentions_bot=True, **kw)

    async def answered(self, msg: MessageCreated, timeout: float = 10) -> LlmExchange:
        """Waits for the exchange record: published once the answer is fully shown."""
        with anyio.fail_after(timeout):
            while msg.id not in self.store.exchanges:
                await anyio.sleep(0.01)
        return self.store.exchanges[msg.id]

    async def command(self, name: str, **options: Any) -> CommandAnswer:
        cmd = CommandInvoked(
            interaction_id=str(next(self.ids)),
            command=name,
            options=options,
            user_id="100",
            user_name="ann",
            channel_id=GENERAL,
            guild_id=GUILD,
            is_admin=False,
            deferred=True,
        )
        body = await self.gateway.service.call("llm", cmd, timeout=20)
        return CommandAnswer(**body)

    async def stats(self) -> dict[str, Any]:
        return await self.gateway.service.call("llm", StatsRequest(), timeout=5)


@asynccontextmanager
async def running(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    store: bool = True,
    config_path: Path | None = None,
    **settings: Any,
) -> AsyncIterator[World]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for name in ("OPENAI_BASE_URL", "BOT_SETTINGS_OVERRIDES"):
        monkeypatch.delenv(name, raising=False)
    if config_path is None:
        monkeypatch.delenv("BOT_CONFIG", raising=False)
    else:
        monkeypatch.setenv("BOT_CONFIG", str(config_path))
    topology = Topology(
        {name: f"ipc://{tmp_path}/{name}.sock" for name in ("llm", "gateway", "persistence")},
        {
            "discord.message.created": ["llm"],
            "discord.guild.ready": ["llm"],
            "discord.connection": ["llm"],
            "llm.exchange": ["persistence"],
        },
    )
    async with OpenAIStandin(port=0, api_key=KEY) as llm:
        world = World(llm, build_service(), FakeGateway(), FakeStore())
        config = {**FAST, "base_url": llm.base_url, **settings}
        services = [world.service, world.gateway.service]
        if store:
            services.append(world.store.service)
        async with anyio.create_task_group() as tg:
            for s in services:
                ctx = RuntimeContext(s.name, topology, tmp_path / s.name, config)
                tg.start_soon(s.run, ctx)
            with anyio.fail_after(5):
                while world.service.bus is None or world.gateway.service.bus is None:
                    await anyio.sleep(0.01)
                await world.gateway.service.call("llm", Ping(), timeout=5)
            await world.gateway.service.publish(
                GuildReady(GUILD, "Cafe", [{"id": GENERAL, "name": "general"}], 3, BOT)
            )
            # Same connection, so the event is in before the ping's answer; give its lane a turn.
            await world.gateway.service.call("llm", Ping(), timeout=5)
            await anyio.sleep(0.05)
            try:
                yield world
            finally:
                for s in services:
                    s.stop()
                with anyio.move_on_after(3):
                    while any(s.bus is not None and s.bus._tg is not None for s in services):
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()


def expected(world: World, call: int = -1) -> str:
    """What the stand-in answered to a recorded call (it is deterministic)."""
    return answer_for(world.llm.calls[call].messages, world.llm.settings)


def shown_in_order(world: World) -> list[str]:
    return world.gateway.messages()


# --- answering ---------------------------------------------------------------------------


async def test_a_mention_gets_a_reply_sent_at_once_then_edited_in_place_throttled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch) as world:
        world.llm.update_settings(token_delay_s=0.03)
        asked = time.monotonic()
        msg = await world.mention("tell me about the weather in the mountains this week")
        exchange = await world.answered(msg)
        gw = world.gateway
        writes = [w for w in gw.writes if isinstance(w.msg, SendMessage | EditMessage)]
        first, *edits = writes
        assert isinstance(first.msg, SendMessage) and first.msg.reply_to_id == msg.id
        assert first.t - asked < 1.0, "the first words appear within a second"
        assert len(edits) >= 2 and all(isinstance(w.msg, EditMessage) for w in edits)
        assert {w.msg.message_id for w in edits} == set(gw.shown)  # edited in place
        gaps = [b.t - a.t for a, b in itertools.pairwise(writes)]
        assert min(gaps) >= 0.09, f"writes closer than edit_interval_s: {gaps}"
        assert all(w.msg.allowed_mentions == NO_PINGS for w in writes)
        assert gw.messages() == [expected(world)]
        kinds = [type(w.msg) for w in gw.writes]
        assert Typing in kinds[: kinds.index(SendMessage)], "typing while waiting for tokens"
        sent = world.llm.calls[-1].messages
        assert sent[0]["role"] == "system" and "Cafe #general" in sent[0]["content"]
        assert sent[-1] == {
            "role": "user",
            "content": "tell me about the weather in the mountains this week",
        }
        assert exchange.outcome == "ok" and exchange.model == "sandbox-model"
        assert exchange.prompt_tokens > 0 and exchange.completion_tokens > 0
        assert exchange.latency_ms > 0 and exchange.channel_id == GENERAL


async def test_a_long_answer_continues_in_new_messages_with_code_fences_balanced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch, edit_interval_s=0.02) as world:
        msg = await world.mention("!long 5000")
        assert (await world.answered(msg)).outcome == "ok"
        parts = world.gateway.messages()
        assert len(parts) >= 3
        assert all(len(p) < 2000 for p in parts)
        assert all(p.count("```") % 2 == 0 for p in parts), "every message closes its fence"
        assert any(p.startswith("```python") for p in parts[1:]), "the block is reopened"
        full = expected(world)
        joined = "\n".join(parts)
        for line in filter(None, (ln.strip() for ln in full.splitlines())):
            assert line in joined
        sends = world.gateway.of(SendMessage)
        assert sends[0].reply_to_id == msg.id and all(s.reply_to_id is None for s in sends[1:])


async def test_model_output_with_everyone_pings_nobody(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch) as world:
        msg = await world.mention("!echo @everyone hi")
        await world.answered(msg)
        assert world.gateway.messages() == ["@everyone hi"]
        writes = world.gateway.of(SendMessage) + world.gateway.of(EditMessage)
        assert writes and all(w.allowed_mentions == NO_PINGS for w in writes)


async def test_dms_replies_and_conversation_channels_are_answered_with_their_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch, conversation_channels=["chat"]) as world:
        dm = await world.say("hello in private", is_dm=True, guild_id=None, channel_id="77")
        assert (await world.answered(dm)).outcome == "ok"
        assert "a direct message" in world.llm.calls[-1].messages[0]["content"]

        world.store.chain = [
            {
                "id": "41",
                "author_id": "100",
                "author_name": "ann",
                "content": "first q",
                "created_at": 1.0,
            },
            {
                "id": "42",
                "author_id": BOT,
                "author_name": "bot",
                "content": "first a",
                "created_at": 2.0,
            },
        ]
        reply = await world.say("and then?", reply_to_id="42", reply_to_author_id=BOT)
        assert (await world.answered(reply)).outcome == "ok"
        assert world.store.queries[-1] == ReplyChain("42", limit=50)
        roles = [(m["role"], m["content"]) for m in world.llm.calls[-1].messages[1:]]
        assert roles == [("user", "first q"), ("assistant", "first a"), ("user", "and then?")]

        chat = await world.say("anyone here?", channel_id="78", channel_name="chat")
        assert (await world.answered(chat)).outcome == "ok"
        assert len(world.llm.calls) == 3


async def test_bots_itself_and_everyone_alone_are_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch) as world:
        await world.mention("from a bot", author="300", author_bot=True)
        await world.mention("from myself", author=BOT)
        await world.say("@everyone party", mention_everyone=True)
        await world.say("just chatting")
        await world.say("a reply to someone else", reply_to_id="1", reply_to_author_id="101")
        sentinel = await world.mention("only this one")
        await world.answered(sentinel)
        await anyio.sleep(0.2)  # anything wrongly answered would have shown up by now
        assert len(world.llm.calls) == 1
        assert world.llm.calls[0].messages[-1]["content"] == "only this one"
        assert set(world.store.exchanges) == {sentinel.id}
        assert [s.reply_to_id for s in world.gateway.of(SendMessage)] == [sentinel.id]


# --- context -----------------------------------------------------------------------------


async def test_context_too_long_is_trimmed_and_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch, max_context_tokens=3000) as world:
        world.store.rows = [
            {
                "id": str(1000 + i),
                "author_id": BOT if i % 2 else "100",
                "author_name": "bot" if i % 2 else "ann",
                "content": f"history {i} " + "words " * 60,
                "created_at": 1.0 + i,
            }
            for i in range(30)
        ]
        world.llm.update_settings(context_limit_tokens=400)
        msg = await world.mention("what did we say?")
        assert (await world.answered(msg)).outcome == "ok"
        outcomes = [c.outcome for c in world.llm.calls]
        assert outcomes[-1] == "ok" and "context_length" in outcomes[:-1]
        sizes = [len(c.messages) for c in world.llm.calls]
        assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]
        assert world.llm.calls[-1].messages[-1]["content"] == "what did we say?"
        assert world.gateway.messages() == [expected(world)]


async def test_reset_starts_a_fresh_context_and_usage_shows_totals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch) as world:
        answer = await world.command("reset")
        assert "fresh start" in answer.content.lower()
        mark = world.store.kv[("llm.reset", GENERAL)]
        assert abs(mark - time.time()) < 5
        world.store.rows = [
            {"id": "r1", "author_id": "100", "content": "before reset", "created_at": mark - 1},
            {"id": "r2", "author_id": "100", "content": "after reset", "created_at": mark + 0.01},
        ]
        await anyio.sleep(0.05)
        msg = await world.mention("so?")
        await world.answered(msg)
        # The store is asked for the whole recent history (it seeds the service's own
        # view of the channel); the /reset mark is applied when building the prompt.
        assert any(isinstance(q, RecentMessages) for q in world.store.queries)
        contents = [m["content"] for m in world.llm.calls[-1].messages]
        assert "before reset" not in contents and "after reset" in contents

        usage = await world.command("usage")
        assert "2 questions" in usage.content and "30 prompt + 12 completion" in usage.content
        assert isinstance(world.store.queries[-1], UsageRequest)
        assert world.store.queries[-1].guild_id == GUILD


async def test_without_persistence_the_message_alone_is_the_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch, store=False) as world:
        msg = await world.mention("are you there?")
        with anyio.fail_after(10):  # no exchange record to wait for: the store is down
            while not world.llm.calls or world.gateway.messages() != [expected(world)]:
                await anyio.sleep(0.02)
        assert [m["role"] for m in world.llm.calls[0].messages] == ["system", "user"]
        assert world.gateway.of(SendMessage)[0].reply_to_id == msg.id


# --- /ask --------------------------------------------------------------------------------


async def test_ask_streams_into_the_interaction_and_a_repeat_comes_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch) as world:
        world.llm.update_settings(token_delay_s=0.03)
        answer = await world.command("ask", prompt="what is a good name for a cat?")
        edits = world.gateway.of(EditInteraction)
        assert len(edits) >= 2, "the answer streamed into the deferred response"
        assert answer.content == expected(world) == edits[-1].content
        assert not answer.ephemeral
        assert len(world.llm.calls) == 1

        again = await world.command("ask", prompt="what is a good name for a cat?")
        assert again.content == answer.content
        assert len(world.llm.calls) == 1, "the cache answered: no second API call"
        stats = await world.stats()
        assert stats["cache_hits"] == 1 and stats["requests"] == 2
        with anyio.fail_after(5):
            while len(world.store.exchanges) < 2:
                await anyio.sleep(0.01)
        assert sorted(e.outcome for e in world.store.exchanges.values()) == ["cache_hit", "ok"]


async def test_a_long_ask_answer_continues_in_followups_and_pings_nobody(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch, edit_interval_s=0.02) as world:
        answer = await world.command("ask", prompt="!long 3000")
        followups = world.gateway.of(InteractionFollowup)
        assert followups and all(len(f.content) < 2000 for f in followups)
        assert len(answer.content) < 2000 and answer.content.count("```") % 2 == 0
        echo = await world.command("ask", prompt="!echo @everyone <@123> hi")
        assert "@everyone" not in echo.content and "@\u200beveryone" in echo.content


# --- failures ----------------------------------------------------------------------------


async def test_two_429s_then_success_give_one_reply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch) as world:
        world.llm.queue_faults([{"kind": "429", "retry_after": 0.05}] * 2)
        msg = await world.mention("hello")
        assert (await world.answered(msg)).outcome == "ok"
        assert [c.outcome for c in world.llm.calls] == ["429", "429", "ok"]
        assert len(world.gateway.of(SendMessage)) == 1
        assert world.gateway.messages() == [expected(world)]


async def test_endpoint_down_opens_the_breaker_then_fails_fast_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"breaker_failures": 2, "breaker_reset_s": 1.0, "max_attempts": 2}
    async with running(tmp_path, monkeypatch, **settings) as world:
        world.llm.update_settings(down=True)
        first = await world.mention("one")
        assert (await world.answered(first)).outcome == "model_unavailable"
        assert [c.outcome for c in world.llm.calls] == ["503", "503"]
        assert (await world.stats())["breaker"] == "open"

        started = time.monotonic()
        second = await world.mention("two")
        assert (await world.answered(second)).outcome == "model_unavailable"
        assert time.monotonic() - started < 0.5, "answered at once"
        assert len(world.llm.calls) == 2, "no API call while the breaker is open"
        assert world.gateway.messages()[-1] == "The model is unavailable, try again in 1 s."

        world.llm.update_settings(down=False)
        await anyio.sleep(1.1)  # the breaker's reset timeout: the next question is the probe
        third = await world.mention("three")
        assert (await world.answered(third)).outcome == "ok"
        assert (await world.stats())["breaker"] == "closed"
        assert world.gateway.messages()[-1] == expected(world)


async def test_a_user_over_the_rate_limit_is_told_to_slow_down_without_an_api_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch, user_rate={"tokens": 1, "per_s": 60}) as world:
        ok = await world.mention("first")
        assert (await world.answered(ok)).outcome == "ok"
        over = await world.mention("second")
        assert (await world.answered(over)).outcome == "rate_limited_user"
        assert "slow down" in world.gateway.messages()[-1].lower()
        again = await world.mention("third")
        assert (await world.answered(again)).outcome == "rate_limited_user"
        assert len(world.gateway.of(SendMessage)) == 2, "told once, not once per message"
        other = await world.mention("someone else", author="101", name="bob")
        assert (await world.answered(other)).outcome == "ok"
        assert len(world.llm.calls) == 2
        slow = await world.command("ask", prompt="and me?")
        assert slow.ephemeral and "slow down" in slow.content.lower()
        assert len(world.llm.calls) == 2


async def test_a_401_gives_the_auth_outcome_and_one_log_line_for_the_operator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="ERROR", format="{message}")
    try:
        async with running(tmp_path, monkeypatch) as world:
            world.llm.queue_faults([{"kind": "401"}, {"kind": "401"}])
            for text in ("one", "two"):
                msg = await world.mention(text)
                assert (await world.answered(msg)).outcome == "auth_failed"
            assert [c.outcome for c in world.llm.calls] == ["401", "401"], "no retries"
            assert world.gateway.messages()[-1] == Outcome.AUTH_FAILED.message()
    finally:
        logger.remove(sink)
    operator = [line for line in lines if "OPENAI_API_KEY" in line]
    assert len(operator) == 1 and "base_url" in operator[0]
    assert KEY not in "".join(lines)


async def test_garbage_and_truncated_streams_are_bad_responses_and_the_service_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch) as world:
        bad = Outcome.BAD_RESPONSE.message()
        world.llm.queue_faults([{"kind": "garbage"}])
        garbage = await world.mention("one")
        assert (await world.answered(garbage)).outcome == "bad_response"
        assert world.gateway.messages()[-1] == bad

        world.llm.queue_faults([{"kind": "garbage", "content_type": "text/html"}])
        html = await world.mention("two")
        assert (await world.answered(html)).outcome == "bad_response"

        world.llm.queue_faults([{"kind": "truncated_stream"}])
        cut = await world.mention("a b c d e f g h i j k l m n o p")
        assert (await world.answered(cut)).outcome == "bad_response"
        shown = world.gateway.messages()[-1]
        assert shown.startswith("Echo: a b") and shown.endswith(f"*{bad}*")

        world.llm.queue_faults([{"kind": "truncated_stream", "abort": False}])
        clean_cut = await world.mention("q r s t u v w x y z")
        assert (await world.answered(clean_cut)).outcome == "bad_response"

        fine = await world.mention("still there?")
        assert (await world.answered(fine)).outcome == "ok"
        assert world.gateway.messages()[-1] == expected(world)
        stats = await world.stats()
        assert stats["errors_by_outcome"] == {"bad_response": 4}


async def test_a_prompt_over_max_prompt_chars_is_refused_without_an_api_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch, max_prompt_chars=50) as world:
        msg = await world.mention("x" * 51)
        assert (await world.answered(msg)).outcome == "prompt_too_long"
        assert "50 characters" in world.gateway.messages()[-1]
        assert world.llm.calls == []


async def test_a_hung_request_times_out_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"request_timeout_s": 0.3, "max_attempts": 2}
    async with running(tmp_path, monkeypatch, **settings) as world:
        world.llm.queue_faults([{"kind": "hang", "seconds": 10}])
        retried = await world.mention("one")
        assert (await world.answered(retried)).outcome == "ok"
        world.llm.queue_faults([{"kind": "hang", "seconds": 10}] * 2)
        gave_up = await world.mention("two")
        assert (await world.answered(gave_up)).outcome == "timeout"
        assert world.gateway.messages()[-1] == Outcome.TIMEOUT.message()
        assert [c.outcome for c in world.llm.calls] == ["hang", "ok", "hang", "hang"]


async def test_prompt_settings_follow_services_toml_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "services.toml"
    table = '[services.llm]\nmodule = "services.llm"\n[services.llm.settings]\n'
    toml.write_text(table + 'system_prompt = "old prompt"\n')
    settings = {"system_prompt": "old prompt", "reload_interval_s": 0.05}
    async with running(tmp_path, monkeypatch, config_path=toml, **settings) as world:
        first = await world.mention("before")
        await world.answered(first)
        assert world.llm.calls[-1].messages[0]["content"] == "old prompt"
        toml.write_text(
            table + 'system_prompt = "new prompt for {user}"\nreload_interval_s = 0.05\n'
            f'system_prompts = {{ "{GENERAL}" = "general prompt" }}\n'
        )
        later = time.time() + 5
        os.utime(toml, (later, later))  # a coarse mtime clock must still see a change
        await anyio.sleep(0.3)
        second = await world.mention("after")
        await world.answered(second)
        assert world.llm.calls[-1].messages[0]["content"] == "general prompt"
        dm = await world.say("in private", is_dm=True, guild_id=None, channel_id="77")
        await world.answered(dm)
        assert world.llm.calls[-1].messages[0]["content"] == "new prompt for ann"


async def test_an_endless_stream_is_cut_at_max_answer_chars_and_the_service_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch, max_answer_chars=3000) as world:
        world.llm.queue_faults([{"kind": "endless"}])
        msg = await world.mention("never stop")
        record = await world.answered(msg)
        shown = "".join(world.gateway.messages())
        assert "and on and on" in shown
        assert 3000 <= len(shown) < 3000 + 2 * 1900  # cut, not posted forever
        assert record.outcome == "ok"
        fine = await world.mention("still there?")
        assert (await world.answered(fine)).outcome == "ok"
