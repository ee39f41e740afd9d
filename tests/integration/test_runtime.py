"""The service runtime over real ZeroMQ, in one process: typed replies, the start-up
checks of commands and subscriptions, and retained events for late subscribers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from protocol.bus import Bus, Topology
from protocol.channel import RemoteError
from protocol.clock import fixed
from protocol.commands import CATALOGUE, Command, declare
from protocol.discord import CommandAnswer, CommandInvoked, GuildReady
from protocol.messages import Done, Ping, Pong
from protocol.runtime import ConfigurationError, RuntimeContext, Service
from tests.support.services.messages import Count, Counted

pytestmark = pytest.mark.anyio


def topology(tmp: Path, subscribers: dict[str, list[str]] | None = None) -> Topology:
    names = ("a", "b", "gateway")
    return Topology({n: f"ipc://{tmp}/{n}.sock" for n in names}, subscribers or {})


@asynccontextmanager
async def running(tmp: Path, *services: Service) -> AsyncIterator[None]:
    """The services, each under its own name, until the block ends (or fails)."""
    async with anyio.create_task_group() as tg:
        for service in services:
            tg.start_soon(service.run, RuntimeContext(service.name, topology(tmp), tmp))
        for service in services:
            await service.ready.wait()
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


async def test_call_returns_the_declared_reply_type_and_refuses_a_wrong_one(
    tmp_path: Path,
) -> None:
    server, client = Service("b"), Service("a")

    @server.request(Count)
    async def count(_: Count) -> Counted:
        return Done()  # type: ignore[return-value] - the bug this test is about

    async with running(tmp_path, server, client):
        pong = await client.call("b", Ping("hi"), timeout=2)
        assert isinstance(pong, Pong) and (pong.name, pong.text) == ("b", "hi")
        with pytest.raises(RemoteError) as refused:
            await client.call("b", Count(), timeout=2)
        assert refused.value.reason == "handler_error" and "Done" in refused.value.detail


async def test_a_command_is_added_by_its_declaration_and_handler_alone(tmp_path: Path) -> None:
    declare(Command("echo", "Say it back", owner="b"))
    try:
        server, client = Service("b"), Service("a")

        @server.command("echo")
        async def echo(msg: CommandInvoked) -> CommandAnswer:
            return CommandAnswer(f"{msg.user_name} said {msg.options['text']}")

        ask = CommandInvoked("1", "echo", {"text": "hi"}, "7", "bob", "3", "4")
        async with running(tmp_path, server, client):
            answer = await client.call("b", ask, timeout=2)
            assert answer == CommandAnswer("bob said hi")
    finally:
        del CATALOGUE["echo"]


def test_a_declared_command_without_its_handler_refuses_start_up(tmp_path: Path) -> None:
    declare(Command("echo", "Say it back", owner="b"))
    try:
        with pytest.raises(ConfigurationError, match=r"b: /echo is declared for it but has no"):
            Service("b").check(topology(tmp_path), {})
    finally:
        del CATALOGUE["echo"]


def test_a_handler_without_a_declaration_refuses_start_up(tmp_path: Path) -> None:
    service = Service("b")

    @service.command("nonesuch")
    async def nonesuch(msg: CommandInvoked) -> CommandAnswer:
        return CommandAnswer("")

    with pytest.raises(ConfigurationError, match=r"handler for /nonesuch, which is not declared"):
        service.check(topology(tmp_path), {})


def test_a_subscribed_event_without_a_handler_refuses_start_up(tmp_path: Path) -> None:
    subscribed = topology(tmp_path, {GuildReady.TYPE: ["b"]})
    with pytest.raises(ConfigurationError, match=r"subscribes to discord.guild.ready but has no"):
        Service("b").check(subscribed, {})


async def test_a_subscriber_that_starts_late_gets_the_latest_retained_event(
    tmp_path: Path,
) -> None:
    topo = topology(tmp_path, {GuildReady.TYPE: ["b"]})
    gateway = Bus("gateway", topo, bind=False)
    seen: list[GuildReady] = []

    def late_subscriber() -> Service:
        service = Service("b")

        @service.event(GuildReady)
        async def on_ready(msg: GuildReady) -> None:
            seen.append(msg)

        return service

    async with anyio.create_task_group() as tg:
        tg.start_soon(gateway.run)
        await anyio.lowlevel.checkpoint()
        await gateway.publish(GuildReady("1", "old name", [], 3, "9"))
        await gateway.publish(GuildReady("1", "guild one", [], 3, "9"))
        await gateway.publish(GuildReady("2", "guild two", [], 5, "9"))
        for run in range(2):  # it starts after the events, and again after a restart
            seen.clear()
            service = late_subscriber()
            tg.start_soon(service.run, RuntimeContext("b", topo, tmp_path))
            with anyio.fail_after(5):
                while not {"guild one", "guild two"} <= {m.name for m in seen}:
                    await anyio.sleep(0.02)
            if run == 1:  # after a restart only the latest of each guild is given again
                assert sorted(m.name for m in seen) == ["guild one", "guild two"]
            service.stop()
            await anyio.sleep(0.3)  # stopped: its socket is gone
        tg.cancel_scope.cancel()


async def test_patiently_retries_a_restarting_peer_but_not_a_permanent_refusal() -> None:
    service = Service("a", clock=fixed(1000.0))
    calls: list[str] = []

    async def refused() -> str:
        calls.append("refused")
        raise RemoteError("b", "bad_request", "no such thing")

    async def unavailable_then_fine() -> str:
        calls.append("try")
        if len(calls) < 3:
            raise RemoteError("b", "unavailable", "the database restarts")
        return "fine"

    async def advance_while_waiting() -> None:
        while True:
            await anyio.sleep(0.01)
            service.clock.advance(1)

    assert await service.patiently(refused, "refused") is None
    assert calls == ["refused"]  # not asked again
    calls.clear()
    async with anyio.create_task_group() as tg:
        tg.start_soon(advance_while_waiting)
        assert await service.patiently(unavailable_then_fine, "flaky") == "fine"
        tg.cancel_scope.cancel()
    assert calls == ["try", "try", "try"]
