"""A local, deterministic stand-in for the OpenAI chat API, with fault injection.

The sandbox has no network, so the bot's LLM service talks to this server instead of
OpenAI. It speaks the subset of the API the real ``openai`` SDK uses for chat, with
OpenAI's response and error shapes, so the SDK's own parsing, retries and error classes
are exercised unchanged::

    llm = OpenAIStandin(host="127.0.0.1", port=0, api_key="sandbox-key")
    await llm.start()            # llm.port, llm.base_url == "http://127.0.0.1:PORT/v1"
    client = AsyncOpenAI(base_url=llm.base_url, api_key="sandbox-key")
    ...
    llm.calls                    # RecordedCall(model, messages, stream, time, outcome)
    await llm.stop()             # also cuts open streams and pending hangs

OpenAI API (``Authorization: Bearer <api_key>`` required, else 401 ``invalid_api_key``):

- ``GET /v1/models`` and ``GET /v1/models/{id}``: the model list (``sandbox-model``).
- ``POST /v1/chat/completions``: plain or ``stream: true`` (SSE ``data: {chunk}`` lines,
  then ``data: [DONE]``; ``stream_options: {"include_usage": true}`` adds a final chunk
  with ``choices: []`` and the usage). ``max_tokens``/``max_completion_tokens`` cut the
  answer with ``finish_reason: "length"``. Any model name is accepted and echoed.

Answers are deterministic (same messages, same answer). In order of precedence:

1. the ``always_output`` setting, if set;
2. ``!echo TEXT`` in the last user message: exactly TEXT (everything after ``!echo ``);
3. ``!long N`` in the last user message: about N characters (exactly N when N is large
   enough) of prose with a multi-line fenced code block in the middle;
4. otherwise ``Echo: <last user message> [turn T, M messages]`` (T = user messages).

Tokens are estimated as ceil(chars / 4) per text, plus 4 per message and 3 per prompt;
the same estimate feeds ``usage`` and the context limit.

Control API (JSON, no auth; bad input answers 400 ``{"error": {"message", ...}}``). Each
route has a Python twin on :class:`OpenAIStandin`:

- ``POST /_control/faults`` (``queue_faults``): a list (or ``{"faults": [...]}``) of
  faults appended to a queue; each later chat completion that passes auth consumes one:
  ``{"kind": "429", "retry_after": 0.1}`` 429 ``rate_limit_exceeded`` + ``retry-after``;
  ``{"kind": "500"}``; ``{"kind": "401"}``;
  ``{"kind": "hang", "seconds": 30}`` answers normally only after that long;
  ``{"kind": "garbage"}`` 200 with a body that is not JSON (``content_type`` defaults to
  ``application/json``, so the SDK tries to parse it);
  ``{"kind": "truncated_stream", "abort": true}`` stops half-way without ``[DONE]`` or a
  finish_reason; ``abort: true`` drops the connection, ``false`` ends the HTTP body
  cleanly (a non-streaming request gets half a JSON body either way);
  ``{"kind": "endless"}`` streams tokens forever (a non-streaming request just hangs);
  ``{"kind": "slow_stream", "token_delay_s": 0.2}`` answers normally, but pauses that long
  before each streamed piece (a plain answer waits for all of them): one slow answer, to
  kill a bot in the middle of it.
- ``POST /_control/settings`` (``update_settings``): a partial update of
  ``{"token_delay_s": 0.0, "context_limit_tokens": null, "down": false,
  "always_output": null}``. ``token_delay_s`` is the pause per streamed piece (a plain
  answer waits for all of its pieces); prompts above ``context_limit_tokens`` get 400
  ``context_length_exceeded``; ``down`` makes every ``/v1`` call answer 503.
- ``GET /_control/state`` (``state``): settings, queued faults, call count, models.
- ``POST /_control/reset`` (``reset``): clears faults and settings (not ``calls``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from aiohttp import web

DEFAULT_MODEL = "sandbox-model"
CHARS_PER_TOKEN = 4
MAX_LONG_CHARS = 200_000
MODEL_CREATED = 1_700_000_000
SYSTEM_FINGERPRINT = "fp_sandbox"
FAULT_KINDS = (
    "429",
    "500",
    "401",
    "hang",
    "garbage",
    "truncated_stream",
    "endless",
    "slow_stream",
)

_LONG_RE = re.compile(r"!long\s+(\d+)")
_ECHO_RE = re.compile(r"!echo ?(.*)", re.DOTALL)
_PIECE_RE = re.compile(r"\s*\S+|\s+")


@dataclass(frozen=True)
class Fault:
    """One queued misbehaviour; only the fields of its ``kind`` matter."""

    kind: str
    retry_after: float = 1.0
    seconds: float = 30.0
    abort: bool = True
    content_type: str = "application/json"
    token_delay_s: float = 0.2


@dataclass
class Settings:
    """Persistent behaviour, changed through the control API."""

    token_delay_s: float = 0.0
    context_limit_tokens: int | None = None
    down: bool = False
    always_output: str | None = None


@dataclass
class RecordedCall:
    """A chat completion request as received, and what it was answered with."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool
    time: float
    outcome: str = "pending"  # "ok", "503", "401", "400", a fault kind, "context_length"


