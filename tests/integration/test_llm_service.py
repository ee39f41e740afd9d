"""The llm service end to end, in one process: the real service over real ZeroMQ, the
real openai SDK against the OpenAI stand-in, and the fake gateway and persistence
(tests/support/fakes.py) answering its requests with the protocol's reply types and
recording what they were sent."""

from __future__ import annotations

import dataclasses
import itertools
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
from protocol.commands import Tier
from protocol.discord import (
    NO_PINGS,
    CommandAnswer,
    CommandInvoked,
    EditInteraction,
    EditMessage,
    InteractionFollowup,
    MessageCreated,
    SendMessage,
    Typing,
)
from protocol.messages import ApplySettings, Outcome, Ping
from protocol.runtime import RuntimeContext, Service
from protocol.store import LlmExchange, RecentMessages, ReplyChain, UsageRequest
from sandbox.openai_standin import OpenAIStandin, answer_for, long_answer
from services.llm import build
from services.llm.messages import LlmStats, StatsRequest
from services.llm.outcomes import Outcome as Answered
from services.llm.pending import MESSAGE, PendingQuestions, Question, part_nonce
from services.llm.service import LATE_NOTE
from services.llm.stream import split_message
from tests.support.fakes import (
    BOT_USER,
    CHANNELS,
    GUILD,
    ConversationStore,
    StreamingGateway,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

KEY = "sandbox-key"
BOT = BOT_USER
GENERAL = next(c["id"] for c in CHANNELS if c["name"] == "general")
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
class World:
    llm: OpenAIStandin
    service: Service
    gateway: StreamingGateway
    store: ConversationStore
    settings: dict[str, Any]
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
            created_at=kw.pop("created_at", time.time()),
            **kw,
        )
        await self.gateway.service.publish(msg)
        return msg

    async def mention(self, text: str, **kw: Any) -> MessageCreated:
        return await self.say(f"<@{BOT}> {text}", mentions_bot=True, **kw)

    async def answered(self, msg: MessageCreated | str, timeout: float = 10) -> LlmExchange:
        """Waits for the exchange record (of a message, or an interaction by id):
        published once the answer is fully shown."""
        key = msg if isinstance(msg, str) else msg.id
        with anyio.fail_after(timeout):
            while key not in self.store.exchanges:
                await anyio.sleep(0.01)
        return self.store.exchanges[key]

    async def command(
        self, name: str, user: str = "100", tier: Tier = Tier.MEMBER, **options: Any
    ) -> CommandAnswer:
        cmd = CommandInvoked(
            interaction_id=str(next(self.ids)),
            command=name,
            options=options,
            user_id=user,
            user_name="ann",
            channel_id=GENERAL,
            guild_id=GUILD,
            tier=tier.value,
            deferred=True,
        )
        return await self.shown(cmd)

    async def shown(self, cmd: CommandInvoked) -> CommandAnswer:
        """The command's answer, or what its original response shows once the answer the
        llm took on (`later`) is complete."""
        answer = await self.gateway.service.call("llm", cmd, timeout=20)
        if not answer.later:
            return answer
        await self.answered(cmd.interaction_id, timeout=20)
        edits = [
            e for e in self.gateway.of(EditInteraction) if e.interaction_id == cmd.interaction_id
        ]
        return CommandAnswer(edits[-1].content or "")

    async def stats(self) -> LlmStats:
        return await self.gateway.service.call("llm", StatsRequest(), timeout=5)

    async def reload(self, **changes: Any) -> Outcome:
        """What the supervisor sends on SIGHUP or `run.py reload`: the whole new table."""
        self.settings = {**self.settings, **changes}
        return await self.gateway.service.call("llm", ApplySettings(self.settings))

    def system_prompt(self) -> str:
        return self.llm.calls[-1].messages[0]["content"]


