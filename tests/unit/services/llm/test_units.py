"""The llm service's pure logic with plain fakes: splitting, pacing, streaming, trimming,
token buckets, outcomes, who gets answered, system prompts, settings and the cache."""

from __future__ import annotations

import datetime as dt
import time

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.discord import MESSAGE_LIMIT, NO_PINGS, MessageCreated
from protocol.settings import parse_settings
from protocol.store import Usage
from sandbox.openai_standin import long_answer
from services.llm.client import AnswerCache, LlmClient, Stats
from services.llm.conversation import Conversation, Place, Turn, system_prompt, turns_from_rows
from services.llm.outcomes import Outcome
from services.llm.ratelimit import RateLimiter
from services.llm.service import allowed_mentions, defuse_mentions, format_usage, should_answer
from services.llm.settings import Rate, Settings, base_url
from services.llm.stream import Pacer, ReplyStreamer, split_message


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- splitting ---------------------------------------------------------------------------


def fences_balanced(part: str) -> bool:
    return part.count("```") % 2 == 0


def test_a_long_answer_splits_below_the_limit_with_every_fence_closed_and_reopened() -> None:
    text = long_answer(5000)
    parts = split_message(text, 1900)
    assert len(parts) >= 3
    assert all(len(p) <= 1900 for p in parts)
    assert all(fences_balanced(p) for p in parts)
    # The block is cut: the next part reopens it with the same language.
    opened = [p for p in parts if p.startswith("```python")]
    assert opened, "the continuation reopens the code block"
    # Nothing is lost: every line of the answer is in the parts, in order.
    joined = "\n".join(parts)
    for line in filter(None, (ln.strip() for ln in text.splitlines())):
        assert line in joined


def test_short_text_is_one_part_and_splits_fall_on_line_boundaries() -> None:
    assert split_message("hello") == ["hello"]
    assert split_message("") == [""]
    lines = [f"line {i:03d} " + "x" * 40 for i in range(100)]
    parts = split_message("\n".join(lines), 500)
    assert all(len(p) <= 500 for p in parts)
    assert [ln for p in parts for ln in p.split("\n")] == lines


def test_a_line_longer_than_a_message_is_cut_at_a_space() -> None:
    words = " ".join(f"word{i}" for i in range(1000))
    parts = split_message(words, 1900)
    assert all(len(p) <= 1900 for p in parts)
    assert "".join(parts).replace(" ", "") == words.replace(" ", "")
    assert all(not p.startswith("ord") for p in parts[1:])  # no word cut in two


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet="ab `\n", max_size=150),
            st.sampled_from(["```py\n", "```\n", "\n```js\n", "x" * 400, " " * 40]),
        ),
        max_size=40,
    ),
    st.integers(120, 1900),
)
def test_every_prefix_splits_stably_so_finished_parts_never_change(
    chunks: list[str], limit: int
) -> None:
    """What makes streaming safe: a part followed by another is final."""
    text = "".join(chunks)
    final = split_message(text, limit)
    assert all(len(p) <= limit for p in final)
    assert all(fences_balanced(p) for p in final[:-1])  # the last is as the model left it
    for cut in range(0, len(text), 11):
        parts = split_message(text[:cut], limit)
        assert parts[:-1] == final[: len(parts) - 1]


# --- pacing and streaming ----------------------------------------------------------------


@pytest.mark.anyio
async def test_the_pacer_spaces_writes_per_channel_but_not_across_channels() -> None:
    pacer = Pacer(0.05)
    stamps: dict[str, list[float]] = {"a": [], "b": []}
    for key in ("a", "a", "a", "b"):
        await pacer.turn(key)
        stamps[key].append(time.monotonic())
    gaps = [y - x for x, y in zip(stamps["a"], stamps["a"][1:], strict=False)]
    assert all(g >= 0.045 for g in gaps)
    assert stamps["b"][0] - stamps["a"][-1] < 0.04  # another channel did not wait