# --- validation (shared by the HTTP control API and the Python methods) -------------


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number")
    if value < 0:
        raise ValueError(f"{name} must be >= 0")
    return float(value)


def parse_fault(raw: Any) -> Fault:
    """Validate one fault description so a typo fails loudly instead of being ignored."""
    if isinstance(raw, Fault):
        raw = asdict(raw)
    if not isinstance(raw, Mapping):
        raise ValueError("each fault must be an object with a 'kind'")
    kind = raw.get("kind")
    if isinstance(kind, int) and not isinstance(kind, bool):
        kind = str(kind)
    if kind not in FAULT_KINDS:
        raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}; got {kind!r}")
    unknown = set(raw) - {f.name for f in fields(Fault)}
    if unknown:
        raise ValueError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
    fault = Fault(kind=kind)
    if "retry_after" in raw:
        fault = replace(fault, retry_after=_number(raw["retry_after"], "retry_after"))
    if "seconds" in raw:
        fault = replace(fault, seconds=_number(raw["seconds"], "seconds"))
    if "token_delay_s" in raw:
        fault = replace(fault, token_delay_s=_number(raw["token_delay_s"], "token_delay_s"))
    if "abort" in raw:
        if not isinstance(raw["abort"], bool):
            raise ValueError("abort must be a boolean")
        fault = replace(fault, abort=raw["abort"])
    if "content_type" in raw:
        if not isinstance(raw["content_type"], str):
            raise ValueError("content_type must be a string")
        fault = replace(fault, content_type=raw["content_type"])
    return fault


def updated_settings(current: Settings, raw: Any) -> Settings:
    """Apply a partial settings update, rejecting unknown keys and wrong types."""
    if not isinstance(raw, Mapping):
        raise ValueError("settings must be an object")
    unknown = set(raw) - {f.name for f in fields(Settings)}
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    new = replace(current)
    if "token_delay_s" in raw:
        new.token_delay_s = _number(raw["token_delay_s"], "token_delay_s")
    if "context_limit_tokens" in raw:
        limit = raw["context_limit_tokens"]
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise ValueError("context_limit_tokens must be an integer or null")
        if limit is not None and limit < 1:
            raise ValueError("context_limit_tokens must be >= 1")
        new.context_limit_tokens = limit
    if "down" in raw:
        if not isinstance(raw["down"], bool):
            raise ValueError("down must be a boolean")
        new.down = raw["down"]
    if "always_output" in raw:
        output = raw["always_output"]
        if output is not None and not isinstance(output, str):
            raise ValueError("always_output must be a string or null")
        new.always_output = output
    return new