@asynccontextmanager
async def running(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    store: bool = True,
    gateway: StreamingGateway | None = None,
    **settings: Any,
) -> AsyncIterator[World]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    topology = Topology(
        {name: f"ipc://{tmp_path}/{name}.sock" for name in ("llm", "gateway", "persistence")},
        {
            "discord.message.created": ["llm"],
            "discord.message.edited": ["llm"],
            "discord.message.deleted": ["llm"],
            "discord.guild.ready": ["llm"],
            "discord.connection": ["llm"],
            "llm.exchange": ["persistence"],
        },
    )
    async with OpenAIStandin(port=0, api_key=KEY) as llm:
        service, _ = build()
        config = {**FAST, "base_url": llm.base_url, **settings}
        world = World(llm, service, gateway or StreamingGateway(), ConversationStore(), config)
        services = [world.service, world.gateway.service]
        if store:
            services.append(world.store.service)
        async with anyio.create_task_group() as tg:
            for s in services:
                own = config if s is world.service else {}
                ctx = RuntimeContext(s.name, topology, tmp_path / s.name, own)
                tg.start_soon(s.run, ctx)
            with anyio.fail_after(5):
                while world.service.bus is None or world.gateway.service.bus is None:
                    await anyio.sleep(0.01)
                await world.gateway.service.call("llm", Ping(), timeout=5)
            # The gateway's retained GuildReady (who the bot is) reaches llm on connecting.
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
        writes = [(t, w) for t, w in gw.writes if isinstance(w, SendMessage | EditMessage)]
        (first_t, first), *edits = writes
        assert isinstance(first, SendMessage) and first.reply_to_id == msg.id
        assert first_t - asked < 1.0, "the first words appear within a second"
        assert len(edits) >= 2 and all(isinstance(w, EditMessage) for _, w in edits)
        assert {w.message_id for _, w in edits} == set(gw.showing)  # edited in place
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(writes)]
        assert min(gaps) >= 0.09, f"writes closer than edit_interval_s: {gaps}"
        assert all(w.allowed_mentions == NO_PINGS for _, w in writes)
        assert gw.shown() == [expected(world)]
        kinds = [type(w) for _, w in gw.writes]
        assert Typing in kinds[: kinds.index(SendMessage)], "typing while waiting for tokens"
        sent = world.llm.calls[-1].messages
        assert sent[0]["role"] == "system" and "Test #general" in sent[0]["content"]
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
        parts = world.gateway.shown()
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
        assert world.gateway.shown() == ["@everyone hi"]
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


async def test_a_question_found_after_a_gap_is_answered_late_saying_so_unless_too_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch, late_answer_max_age_s=600) as world:
        now = time.time()
        too_old = await world.mention("asked an hour ago", backfilled=True, created_at=now - 3600)
        late = await world.mention("asked in the gap", backfilled=True, created_at=now - 30)
        await world.answered(late)
        await anyio.sleep(0.2)  # the old one would have been answered by now
        assert set(world.store.exchanges) == {late.id} and len(world.llm.calls) == 1
        first = world.gateway.of(SendMessage)[0]
        assert first.reply_to_id == late.id and first.content.startswith(LATE_NOTE + "\n")
        assert world.gateway.shown() == [f"{LATE_NOTE}\n{expected(world)}"]
        assert too_old.id not in {s.reply_to_id for s in world.gateway.of(SendMessage)}


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
        assert world.gateway.shown() == [expected(world)]


async def test_reset_forgets_the_callers_conversation_and_an_admins_reset_everyones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch) as world:
        before = time.time() - 10
        world.store.rows = [
            {"id": "r1", "author_id": "101", "author_name": "bob", "content": "bob before",
             "created_at": before},
            {"id": "r2", "author_id": "100", "author_name": "ann", "content": "ann before",
             "created_at": before + 1},
        ]  # fmt: skip

        mine = await world.command("reset")
        assert "fresh start" in mine.content.lower() and "for you" in mine.content
        assert mine.ephemeral, "only the caller's conversation changed"
        mark = world.store.kv[("llm.reset", f"{GENERAL}:100")]
        assert abs(mark - time.time()) < 5
        await anyio.sleep(0.05)
        ann = await world.mention("so?")
        await world.answered(ann)
        said = [m["content"] for m in world.llm.calls[-1].messages[1:]]
        assert said == ["so?"], "ann's conversation starts afresh"
        assert any(isinstance(q, RecentMessages) for q in world.store.queries)

        bob = await world.mention("and me?", author="101", name="bob")
        await world.answered(bob)
        said = [m["content"] for m in world.llm.calls[-1].messages[1:]]
        assert "bob: bob before" in said and "ann: ann before" in said, "bob's goes on"

        everyone = await world.command("reset", user="102", tier=Tier.ADMIN)
        assert "for everyone" in everyone.content and not everyone.ephemeral
        assert ("llm.reset", GENERAL) in world.store.kv
        await anyio.sleep(0.05)
        again = await world.mention("fresh?", author="101", name="bob")
        await world.answered(again)
        assert [m["content"] for m in world.llm.calls[-1].messages[1:]] == ["fresh?"]


async def test_usage_shows_the_guilds_totals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch) as world:
        usage = await world.command("usage")
        assert "4 questions, median 900 ms" in usage.content
        assert "400 prompt + 200 completion" in usage.content
        assert "error: 1, ok: 3" in usage.content
        query = world.store.queries[-1]
        assert isinstance(query, UsageRequest) and query.guild_id == GUILD
        assert abs(query.since - (time.time() - 7 * 86400)) < 5


async def test_without_persistence_the_message_alone_is_the_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch, store=False) as world:
        msg = await world.mention("are you there?")
        with anyio.fail_after(10):  # no exchange record to wait for: the store is down
            while not world.llm.calls or world.gateway.shown() != [expected(world)]:
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
        assert stats.cache_hits == 1 and stats.requests == 2
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
        assert world.gateway.shown() == [expected(world)]


