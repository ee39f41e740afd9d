"""The bus over real ZeroMQ sockets, in one process: breaker, bad frames, requests, events."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgpack
import pytest
import zmq
import zmq.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.breaker import BreakerOpen, BreakerState
from protocol.bus import Bus, Reply, Topology
from protocol.channel import ChannelPolicy, RemoteError, RequestTimeout
from protocol.envelope import Delivery, Envelope, Kind, unpack
from protocol.messages import Heartbeat, Ping
from protocol.runtime import RuntimeContext, Service
from tests.support.services.messages import Item

pytestmark = pytest.mark.anyio


def topology(tmp: Path, events: bool = False) -> Topology:
    """a and b; with `events`, b subscribes to heartbeats (so it must handle them)."""
    return Topology(
        {"a": f"ipc://{tmp}/a.sock", "b": f"ipc://{tmp}/b.sock"},
        {"service.heartbeat": ["b"]} if events else {},
    )


class SilentPeer:
    """b as a bare ROUTER: it reads requests and answers a ping only while `answering`."""

    def __init__(self, tmp: Path) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.bind(topology(tmp).endpoints["b"])
        self.answering = False
        self.seen: list[str] = []  # the id of each request received

    async def run(self) -> None:
        try:
            while True:
                ident, frame = await self.sock.recv_multipart()
                env = unpack(frame)
                self.seen.append(env.id)
                if self.answering:
                    pong = {"name": "b", "pid": 0, "text": env.body.get("text", "")}
                    await self.sock.send_multipart([ident, env.reply(pong, "pong").pack()])
        finally:
            self.sock.close(linger=0)
            self.ctx.term()


async def test_breaker_opens_fails_fast_probes_and_closes(tmp_path: Path) -> None:
    policy = ChannelPolicy(failure_threshold=2, reset_timeout_s=0.3)
    client = Bus("a", topology(tmp_path), bind=False, policy=policy)
    peer = SilentPeer(tmp_path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.run)
        tg.start_soon(peer.run)
        for _ in range(2):  # b is there but does not answer: two timeouts open the breaker
            with pytest.raises(RequestTimeout):
                await client.request("b", Ping(), timeout=0.1)
        ch = client.channel("b")
        assert ch.breaker.state is BreakerState.OPEN
        with anyio.fail_after(0.05):  # fails fast: no waiting for a timeout
            with pytest.raises(BreakerOpen):
                await client.request("b", Ping(), timeout=5)
        peer.answering = True
        await anyio.sleep(0.35)  # the reset timeout passes: the next call is the probe
        reply = await client.request("b", Ping("probe"), timeout=2)
        assert reply.body["text"] == "probe"
        assert ch.breaker.state is BreakerState.CLOSED
        snap = ch.snapshot()
        assert (snap["failed"], snap["breaker"]) == (2, "closed")
        tg.cancel_scope.cancel()


async def test_a_request_to_a_peer_not_yet_running_waits_for_it_and_is_answered(
    tmp_path: Path,
) -> None:
    client = Bus("a", topology(tmp_path), bind=False)
    server = Service("b")
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.run)
        with pytest.raises(RequestTimeout):  # not there within the deadline: a timeout
            await client.request("b", Ping(), timeout=0.1)

        async def start_late() -> None:
            await anyio.sleep(0.5)
            await server.run(RuntimeContext("b", topology(tmp_path), tmp_path))

        tg.start_soon(start_late)
        reply = await client.request("b", Ping("late"), timeout=10)
        assert reply.body["text"] == "late"
        server.stop()
        tg.cancel_scope.cancel()


async def test_a_peer_that_goes_away_mid_request_is_asked_again_once_it_is_back(
    tmp_path: Path,
) -> None:
    """The same request (same id) reaches the successor, which answers it; the breaker
    counts the loss against no one."""
    client = Bus("a", topology(tmp_path), bind=False)
    first, second = SilentPeer(tmp_path), None
    result: list[Envelope] = []

    async def ask() -> None:
        result.append(await client.request("b", Ping("again"), timeout=10))

    async with anyio.create_task_group() as tg:
        tg.start_soon(client.run)
        async with anyio.create_task_group() as first_life:
            first_life.start_soon(first.run)
            tg.start_soon(ask)
            with anyio.fail_after(5):
                while not first.seen:
                    await anyio.sleep(0.01)
            first_life.cancel_scope.cancel()  # b dies before answering
        await anyio.sleep(0.3)
        second = SilentPeer(tmp_path)
        second.answering = True
        tg.start_soon(second.run)
        with anyio.fail_after(5):
            while not result:
                await anyio.sleep(0.01)
        assert result[0].body["text"] == "again"
        assert second.seen[-1] == first.seen[0], "the same request, asked again"
        ch = client.channel("b")
        assert ch.breaker.state is BreakerState.CLOSED and ch.breaker.failures == 0
        tg.cancel_scope.cancel()


async def test_a_peer_that_comes_back_is_judged_afresh_with_its_breaker_closed(
    tmp_path: Path,
) -> None:
    policy = ChannelPolicy(failure_threshold=1, reset_timeout_s=60)
    client = Bus("a", topology(tmp_path), bind=False, policy=policy)
    server = Service("b")
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.run)
        with pytest.raises(RequestTimeout):
            await client.request("b", Ping(), timeout=0.1)
        ch = client.channel("b")
        assert ch.breaker.state is BreakerState.OPEN  # for a minute, were it not for...
        tg.start_soon(server.run, RuntimeContext("b", topology(tmp_path), tmp_path))
        with anyio.fail_after(5):  # ... the new process connecting: not a long refusal
            reply = await client.request("b", Ping("back"), timeout=5)
        assert reply.body["text"] == "back"
        server.stop()
        tg.cancel_scope.cancel()


async def test_errors_come_back_as_remote_errors(tmp_path: Path) -> None:
    client = Bus("a", topology(tmp_path), bind=False)
    server = Service("b")
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.run, RuntimeContext("b", topology(tmp_path), tmp_path))
        tg.start_soon(client.run)
        with pytest.raises(RemoteError) as info:
            await client.request("b", Heartbeat(1), timeout=2)  # b serves no such request
        assert info.value.reason == "unknown_type"
        env = client.envelope(Ping(), Kind.REQUEST, "b")
        env.body = {"text": 5}
        with pytest.raises(RemoteError) as info:
            await client.channel("b").request(env, timeout=2)
        assert info.value.reason == "bad_request" and "expected str" in info.value.detail
        server.stop()
        tg.cancel_scope.cancel()


class RawPeer:
    """A hostile peer: a bare DEALER that sends whatever it is given."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, b"raw")
        self.sock.connect(endpoint)

    async def exchange(self, frames: list[bytes], timeout: float = 1.0) -> Envelope | None:
        await self.sock.send_multipart(frames)
        with anyio.move_on_after(timeout):
            return unpack((await self.sock.recv_multipart())[0])
        return None

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


