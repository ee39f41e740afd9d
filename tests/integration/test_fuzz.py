"""Fuzz every input the project parses: never a crash or a hang, always a clear error.

- protocol frames sent straight to each running service's socket;
- services.toml structures and .env text;
- Discord payloads with missing or odd fields, sent through the emulator's gateway.
(OpenAI responses that are truncated, not JSON or endless are in tests/test_llm_*.py.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.envelope import Envelope, Kind, unpack
from protocol.messages import Ping
from supervisor.config import ConfigError, load, load_dotenv, parse
from tests.support.harness import wait_for
from tests.support.sandbox import Sandbox

SERVICES = ["persistence", "gateway", "llm", "stats", "heartbeat", "presence", "scheduler"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path_factory.mktemp("fuzz"))
    try:
        box.wait_all_running()
        box.wait_connected()
        yield box
    finally:
        box.cleanup()


class Raw:
    """A bare DEALER per service, sending whatever hypothesis makes."""

    def __init__(self, box: Sandbox) -> None:
        self.ctx = zmq.Context()
        self.socks: dict[str, zmq.Socket] = {}
        for name in SERVICES:
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 3000)
            sock.setsockopt(zmq.IDENTITY, b"fuzzer-" + name.encode())
            sock.connect(box.config.topology().endpoints[name])
            self.socks[name] = sock

    def ping(self, name: str) -> bool:
        """Send a ping and read until its reply (skipping error replies to the garbage)."""
        sock = self.socks[name]
        env = Envelope(Kind.REQUEST, Ping.TYPE, "fuzzer", name, {"text": "alive"})
        sock.send(env.pack())
        while True:
            try:
                reply = unpack(sock.recv())
            except zmq.Again:
                return False
            if reply.corr == env.id:
                return reply.body.get("text") == "alive"

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()
        self.ctx.term()


frames = st.one_of(
    st.binary(max_size=200),
    st.lists(values, max_size=12).map(lambda v: msgpack.packb(v)),
    st.builds(
        lambda kind, t, body: msgpack.packb(
            [1, kind, "id", t, "fuzzer", "", None, 0.0, None, body]
        ),
        st.integers(0, 9),
        st.sampled_from(
            ["ping", "discord.send", "store.kv.set", "discord.message.created", "nope", ""]
        ),
        st.one_of(values, st.dictionaries(st.text(max_size=12), values, max_size=5)),
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    target=st.sampled_from(SERVICES),
    batch=st.lists(st.lists(frames, min_size=1, max_size=3), max_size=4),
)
def test_garbage_frames_to_every_service_never_crash_or_wedge_it(
    sandbox: Sandbox, target: str, batch: list[list[bytes]]
) -> None:
    raw = Raw(sandbox)
    try:
        for multipart in batch:
            raw.socks[target].send_multipart(multipart)
        assert raw.ping(target), f"{target} stopped answering"
    finally:
        raw.close()


def test_after_the_frame_fuzz_no_service_restarted(sandbox: Sandbox) -> None:
    raw = Raw(sandbox)
    try:
        assert all(raw.ping(name) for name in SERVICES)
    finally:
        raw.close()
    assert {s["name"]: s["restarts"] for s in sandbox.status()["services"]} == dict.fromkeys(
        SERVICES, 0
    )


message_fields = {
    "id": st.one_of(st.just("1"), st.text(max_size=5), st.integers(), st.none()),
    "channel_id": st.one_of(st.just("1191168914227200006"), st.none(), st.integers()),
    "author": st.one_of(
        st.just({"id": "1191168914227200004", "username": "alice"}),
        st.none(),
        st.text(max_size=3),
        st.dictionaries(st.text(max_size=3), scalars, max_size=2),
    ),
    "content": st.one_of(st.text(max_size=50), st.none(), st.integers()),
    "timestamp": st.one_of(st.just("2026-01-01T00:00:00+00:00"), st.text(max_size=8)),
    "mentions": st.one_of(st.just([]), values),
    "guild_id": st.one_of(st.just("1191168914227200001"), st.none()),
    "message_reference": st.one_of(st.none(), values),
}


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    event=st.sampled_from(
        [
            "MESSAGE_CREATE",
            "MESSAGE_UPDATE",
            "MESSAGE_DELETE",
            "GUILD_MEMBER_ADD",
            "GUILD_BAN_ADD",
            "PRESENCE_UPDATE",
            "INTERACTION_CREATE",
            "CHANNEL_UPDATE",
        ]
    ),
    payload=st.fixed_dictionaries({}, optional=message_fields),
)
def test_odd_discord_payloads_through_the_emulator_never_crash_the_gateway(
    sandbox: Sandbox, event: str, payload: dict[str, Any]
) -> None:
    sandbox.post("gateway/dispatch", {"t": event, "d": payload})
    raw = Raw(sandbox)
    try:
        assert raw.ping("gateway"), f"the gateway stopped answering after {event} {payload!r}"
    finally:
        raw.close()
    assert sandbox.service("gateway")["restarts"] == 0, f"{event} {payload!r} crashed it"


def test_after_the_payload_fuzz_messages_still_land_and_nothing_restarted(
    sandbox: Sandbox,
) -> None:
    mid = sandbox.say("still alive after the fuzz")
    wait_for(lambda: sandbox.db("SELECT 1 FROM messages WHERE id = ?", mid), 15, "the message")
    gateway = sandbox.service("gateway")
    assert gateway["restarts"] == 0, gateway["last_exit"]


# --- configuration ---------------------------------------------------------------------

toml_tables = st.dictionaries(
    st.sampled_from(["supervisor", "defaults", "services", "bogus"]),
    st.one_of(
        values,
        st.dictionaries(
            st.sampled_from(
                [
                    "a",
                    "gateway",
                    "module",
                    "max_restarts",
                    "within_s",
                    "after",
                    "settings",
                    "restart",
                    "data_dir",
                    "log_format",
                    "commands",
                ]
            ),
            st.one_of(
                values,
                st.dictionaries(
                    st.sampled_from(
                        [
                            "module",
                            "after",
                            "max_restarts",
                            "restart",
                            "endpoint",
                            "subscribes",
                            "commands",
                            "settings",
                            "memory_limit_mb",
                            "critical",
                        ]
                    ),
                    values,
                    max_size=5,
                ),
            ),
            max_size=4,
        ),
    ),
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(data=toml_tables)
def test_any_services_toml_structure_is_a_config_or_a_config_error(data: dict) -> None:
    try:
        parse(data, Path("/tmp/services.toml"))
    except ConfigError as exc:
        assert exc.problems and all(p.key and p.fix for p in exc.problems)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))
def test_any_toml_text_is_a_config_or_a_config_error(tmp_path_factory, text: str) -> None:
    path = tmp_path_factory.mktemp("toml") / "services.toml"
    path.write_text(text)
    try:
        load(path)
    except ConfigError:
        pass


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_any_dotenv_text_gives_problems_never_an_exception(tmp_path_factory, text: str) -> None:
    path = tmp_path_factory.mktemp("env") / ".env"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    env: dict[str, str] = {}
    problems = load_dotenv(path, env)
    assert all(str(p.key).startswith(str(path)) for p in problems)