async def test_endpoint_down_opens_the_breaker_then_fails_fast_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"breaker_failures": 2, "breaker_reset_s": 1.0, "max_attempts": 2}
    async with running(tmp_path, monkeypatch, **settings) as world:
        world.llm.update_settings(down=True)
        first = await world.mention("one")
        assert (await world.answered(first)).outcome == "model_unavailable"
        assert [c.outcome for c in world.llm.calls] == ["503", "503"]
        assert (await world.stats()).breaker == "open"

        started = time.monotonic()
        second = await world.mention("two")
        assert (await world.answered(second)).outcome == "model_unavailable"
        assert time.monotonic() - started < 0.5, "answered at once"
        assert len(world.llm.calls) == 2, "no API call while the breaker is open"
        assert world.gateway.shown()[-1] == "The model is unavailable, try again in 1 s."

        world.llm.update_settings(down=False)
        await anyio.sleep(1.1)  # the breaker's reset timeout: the next question is the probe
        third = await world.mention("three")
        assert (await world.answered(third)).outcome == "ok"
        assert (await world.stats()).breaker == "closed"
        assert world.gateway.shown()[-1] == expected(world)


async def test_a_user_over_the_rate_limit_is_told_to_slow_down_without_an_api_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch, user_rate={"tokens": 1, "per_s": 60}) as world:
        ok = await world.mention("first")
        assert (await world.answered(ok)).outcome == "ok"
        over = await world.mention("second")
        assert (await world.answered(over)).outcome == "rate_limited_user"
        assert "slow down" in world.gateway.shown()[-1].lower()
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
            assert world.gateway.shown()[-1] == Answered.AUTH_FAILED.message()
    finally:
        logger.remove(sink)
    operator = [line for line in lines if "OPENAI_API_KEY" in line]
    assert len(operator) == 1 and "base_url" in operator[0]
    assert KEY not in "".join(lines)


async def test_garbage_and_truncated_streams_are_bad_responses_and_the_service_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch) as world:
        bad = Answered.BAD_RESPONSE.message()
        world.llm.queue_faults([{"kind": "garbage"}])
        garbage = await world.mention("one")
        assert (await world.answered(garbage)).outcome == "bad_response"
        assert world.gateway.shown()[-1] == bad

        world.llm.queue_faults([{"kind": "garbage", "content_type": "text/html"}])
        html = await world.mention("two")
        assert (await world.answered(html)).outcome == "bad_response"

        world.llm.queue_faults([{"kind": "truncated_stream"}])
        cut = await world.mention("a b c d e f g h i j k l m n o p")
        assert (await world.answered(cut)).outcome == "bad_response"
        shown = world.gateway.shown()[-1]
        assert shown.startswith("Echo: a b") and shown.endswith(f"*{bad}*")

        world.llm.queue_faults([{"kind": "truncated_stream", "abort": False}])
        clean_cut = await world.mention("q r s t u v w x y z")
        assert (await world.answered(clean_cut)).outcome == "bad_response"

        fine = await world.mention("still there?")
        assert (await world.answered(fine)).outcome == "ok"
        assert world.gateway.shown()[-1] == expected(world)
        stats = await world.stats()
        assert stats.errors_by_outcome == {"bad_response": 4}


async def test_a_prompt_over_max_prompt_chars_is_refused_without_an_api_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch, max_prompt_chars=50) as world:
        msg = await world.mention("x" * 51)
        assert (await world.answered(msg)).outcome == "prompt_too_long"
        assert "50 characters" in world.gateway.shown()[-1]
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
        assert world.gateway.shown()[-1] == Answered.TIMEOUT.message()
        assert [c.outcome for c in world.llm.calls] == ["hang", "ok", "hang", "hang"]


async def test_a_reload_changes_prompts_at_once_and_names_what_waits_for_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch, system_prompt="old prompt") as world:
        first = await world.mention("before")
        await world.answered(first)
        assert world.system_prompt() == "old prompt"

        outcome = await world.reload(
            system_prompt="new prompt for {user}",
            system_prompts={GENERAL: "general prompt"},
            max_concurrent=2,
        )
        assert outcome.ok and "system_prompt, system_prompts" in outcome.detail
        assert "max_concurrent change on restart" in outcome.detail
        assert world.service.settings.max_concurrent == 8, "kept until the restart"
        second = await world.mention("after")
        await world.answered(second)
        assert world.system_prompt() == "general prompt"
        dm = await world.say("in private", is_dm=True, guild_id=None, channel_id="77")
        await world.answered(dm)
        assert world.system_prompt() == "new prompt for ann"

        refused = await world.reload(system_prompt="hi {nobody}", user_rate={"tokens": 0})
        assert not refused.ok
        assert "services.llm.settings.system_prompt" in refused.detail
        assert "services.llm.settings.user_rate" in refused.detail
        third = await world.mention("still?", channel_id="78")
        await world.answered(third)
        assert world.system_prompt() == "new prompt for ann", "the old settings stay"


