"""The model endpoints: one AsyncOpenAI client per provider, retries, breakers, a cache.

`LlmClient` asks the providers in order (settings.py: base_url + model, then
`fallbacks`): a provider whose breaker is open is skipped, and one that fails before
any text reached the user (unavailable, busy, timing out, refusing our key, answering
garbage; after its own retries) hands the question to the next. Each provider is an
`Endpoint` with its own client and breaker; the `Completion` names who answered.

Every failure leaves here as an `LlmFailure` carrying its `Outcome`, so OpenAI's types
never leave this module. What is retried (with tenacity, jittered) and what is not:
- 429: after its retry-after (capped), 5xx and timeouts: after exponential backoff, but
  only while nothing has been shown to the user yet;
- 401/403: never: one log line tells the operator what to fix;
- garbage bodies and streams that end early: never, they are `bad_response`;
- `context_length_exceeded`: never here; the caller trims the prompt and asks again.
The breaker counts endpoint failures per attempt and, once open, fails every question at
once with the time left, without touching the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import statistics
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import openai
import pydantic
import tenacity
from loguru import logger
from openai import AsyncOpenAI, AsyncStream

from protocol.breaker import BreakerOpen, BreakerState, CircuitBreaker
from services.llm.messages import LlmStats
from services.llm.outcomes import Outcome
from services.llm.settings import DEFAULT_KEY_ENV, Settings


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    provider: str = ""  # the name of the provider that answered
    model: str = ""


class LlmFailure(Exception):
    def __init__(self, outcome: Outcome, retry_in_s: float | None = None, detail: str = "") -> None:
        super().__init__(f"{outcome.value}: {detail}" if detail else outcome.value)
        self.outcome = outcome
        self.retry_in_s = retry_in_s


class _Retryable(LlmFailure):
    """A failure before any text reached the user: asking again is safe."""


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


# Failures of the provider rather than of the question: the next provider may answer.
HAND_OVER = frozenset(
    {
        Outcome.MODEL_UNAVAILABLE,
        Outcome.MODEL_BUSY,
        Outcome.TIMEOUT,
        Outcome.AUTH_FAILED,
        Outcome.BAD_RESPONSE,
    }
)


def host_of(url: str) -> str:
    """A provider's default name: its URL's host (never the path or credentials)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.hostname or url}{port}"