async def test_malformed_frames_get_error_replies_and_the_service_keeps_serving(
    tmp_path: Path,
) -> None:
    server = Service("b")
    raw = RawPeer(f"ipc://{tmp_path}/b.sock")
    good = Envelope(Kind.REQUEST, "ping", "raw", "b", {"text": "ok"})
    cases = {
        b"\xc1garbage": "malformed",
        msgpack.packb([1, 2, "x"]): "malformed",
        msgpack.packb([7, 2, "id", "ping", "raw", "b", None, 0.0, None, {}]): "version",
        b"\x00" * (1 << 20 + 1): "oversized",
        good.pack()[:-4]: "malformed",
        Envelope(Kind.REQUEST, "no.such.type", "raw", "b").pack(): "unknown_type",
    }
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.run, RuntimeContext("b", topology(tmp_path), tmp_path))
        for frame, reason in cases.items():
            reply = await raw.exchange([frame])
            assert reply is not None and reply.kind is Kind.ERROR, reason
            assert reply.body["reason"] == reason
        reply = await raw.exchange([good.pack()])
        assert reply is not None and reply.body["text"] == "ok"
        assert server.bus is not None and server.bus.rejected == 5
        server.stop()
        tg.cancel_scope.cancel()
    raw.close()


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_hypothesis_frames_never_crash_or_wedge_a_service(tmp_path_factory, frames) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")

    async def go() -> None:
        server = Service("b")
        raw = RawPeer(f"ipc://{tmp}/b.sock")
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.run, RuntimeContext("b", topology(tmp), tmp))
            await raw.sock.send_multipart(frames)
            ping = Envelope(Kind.REQUEST, "ping", "raw", "b", {"text": "alive"})
            with anyio.fail_after(3):
                while True:  # skip error replies to the garbage; the ping must be answered
                    reply = await raw.exchange([ping.pack()], timeout=1)
                    if reply is not None and reply.corr == ping.id:
                        break
            assert reply.body["text"] == "alive"
            server.stop()
            tg.cancel_scope.cancel()
        raw.close()

    anyio.run(go)


