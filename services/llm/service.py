"""The llm service: answers people with a language model, streamed into Discord.

Listens to
- `discord.message.created`: answers an @mention, a reply to the bot, a DM, or anything
  in a conversation channel; never bots (itself included), never @everyone alone; a
  question the gateway found in Discord's history after a gap (`backfilled`) only while
  younger than `late_answer_max_age_s`, with a note that the answer is late;
- `discord.guild.ready` (retained: it comes on connecting, whenever llm starts) and
  `discord.connection`: who the bot is, what places are called;
- /ask, /reset, /usage (protocol/commands.py); `llm.stats` for its own counters;
- its settings, applied live on a reload (settings.py says which wait for a restart).
Does: gate (prompt length, breaker, rate limits) -> context (persistence) -> model
(client.py) -> Discord (stream.py), and records each exchange.
Sends: `discord.send`/`discord.edit`/`discord.typing` and `discord.interaction.*` to the
gateway, `store.*` queries to persistence, and publishes the durable `llm.exchange`.

Questions are answered at least once and shown exactly once (pending.py): each is on
disk before the event or request that brought it is acknowledged, and closed only when
its answer is complete. A restarted llm resumes the open ones; every part of an answer
is posted with a nonce derived from the question and the part, and recorded, so a
resumed answer edits what is already there and never posts it twice. Questions from
events are answered in a task of their own, so the gateway's event lane is acknowledged
as soon as the question is stored and never waits for the model.
"""

from __future__ import annotations

import datetime as dt
import os
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from loguru import logger

from protocol.channel import UNREACHABLE, RemoteError
from protocol.clock import Clock
from protocol.discord import (
    GATEWAY,
    NO_PINGS,
    CommandAnswer,
    CommandInvoked,
    ConnectionState,
    DeleteMessage,
    EditInteraction,
    EditMessage,
    GuildReady,
    InteractionFollowup,
    MessageCreated,
    MessageDeleted,
    MessageEdited,
    SendMessage,
    Typing,
)
from protocol.messages import R, Request, decode
from protocol.runtime import Service
from protocol.store import (
    STORE,
    KvGet,
    KvSet,
    LlmExchange,
    RecentMessages,
    ReplyChain,
    Usage,
    UsageRequest,
)
from services.llm.client import AnswerCache, Completion, LlmClient, LlmFailure, Stats
from services.llm.conversation import (
    Conversation,
    Place,
    Turn,
    strip_mention,
    system_prompt,
    turns_from_rows,
)
from services.llm.history import History
from services.llm.messages import LlmStats, StatsRequest
from services.llm.outcomes import Outcome
from services.llm.pending import (
    ASK,
    KEEP_ANSWERED_S,
    MESSAGE,
    PendingQuestions,
    Question,
    part_nonce,
)
from services.llm.ratelimit import RateLimiter
from services.llm.settings import Settings, base_url
from services.llm.stream import Pacer, ReplyStreamer, Sink, split_message

# /reset marks, in persistence's key-value store: "<channel>" for the whole channel (an
# admin's /reset), "<channel>:<user>" for one person's conversation there.
RESET_NAMESPACE = "llm.reset"
# Above an answer to a question the gateway found after a gap (Discord's subtext).
LATE_NOTE = "-# Late answer: I was disconnected from Discord when you asked."
# /reset and /usage are not deferred: the gateway waits 2 s for their answer.
COMMAND_STORE_TIMEOUT_S = 1.5
# A question resumed this many times without being answered is not tried again: it may
# be what kills the process.
MAX_ATTEMPTS = 3
# An /ask's webhook token lives 15 minutes; a resumed answer must be done well within.
INTERACTION_TOKEN_S = 900.0
ASK_RESUME_MARGIN_S = 150.0
QUESTIONS_FILE = "llm-questions.sqlite3"  # in the data dir


def build(clock: Clock | None = None) -> tuple[Service, Llm]:
    """The service and its state, fresh (tests build one per test)."""
    service = Service("llm", Settings, clock)
    llm = Llm(service)
    service.on_settings(llm.apply_settings)
    service.setup(llm.start)
    service.task(llm.work)
    service.teardown(llm.stop)
    # What it listens to: people talking, and who the bot is and where.
    service.event(MessageCreated)(llm.on_message)
    service.event(MessageEdited)(llm.on_edited)
    service.event(MessageDeleted)(llm.on_deleted)
    service.event(GuildReady)(llm.on_guild_ready)
    service.event(ConnectionState)(llm.on_connection)
    # What it answers.
    service.command("ask")(llm.ask)
    service.command("reset")(llm.reset)
    service.command("usage")(llm.usage)
    service.request(StatsRequest)(llm.on_stats)
    return service, llm


