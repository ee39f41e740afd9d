"""The llm service end to end in `python run.py --sandbox`: the real py-cord client against
the Discord emulator and the real openai SDK against the OpenAI stand-in.

One sandbox (persistence, gateway, llm) serves the whole module; before each test the
stand-in is reset (faults and settings), the emulator's clock is moved past its rate-limit
windows, and a fresh user joins the guild, so no test's token bucket is another's. Every
wait polls the emulator, the stand-in or the database with a timeout.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from protocol.discord import NO_PINGS
from sandbox.openai_standin import long_answer
from services.llm.messages import StatsRequest
from tests.support.harness import Running, wait_for
from tests.support.sandbox import FAST_CORE, LLM_TABLE, Sandbox, Standin, running_sandbox

pytestmark = pytest.mark.timeout(60)

TOML = (
    FAST_CORE
    + LLM_TABLE
    + """[services.llm.settings]
edit_interval_s = 0.4
max_attempts = 3
retry_initial_s = 0.05
breaker_failures = 3
breaker_reset_s = 2.0
request_timeout_s = 5
user_rate = { tokens = 3, per_s = 60 }
guild_rate = { tokens = 1000, per_s = 60 }
"""
)

SEND = ("POST", "/channels/{channel_id}/messages")
EDIT = ("PATCH", "/channels/{channel_id}/messages/{message_id}")
_users = itertools.count(1)


@dataclass
class Bot:
    box: Sandbox
    llm: Standin
    user: str  # a username that joined for this test only
    bot_id: str

    def mention(self, text: str, channel: str = "general", user: str | None = None) -> str:
        return self.box.say(f"<@{self.bot_id}> {text}", user=user or self.user, channel=channel)

    def outcome(self, message_id: str, timeout: float = 15) -> str:
        """The recorded outcome of the answer to a message: written once every Discord
        write of that answer is done."""
        rows = wait_for(
            lambda: self.box.db("SELECT outcome FROM llm_exchanges WHERE id = ?", message_id),
            timeout,
            f"the exchange for {message_id}",
        )
        return rows[0][0]

    def after(self, message_id: str, channel: str = "general") -> list[dict[str, Any]]:
        """The bot's messages posted after `message_id` in a channel, oldest first."""
        return [m for m in self.box.bot_messages(channel) if int(m["id"]) > int(message_id)]

    def replies(self, message_id: str, channel: str = "general") -> list[dict[str, Any]]:
        return [m for m in self.box.bot_messages(channel) if m["reply_to_id"] == message_id]

    def requests(self) -> list[dict[str, Any]]:
        return self.box.get("requests")

    def stats(self) -> dict[str, Any]:
        return Running.call(self.box, "llm", StatsRequest())


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox-llm"), TOML) as box:
        yield box


@pytest.fixture
def bot(sandbox: Sandbox) -> Bot:
    llm = Standin(sandbox.state["llm_url"])
    llm.reset()
    # Past every REST rate-limit window, so a test's writes never wait on the last one's.
    sandbox.post("clock", {"advance_s": 10})
    name = f"tester{next(_users)}"
    sandbox.users[name] = sandbox.post("members", {"username": name})["id"]
    return Bot(sandbox, llm, name, sandbox.state["bot_user_id"])


def test_a_mention_gets_a_streamed_reply_edited_in_place(bot: Bot) -> None:
    answer = " ".join(f"word{i}" for i in range(30))
    bot.llm.settings(token_delay_s=0.05)  # ~1.5 s of streaming
    before = len(bot.requests())
    mid = bot.mention(f"!echo {answer}")
    assert bot.outcome(mid) == "ok"
    [reply] = bot.after(mid)
    assert reply["reply_to_id"] == mid
    assert reply["content"] == answer
    assert reply["edited_at"] is not None
    assert reply["allowed_mentions"] == NO_PINGS
    made = bot.requests()[before:]
    writes = [r for r in made if (r["method"], r["route"]) in (SEND, EDIT)]
    first, *edits = writes
    channel = bot.box.channels["general"]
    assert (first["method"], first["path"]) == ("POST", f"/api/v10/channels/{channel}/messages")
    assert len(edits) >= 2, f"streamed in several edits: {writes}"
    assert all(e["path"].endswith(f"/messages/{reply['id']}") for e in edits), "in place"
    assert all(r["status"] == 200 for r in writes)
    assert edits[-1]["t"] - first["t"] >= 0.7, "the first words were shown before the end"
    typing = [r for r in made if r["route"] == "/channels/{channel_id}/typing"]
    assert typing and typing[0]["t"] <= first["t"], "typing while waiting for the first token"


def test_a_5000_character_answer_arrives_as_several_messages_with_code_blocks_intact(
    bot: Bot,
) -> None:
    mid = bot.mention("!long 5000", channel="admin")
    assert bot.outcome(mid) == "ok"
    parts = bot.after(mid, "admin")
    assert len(parts) >= 3
    assert parts[0]["reply_to_id"] == mid and all(p["reply_to_id"] is None for p in parts[1:])
    texts = [p["content"] for p in parts]
    assert all(0 < len(t) < 2000 for t in texts)
    assert all(t.count("```") % 2 == 0 for t in texts), "every message closes its block"
    assert any(t.startswith("```python") for t in texts[1:]), "and the next one reopens it"
    joined = "\n".join(texts)
    for line in filter(None, (ln.strip() for ln in long_answer(5000).splitlines())):
        assert line in joined
    assert all(p["allowed_mentions"] == NO_PINGS for p in parts)


