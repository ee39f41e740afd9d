"""Backbone benchmarks, side by side in one run; prints one JSON object.

    python -m bench.backbone [--quick]

- rtt: request/reply round trip through the project's bus (envelope, typed
  decode, runtime dispatch) vs raw pyzmq DEALER/ROUTER under asyncio, both to a
  server in another process; p50, p99 and the ratio.
- events: one-way plain event throughput to a subscriber in another process.
- durable: durable event throughput with the outbox on disk and acks.
- restart: kill -9 of a light service under the real supervisor to RUNNING again
  (p50 over 20 kills).
- supervisor: its RSS and CPU while idle with two services.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import psutil
import zmq
import zmq.asyncio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import anyio.lowlevel

from protocol.bus import Bus, Topology
from protocol.envelope import Kind
from protocol.messages import Message, Ping, Request, message
from protocol.runtime import RuntimeContext, Service


@message("bench.tick")
@dataclass(frozen=True, slots=True)
class Tick(Message):
    n: int
    pad: str = ""


@message("bench.durable", durable=True)
@dataclass(frozen=True, slots=True)
class DurableTick(Message):
    n: int
    pad: str = ""


@message("bench.counted")
@dataclass(frozen=True, slots=True)
class Ticked(Message):
    ticks: int
    durable: int


@message("bench.count")
@dataclass(frozen=True, slots=True)
class CountTicks(Request[Ticked]):
    pass


PAD = "x" * 150  # ~200-byte messages, as in the reference figures


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


# --- servers (run in their own process) ---------------------------------------------


def serve_bus(tmp: str) -> None:
    svc = Service("server")
    counts = {"ticks": 0, "durable": 0}

    @svc.event(Tick, batch=True)
    async def ticks(batch: list[Tick]) -> None:
        counts["ticks"] += len(batch)

    @svc.event(DurableTick, batch=True)
    async def durable(batch: list[DurableTick]) -> None:
        counts["durable"] += len(batch)

    @svc.request(CountTicks)
    async def count(_: CountTicks) -> Ticked:
        return Ticked(**counts)

    anyio.run(svc.run, RuntimeContext("server", topology(tmp), Path(tmp)))


def serve_raw(endpoint: str) -> None:
    """The baseline: a bare ROUTER echo under asyncio, as the bus's server side runs."""

    async def echo() -> None:
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.bind(endpoint)
        while True:
            await sock.send_multipart(await sock.recv_multipart())

    anyio.run(echo)


def topology(tmp: str) -> Topology:
    return Topology(
        {"server": f"ipc://{tmp}/server.sock", "client": f"ipc://{tmp}/client.sock"},
        {Tick.TYPE: ["server"], DurableTick.TYPE: ["server"]},
    )


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], cwd=ROOT)


# --- measurements -------------------------------------------------------------------


async def rtt_raw(endpoint: str, n: int) -> list[float]:
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    payload = os.urandom(100).hex().encode()
    times = []
    for i in range(n + 200):
        t0 = time.perf_counter()
        await sock.send(payload)
        await sock.recv()
        if i >= 200:  # warm-up
            times.append(time.perf_counter() - t0)
    sock.close(0)
    ctx.term()
    return times


async def with_client(tmp: str, fn):
    bus = Bus("client", topology(tmp), bind=False)
    result = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(bus.run)
        result.append(await fn(bus))
        tg.cancel_scope.cancel()
    return result[0]


async def rtt_bus(bus: Bus, n: int) -> list[float]:
    times = []
    msg = Ping(PAD)
    for i in range(n + 200):
        t0 = time.perf_counter()
        await bus.request("server", msg, timeout=5)
        if i >= 200:
            times.append(time.perf_counter() - t0)
    return times


async def wait_count(bus: Bus, key: str, target: int, timeout: float = 120) -> None:
    with anyio.fail_after(timeout):
        while (await bus.request("server", CountTicks(), timeout=5)).body[key] < target:
            await anyio.sleep(0.002)