def reset_key(channel_id: str, user_id: str | None = None) -> str:
    """The /reset mark of a channel (for everyone), or of one user's conversation there."""
    return channel_id if user_id is None else f"{channel_id}:{user_id}"


def should_answer(
    msg: MessageCreated, bot_id: str | None, conversation_channels: tuple[str, ...]
) -> bool:
    """Whether a message is addressed to the bot."""
    if msg.author_bot or (bot_id is not None and msg.author_id == bot_id):
        return False
    if msg.mention_everyone and not msg.mentions_bot:
        return False  # @everyone / @here alone is not a question to the bot
    if msg.is_dm or msg.mentions_bot:
        return True
    if bot_id is not None and msg.reply_to_author_id == bot_id:
        return True
    channels = {c.lstrip("#") for c in conversation_channels}
    return msg.channel_id in channels or (msg.channel_name or "") in channels


def allowed_mentions(allow_mentions: bool) -> dict[str, Any]:
    """By default an answer pings nobody, whatever it says; `allow_mentions` lets it ping
    the users it names and the one it replies to (never @everyone, never roles)."""
    return {"parse": ["users"], "replied_user": True} if allow_mentions else NO_PINGS


def defuse_mentions(text: str) -> str:
    """Interaction responses carry no allowed_mentions (the gateway sends them pinging
    nobody); belt and braces against a mass ping if that ever changes."""
    return text.replace("@everyone", "@\u200beveryone").replace("@here", "@\u200bhere")


@dataclass
class Gate:
    outcome: Outcome
    retry_in_s: float | None = None
    say: bool = True  # False: the user was already told to slow down