def test_model_output_with_everyone_is_sent_pinging_nobody(bot: Bot) -> None:
    alice = bot.box.users["alice"]
    mid = bot.mention(f"!echo @everyone free pizza, <@{alice}> and @here too")
    assert bot.outcome(mid) == "ok"
    [reply] = bot.after(mid)
    assert reply["content"] == f"@everyone free pizza, <@{alice}> and @here too"
    assert reply["allowed_mentions"] == NO_PINGS
    # And the bot did not take its own ping-laden message for a question.
    time.sleep(0.3)
    assert bot.after(mid) == [reply]


def test_two_429s_then_success_give_one_reply(bot: Bot) -> None:
    bot.llm.faults({"kind": "429", "retry_after": 0.1}, {"kind": "429", "retry_after": 0.1})
    calls = bot.llm.calls()
    mid = bot.mention("!echo third time lucky")
    assert bot.outcome(mid) == "ok"
    assert bot.llm.calls() - calls == 3
    assert [m["content"] for m in bot.after(mid)] == ["third time lucky"]


def test_a_user_over_the_rate_limit_is_told_to_slow_down_and_no_api_call_is_made(
    bot: Bot,
) -> None:
    calls = bot.llm.calls()
    allowed = [bot.mention(f"!echo answer {i}", channel="stats") for i in range(3)]
    assert [bot.outcome(m) for m in allowed] == ["ok"] * 3
    assert bot.llm.calls() - calls == 3
    over = bot.mention("!echo one more", channel="stats")
    assert bot.outcome(over) == "rate_limited_user"
    [told] = bot.replies(over, "stats")
    assert told["content"].startswith("Slow down")
    again = bot.mention("!echo please?", channel="stats")
    assert bot.outcome(again) == "rate_limited_user"
    assert bot.replies(again, "stats") == [], "told once per wait, not once per message"
    assert bot.llm.calls() - calls == 3, "refused before any API call"
    other = bot.mention("!echo someone else", channel="stats", user="bob")
    assert bot.outcome(other) == "ok"


def test_a_context_too_long_is_trimmed_and_answered(bot: Bot) -> None:
    notes = [f"note {i}: " + "words " * 130 for i in range(12)]
    history = [bot.box.say(note, user=bot.user, channel="admin") for note in notes]
    marks = ",".join("?" * len(history))
    sql = f"SELECT count(*) FROM messages WHERE id IN ({marks})"
    wait_for(lambda: bot.box.db(sql, *history) == [(12,)], 10, "the history stored")
    bot.llm.settings(context_limit_tokens=700)  # the 12 notes alone are ~2,400 tokens
    calls = bot.llm.calls()
    mid = bot.mention("what did we say?", channel="admin")
    assert bot.outcome(mid) == "ok"
    [reply] = bot.replies(mid, "admin")
    # "Echo: <last user message> [turn T, M messages]": T user turns reached the model.
    echo = r"Echo: (?:\S+: )?what did we say\? \[turn (\d+), \d+ messages\]"
    answer = re.fullmatch(echo, reply["content"])
    assert answer, reply["content"]
    assert 1 <= int(answer[1]) < 13, "some of the history was left out"
    assert bot.llm.calls() - calls >= 2, "refused as too long first, then asked again"


def test_bots_and_the_bot_itself_are_ignored(bot: Bot) -> None:
    # The emulator's only bot user is the bot itself (the control API adds human members
    # only), so "a bot" here is the bot's own account mentioning itself.
    calls = bot.llm.calls()
    own = bot.box.say(f"<@{bot.bot_id}> answer yourself!", user="sandbox-bot")
    everyone = bot.box.say("@everyone party in here", user=bot.user)
    sentinel = bot.mention("!echo only this one")
    assert bot.outcome(sentinel) == "ok"
    time.sleep(0.3)  # anything wrongly answered would have been by now
    assert bot.llm.calls() - calls == 1
    assert [m["content"] for m in bot.after(own)] == ["only this one"]
    for ignored in (own, everyone):
        assert bot.replies(ignored) == []
        assert bot.box.db("SELECT 1 FROM llm_exchanges WHERE id = ?", ignored) == []


def test_endpoint_down_opens_the_breaker_fails_fast_and_closes_when_it_returns(
    bot: Bot,
) -> None:
    bot.llm.settings(down=True)
    calls = bot.llm.calls()
    first = bot.mention("!echo are you up?")
    assert bot.outcome(first) == "model_unavailable"
    assert bot.llm.calls() - calls == 3, "max_attempts tries, then the breaker opens"
    [told] = bot.replies(first)
    assert re.fullmatch(r"The model is unavailable, try again in \d s\.", told["content"])
    assert bot.stats()["breaker"] == "open"
    opened = time.monotonic()

    started = time.monotonic()
    second = bot.mention("!echo and now?")
    [fast] = wait_for(lambda: bot.replies(second), 5, "the fast answer")
    assert time.monotonic() - started < 1.0, "answered at once"
    assert re.fullmatch(r"The model is unavailable, try again in [12] s\.", fast["content"])
    assert bot.outcome(second) == "model_unavailable"
    assert bot.llm.calls() - calls == 3, "no API call while the breaker is open"

    bot.llm.settings(down=False)
    time.sleep(max(0.0, opened + 2.1 - time.monotonic()))  # breaker_reset_s: a probe may go
    third = bot.mention("!echo back again")
    assert bot.outcome(third) == "ok"
    assert [m["content"] for m in bot.replies(third)] == ["back again"]
    assert bot.stats()["breaker"] == "closed"
    assert bot.llm.calls() - calls == 4


def test_no_service_restarted_along_the_way(sandbox: Sandbox) -> None:
    services = sandbox.status()["services"]
    assert {s["name"] for s in services} == {"persistence", "gateway", "llm"}
    assert all(s["restarts"] == 0 and s["state"] == "RUNNING" for s in services)