class LlmClient:
    """The providers in order of preference; `stream` asks them until one answers."""

    def __init__(
        self,
        settings: Settings,
        api_key: str | None,
        base_url: str,
        clock: Callable[[], float] = time.monotonic,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        """`api_key` and `base_url` are the first provider's (OPENAI_API_KEY, and
        OPENAI_BASE_URL or base_url); the fallbacks' keys come from `environ`."""
        first = (settings.provider_name or host_of(base_url), settings.model, base_url)
        specs = [(*first, api_key, DEFAULT_KEY_ENV)]
        specs += [
            (
                p.name or host_of(p.base_url),
                p.model,
                p.base_url,
                environ.get(p.api_key_env),
                p.api_key_env,
            )
            for p in settings.fallbacks
        ]
        self.endpoints: list[Endpoint] = []
        for i, (name, model, url, key, key_env) in enumerate(specs):
            if any(e.name == name for e in self.endpoints):
                name = f"{name}#{i + 1}"  # two unnamed providers on one host
            self.endpoints.append(Endpoint(name, model, url, key, key_env, settings, clock))
        self.settings = settings
        self.last_provider: str | None = None
        if len(self.endpoints) > 1:
            logger.info(
                "llm: providers in order: {}",
                ", ".join(f"{e.name} ({e.model})" for e in self.endpoints),
            )

    @property
    def breaker(self) -> CircuitBreaker:
        """The first provider's breaker."""
        return self.endpoints[0].breaker

    def configure(self, settings: Settings) -> None:
        self.settings = settings
        self.endpoints[0].model = settings.model  # live; the fallbacks' on restart
        for endpoint in self.endpoints:
            endpoint.configure(settings)

    async def close(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.close()

    def unavailable_for(self) -> float | None:
        """Seconds until some provider may be asked again, if every breaker is open now."""
        waits = [e.unavailable_for() for e in self.endpoints]
        return None if None in waits else min(w for w in waits if w is not None)

    async def stream(
        self, messages: list[dict[str, str]], on_delta: Callable[[str], None]
    ) -> Completion:
        """Stream one answer from the first provider that gives one; raises `LlmFailure`
        (the last provider's) if none does. Once any text has reached the user, a
        failure is final: a second provider's answer cannot continue the first's."""
        failure: LlmFailure | None = None
        for i, endpoint in enumerate(self.endpoints):
            if not endpoint.breaker.allows():
                continue
            shown = False

            def feed(piece: str) -> None:
                nonlocal shown
                shown = True
                on_delta(piece)

            try:
                completion = await endpoint.stream(messages, feed)
            except LlmFailure as exc:
                if shown or exc.outcome not in HAND_OVER:
                    raise
                failure = exc
                rest = [e.name for e in self.endpoints[i + 1 :] if e.breaker.allows()]
                if rest:
                    logger.warning(
                        "model: {} failed ({}): asking {}",
                        endpoint.name,
                        exc.outcome.value,
                        rest[0],
                    )
                continue
            self.last_provider = endpoint.name
            return completion
        down_for = self.unavailable_for()
        if failure is None or (failure.outcome is Outcome.MODEL_UNAVAILABLE and down_for):
            detail = str(failure) if failure else "every provider's breaker is open"
            raise LlmFailure(
                Outcome.MODEL_UNAVAILABLE, down_for or self.settings.breaker_reset_s, detail
            )
        raise failure


class Endpoint:
    """One provider: its AsyncOpenAI client, retries and breaker."""

    def __init__(
        self,
        name: str,
        model: str,
        base_url: str,
        api_key: str | None,
        api_key_env: str,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.answered = 0
        self.failed = 0
        self._has_key = bool(api_key)
        # max_retries=0: retries are ours (one policy, with the breaker seeing each attempt).
        self.sdk = AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "missing",
            max_retries=0,
            timeout=settings.request_timeout_s,
        )
        self.breaker = CircuitBreaker(
            f"llm->model {name}",
            failure_threshold=settings.breaker_failures,
            reset_timeout_s=settings.breaker_reset_s,
            clock=clock,
            on_change=self._breaker_changed,
        )
        self.settings = settings
        self._operator_told = False

    def configure(self, settings: Settings) -> None:
        self.settings = settings
        self.breaker.failure_threshold = settings.breaker_failures
        self.breaker.reset_timeout_s = settings.breaker_reset_s

    async def close(self) -> None:
        await self.sdk.close()

    @staticmethod
    def _breaker_changed(name: str, old: BreakerState, new: BreakerState) -> None:
        logger.warning("breaker {} {} -> {}", name, old.value, new.value)

    def unavailable_for(self) -> float | None:
        """Seconds until the model may be asked again, if the breaker is open now."""
        return None if self.breaker.allows() else max(self.breaker.retry_in(), 0.1)

    # --- asking ---------------------------------------------------------------------

    async def stream(
        self, messages: list[dict[str, str]], on_delta: Callable[[str], None]
    ) -> Completion:
        """Stream one answer, calling `on_delta` with each piece; raises `LlmFailure`."""
        s = self.settings
        if not self._has_key:
            self._tell_operator(f"{self.api_key_env} is not set")
            self.failed += 1
            raise LlmFailure(Outcome.AUTH_FAILED, detail="no API key")
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(s.max_attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(_Retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    n = attempt.retry_state.attempt_number
                    if n > 1:
                        logger.info("model {}: attempt {} of {}", self.name, n, s.max_attempts)
                    completion = await self._attempt(messages, on_delta)
                    self.answered += 1
                    return completion
        except _Retryable as exc:
            self.failed += 1
            retry_in = exc.retry_in_s
            if exc.outcome is Outcome.MODEL_UNAVAILABLE:
                retry_in = self.unavailable_for() or s.breaker_reset_s
            raise LlmFailure(exc.outcome, retry_in, str(exc)) from exc
        except LlmFailure:
            self.failed += 1
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """429: what the endpoint asked for (capped); else exponential, both jittered."""
        s = self.settings
        exc = state.outcome.exception() if state.outcome else None
        jitter = random.uniform(0, s.retry_initial_s / 2)
        if isinstance(exc, _Retryable) and exc.retry_in_s is not None:
            return min(exc.retry_in_s, s.retry_after_cap_s) + jitter
        backoff = s.retry_initial_s * 2 ** (state.attempt_number - 1)
        return min(backoff, s.retry_after_cap_s) + jitter

    async def _attempt(
        self, messages: list[dict[str, str]], on_delta: Callable[[str], None]
    ) -> Completion:
        s = self.settings
        try:
            self.breaker.before_call()
        except BreakerOpen as exc:
            raise LlmFailure(Outcome.MODEL_UNAVAILABLE, exc.retry_in_s, str(exc)) from None
        delivered = False
        try:
            extra: dict[str, Any] = {}
            if s.max_completion_tokens:
                extra["max_completion_tokens"] = s.max_completion_tokens
            stream = await self.sdk.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
                **extra,
            )
            if not isinstance(stream, AsyncStream):  # an HTML page is returned as a str
                raise LlmFailure(Outcome.BAD_RESPONSE, detail=f"got {type(stream).__name__}")
            parts: list[str] = []
            received = 0
            finish: str | None = None
            usage = None
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices:
                        piece = choice.delta.content if choice.delta else None
                        if piece:
                            parts.append(piece)
                            received += len(piece)
                            delivered = True
                            on_delta(piece)
                        if choice.finish_reason:
                            finish = choice.finish_reason
                    if received > s.max_answer_chars:
                        # An endpoint that never stops (or a runaway answer): cut it here
                        # rather than post message after message.
                        logger.warning("answer cut at {} characters", received)
                        finish = "length"
                        break
            if finish is None:
                raise LlmFailure(Outcome.BAD_RESPONSE, detail="stream ended without finish_reason")
        except LlmFailure:
            self.breaker.record_failure()
            raise
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            self.breaker.record_success()  # the endpoint is up; our credentials are not
            self._tell_operator(f"HTTP {exc.status_code}")
            raise LlmFailure(Outcome.AUTH_FAILED, detail=str(exc.status_code)) from None
        except openai.BadRequestError as exc:
            self.breaker.record_success()
            if exc.code == "context_length_exceeded":
                raise LlmFailure(Outcome.CONTEXT_TOO_LONG, detail=exc.message) from None
            logger.warning("model refused the request (400 {}): {}", exc.code, exc.message)
            raise LlmFailure(Outcome.ERROR, detail=f"400 {exc.code}") from None
        except openai.RateLimitError as exc:
            self.breaker.record_failure()
            raise _Retryable(Outcome.MODEL_BUSY, _retry_after(exc), "429") from None
        except openai.APIStatusError as exc:
            if exc.status_code >= 500:
                self.breaker.record_failure()
                raise _Retryable(Outcome.MODEL_UNAVAILABLE, detail=str(exc.status_code)) from None
            self.breaker.record_success()
            logger.warning("model answered HTTP {}: {}", exc.status_code, exc.message)
            raise LlmFailure(Outcome.ERROR, detail=str(exc.status_code)) from None
        except openai.APITimeoutError:
            self.breaker.record_failure()
            failure = _Retryable if not delivered else LlmFailure
            raise failure(Outcome.TIMEOUT, detail="timeout") from None
        except openai.APIConnectionError:
            self.breaker.record_failure()
            if delivered:  # cut off half-way: what the user saw is not the answer
                raise LlmFailure(Outcome.BAD_RESPONSE, detail="stream cut off") from None
            raise _Retryable(Outcome.MODEL_UNAVAILABLE, detail="connection failed") from None
        except (json.JSONDecodeError, openai.APIError, pydantic.ValidationError) as exc:
            self.breaker.record_failure()
            raise LlmFailure(Outcome.BAD_RESPONSE, detail=type(exc).__name__) from None
        except BaseException:
            # Cancelled (the service is stopping): a half-open probe must not stay out.
            if self.breaker.state is BreakerState.HALF_OPEN:
                self.breaker.record_failure()
            raise
        self.breaker.record_success()
        self._operator_told = False
        return Completion(
            "".join(parts),
            usage.prompt_tokens if usage else 0,
            usage.completion_tokens if usage else 0,
            finish,
            self.name,
            self.model,
        )

    def _tell_operator(self, what: str) -> None:
        """Once (until it works again): the one line an operator needs to fix it."""
        if self._operator_told:
            return
        self._operator_told = True
        logger.error(
            "the model endpoint {} refused our credentials ({}): set {} to a valid key for {} "
            "(or fix its base_url in [services.llm.settings]) and restart llm",
            self.name,
            what,
            self.api_key_env,
            self.base_url,
        )


class AnswerCache:
    """Answers to identical standalone prompts (/ask), for `ttl_s`; never conversations."""

    def __init__(
        self, ttl_s: float, max_entries: int = 512, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(model: str, messages: list[dict[str, str]]) -> str:
        raw = json.dumps([model, messages], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(raw.encode()).hexdigest()

    def get(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < self._clock():
            self._entries.pop(key, None)
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: str, text: str) -> None:
        if self.ttl_s <= 0:
            return
        self._entries[key] = (self._clock() + self.ttl_s, text)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class Stats:
    """What `llm.stats` reports: counts, outcomes and the median latency of recent answers."""

    def __init__(self) -> None:
        self.requests = 0
        self.by_outcome: Counter[str] = Counter()
        self._latencies: deque[float] = deque(maxlen=500)

    def record(self, outcome: Outcome, latency_ms: float | None) -> None:
        self.requests += 1
        self.by_outcome[outcome.value] += 1
        if latency_ms is not None and outcome is Outcome.OK:
            self._latencies.append(latency_ms)

    def snapshot(self, cache: AnswerCache, client: LlmClient) -> LlmStats:
        return LlmStats(
            requests=self.requests,
            cache_hits=cache.hits,
            cache_entries=len(cache),
            errors_by_outcome={k: v for k, v in self.by_outcome.items() if not Outcome(k).ok},
            outcomes=dict(self.by_outcome),
            latency_p50_ms=statistics.median(self._latencies) if self._latencies else None,
            breaker=client.breaker.state.value,
            providers=[
                {
                    "name": e.name,
                    "model": e.model,
                    "breaker": e.breaker.state.value,
                    "answered": e.answered,
                    "failed": e.failed,
                }
                for e in client.endpoints
            ],
            last_provider=client.last_provider,
        )