async def test_plain_events_reach_subscribers_in_order(tmp_path: Path) -> None:
    seen: list[int] = []
    all_seen = anyio.Event()
    server = Service("b")

    @server.event(Heartbeat)
    async def on_heartbeat(msg: Heartbeat) -> None:
        seen.append(msg.pid)
        if len(seen) == 500:
            all_seen.set()

    client = Bus("a", topology(tmp_path, events=True), bind=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.run, RuntimeContext("b", topology(tmp_path, events=True), tmp_path))
        tg.start_soon(client.run)
        for i in range(500):
            await client.publish(Heartbeat(i))
        with anyio.fail_after(5):
            await all_seen.wait()
        assert seen == list(range(500))
        server.stop()
        tg.cancel_scope.cancel()


async def test_a_cancelled_probe_does_not_leave_the_breaker_half_open(tmp_path: Path) -> None:
    policy = ChannelPolicy(failure_threshold=1, reset_timeout_s=0.1)
    client = Bus("a", topology(tmp_path), bind=False, policy=policy)
    peer = SilentPeer(tmp_path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.run)
        tg.start_soon(peer.run)
        with pytest.raises(RequestTimeout):
            await client.request("b", Ping(), timeout=0.05)
        await anyio.sleep(0.15)
        with anyio.move_on_after(0.05):  # the caller gives up while its probe is out
            await client.request("b", Ping(), timeout=5)
        await anyio.sleep(0.15)
        with pytest.raises(RequestTimeout):  # a new probe goes out: not BreakerOpen
            await client.request("b", Ping(), timeout=0.05)
        tg.cancel_scope.cancel()


async def test_a_restarted_receiver_starting_on_a_stale_frame_catches_up(tmp_path: Path) -> None:
    """Its first frame is an old one (sent when the sender had acked 0); the sender has
    since had 50 acked and deleted them. The lane must skip ahead, not wait for seq 1."""
    got: list[Envelope] = []

    async def on_events(batch: list[Envelope]) -> None:
        got.extend(batch)

    bus = Bus("b", topology(tmp_path), on_events=on_events)
    bus._router_send = lambda ident, env: True  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        bus._tg = tg
        event = lambda: Envelope(Kind.EVENT, "x", "s", "b", {})  # noqa: E731
        bus._accept(event(), Delivery("E", 80, 0), "s", b"s", Reply(lambda e: True))
        for seq in range(51, 60):
            bus._accept(event(), Delivery("E", seq, 50), "s", b"s", Reply(lambda e: True))
        await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    bus.close()
    assert len(got) == 9


async def test_durable_events_for_several_subscribers_share_one_transaction(
    tmp_path: Path,
) -> None:
    topo = Topology(
        {"a": f"ipc://{tmp_path}/a", "p": f"ipc://{tmp_path}/p", "l": f"ipc://{tmp_path}/l"},
        {"test.item": ["p", "l"]},
    )
    bus = Bus("a", topo, bind=False, outbox_path=tmp_path / "outbox.sqlite3")
    assert bus.outbox is not None
    transactions: list[list[str]] = []
    real = bus.outbox._append_all

    def counting(batches: list[tuple[str, list[bytes]]], meta: dict | None = None) -> list[int]:
        transactions.append([channel for channel, _ in batches])
        return real(batches, meta)

    bus.outbox._append_all = counting  # type: ignore[method-assign]
    await bus.publish_many([Item(1), Item(2)])
    bus.close()
    assert transactions == [["p", "l"]]


async def test_a_reply_to_a_vanished_peer_is_reported_not_lost_in_a_future(
    tmp_path: Path,
) -> None:
    """ROUTER_MANDATORY makes such a send fail; the failure must surface as False."""
    bus = Bus("b", topology(tmp_path))
    env = Envelope(Kind.REPLY, "ping", "b", "nobody", {})
    assert bus.send_to_connection("nobody", env) is False
    bus.close()