# --- deterministic answers and token estimates --------------------------------------


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a message whose content is a string, a list of parts, or null."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""


def estimate_tokens(text: str) -> int:
    """Roughly 4 characters per token, like OpenAI's rule of thumb."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt estimate with OpenAI's per-message framing overhead."""
    return 3 + sum(4 + estimate_tokens(message_text(m)) for m in messages)


def _filler(length: int, start: int) -> str:
    """Deterministic prose of exactly ``length`` characters, in short paragraphs."""
    parts: list[str] = []
    size = 0
    for n in itertools.count(start):
        sentence = f"Sentence {n} of the long sandbox answer is here to take up room. "
        if n % 5 == 4:
            sentence = sentence.rstrip() + "\n\n"
        parts.append(sentence)
        size += len(sentence)
        if size >= length:
            break
    return "".join(parts)[:length]


def long_answer(chars: int) -> str:
    """About ``chars`` characters with a fenced code block of several lines in the middle.

    For testing message splitting: the block is ~40% of the text, so a 2000-char split of
    a few-thousand-char answer lands inside it.
    """
    chars = min(max(chars, 0), MAX_LONG_CHARS)
    lines = ["```python", "def sandbox_long_answer(total: int = 0) -> int:"]
    i = 0
    while i < 4 or sum(len(line) + 1 for line in lines) < chars * 2 // 5:
        i += 1
        lines.append(f"    total += {i} * {i % 7}  # line {i}")
    lines += ["    return total", "```"]
    code = "\n".join(lines)
    head = _filler(chars * 3 // 10, 0).rstrip() + "\n\n"
    answer = head + code + "\n\n"
    return answer + _filler(max(chars - len(answer), 0), 1000)


def answer_for(messages: list[dict[str, Any]], settings: Settings) -> str:
    """The answer text: same messages and settings, same answer."""
    if settings.always_output is not None:
        return settings.always_output
    user_texts = [message_text(m) for m in messages if m.get("role") == "user"]
    last = user_texts[-1] if user_texts else ""
    if match := _ECHO_RE.search(last):
        return match.group(1)
    if match := _LONG_RE.search(last):
        return long_answer(int(match.group(1)))
    return f"Echo: {last} [turn {len(user_texts)}, {len(messages)} messages]"


def pieces(text: str) -> list[str]:
    """Stream pieces (a word with its leading whitespace); they join back to ``text``."""
    return _PIECE_RE.findall(text)


# --- the server ------------------------------------------------------------------------


def _error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class OpenAIStandin:
    """An aiohttp server that answers the ``openai`` SDK like OpenAI would."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "sandbox-key",
        models: Iterable[str] = (DEFAULT_MODEL,),
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.models = list(models)
        self.calls: list[RecordedCall] = []
        self.settings = Settings()
        self._faults: deque[Fault] = deque()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """What to pass as ``AsyncOpenAI(base_url=...)``."""
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> None:
        """Bind and serve; with ``port=0`` the OS picks a free port (see ``self.port``)."""
        if self._runner is not None:
            raise RuntimeError("already started")
        app = web.Application()
        app.add_routes(
            [
                web.get("/v1/models", self._list_models),
                web.get("/v1/models/{model}", self._get_model),
                web.post("/v1/chat/completions", self._chat_completions),
                web.get("/_control/state", self._control_state),
                web.post("/_control/faults", self._control_faults),
                web.post("/_control/settings", self._control_settings),
                web.post("/_control/reset", self._control_reset),
            ]
        )
        self._stopping = asyncio.Event()
        runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop serving: wake hangs and slow streams so they drop their connections."""
        if self._runner is None:
            return
        self._stopping.set()
        runner, self._runner = self._runner, None
        await runner.cleanup()

    async def __aenter__(self) -> OpenAIStandin:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- control, as Python methods ------------------------------------------------------

    def queue_faults(self, faults: Iterable[Mapping[str, Any] | Fault]) -> None:
        """Append faults for the next chat completions; all or none (ValueError)."""
        if isinstance(faults, Mapping | str | bytes):
            raise ValueError("faults must be a list")
        self._faults.extend([parse_fault(raw) for raw in faults])

    def update_settings(self, **changes: Any) -> Settings:
        """Change some settings (ValueError on unknown keys or wrong types)."""
        self.settings = updated_settings(self.settings, changes)
        return self.settings

    def reset(self) -> None:
        """Forget queued faults and settings; recorded calls are kept."""
        self._faults.clear()
        self.settings = Settings()

    def state(self) -> dict[str, Any]:
        """A JSON-able snapshot for tests and for ``GET /_control/state``."""
        return {
            "settings": asdict(self.settings),
            "faults": [asdict(f) for f in self._faults],
            "calls": len(self.calls),
            "models": list(self.models),
        }

    # --- helpers ---------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"x-request-id": f"req_sandbox{next(self._ids):06d}"}

    def _json(self, body: Any, status: int = 200, **headers: str) -> web.Response:
        return web.json_response(body, status=status, headers={**self._headers(), **headers})

    def _error(
        self,
        status: int,
        message: str,
        type_: str,
        param: str | None = None,
        code: str | None = None,
        **headers: str,
    ) -> web.Response:
        return self._json(_error_body(message, type_, param, code), status, **headers)

    def _gate(self, request: web.Request) -> web.Response | None:
        """The checks every /v1 route shares: ``down`` first, then the API key."""
        if self.settings.down:
            return self._error(503, "The server is overloaded or not ready yet.", "server_error")
        auth = request.headers.get("Authorization", "")
        if not auth:
            return self._error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
            )
        if auth != f"Bearer {self.api_key}":
            return self._bad_key(auth.removeprefix("Bearer "))
        return None

    def _bad_key(self, key: str) -> web.Response:
        shown = f"{key[:3]}***{key[-4:]}" if len(key) > 8 else "***"
        return self._error(
            401,
            f"Incorrect API key provided: {shown}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            code="invalid_api_key",
        )

    async def _pause(self, seconds: float) -> bool:
        """Sleep unless stopping; True means stop() was called and the caller should quit."""
        if seconds > 0 and not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), seconds)
            except TimeoutError:
                return False
        return self._stopping.is_set()

    @staticmethod
    def _drop(request: web.Request) -> None:
        """Cut the connection without finishing the response (a network-level failure)."""
        if request.transport is not None:
            request.transport.close()

    # --- /v1 routes ------------------------------------------------------------------

    def _model_object(self, model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": MODEL_CREATED, "owned_by": "sandbox"}

    async def _list_models(self, request: web.Request) -> web.Response:
        if (refusal := self._gate(request)) is not None:
            return refusal
        return self._json({"object": "list", "data": [self._model_object(m) for m in self.models]})

    async def _get_model(self, request: web.Request) -> web.Response:
        if (refusal := self._gate(request)) is not None:
            return refusal
        model = request.match_info["model"]
        if model not in self.models:
            return self._error(
                404,
                f"The model '{model}' does not exist or you do not have access to it.",
                "invalid_request_error",
                code="model_not_found",
            )
        return self._json(self._model_object(model))

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        valid = isinstance(body, dict) and isinstance(body.get("messages"), list)
        call: RecordedCall | None = None
        if valid:
            call = RecordedCall(
                model=str(body.get("model", "")),
                messages=body["messages"],
                stream=bool(body.get("stream")),
                time=time.time(),
            )
            self.calls.append(call)
        response = await self._answer_chat(request, body, call)
        if call is not None and call.outcome == "pending":
            call.outcome = str(response.status) if response.status != 200 else "ok"
        return response

    async def _answer_chat(
        self, request: web.Request, body: Any, call: RecordedCall | None
    ) -> web.StreamResponse:
        if (refusal := self._gate(request)) is not None:
            return refusal
        if not isinstance(body, dict):
            return self._error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly.)",
                "invalid_request_error",
            )
        if call is None or not body["messages"]:
            return self._error(
                400,
                "Missing required parameter: 'messages'.",
                "invalid_request_error",
                "messages",
                "missing_required_parameter",
            )
        if not all(isinstance(m, dict) and "role" in m for m in call.messages):
            return self._error(
                400,
                "Invalid value for 'messages': each message needs a 'role'.",
                "invalid_request_error",
                "messages",
                "invalid_value",
            )
        if not call.model:
            return self._error(400, "you must provide a model parameter", "invalid_request_error")

        fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            call.outcome = fault.kind
            if fault.kind == "hang" or (fault.kind == "endless" and not call.stream):
                if await self._pause(fault.seconds if fault.kind == "hang" else 3600):
                    self._drop(request)
                    return web.Response()
            elif fault.kind == "endless" and call.stream:
                return await self._endless_stream(request, call.model)
            elif fault.kind not in ("truncated_stream", "endless", "slow_stream"):
                return self._fault_response(fault, call.model)

        n_prompt = prompt_tokens(call.messages)
        limit = self.settings.context_limit_tokens
        if limit is not None and n_prompt > limit:
            call.outcome = "context_length"
            return self._error(
                400,
                f"This model's maximum context length is {limit} tokens. However, your "
                f"messages resulted in {n_prompt} tokens. Please reduce the length of the "
                "messages.",
                "invalid_request_error",
                "messages",
                "context_length_exceeded",
            )

        text = answer_for(call.messages, self.settings)
        finish_reason = "stop"
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if isinstance(max_tokens, int) and estimate_tokens(text) > max_tokens >= 0:
            text, finish_reason = text[: max_tokens * CHARS_PER_TOKEN], "length"
        completion = {
            "id": f"chatcmpl-sandbox{next(self._ids):08d}",
            "created": int(time.time()),
            "model": call.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        n_completion = estimate_tokens(text)
        usage = {
            "prompt_tokens": n_prompt,
            "completion_tokens": n_completion,
            "total_tokens": n_prompt + n_completion,
        }
        truncated = fault is not None and fault.kind == "truncated_stream"
        delay = (
            fault.token_delay_s
            if fault is not None and fault.kind == "slow_stream"
            else self.settings.token_delay_s
        )
        if call.stream:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return await self._stream(
                request,
                completion,
                text,
                finish_reason,
                usage if include_usage else None,
                truncate=fault if truncated else None,
                delay=delay,
            )
        if await self._pause(delay * len(pieces(text))):
            self._drop(request)
            return web.Response()
        message = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        full = {
            **completion,
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
            ],
            "usage": usage,
        }
        if truncated:
            return await self._truncated_json(request, full)
        return self._json(full)

    def _fault_response(self, fault: Fault, model: str) -> web.Response:
        """The immediate answers: 429, 500, 401 and garbage."""
        if fault.kind == "429":
            return self._error(
                429,
                f"Rate limit reached for {model} in organization org-sandbox on requests per "
                f"min (RPM): Limit 3, Used 3, Requested 1. Please try again in "
                f"{fault.retry_after:g}s. Visit https://platform.openai.com/account/rate-limits "
                "to learn more.",
                "requests",
                code="rate_limit_exceeded",
                **{"retry-after": f"{fault.retry_after:g}"},
            )
        if fault.kind == "500":
            return self._error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
            )
        if fault.kind == "401":
            return self._bad_key("sk-sandbox-revoked")
        return web.Response(
            status=200,
            body=b"<html><body>502 Bad Gateway? {not json",
            headers={**self._headers(), "Content-Type": fault.content_type},
        )

    async def _truncated_json(self, request: web.Request, full: dict[str, Any]) -> web.Response:
        """Half of a JSON body under a Content-Length for all of it, then a dropped socket."""
        data = json.dumps(full).encode()
        response = web.StreamResponse(
            headers={
                **self._headers(),
                "Content-Type": "application/json",
                "Content-Length": str(len(data)),
            }
        )
        await response.prepare(request)
        try:
            await response.write(data[: len(data) // 2])
        except ConnectionResetError:
            pass
        self._drop(request)
        return response

    async def _endless_stream(self, request: web.Request, model: str) -> web.StreamResponse:
        """A stream that never finishes: tokens until the client hangs up or we stop."""
        response = web.StreamResponse(
            headers={**self._headers(), "Content-Type": "text/event-stream; charset=utf-8"}
        )
        await response.prepare(request)
        head = {
            "id": "chatcmpl-endless",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        try:
            while not self._stopping.is_set():
                choice = {
                    "index": 0,
                    "delta": {"content": "and on "},
                    "logprobs": None,
                    "finish_reason": None,
                }
                await response.write(
                    b"data: " + json.dumps({**head, "choices": [choice]}).encode() + b"\n\n"
                )
                await asyncio.sleep(0.002)
        except (ConnectionResetError, RuntimeError):
            pass  # the client gave up, as it should
        self._drop(request)
        return response

    async def _stream(
        self,
        request: web.Request,
        completion: dict[str, Any],
        text: str,
        finish_reason: str,
        usage: dict[str, int] | None,
        truncate: Fault | None,
        delay: float,
    ) -> web.StreamResponse:
        """SSE like OpenAI: role chunk, content chunks, finish chunk, usage chunk, [DONE]."""

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            body = {**completion, "object": "chat.completion.chunk", "choices": choices}
            if usage is not None:
                body["usage"] = None
            body.update(extra)
            return b"data: " + json.dumps(body).encode() + b"\n\n"

        def delta(content: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}]

        parts = pieces(text)
        events = [chunk(delta({"role": "assistant", "content": "", "refusal": None}))]
        events += [chunk(delta({"content": part})) for part in parts]
        events.append(chunk(delta({}, finish_reason)))
        if usage is not None:
            events.append(chunk([], usage=usage))
        events.append(b"data: [DONE]\n\n")
        if truncate is not None:
            events = events[: 1 + len(parts) // 2]

        response = web.StreamResponse(
            headers={
                **self._headers(),
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await response.prepare(request)
        try:
            for index, event in enumerate(events):
                if 1 <= index <= len(parts):
                    if await self._pause(delay):
                        self._drop(request)
                        return response
                elif self._stopping.is_set():
                    self._drop(request)
                    return response
                await response.write(event)
        except ConnectionResetError:
            return response  # the client went away; nothing left to send
        if truncate is not None and truncate.abort:
            self._drop(request)
        return response

    # --- /_control routes ------------------------------------------------------------

    async def _control_body(self, request: web.Request) -> Any:
        try:
            return json.loads(await request.read())
        except ValueError as exc:
            raise ValueError(f"body is not JSON: {exc}") from None

    def _control_error(self, exc: ValueError) -> web.Response:
        return self._error(400, str(exc), "invalid_control_request")

    async def _control_state(self, request: web.Request) -> web.Response:
        return self._json(self.state())

    async def _control_faults(self, request: web.Request) -> web.Response:
        try:
            body = await self._control_body(request)
            if isinstance(body, dict) and set(body) == {"faults"}:
                body = body["faults"]
            if not isinstance(body, list):
                raise ValueError('expected a list of faults or {"faults": [...]}')
            self.queue_faults(body)
        except ValueError as exc:
            return self._control_error(exc)
        return self._json(self.state())

    async def _control_settings(self, request: web.Request) -> web.Response:
        try:
            self.settings = updated_settings(self.settings, await self._control_body(request))
        except ValueError as exc:
            return self._control_error(exc)
        return self._json(self.state())

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return self._json(self.state())
