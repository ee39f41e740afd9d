"""The OpenAI stand-in, driven by the real ``openai.AsyncOpenAI`` client (never mocked).

These tests also pin down how this SDK version reacts to each fault, which is what the
bot's LLM service has to handle.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import openai
import pytest
from openai import AsyncOpenAI

from sandbox.openai_standin import DEFAULT_MODEL, OpenAIStandin, prompt_tokens

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]

KEY = "sandbox-key"
HI = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def llm() -> AsyncIterator[OpenAIStandin]:
    server = OpenAIStandin(host="127.0.0.1", port=0, api_key=KEY)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def client(llm: OpenAIStandin) -> AsyncIterator[AsyncOpenAI]:
    sdk = AsyncOpenAI(base_url=llm.base_url, api_key=KEY, max_retries=0, timeout=5)
    try:
        yield sdk
    finally:
        await sdk.close()


async def ask(client: AsyncOpenAI, messages: list[dict[str, Any]] = HI, **kwargs: Any) -> Any:
    return await client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, **kwargs)


async def ask_text(client: AsyncOpenAI, text: str) -> str:
    completion = await ask(client, [{"role": "user", "content": text}])
    return completion.choices[0].message.content


async def stream_all(client: AsyncOpenAI, messages: list[dict[str, Any]], **kwargs: Any) -> list:
    stream = await ask(client, messages, stream=True, **kwargs)
    return [chunk async for chunk in stream]


async def raw(
    llm: OpenAIStandin, method: str, path: str, body: bytes | None = None, key: str | None = KEY
) -> tuple[int, Any]:
    """A plain HTTP call, for what the SDK can't send (no key, bad JSON)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = llm.base_url.removesuffix("/v1") + path
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, url, data=body, headers=headers) as response,
    ):
        return response.status, await response.json()


# --- the happy path ------------------------------------------------------------------


async def test_models_list(llm: OpenAIStandin, client: AsyncOpenAI) -> None:
    models = [m async for m in client.models.list()]
    assert [m.id for m in models] == [DEFAULT_MODEL]
    assert models[0].object == "model"
    assert (await client.models.retrieve(DEFAULT_MODEL)).id == DEFAULT_MODEL
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("gpt-nonexistent")


async def test_plain_completion_shape_and_usage(llm: OpenAIStandin, client: AsyncOpenAI) -> None:
    completion = await ask(client)
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == DEFAULT_MODEL
    assert isinstance(completion.created, int)
    (choice,) = completion.choices
    assert (choice.index, choice.finish_reason) == (0, "stop")
    assert choice.message.role == "assistant"
    assert choice.message.content == "Echo: hello there [turn 1, 1 messages]"
    usage = completion.usage
    assert usage.prompt_tokens == prompt_tokens(HI)
    assert usage.completion_tokens == -(-len(choice.message.content) // 4)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    (call,) = llm.calls
    assert (call.model, call.messages, call.stream, call.outcome) == (
        DEFAULT_MODEL,
        HI,
        False,
        "ok",
    )
    assert abs(call.time - time.time()) < 5


async def test_stream_assembles_the_plain_answer_and_ends_with_usage(
    client: AsyncOpenAI,
) -> None:
    messages = [{"role": "user", "content": "stream this, please, word by word"}]
    plain = await ask(client, messages)
    chunks = await stream_all(client, messages, stream_options={"include_usage": True})
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])
    # Without include_usage there is no usage chunk.
    assert all(c.choices and c.usage is None for c in await stream_all(client, messages))


async def test_answers_are_deterministic_and_follow_the_conversation(
    client: AsyncOpenAI,
) -> None:
    conversation = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
    ]
    first = (await ask(client, conversation)).choices[0].message.content
    assert first == (await ask(client, conversation)).choices[0].message.content
    assert first == "Echo: second [turn 2, 4 messages]"
    shorter = (await ask(client, conversation[:2])).choices[0].message.content
    assert shorter == "Echo: first [turn 1, 2 messages]"


async def test_long_directive_gives_the_length_with_a_code_block(client: AsyncOpenAI) -> None:
    text = await ask_text(client, "write a lot !long 5000 please")
    assert 4900 <= len(text) <= 5100
    assert text.count("```") == 2
    code = text.split("```")[1]
    assert len(code.strip().splitlines()) >= 5
    assert text == await ask_text(client, "write a lot !long 5000 please")
    assert len(await ask_text(client, "!long 100")) < 400  # short, but still has the block


async def test_echo_directive_answers_exactly(client: AsyncOpenAI) -> None:
    assert await ask_text(client, "!echo @everyone hi") == "@everyone hi"
    assert await ask_text(client, "say !echo two\nlines") == "two\nlines"