async def test_an_endless_stream_is_cut_at_max_answer_chars_and_the_service_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, monkeypatch, max_answer_chars=3000) as world:
        world.llm.queue_faults([{"kind": "endless"}])
        msg = await world.mention("never stop")
        record = await world.answered(msg)
        shown = "".join(world.gateway.shown())
        assert "and on and on" in shown
        assert 3000 <= len(shown) < 3000 + 2 * 1900  # cut, not posted forever
        assert record.outcome == "ok"
        fine = await world.mention("still there?")
        assert (await world.answered(fine)).outcome == "ok"


# --- questions survive the llm: at least once, shown once --------------------------------


def left_open(world_dir: Path, *questions: Question) -> None:
    """What a killed llm process left in its questions file."""
    (world_dir / "llm").mkdir(parents=True, exist_ok=True)
    store = PendingQuestions(world_dir / "llm" / "llm-questions.sqlite3")
    for q in questions:
        assert store._accept(q)
        for i, part in enumerate(q.parts):
            store._part_sent(q.id, i, part)
    store.close()


def asked(id: str, text: str, at: float) -> MessageCreated:
    return MessageCreated(
        id=id,
        channel_id=GENERAL,
        guild_id=GUILD,
        author_id="100",
        author_name="ann",
        author_bot=False,
        content=f"<@{BOT}> {text}",
        created_at=at,
        mentions_bot=True,
    )


async def test_questions_a_killed_llm_left_open_are_answered_and_old_ones_get_one_apology(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    young, old = asked("9001", "still there?", now - 5), asked("9002", "hello?", now - 3600)
    left_open(
        tmp_path,
        Question(young.id, MESSAGE, young.to_body(), young.created_at),
        Question(old.id, MESSAGE, old.to_body(), old.created_at),
    )
    async with running(tmp_path, monkeypatch, pending_max_age_s=600) as world:
        assert (await world.answered(young)).outcome == "ok"
        assert (await world.answered(old)).outcome == "too_late"
        sends = {s.reply_to_id: s for s in world.gateway.of(SendMessage)}
        assert set(sends) == {young.id, old.id}, "one message each"
        assert sends[young.id].nonce == part_nonce(young.id, 0)
        assert sends[old.id].content == Answered.TOO_LATE.message()
        assert [c.messages[-1]["content"] for c in world.llm.calls] == ["still there?"]
        # Both are closed: a redelivery of either (Discord replaying them) is not answered.
        await world.gateway.service.publish(young)
        await world.gateway.service.publish(old)
        after = await world.mention("and now?")
        assert (await world.answered(after)).outcome == "ok"  # the lane handled them first
        assert len(world.gateway.of(SendMessage)) == 3


async def test_a_resumed_answer_edits_the_parts_already_posted_and_posts_only_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    msg = asked("9101", "!long 3000", time.time())
    gateway = StreamingGateway()
    posted = ["4001", "4002"]  # what the killed process had posted of its answer
    for i, message_id in enumerate(posted):
        gateway.messages[message_id] = SendMessage(GENERAL, f"part {i}, cut short")
    left_open(tmp_path, Question(msg.id, MESSAGE, msg.to_body(), msg.created_at, parts=posted))
    async with running(tmp_path, monkeypatch, gateway=gateway, edit_interval_s=0.02) as world:
        assert (await world.answered(msg)).outcome == "ok"
        assert world.gateway.of(SendMessage) == [], "nothing posted again"
        last = {e.message_id: e.content for e in world.gateway.of(EditMessage)}
        assert [last[i] for i in posted] == split_message(long_answer(3000))


async def test_an_ask_asked_again_is_taken_on_and_answered_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway asks again when the llm died before replying: taken on once."""
    async with running(tmp_path, monkeypatch) as world:
        world.llm.update_settings(token_delay_s=0.02)
        cmd = CommandInvoked("7001", "ask", {"prompt": "once"}, "100", "ann", GENERAL, GUILD)
        cmd = dataclasses.replace(cmd, deferred=True)
        first = await world.gateway.service.call("llm", cmd, timeout=10)
        again = await world.gateway.service.call("llm", cmd, timeout=10)
        assert first.later and again.later, "taken on: the llm finishes the response itself"
        assert (await world.answered(cmd.interaction_id)).outcome == "ok"
        assert len(world.llm.calls) == 1
        assert world.gateway.of(EditInteraction)[-1].content == expected(world)