async def events_throughput(bus: Bus, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        if not await_free_send(bus, Tick(i, PAD)):
            await anyio.sleep(0.001)  # queue full: let the socket drain
        if i % 1000 == 0:
            await anyio.lowlevel.checkpoint()
    await wait_count(bus, "ticks", n)
    return n / (time.perf_counter() - t0)


def await_free_send(bus: Bus, msg: Message) -> bool:
    return bus.channel("server").send(bus.envelope(msg, Kind.EVENT, "server"))


async def durable_throughput(bus: Bus, n: int, batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        await bus.publish_many([DurableTick(j, PAD) for j in range(i, min(n, i + batch))])
    await wait_count(bus, "durable", n)
    ch = bus.channel("server")
    with anyio.fail_after(30):
        while ch.snapshot()["unacked"]:
            await anyio.sleep(0.001)
    return n / (time.perf_counter() - t0)


async def durable_client(tmp: str, n: int, batch: int) -> float:
    bus = Bus("client", topology(tmp), bind=False, outbox_path=Path(tmp) / "client-outbox.db")
    result = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(bus.run)
        result.append(await durable_throughput(bus, n, batch))
        tg.cancel_scope.cancel()
    return result[0]


SUPERVISED = """
[supervisor]
heartbeat_interval_s = 0.5

[defaults]
stable_after_s = 0.3
max_restarts = 100
within_s = 60

[services.echo]
module = "tests.support.services.echo"

[services.producer]
module = "tests.support.services.producer"
"""


def restart_latency(kills: int) -> dict:
    from supervisor import control

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "services.toml"
        cfg.write_text(SUPERVISED)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        sup = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "run.py"),
                "--config",
                str(cfg),
                "--data-dir",
                f"{tmp}/data",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        runtime = Path(tmp) / "data" / "run"

        def echo() -> dict:
            return next(s for s in control.status(runtime).services if s["name"] == "echo")

        def wait_running(not_pid: int | None) -> dict:
            while True:
                try:
                    s = echo()
                    if s["state"] == "RUNNING" and s["pid"] != not_pid:
                        return s
                except Exception:
                    pass
                time.sleep(0.005)

        try:
            wait_running(None)
            time.sleep(1)
            me = psutil.Process(sup.pid)
            rss = me.memory_info().rss / 1e6
            me.cpu_percent()
            time.sleep(5)
            idle_cpu = me.cpu_percent()
            latencies = []
            for _ in range(kills):
                pid = echo()["pid"]
                t0 = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                wait_running(pid)
                latencies.append(time.perf_counter() - t0)
                time.sleep(0.4)  # past stable_after_s: each kill is a first restart
        finally:
            sup.send_signal(signal.SIGTERM)
            sup.wait(20)
        return {
            "kill9_to_ready_p50_s": round(statistics.median(latencies), 3),
            "kill9_to_ready_max_s": round(max(latencies), 3),
            "kills": kills,
            "supervisor_rss_mb": round(rss, 1),
            "supervisor_idle_cpu_percent": round(idle_cpu, 2),
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve-bus")
    parser.add_argument("--serve-raw")
    args = parser.parse_args()
    if args.serve_bus:
        return serve_bus(args.serve_bus)
    if args.serve_raw:
        return serve_raw(args.serve_raw)
    n = 2000 if args.quick else 10000
    report: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    with tempfile.TemporaryDirectory() as tmp:
        raw_ep = f"ipc://{tmp}/raw.sock"
        servers = [spawn("--serve-bus", tmp), spawn("--serve-raw", raw_ep)]
        try:
            time.sleep(1.0)
            raw = anyio.run(rtt_raw, raw_ep, n)
            ours = anyio.run(with_client, tmp, lambda bus: rtt_bus(bus, n))
            p50r, p50o = statistics.median(raw), statistics.median(ours)
            report["rtt"] = {
                "n": n,
                "raw_pyzmq_p50_us": round(p50r * 1e6, 1),
                "raw_pyzmq_p99_us": round(percentile(raw, 0.99) * 1e6, 1),
                "bus_p50_us": round(p50o * 1e6, 1),
                "bus_p99_us": round(percentile(ours, 0.99) * 1e6, 1),
                "ratio_p50": round(p50o / p50r, 2),
                "ratio_p99": round(percentile(ours, 0.99) / percentile(raw, 0.99), 2),
            }
            events = 20000 if args.quick else 100000
            rate = anyio.run(with_client, tmp, lambda bus: events_throughput(bus, events))
            report["events"] = {"n": events, "msg_per_s": round(rate)}
            durable_n = 10000 if args.quick else 50000
            rate = anyio.run(durable_client, tmp, durable_n, 500)
            report["durable"] = {"n": durable_n, "batch": 500, "msg_per_s": round(rate)}
            rate1 = anyio.run(durable_client, tmp, durable_n // 10, 1)
            report["durable"]["unbatched_msg_per_s"] = round(rate1)
        finally:
            for s in servers:
                s.kill()
                s.wait()
    report["restart"] = restart_latency(5 if args.quick else 20)
    report["targets"] = {
        "rtt_ratio_p50<=2": report["rtt"]["ratio_p50"] <= 2,
        "events>=20000": report["events"]["msg_per_s"] >= 20000,
        "durable>=5000": report["durable"]["msg_per_s"] >= 5000,
        "restart_p50<=1s": report["restart"]["kill9_to_ready_p50_s"] <= 1,
        "supervisor_rss<=40MB": report["restart"]["supervisor_rss_mb"] <= 40,
        "supervisor_idle_cpu<1%": report["restart"]["supervisor_idle_cpu_percent"] < 1,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