class FakeSink:
    def __init__(self, editable_after_send: bool = True) -> None:
        self.log: list[tuple[str, int, str]] = []
        self.shown: dict[int, str] = {}
        self._editable = editable_after_send

    async def send(self, index: int, content: str) -> bool:
        assert len(content) < MESSAGE_LIMIT
        self.log.append(("send", index, content))
        self.shown[index] = content
        return True

    async def edit(self, index: int, content: str) -> bool:
        self.log.append(("edit", index, content))
        self.shown[index] = content
        return True

    def editable(self, index: int) -> bool:
        return self._editable or index == 0

    async def typing(self) -> None:
        return None


@pytest.mark.anyio
async def test_the_streamer_sends_then_edits_coalescing_tokens_and_ends_with_the_full_text() -> (
    None
):
    sink = FakeSink()
    streamer = ReplyStreamer(sink, Pacer(0.05), "chan")
    words = [f"w{i} " for i in range(40)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(streamer.run)
        for w in words:
            streamer.feed(w)
            await anyio.sleep(0.005)
        streamer.finish()
    assert sink.log[0][0] == "send"
    assert all(kind == "edit" and i == 0 for kind, i, _ in sink.log[1:])
    assert 2 <= len(sink.log) < len(words) / 2  # tokens coalesced into few edits
    assert sink.shown == {0: "".join(words).strip()}


@pytest.mark.anyio
async def test_the_streamer_moves_to_a_new_message_and_finishes_the_previous_one() -> None:
    sink = FakeSink()
    streamer = ReplyStreamer(sink, Pacer(0.0), "chan", limit=200)
    text = long_answer(1000)
    async with anyio.create_task_group() as tg:
        tg.start_soon(streamer.run)
        for i in range(0, len(text), 37):
            streamer.feed(text[i : i + 37])
            await anyio.lowlevel.checkpoint()
        streamer.finish()
    assert [sink.shown[i] for i in sorted(sink.shown)] == split_message(text, 200)
    sends = [i for kind, i, _ in sink.log if kind == "send"]
    assert sends == sorted(sends) == list(range(len(sink.shown)))


@pytest.mark.anyio
async def test_parts_that_cannot_be_edited_are_only_sent_once_final() -> None:
    sink = FakeSink(editable_after_send=False)
    streamer = ReplyStreamer(sink, Pacer(0.0), "i", limit=200)
    text = long_answer(800)
    async with anyio.create_task_group() as tg:
        tg.start_soon(streamer.run)
        for i in range(0, len(text), 25):
            streamer.feed(text[i : i + 25])
            await anyio.lowlevel.checkpoint()
        streamer.finish()
    assert not [1 for kind, i, _ in sink.log if kind == "edit" and i > 0]
    assert [sink.shown[i] for i in sorted(sink.shown)] == split_message(text, 200)


@pytest.mark.anyio
async def test_a_failure_note_replaces_the_streamed_text_at_the_end() -> None:
    sink = FakeSink()
    streamer = ReplyStreamer(sink, Pacer(0.0), "chan")
    async with anyio.create_task_group() as tg:
        tg.start_soon(streamer.run)
        streamer.feed("half an ans")
        await anyio.sleep(0.01)
        streamer.finish("half an ans\n\n*broken*")
    assert sink.shown == {0: "half an ans\n\n*broken*"}


# --- conversations -----------------------------------------------------------------------


def test_trimming_keeps_the_newest_turns_and_always_the_question() -> None:
    turns = tuple(Turn("user" if i % 2 else "assistant", f"{i} " + "x" * 396) for i in range(10))
    convo = Conversation("system prompt", turns)
    assert convo.trimmed(100_000) == convo
    trimmed = convo.trimmed(350)  # ~104 tokens a turn
    assert trimmed.turns == turns[-3:]
    assert trimmed.tokens() <= 350
    assert convo.trimmed(1).turns == turns[-1:]


def test_stored_messages_map_to_roles_after_the_reset_and_before_the_question() -> None:
    rows = [
        {"id": "1", "author_id": "u1", "author_name": "ann", "content": "old", "created_at": 1.0},
        {"id": "2", "author_id": "u1", "author_name": "ann", "content": "<@B> hi", "created_at": 5},
        {"id": "3", "author_id": "B", "author_name": "bot", "content": "part one", "created_at": 6},
        {"id": "4", "author_id": "B", "author_name": "bot", "content": "part two", "created_at": 6},
        {"id": "5", "author_id": "x", "author_bot": True, "content": "other bot", "created_at": 7},
        {"id": "6", "author_id": "u2", "author_name": "bob", "content": "me", "created_at": 8},
        {"id": "7", "author_id": "u1", "content": "deleted", "deleted": True, "created_at": 8},
        {"id": "9", "author_id": "u1", "content": "the question itself", "created_at": 9},
        {"id": "10", "author_id": "u1", "content": "after the question", "created_at": 10},
    ]
    turns = turns_from_rows(rows, "B", exclude_id="9", before_ts=9.0, after_ts=2.0)
    assert [(t.role, t.content) for t in turns] == [
        ("user", "hi"),
        ("assistant", "part one\npart two"),
        ("user", "me"),
    ]
    convo = Conversation("sys", (*turns, Turn("user", "q", "ann")))
    # Two people talking: each user line says who spoke.
    assert convo.to_messages()[1] == {"role": "user", "content": "ann: hi"}
    assert convo.to_messages()[0] == {"role": "system", "content": "sys"}


def test_system_prompt_per_channel_then_guild_with_placeholders() -> None:
    s = parsed(
        system_prompt="Default for {user} in {guild} #{channel} on {date}",
        system_prompts={"c2": "Channel prompt for {user}", "g1": "Guild {guild}"},
    )
    day = dt.date(2025, 1, 2)
    place = Place("ann", "c1", "general", "g9", "Cafe")
    assert system_prompt(s, place, day) == "Default for ann in Cafe #general on 2025-01-02"
    assert system_prompt(s, Place("ann", "c2", "x", "g1", "Cafe"), day) == "Channel prompt for ann"
    assert system_prompt(s, Place("ann", "c3", "x", "g1", "Cafe"), day) == "Guild Cafe"
    dm = system_prompt(s, Place("ann"), day)
    assert "a direct message #DM" in dm
    # The schema checks placeholder names, not what follows them: the raw prompt, not a crash.
    odd = parsed(system_prompt="Hello {user.name}")
    assert system_prompt(odd, place, day) == "Hello {user.name}"


# --- rate limits -------------------------------------------------------------------------


def test_user_bucket_refuses_without_taking_and_refills() -> None:
    clock = Clock()
    limiter = RateLimiter(Rate(2, 10), Rate(100, 10), clock)
    assert limiter.check("u", "g") == 0
    assert limiter.check("u", "g") == 0
    wait = limiter.check("u", "g")
    assert wait == pytest.approx(5.0)
    assert limiter.check("other", "g") == 0  # someone else is not held up
    clock.now += 5
    assert limiter.check("u", "g") == 0


def test_guild_bucket_is_shared_and_a_refusal_costs_the_user_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(Rate(5, 10), Rate(2, 10), clock)
    assert limiter.check("a", "g") == 0
    assert limiter.check("b", "g") == 0
    assert limiter.check("c", "g") > 0  # the guild is out
    assert limiter.check("c", None) == 0  # a DM has no guild bucket
    clock.now += 5  # one guild token back
    assert limiter.check("c", "g") == 0


def test_rates_are_toml_tables_of_tokens_per_seconds() -> None:
    s = parsed(user_rate={"tokens": 2, "per_s": 30}, guild_rate={"tokens": 100, "per_s": 60})
    assert (s.user_rate, s.guild_rate) == (Rate(2, 30), Rate(100, 60))
    assert Settings().user_rate == Rate(5, 60) and Settings().guild_rate == Rate(30, 60)
    assert problems(user_rate={"tokens": 0, "per_s": 60}) == [
        "services.llm.settings.user_rate.tokens"
    ]
    assert problems(guild_rate={"tokens": 5}) == ["services.llm.settings.guild_rate.per_s"]
    assert problems(user_rate="5/min")[0] == "services.llm.settings.user_rate"  # not a table


# --- outcomes ----------------------------------------------------------------------------


def test_each_outcome_has_one_message_and_successes_have_none() -> None:
    messages = {o: o.message(12.2, 4000) for o in Outcome}
    assert messages[Outcome.OK] == messages[Outcome.CACHE_HIT] == ""
    failures = [m for o, m in messages.items() if not o.ok]
    assert all(failures) and len(set(failures)) == len(failures)
    assert messages[Outcome.MODEL_UNAVAILABLE] == "The model is unavailable, try again in 13 s."
    assert "slow down" in messages[Outcome.RATE_LIMITED_USER].lower()
    assert "4000" in messages[Outcome.PROMPT_TOO_LONG]


# --- who is answered ---------------------------------------------------------------------


def message(**kw: object) -> MessageCreated:
    base: dict[str, object] = {
        "id": "1",
        "channel_id": "c",
        "guild_id": "g",
        "author_id": "u",
        "author_name": "ann",
        "author_bot": False,
        "content": "hi",
        "created_at": 1.0,
    }
    return MessageCreated(**{**base, **kw})  # type: ignore[arg-type]


def test_who_gets_an_answer() -> None:
    convo = ("talk", "c9")
    assert should_answer(message(mentions_bot=True), "B", ())
    assert should_answer(message(is_dm=True, guild_id=None), "B", ())
    assert should_answer(message(reply_to_author_id="B"), "B", ())
    assert should_answer(message(channel_id="c9"), "B", convo)
    assert should_answer(message(channel_name="talk"), "B", convo)
    assert not should_answer(message(), "B", convo)
    assert not should_answer(message(reply_to_author_id="someone"), "B", ())
    assert not should_answer(message(mentions_bot=True, author_bot=True), "B", ())
    assert not should_answer(message(is_dm=True, author_id="B"), "B", ())
    assert not should_answer(message(mention_everyone=True, channel_id="c9"), "B", convo)
    assert should_answer(message(mention_everyone=True, mentions_bot=True), "B", ())


def test_replies_ping_nobody_unless_allowed_and_interaction_text_is_defused() -> None:
    assert allowed_mentions(False) == NO_PINGS
    assert allowed_mentions(True) == {"parse": ["users"], "replied_user": True}
    assert defuse_mentions("@everyone <@1> @here") == "@\u200beveryone <@1> @\u200bhere"


# --- settings ----------------------------------------------------------------------------


def parsed(**raw: object) -> Settings:
    settings, found = parse_settings(Settings, raw, "services.llm.settings")
    assert found == [], found
    return settings


def problems(**raw: object) -> list[str]:
    return [p.key for p in parse_settings(Settings, raw, "services.llm.settings")[1]]


def test_every_bad_setting_is_reported_with_its_full_key() -> None:
    assert problems(
        model="",
        max_context_tokens=-5,
        conversation_channels=["#talk", 12],
        allow_mentions="yes",
        system_prompt="Hi {name}",
        system_prompts={"c1": "fine {user}", "c2": "stray { brace"},
        split_at=5000,
        base_url="api.openai.com",
        typo_key=1,
    ) == [
        "services.llm.settings.typo_key",
        "services.llm.settings.base_url",
        "services.llm.settings.model",
        "services.llm.settings.max_context_tokens",
        "services.llm.settings.system_prompt",
        "services.llm.settings.system_prompts",
        "services.llm.settings.conversation_channels",
        "services.llm.settings.allow_mentions",
        "services.llm.settings.split_at",
    ]
    assert parsed(conversation_channels=["#talk", "12"]).conversation_channels == ("#talk", "12")
    assert parsed(max_completion_tokens=None).max_completion_tokens is None


def test_fallback_providers_are_a_list_of_tables_each_checked() -> None:
    assert parsed().fallbacks == ()  # one provider: the simple case and the default
    two = parsed(
        fallbacks=[
            {"name": "backup", "base_url": "http://b/v1", "model": "m2", "api_key_env": "B_KEY"},
            {"base_url": "https://c/v1", "model": "m3"},
        ]
    ).fallbacks
    assert [(p.name, p.base_url, p.model, p.api_key_env) for p in two] == [
        ("backup", "http://b/v1", "m2", "B_KEY"),
        ("", "https://c/v1", "m3", "OPENAI_API_KEY"),
    ]
    assert problems(
        fallbacks=[
            {"base_url": "b", "model": "m", "api_key_env": "not a name"},
            {"model": "m", "key": "x"},
        ]
    ) == [
        "services.llm.settings.fallbacks[0].base_url",
        "services.llm.settings.fallbacks[0].api_key_env",
        "services.llm.settings.fallbacks[1].key",
        "services.llm.settings.fallbacks[1].base_url",
    ]
    twice = {"name": "x", "base_url": "http://b/v1", "model": "m"}
    assert problems(fallbacks=[twice, twice]) == ["services.llm.settings.fallbacks"]
    assert problems(fallbacks={"name": "x"}) == ["services.llm.settings.fallbacks"]


def test_providers_are_named_by_their_setting_or_host_and_never_twice_the_same() -> None:
    settings = parsed(
        provider_name="main",
        fallbacks=[
            {"base_url": "http://10.0.0.2:8000/v1", "model": "m2", "api_key_env": "B_KEY"},
            {"base_url": "http://user:pw@10.0.0.2:8000/v1", "model": "m3"},
        ],
    )
    client = LlmClient(settings, "k", "http://a/v1", environ={"B_KEY": "b"})
    assert [(e.name, e.model) for e in client.endpoints] == [
        ("main", "gpt-4o-mini"),
        ("10.0.0.2:8000", "m2"),
        ("10.0.0.2:8000#3", "m3"),  # no credentials in a name
    ]
    assert client.breaker is client.endpoints[0].breaker


def test_conversation_channels_match_by_id_or_name_with_or_without_hash() -> None:
    channels = parsed(conversation_channels=["#talk", "c9"]).conversation_channels
    assert should_answer(message(channel_name="talk"), "B", channels)
    assert should_answer(message(channel_id="c9"), "B", channels)


def test_openai_base_url_in_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert base_url(parsed(base_url="http://a/v1")) == "http://a/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert base_url(parsed(base_url="http://a/v1")) == "http://127.0.0.1:9/v1"


# --- cache and stats ---------------------------------------------------------------------


def test_the_cache_expires_and_counts_hits() -> None:
    clock = Clock()
    cache = AnswerCache(60, max_entries=2, clock=clock)
    k1 = AnswerCache.key("m", [{"role": "user", "content": "a"}])
    k2 = AnswerCache.key("m", [{"role": "user", "content": "b"}])
    assert k1 != k2 and k1 == AnswerCache.key("m", [{"role": "user", "content": "a"}])
    cache.put(k1, "answer a")
    assert cache.get(k1) == "answer a"
    assert cache.get(k2) is None
    clock.now += 61
    assert cache.get(k1) is None
    assert (cache.hits, cache.misses) == (1, 2)


def test_stats_report_errors_and_median_latency() -> None:
    stats = Stats()
    for ms in (100, 300, 200):
        stats.record(Outcome.OK, ms)
    stats.record(Outcome.TIMEOUT, 5000)
    snap = stats.snapshot(AnswerCache(1), LlmClient(Settings(), "key", "http://model.test/v1"))
    assert snap.requests == 4
    assert snap.errors_by_outcome == {"timeout": 1}
    assert snap.outcomes == {"ok": 3, "timeout": 1}
    assert snap.latency_p50_ms == 200
    assert snap.breaker == "closed"
    assert snap.providers == [
        {
            "name": "model.test",
            "model": "gpt-4o-mini",
            "breaker": "closed",
            "answered": 0,
            "failed": 0,
        }
    ]


def test_usage_is_formatted_for_people() -> None:
    text = format_usage(
        Usage(
            exchanges=3,
            prompt_tokens=120,
            completion_tokens=45,
            by_outcome={"ok": 2, "timeout": 1},
            latency_p50_ms=812.4,
        ),
        7 * 86400,
    )
    assert "last 7 days" in text and "3 questions" in text and "median 812 ms" in text
    assert "120 prompt + 45 completion tokens" in text and "timeout: 1" in text
    assert "answered by" not in text  # no provider recorded (exchanges stored before v2)
    usage = Usage(3, 1, 1, {"ok": 3}, 5.0, by_provider={"primary": 1, "backup": 2})
    assert format_usage(usage, 86400).endswith("\nanswered by backup: 2, primary: 1")