async def test_max_tokens_cuts_with_finish_reason_length(client: AsyncOpenAI) -> None:
    completion = await ask(client, [{"role": "user", "content": "!long 1000"}], max_tokens=10)
    assert completion.choices[0].finish_reason == "length"
    assert len(completion.choices[0].message.content) == 40
    assert completion.usage.completion_tokens == 10


# --- errors and faults -----------------------------------------------------------------


async def test_wrong_or_missing_key_is_401(llm: OpenAIStandin) -> None:
    async with AsyncOpenAI(base_url=llm.base_url, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as caught:
            await ask(bad)
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    status, body = await raw(llm, "GET", "/v1/models", key=None)
    assert status == 401
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"


async def test_queued_429_raises_then_next_call_succeeds(
    llm: OpenAIStandin, client: AsyncOpenAI
) -> None:
    llm.queue_faults([{"kind": "429", "retry_after": 0.1}])
    with pytest.raises(openai.RateLimitError) as caught:
        await ask(client)
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"] == "0.1"
    assert (await ask(client)).choices[0].message.content.startswith("Echo:")
    assert [c.outcome for c in llm.calls] == ["429", "ok"]


async def test_sdk_retry_gets_through_one_429(llm: OpenAIStandin) -> None:
    llm.queue_faults([{"kind": "429", "retry_after": 0.05}])
    async with AsyncOpenAI(base_url=llm.base_url, api_key=KEY, max_retries=2, timeout=5) as sdk:
        completion = await ask(sdk)
    assert completion.choices[0].finish_reason == "stop"
    assert [c.outcome for c in llm.calls] == ["429", "ok"]


async def test_500_and_queued_401(llm: OpenAIStandin, client: AsyncOpenAI) -> None:
    llm.queue_faults([{"kind": "500"}, {"kind": "401"}])
    with pytest.raises(openai.InternalServerError) as caught:
        await ask(client)
    assert caught.value.status_code == 500
    with pytest.raises(openai.AuthenticationError):
        await ask(client)
    await ask(client)


async def test_hang_hits_the_client_timeout(llm: OpenAIStandin) -> None:
    llm.queue_faults([{"kind": "hang", "seconds": 30}])
    async with AsyncOpenAI(base_url=llm.base_url, api_key=KEY, max_retries=0, timeout=0.3) as sdk:
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            await ask(sdk)
        assert time.monotonic() - started < 2
        await ask(sdk)  # the hang was used up; the server still answers


async def test_short_hang_answers_late(llm: OpenAIStandin, client: AsyncOpenAI) -> None:
    llm.queue_faults([{"kind": "hang", "seconds": 0.2}])
    started = time.monotonic()
    assert (await ask(client)).choices[0].finish_reason == "stop"
    assert time.monotonic() - started >= 0.2


async def test_context_limit_is_a_bad_request(llm: OpenAIStandin, client: AsyncOpenAI) -> None:
    llm.update_settings(context_limit_tokens=50)
    await ask(client)
    with pytest.raises(openai.BadRequestError) as caught:
        await ask(client, [{"role": "user", "content": "x" * 400}])
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"
    assert "maximum context length is 50 tokens" in caught.value.message


async def test_garbage_json_raises_a_plain_json_error(
    llm: OpenAIStandin, client: AsyncOpenAI
) -> None:
    """This SDK does not wrap it: a non-JSON body sold as JSON raises json.JSONDecodeError."""
    llm.queue_faults([{"kind": "garbage"}])
    with pytest.raises(json.JSONDecodeError):
        await ask(client)
    # Sold as HTML, the SDK doesn't raise at all: create() returns the body as a str.
    llm.queue_faults([{"kind": "garbage", "content_type": "text/html"}])
    assert isinstance(await ask(client), str)


async def test_truncated_stream_raises_a_connection_error(
    llm: OpenAIStandin, client: AsyncOpenAI
) -> None:
    messages = [{"role": "user", "content": "one two three four five six seven"}]
    llm.queue_faults([{"kind": "truncated_stream"}])
    stream = await ask(client, messages, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    full = (await ask(client, messages)).choices[0].message.content
    assert 0 < len("".join(received)) < len(full)
    llm.queue_faults([{"kind": "truncated_stream"}])  # a plain call gets half a body
    with pytest.raises(openai.APIConnectionError):
        await ask(client, messages)


async def test_cleanly_truncated_stream_just_ends(llm: OpenAIStandin, client: AsyncOpenAI) -> None:
    """Without [DONE] but with a clean HTTP end, the SDK ends the stream silently."""
    llm.queue_faults([{"kind": "truncated_stream", "abort": False}])
    chunks = await stream_all(client, [{"role": "user", "content": "a b c d e f g h"}])
    assert chunks
    assert all(c.choices[0].finish_reason is None for c in chunks)


async def test_down_answers_503(llm: OpenAIStandin, client: AsyncOpenAI) -> None:
    llm.update_settings(down=True)
    with pytest.raises(openai.InternalServerError) as caught:
        await ask(client)
    assert caught.value.status_code == 503
    with pytest.raises(openai.InternalServerError):
        await client.models.list()
    llm.update_settings(down=False)
    await ask(client)


async def test_always_output_and_token_delay(llm: OpenAIStandin, client: AsyncOpenAI) -> None:
    llm.update_settings(always_output="@everyone look", token_delay_s=0.05)
    started = time.monotonic()
    chunks = await stream_all(client, HI)
    assert time.monotonic() - started >= 0.1  # two pieces, one delay each
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "@everyone look"


async def test_stop_closes_a_stream_in_progress(llm: OpenAIStandin, client: AsyncOpenAI) -> None:
    llm.update_settings(token_delay_s=1.0)
    stream = await ask(client, [{"role": "user", "content": "a b c d e f g h"}], stream=True)
    with anyio.fail_after(3):
        first = await anext(aiter(stream))
        assert first.choices[0].delta.role == "assistant"
        await llm.stop()
        with pytest.raises(openai.APIConnectionError):
            async for _ in stream:
                pass


async def test_stop_ends_a_pending_hang(llm: OpenAIStandin, client: AsyncOpenAI) -> None:
    llm.queue_faults([{"kind": "hang", "seconds": 30}])
    with anyio.fail_after(3):
        async with anyio.create_task_group() as tg:

            async def call_and_expect_failure() -> None:
                with pytest.raises(openai.APIConnectionError):
                    await ask(client)

            tg.start_soon(call_and_expect_failure)
            await anyio.sleep(0.2)  # let the request reach the server and start hanging
            assert [c.outcome for c in llm.calls] == ["hang"]
            await llm.stop()


# --- the control API ---------------------------------------------------------------------


async def test_control_api_over_http(llm: OpenAIStandin, client: AsyncOpenAI) -> None:
    faults = [{"kind": "500"}, {"kind": "429", "retry_after": 0.1}]
    status, state = await raw(llm, "POST", "/_control/faults", json.dumps(faults).encode())
    assert status == 200
    assert [f["kind"] for f in state["faults"]] == ["500", "429"]
    body = json.dumps({"faults": [{"kind": "hang", "seconds": 1}]}).encode()
    assert (await raw(llm, "POST", "/_control/faults", body))[0] == 200
    settings = {"token_delay_s": 0, "context_limit_tokens": 2000, "always_output": "fixed"}
    status, state = await raw(llm, "POST", "/_control/settings", json.dumps(settings).encode())
    assert status == 200
    assert state["settings"] == {**settings, "down": False}
    with pytest.raises(openai.InternalServerError):
        await ask(client)
    status, state = await raw(llm, "GET", "/_control/state")
    assert (status, state["calls"], len(state["faults"])) == (200, 1, 2)
    status, state = await raw(llm, "POST", "/_control/reset", b"")
    assert state["faults"] == []
    assert state["settings"]["always_output"] is None
    assert (await ask(client)).choices[0].message.content.startswith("Echo:")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/_control/faults", b"not json"),
        ("/_control/faults", b'{"kind": "500"}'),
        ("/_control/faults", b'[{"kind": "teapot"}]'),
        ("/_control/faults", b'[{"kind": "429", "retry_after": "soon"}]'),
        ("/_control/faults", b'[{"kind": "hang", "seconds": NaN}]'),
        ("/_control/faults", b'[{"kind": "500", "typo": 1}]'),
        ("/_control/faults", b"[42]"),
        ("/_control/settings", b"[]"),
        ("/_control/settings", b'{"down": "yes"}'),
        ("/_control/settings", b'{"context_limit_tokens": 1.5}'),
        ("/_control/settings", b'{"token_delay_s": -1}'),
        ("/_control/settings", b'{"unknown": 1}'),
        ("/_control/settings", b"\xff\xfe"),
    ],
)
async def test_bad_control_input_is_400(
    llm: OpenAIStandin, client: AsyncOpenAI, path: str, body: bytes
) -> None:
    status, answer = await raw(llm, "POST", path, body)
    assert status == 400
    assert answer["error"]["message"]
    state = llm.state()
    assert state["faults"] == []
    assert state["settings"]["down"] is False
    await ask(client)  # still serving


async def test_bad_chat_requests_get_openai_400s(llm: OpenAIStandin) -> None:
    for body in (b"{nope", b'{"model": "m"}', b'{"model": "m", "messages": []}'):
        status, answer = await raw(llm, "POST", "/v1/chat/completions", body)
        assert status == 400
        assert set(answer["error"]) == {"message", "type", "param", "code"}