class Llm:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.clock = service.clock
        s = self.settings
        self.client: LlmClient | None = None
        self.cache = AnswerCache(s.cache_ttl_s, clock=self.clock.monotonic)
        self.stats = Stats()
        self.limiter = RateLimiter(s.user_rate, s.guild_rate, self.clock.monotonic)
        self.pacer = Pacer(s.edit_interval_s, self.clock.monotonic)
        self.questions: PendingQuestions | None = None  # opened by start()
        self.started = anyio.Event()  # handlers wait for it: the questions must be open
        self._resumed: list[Question] = []
        self.history = History()
        self.bot_id: str | None = None
        self.guild_names: dict[str, str] = {}
        self.channel_names: dict[str, str] = {}
        self.reset_marks: dict[str, float | None] = {}  # reset_key -> time, None: no mark
        self.warned_until: dict[str, float] = {}
        self.slots = anyio.Semaphore(s.max_concurrent)
        self._jobs_in: MemoryObjectSendStream[Callable[[], Awaitable[None]]]
        self._jobs_out: MemoryObjectReceiveStream[Callable[[], Awaitable[None]]]
        self._jobs_in, self._jobs_out = anyio.create_memory_object_stream(100)
        self._work_scope: anyio.CancelScope | None = None

    @property
    def settings(self) -> Settings:
        return self.service.settings

    # --- lifecycle ------------------------------------------------------------------

    def apply_settings(self, new: Settings) -> None:
        """At start and on each reload: prompts, channels, rates and limits follow."""
        self.limiter.configure(new.user_rate, new.guild_rate)
        self.pacer.interval_s = new.edit_interval_s
        self.cache.ttl_s = new.cache_ttl_s
        if self.client is not None:
            self.client.configure(new)

    async def start(self) -> None:
        s = self.settings
        self.slots = anyio.Semaphore(s.max_concurrent)
        url = base_url(s)
        self.client = LlmClient(s, os.environ.get("OPENAI_API_KEY"), url, self.clock.monotonic)
        logger.info("llm: model {} at {}", s.model, url)
        assert self.service.ctx is not None
        self.questions = PendingQuestions(self.service.ctx.data_dir / QUESTIONS_FILE)
        await self.questions.forget_answered(self.clock.wall() - KEEP_ANSWERED_S)
        self._resumed = await self.questions.resume()
        if self._resumed:
            logger.info("llm: resuming {} question(s) left open", len(self._resumed))
        self.started.set()

    async def stop(self) -> None:
        """Stop answering first (so no half-answer meets a closed client), then close it.
        Questions cut short stay open on disk: the next process resumes them."""
        if self._work_scope is not None:
            self._work_scope.cancel()
        self._jobs_in.close()
        if self.client is not None:
            await self.client.close()

    async def work(self) -> None:
        """Runs the answers to messages, at most `max_concurrent` at a time; first those a
        previous process left open."""
        await self.started.wait()
        with anyio.CancelScope() as scope:
            self._work_scope = scope
            async with anyio.create_task_group() as tg, self._jobs_out:
                tg.start_soon(self._queue_resumed)
                async for job in self._jobs_out:
                    await self.slots.acquire()
                    tg.start_soon(self._run_job, job)

    async def _queue_resumed(self) -> None:
        resumed, self._resumed = self._resumed, []
        for q in resumed:
            try:
                await self._jobs_in.send(lambda q=q: self.resume(q))
            except anyio.ClosedResourceError:
                return  # stopping: they stay open for the next process

    async def _run_job(self, job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except Exception as exc:
            log_failure("answering failed", exc)
        finally:
            self.slots.release()

    # --- who the bot is, what places are called -------------------------------------

    async def on_connection(self, ev: ConnectionState) -> None:
        if ev.bot_user_id:
            self.bot_id = ev.bot_user_id

    async def on_guild_ready(self, ev: GuildReady) -> None:
        self.bot_id = ev.bot_user_id
        self.guild_names[ev.guild_id] = ev.name
        for ch in ev.channels:
            if "id" in ch and "name" in ch:
                self.channel_names[str(ch["id"])] = str(ch["name"])

    def _place(self, user: str, channel_id: str | None, guild_id: str | None) -> Place:
        return Place(
            user=user,
            channel_id=channel_id,
            channel=self.channel_names.get(channel_id or "", ""),
            guild_id=guild_id,
            guild=self.guild_names.get(guild_id or "", ""),
        )

    # --- messages -------------------------------------------------------------------

    async def on_message(self, msg: MessageCreated) -> None:
        """A durable event: it is acknowledged when this returns, so a question is on
        disk by then (and a full queue holds the event back rather than dropping it)."""
        await self.started.wait()
        assert self.questions is not None
        self.history.seen(msg)
        if msg.channel_name:
            self.channel_names[msg.channel_id] = msg.channel_name
        if not should_answer(msg, self.bot_id, self.settings.conversation_channels):
            return
        if msg.backfilled:  # asked while the bot was cut off from Discord (a gap)
            age = self.clock.wall() - msg.created_at
            if age > self.settings.late_answer_max_age_s:
                logger.info("llm: {} found after a gap, {:.0f} s old: not answered", msg.id, age)
                return
        question = Question(msg.id, MESSAGE, msg.to_body(), msg.created_at)
        if not await self.questions.accept(question):
            # A redelivery (the gateway RESUMEd and Discord replayed it): answered once only.
            logger.info("llm: {} already taken on", msg.id)
            return
        try:
            await self._jobs_in.send(lambda: self.answer_message(msg))
        except anyio.ClosedResourceError:
            pass  # stopping: the next process resumes it

    async def on_edited(self, msg: MessageEdited) -> None:
        self.history.edited(msg.id, msg.content)

    async def on_deleted(self, msg: MessageDeleted) -> None:
        self.history.deleted(msg.id)

    async def answer_message(
        self, msg: MessageCreated, parts: list[str] | None = None, resumed: bool = False
    ) -> None:
        """Answer a message, then close its question. `parts`: the messages an earlier
        attempt posted (edited, not posted again); a resumed question was let through
        the rate limits once already."""
        started = self.clock.monotonic()
        s = self.settings
        text = strip_mention(msg.content, self.bot_id) or msg.content.strip()
        note = LATE_NOTE if msg.backfilled else None
        sink = ChannelSink(self, msg.channel_id, msg.id, note, question=msg.id, parts=parts)
        if msg.backfilled:
            logger.info("llm: answering {} late (found after a gap)", msg.id)
        gate = self._gate(msg.author_id, msg.guild_id, text, rate_limit=not resumed)
        if gate is not None:
            if gate.say:
                await self.pacer.turn(msg.channel_id)
                await sink.say_instead(gate.outcome.message(gate.retry_in_s, s.max_prompt_chars))
            await self._record(msg.id, msg.guild_id, msg.channel_id, msg.author_id, gate.outcome)
            await self._close(msg.id)
            return
        place = self._place(msg.author_name, msg.channel_id, msg.guild_id)
        convo = await self._conversation(msg, text, place)
        outcome, completion, shown = await self._answer(
            convo, sink, msg.channel_id, existing=len(sink.ids)
        )
        await sink.trim(len(shown))
        await self._record(
            msg.id, msg.guild_id, msg.channel_id, msg.author_id, outcome, completion, started
        )
        await self._close(msg.id)

    async def _close(self, question_id: str) -> None:
        assert self.questions is not None
        await self.questions.answered(question_id, self.clock.wall())

    # --- questions a previous process left open ---------------------------------------

    async def resume(self, q: Question) -> None:
        """Answer a question a previous process took on: as if new while it is young
        enough (its parts already posted are edited in place), else one short apology."""
        age = self.clock.wall() - q.received_at
        max_age = self.settings.pending_max_age_s
        if q.kind == ASK:
            max_age = min(max_age, INTERACTION_TOKEN_S - ASK_RESUME_MARGIN_S)
        fresh = age <= max_age and q.attempts <= MAX_ATTEMPTS
        logger.info(
            "llm: resuming {} {} ({:.0f} s old, attempt {}){}",
            q.kind,
            q.id,
            age,
            q.attempts,
            "" if fresh else ": too late, apologising",
        )
        if q.kind == MESSAGE:
            msg = decode(MessageCreated.TYPE, q.body)
            assert isinstance(msg, MessageCreated)
            if fresh:
                await self.answer_message(msg, q.parts, resumed=True)
                return
            sink = ChannelSink(self, msg.channel_id, msg.id, question=msg.id, parts=q.parts)
            await sink.say_instead(Outcome.TOO_LATE.message())
            await self._record(
                msg.id, msg.guild_id, msg.channel_id, msg.author_id, Outcome.TOO_LATE
            )
            await self._close(msg.id)
            return
        cmd = decode(CommandInvoked.TYPE, q.body)
        assert isinstance(cmd, CommandInvoked)
        if fresh:
            await self._answer_ask(cmd, q.parts, resumed=True)
            return
        if age < INTERACTION_TOKEN_S and cmd.deferred:  # else nothing can be said any more
            await InteractionSink(self, cmd).edit(0, Outcome.TOO_LATE.message())
        await self._record(
            cmd.interaction_id, cmd.guild_id, cmd.channel_id, cmd.user_id, Outcome.TOO_LATE
        )
        await self._close(cmd.interaction_id)

    def _gate(
        self, user_id: str, guild_id: str | None, text: str, rate_limit: bool = True
    ) -> Gate | None:
        """Refusals that cost no API call: too long, model known down, too many questions."""
        s = self.settings
        if len(text) > s.max_prompt_chars:
            return Gate(Outcome.PROMPT_TOO_LONG)
        assert self.client is not None
        down_for = self.client.unavailable_for()
        if down_for is not None:
            return Gate(Outcome.MODEL_UNAVAILABLE, down_for)
        if not rate_limit:
            return None
        wait = self.limiter.check(user_id, guild_id)
        if wait > 0:
            now = self.clock.monotonic()
            say = self.warned_until.get(user_id, 0.0) <= now  # tell them once per wait
            if say:
                if len(self.warned_until) > 10_000:
                    self.warned_until = {u: t for u, t in self.warned_until.items() if t > now}
                self.warned_until[user_id] = now + wait
            return Gate(Outcome.RATE_LIMITED_USER, wait, say)
        return None

    async def _conversation(self, msg: MessageCreated, text: str, place: Place) -> Conversation:
        """The reply chain, else the channel's recent messages; just the message if the
        store does not answer (an answer without context beats no answer)."""
        s = self.settings
        rows: list[dict[str, Any]] = []
        reset_at: float | None = None
        try:
            try:
                reset_at = await self._reset_at(msg.channel_id, msg.author_id)
            except RemoteError as exc:  # answered, but not this: the history may still work
                logger.warning("llm: no /reset mark for {}: {}", msg.channel_id, exc)
            known = (
                self.history.chain(msg.reply_to_id, s.history_limit)
                if msg.reply_to_id
                else self.history.recent(msg.channel_id, s.history_limit)
            )
            if known is not None:
                rows = known
            elif msg.reply_to_id:
                query = ReplyChain(msg.reply_to_id, limit=s.history_limit)
                rows = (await self.service.call(STORE, query, timeout=s.store_timeout_s)).messages
            else:
                query = RecentMessages(msg.channel_id, limit=s.history_limit)
                rows = (await self.service.call(STORE, query, timeout=s.store_timeout_s)).messages
                self.history.seed(msg.channel_id, rows)
        except UNREACHABLE as exc:
            logger.warning("llm: no conversation history ({}): answering {} alone", exc, msg.id)
        turns = turns_from_rows(
            rows, self.bot_id, exclude_id=msg.id, before_ts=msg.created_at, after_ts=reset_at
        )
        turns.append(Turn("user", text, msg.author_name, msg.id))
        return Conversation(system_prompt(s, place, self._today()), tuple(turns))

    async def _reset_at(self, channel_id: str, user_id: str) -> float | None:
        """The latest /reset that applies to this user here: the channel's or their own."""
        marks = [
            await self._reset_mark(reset_key(channel_id)),
            await self._reset_mark(reset_key(channel_id, user_id)),
        ]
        return max((m for m in marks if m is not None), default=None)

    async def _reset_mark(self, key: str) -> float | None:
        if key not in self.reset_marks:
            if len(self.reset_marks) > 10_000:
                self.reset_marks.clear()  # the store has them: read again when needed
            query = KvGet(RESET_NAMESPACE, key)
            value = (
                await self.service.call(STORE, query, timeout=self.settings.store_timeout_s)
            ).value
            self.reset_marks[key] = float(value) if isinstance(value, int | float) else None
        return self.reset_marks[key]

    def _today(self) -> dt.date:
        return dt.date.fromtimestamp(self.clock.wall())

    # --- asking the model and streaming the answer ------------------------------------

    async def _answer(
        self,
        convo: Conversation,
        sink: Sink,
        key: str,
        cache_key: str | None = None,
        existing: int = 0,
    ) -> tuple[Outcome, Completion | None, list[str]]:
        """Stream the answer into `sink` (typing until the first words); returns the
        outcome, the completion if any, and the parts finally shown. `existing` parts
        were posted by an earlier attempt: they are edited, not posted again."""
        streamer = ReplyStreamer(sink, self.pacer, key, self.settings.split_at, existing)
        async with anyio.create_task_group() as typing:
            typing.start_soon(self._keep_typing, sink, streamer.first_write)
            async with anyio.create_task_group() as writer:
                writer.start_soon(streamer.run)
                outcome, completion = await self._ask_model(convo, streamer, cache_key)
            typing.cancel_scope.cancel()
        if streamer.failures >= streamer.MAX_WRITE_FAILURES:
            logger.warning("llm: the answer in {} could not be shown in full", key)
        return outcome, completion, streamer.parts

    async def _ask_model(
        self, convo: Conversation, streamer: ReplyStreamer, cache_key: str | None
    ) -> tuple[Outcome, Completion | None]:
        """The cached answer, the model's, or the failure's one message (after any text
        already shown: the user sees the answer was cut short, and why)."""
        s = self.settings
        cached = self.cache.get(cache_key) if cache_key else None
        if cached is not None:
            streamer.finish(cached)
            return Outcome.CACHE_HIT, None
        try:
            try:
                with anyio.fail_after(s.answer_deadline_s):
                    completion = await self._complete(convo, streamer.feed)
            except TimeoutError:
                raise LlmFailure(Outcome.TIMEOUT, detail="answer deadline") from None
        except LlmFailure as exc:
            note = exc.outcome.message(exc.retry_in_s, s.max_prompt_chars)
            shown = streamer.text.rstrip()
            streamer.finish(f"{shown}\n\n*{note}*" if shown else note)
            return exc.outcome, None
        streamer.finish(completion.text)
        if cache_key:
            self.cache.put(cache_key, completion.text)
        if s.log_prompts:
            logger.info("llm answer: {!r}", completion.text)
        return Outcome.OK, completion

    async def _complete(self, convo: Conversation, on_delta: Callable[[str], None]) -> Completion:
        """Ask the model; `context_length_exceeded` halves the token budget and asks again."""
        s = self.settings
        assert self.client is not None
        budget = s.max_context_tokens
        for attempt in range(s.context_retries + 1):
            trimmed = convo.trimmed(budget)
            if s.log_prompts:
                logger.info("llm prompt: {!r}", trimmed.to_messages())
            try:
                return await self.client.stream(trimmed.to_messages(), on_delta)
            except LlmFailure as exc:
                last_try = attempt == s.context_retries or len(trimmed.turns) <= 1
                if exc.outcome is not Outcome.CONTEXT_TOO_LONG or last_try:
                    raise
                budget = min(budget, trimmed.tokens()) // 2
                logger.info("llm: context too long; trimming to {} tokens", budget)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _keep_typing(self, sink: Sink, first_write: anyio.Event) -> None:
        """Discord shows "typing" for 10 s: renew it until the first words are out."""
        while not first_write.is_set():
            await sink.typing()
            with anyio.move_on_after(self.settings.typing_interval_s):
                await first_write.wait()

    async def _record(
        self,
        exchange_id: str,
        guild_id: str | None,
        channel_id: str | None,
        user_id: str,
        outcome: Outcome,
        completion: Completion | None = None,
        started: float | None = None,
    ) -> None:
        latency_ms = (self.clock.monotonic() - started) * 1000 if started is not None else 0.0
        self.stats.record(outcome, latency_ms if started is not None else None)
        prompt_tokens = completion.prompt_tokens if completion else 0
        completion_tokens = completion.completion_tokens if completion else 0
        logger.info(
            "llm: {} {} in {:.0f} ms ({}+{} tokens)",
            exchange_id,
            outcome.value,
            latency_ms,
            prompt_tokens,
            completion_tokens,
        )
        exchange = LlmExchange(
            id=exchange_id,
            guild_id=guild_id,
            channel_id=channel_id,
            user_id=user_id,
            model=completion.model if completion else self.settings.model,
            provider=completion.provider if completion else "",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=latency_ms,
            outcome=outcome.value,
            at=self.clock.wall(),
        )
        try:
            await self.service.publish(exchange)
        except Exception as exc:
            log_failure(f"could not record exchange {exchange_id}", exc)

    # --- slash commands -------------------------------------------------------------

    async def ask(self, cmd: CommandInvoked) -> CommandAnswer:
        """/ask prompt: a standalone question (no history), cached for identical ones.

        Deferred (as the gateway always does it): taken on at once, on disk, and answered
        `later` into the original response, like a mention; a repeat of the request (the
        gateway asks again if this process died before replying) is taken on only once."""
        await self.started.wait()
        assert self.questions is not None
        s = self.settings
        prompt = str(cmd.options.get("prompt", "")).strip()
        gate = self._gate(cmd.user_id, cmd.guild_id, prompt)
        if gate is not None:
            await self._record(
                cmd.interaction_id, cmd.guild_id, cmd.channel_id, cmd.user_id, gate.outcome
            )
            text = gate.outcome.message(gate.retry_in_s, s.max_prompt_chars)
            return CommandAnswer(text, ephemeral=True)
        if not cmd.deferred:  # nothing can be shown before the answer: it is the reply
            async with self.slots:
                return await self._answer_ask(cmd)
        question = Question(cmd.interaction_id, ASK, cmd.to_body(), self.clock.wall())
        if await self.questions.accept(question):
            await self._jobs_in.send(lambda: self._answer_later(cmd))
        return CommandAnswer(later=True)

    async def _answer_later(self, cmd: CommandInvoked) -> None:
        await self._answer_ask(cmd)

    async def _answer_ask(
        self, cmd: CommandInvoked, parts: list[str] | None = None, resumed: bool = False
    ) -> CommandAnswer:
        started = self.clock.monotonic()
        s = self.settings
        prompt = str(cmd.options.get("prompt", "")).strip()
        if resumed and (gate := self._gate(cmd.user_id, cmd.guild_id, prompt, False)):
            text = gate.outcome.message(gate.retry_in_s, s.max_prompt_chars)
            await InteractionSink(self, cmd).edit(0, text)
            await self._record(
                cmd.interaction_id, cmd.guild_id, cmd.channel_id, cmd.user_id, gate.outcome
            )
            await self._close(cmd.interaction_id)
            return CommandAnswer(text, ephemeral=True)
        place = self._place(cmd.user_name, cmd.channel_id, cmd.guild_id)
        convo = Conversation(
            system_prompt(s, place, self._today()),
            (Turn("user", prompt, cmd.user_name, cmd.interaction_id),),
        )
        cache_key = AnswerCache.key(s.model, convo.to_messages())
        sink: Sink = InteractionSink(self, cmd, parts) if cmd.deferred else NullSink()
        # Interaction edits go to the interaction's webhook (its own Discord rate limit),
        # not the channel's: paced per interaction, they don't queue behind channel answers.
        key = f"interaction:{cmd.interaction_id}"
        outcome, completion, shown = await self._answer(
            convo, sink, key, cache_key, existing=len(parts or [])
        )
        await self._record(
            cmd.interaction_id,
            cmd.guild_id,
            cmd.channel_id,
            cmd.user_id,
            outcome,
            completion,
            started,
        )
        first = shown[0] if shown else ""
        if not cmd.deferred and len(shown) > 1:
            first += "\n…"  # not deferred: no follow-ups can come before this answer
        content = first if s.allow_mentions else defuse_mentions(first)
        await self._close(cmd.interaction_id)
        return CommandAnswer(content, ephemeral=not outcome.ok)

    async def reset(self, cmd: CommandInvoked) -> CommandAnswer:
        """/reset: messages before now are no longer part of the caller's conversation in
        this channel; an admin's /reset starts the channel afresh for everyone."""
        if cmd.channel_id is None:
            return CommandAnswer("Use /reset in a channel.", ephemeral=True)
        everyone = cmd.by_admin
        key = reset_key(cmd.channel_id, None if everyone else cmd.user_id)
        now = self.clock.wall()
        self.reset_marks[key] = now
        said = (
            "Fresh start: I've forgotten this channel's conversation, for everyone."
            if everyone
            else "Fresh start: I've forgotten our conversation in this channel, for you "
            "(others' go on; an admin's /reset clears it for everyone)."
        )
        try:
            await self.service.call(
                STORE,
                KvSet(RESET_NAMESPACE, key, now),
                timeout=min(self.settings.store_timeout_s, COMMAND_STORE_TIMEOUT_S),
            )
        except UNREACHABLE as exc:
            logger.warning("llm: /reset not stored ({}): it lasts until llm restarts", exc)
            said += " (Until I restart: my store is not answering.)"
        return CommandAnswer(said, ephemeral=not everyone)

    async def usage(self, cmd: CommandInvoked) -> CommandAnswer:
        """/usage: this guild's recent exchanges, tokens, latency and outcomes."""
        s = self.settings
        since = self.clock.wall() - s.usage_window_s
        try:
            usage = await self.service.call(
                STORE,
                UsageRequest(since, cmd.guild_id),
                timeout=min(s.store_timeout_s, COMMAND_STORE_TIMEOUT_S),
            )
        except UNREACHABLE as exc:
            logger.warning("llm: /usage failed: {}", exc)
            return CommandAnswer(
                "Usage is not available right now; try again later.", ephemeral=True
            )
        return CommandAnswer(format_usage(usage, s.usage_window_s))

    async def on_stats(self, _: StatsRequest) -> LlmStats:
        assert self.client is not None
        return self.stats.snapshot(self.cache, self.client)

    # --- talking to the gateway -----------------------------------------------------

    async def gateway(self, msg: Request[R]) -> R | None:
        """A request to the gateway; None (logged) if it failed: Discord output is best effort."""
        try:
            return await self.service.call(GATEWAY, msg, timeout=self.settings.gateway_timeout_s)
        except UNREACHABLE as exc:
            logger.warning("llm: {} failed: {}", msg.TYPE, exc)
            return None


def log_failure(what: str, exc: BaseException) -> None:
    """A traceback without local variables (loguru's would show prompts and answers)."""
    logger.error("llm: {}: {}", what, "".join(traceback.format_exception(exc)).rstrip())


def format_usage(usage: Usage, window_s: float) -> str:
    days = max(1, round(window_s / 86400))
    p50 = usage.latency_p50_ms
    latency = f", median {p50:.0f} ms" if p50 is not None else ""
    lines = [
        f"**Language model, last {days} day{'s' if days != 1 else ''}**",
        f"{usage.exchanges} questions{latency}",
        f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens",
    ]
    if usage.by_outcome:
        lines.append(", ".join(f"{k}: {v}" for k, v in sorted(usage.by_outcome.items())))
    if usage.by_provider:
        by = sorted(usage.by_provider.items(), key=lambda kv: (-kv[1], kv[0]))
        lines.append("answered by " + ", ".join(f"{k}: {v}" for k, v in by))
    return "\n".join(lines)


class ChannelSink:
    """An answer in a channel: a reply, edited in place, continued in new messages.

    With a `question`, each part is posted with that part's nonce and recorded as posted:
    a resumed answer starts from the `parts` an earlier attempt posted."""

    def __init__(
        self,
        llm: Llm,
        channel_id: str,
        reply_to_id: str | None,
        note: str | None = None,
        question: str | None = None,
        parts: list[str] | None = None,
    ) -> None:
        self.llm = llm
        self.channel_id = channel_id
        self.reply_to_id = reply_to_id
        self.note = note  # a line above the first part (a late answer says so)
        self.question = question
        self.ids: list[str] = list(parts or [])  # the message of each part

    def _noted(self, index: int, content: str) -> str:
        return f"{self.note}\n{content}" if self.note and index == 0 else content

    def _mentions(self) -> dict[str, Any]:
        return allowed_mentions(self.llm.settings.allow_mentions)

    async def send(self, index: int, content: str) -> bool:
        msg = SendMessage(
            self.channel_id,
            self._noted(index, content),
            reply_to_id=self.reply_to_id if index == 0 else None,
            allowed_mentions=self._mentions(),
            nonce=part_nonce(self.question, index) if self.question else None,
        )
        sent = await self.llm.gateway(msg)
        if sent is None:
            return False
        self.ids.append(sent.message_id)
        if self.question is not None and self.llm.questions is not None:
            await self.llm.questions.part_sent(self.question, index, sent.message_id)
        if sent.content is not None and sent.content != self._noted(index, content):
            # Posted by an attempt that died before recording it: Discord gave back that
            # message, showing what that attempt wrote. Show this one's text.
            return await self.edit(index, content)
        return True

    async def edit(self, index: int, content: str) -> bool:
        message_id = self.ids[index]
        content = self._noted(index, content)
        msg = EditMessage(self.channel_id, message_id, content, allowed_mentions=self._mentions())
        self.llm.history.edited(message_id, content)
        return await self.llm.gateway(msg) is not None

    def editable(self, index: int) -> bool:
        return True

    async def typing(self) -> None:
        await self.llm.gateway(Typing(self.channel_id))

    async def trim(self, count: int) -> None:
        """Delete the parts past `count`: an earlier attempt's longer answer."""
        for message_id in self.ids[count:]:
            await self.llm.gateway(DeleteMessage(self.channel_id, message_id))
        del self.ids[count:]

    async def say_instead(self, content: str) -> None:
        """Replace whatever an earlier attempt showed with `content` (one message)."""
        if self.ids:
            await self.edit(0, content)
        else:
            await self.send(0, content)
        await self.trim(1)


class InteractionSink:
    """A deferred /ask: the original response is edited; further parts are follow-ups
    (each with its part's nonce: the gateway posts a repeated one once)."""

    def __init__(self, llm: Llm, cmd: CommandInvoked, parts: list[str] | None = None) -> None:
        self.llm = llm
        self.cmd = cmd
        self.ids: list[str] = list(parts or [])  # "@original", then each follow-up's id

    def _safe(self, content: str) -> str:
        return content if self.llm.settings.allow_mentions else defuse_mentions(content)

    async def send(self, index: int, content: str) -> bool:
        if index == 0:
            return await self.edit(0, content)
        cmd = self.cmd
        msg = InteractionFollowup(
            cmd.interaction_id,
            self._safe(content),
            interaction_token=cmd.interaction_token,
            application_id=cmd.application_id,
            nonce=part_nonce(cmd.interaction_id, index),
        )
        sent = await self.llm.gateway(msg)
        if sent is None:
            return False
        await self._posted(index, sent.message_id)
        return True

    async def edit(self, index: int, content: str) -> bool:
        cmd = self.cmd
        msg = EditInteraction(
            cmd.interaction_id,
            self._safe(content),
            interaction_token=cmd.interaction_token,
            application_id=cmd.application_id,
        )
        if await self.llm.gateway(msg) is None:
            return False
        if not self.ids:
            await self._posted(0, "@original")
        return True

    async def _posted(self, index: int, message_id: str) -> None:
        self.ids.append(message_id)
        if self.llm.questions is not None:
            await self.llm.questions.part_sent(self.cmd.interaction_id, index, message_id)

    def editable(self, index: int) -> bool:
        return index == 0

    async def typing(self) -> None:
        return None  # Discord already shows "thinking..."


class NullSink:
    """An /ask the gateway did not defer: nothing can be shown before the answer."""

    async def send(self, index: int, content: str) -> bool:
        return True

    async def edit(self, index: int, content: str) -> bool:
        return True

    def editable(self, index: int) -> bool:
        return False

    async def typing(self) -> None:
        return None


__all__ = ["Llm", "build", "should_answer", "split_message"]
