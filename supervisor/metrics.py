"""Prometheus metrics and a health endpoint, served by the supervisor.

`[supervisor] metrics_address = "127.0.0.1:9464"` serves, on that address:

- `/metrics`: Prometheus text, read at each scrape from what the supervisor knows,
- `/healthz`: 200 while every critical service is RUNNING, else 503 with the reason.

What is exported, and where it comes from (nothing is polled for it):

- the supervisor's own view of each service: `bot_service_up`, `bot_service_state`,
  `bot_service_restarts_total`, `bot_service_uptime_seconds`, and the RSS and CPU time of
  its current process (`bot_service_resident_memory_bytes`,
  `bot_service_cpu_seconds_total`, read with psutil at the scrape);
- what each service's heartbeat carries: its bus channels (`bot_bus_*_total`,
  `bot_bus_unacked`, `bot_breaker_state`) and the figures it keeps of its own work
  (`Service.figures`: `bot_NAME{service}`, e.g. `bot_messages_stored_total`);
- events the supervisor subscribes to (`[supervisor] subscribes` in services.toml):
  `llm.exchange` (answer latency histogram, answers and tokens by outcome) and
  `discord.connection` (gateway latency, connected);
- `process_*` for the supervisor itself (prometheus_client's process collector).

Per-process numbers (CPU, bus counters, figures) start again from zero when a service
restarts, as a counter does when its process restarts; Prometheus' `rate()` and
`increase()` expect that. The llm and Discord figures live in the supervisor and start
from zero when it does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import psutil
from loguru import logger
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from protocol.discord import ConnectionState
from protocol.messages import Message, SupervisorStatus
from protocol.quietlog import QuietLog
from protocol.store import LlmExchange
from supervisor.config import split_address

if TYPE_CHECKING:
    from aiohttp import web

STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL")
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
BUS_COUNTERS = ("sent", "failed", "retried", "dropped", "acked")
LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60)
# A figure's name becomes part of a metric name; an outcome becomes a label value.
FIGURE_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_]{1,32}")
CONNECTED_STATES = ("connected", "resumed", "identified_after_gap")
INDEX = "/metrics  Prometheus text\n/healthz  200 while every critical service runs, else 503\n"


def health(status: SupervisorStatus) -> tuple[bool, str]:
    """Healthy while every critical service runs; the reason in one line either way."""
    services = status.services
    down = [s for s in services if s.get("critical") and s.get("state") != "RUNNING"]
    if down:
        return False, "unavailable: " + "; ".join(_describe(s) for s in down)
    others = [s for s in services if s.get("state") != "RUNNING"]
    if others:
        return True, "ok, degraded: " + "; ".join(_describe(s) for s in others)
    return True, f"ok: {len(services)} services running"


def _describe(s: dict[str, Any]) -> str:
    why = f" ({s['reason']})" if s.get("reason") else ""
    return f"{s.get('name')} is {s.get('state')}{why}"


class Metrics:
    """The registry a scrape reads: the supervisor's status, rendered at each scrape, and
    the figures of the events the supervisor receives."""

    def __init__(self, status: Callable[[], SupervisorStatus]) -> None:
        self.status = status
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_*: the supervisor itself
        self.registry.register(_StatusCollector(self))
        self.answers = Counter(
            "bot_llm_answers",
            "Answers (and failures) of the llm service, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "bot_llm_tokens",
            "Tokens the model was sent (prompt) and answered (completion), by outcome",
            ["outcome", "kind"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bot_llm_answer_latency_seconds",
            "From the message (or /ask) to the llm service's complete answer",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.connection: ConnectionState | None = None
        self._processes: dict[int, psutil.Process] = {}
        self._quiet = QuietLog()

    def observe(self, msg: Message) -> None:
        """An event the supervisor subscribed to; other types are ignored."""
        if isinstance(msg, LlmExchange):
            outcome = _label(msg.outcome)
            self.answers.labels(outcome).inc()
            self.tokens.labels(outcome, "prompt").inc(max(0, msg.prompt_tokens))
            self.tokens.labels(outcome, "completion").inc(max(0, msg.completion_tokens))
            self.latency.observe(max(0.0, msg.latency_ms / 1000))
        elif isinstance(msg, ConnectionState):
            self.connection = msg

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def process_figures(self, pid: int) -> tuple[float, float] | None:
        """(RSS bytes, CPU seconds) of a service's process, or None if it is gone."""
        proc = self._processes.get(pid)
        try:
            if proc is None:
                for old in [p for p in self._processes if not psutil.pid_exists(p)]:
                    del self._processes[old]
                proc = self._processes[pid] = psutil.Process(pid)
            with proc.oneshot():
                cpu = proc.cpu_times()
                return float(proc.memory_info().rss), cpu.user + cpu.system
        except psutil.Error:
            self._processes.pop(pid, None)
            return None

    def figure_name(self, service: str, name: str) -> bool:
        if FIGURE_NAME.fullmatch(name):
            return True
        self._quiet.warning(
            ("figure", service), "{}: figure {!r} is not a metric name; not exported", service, name
        )
        return False


def _label(value: str) -> str:
    return value if LABEL_VALUE.fullmatch(value) else "other"


class _StatusCollector:
    """Renders the supervisor's status at each scrape (nothing is stored twice)."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        status = self.m.status()
        svc = ["service"]
        up = GaugeMetricFamily(
            "bot_service_up", "1 while the service is RUNNING (started and ready)", labels=svc
        )
        state = GaugeMetricFamily(
            "bot_service_state",
            "1 for the supervisor state the service is in",
            labels=[*svc, "state"],
        )
        critical = GaugeMetricFamily(
            "bot_service_critical", "1 if the supervisor stops when it goes FATAL", labels=svc
        )
        restarts = CounterMetricFamily(
            "bot_service_restarts",
            "Restarts by the supervisor after an exit, a hang or memory (not those asked for)",
            labels=svc,
        )
        uptime = GaugeMetricFamily(
            "bot_service_uptime_seconds", "Time since the service became RUNNING", labels=svc
        )
        rss = GaugeMetricFamily(
            "bot_service_resident_memory_bytes", "RSS of the service's process", labels=svc
        )
        cpu = CounterMetricFamily(
            "bot_service_cpu_seconds",
            "User and system CPU time of the service's current process",
            labels=svc,
        )
        peer = [*svc, "peer"]
        breaker = GaugeMetricFamily(
            "bot_breaker_state",
            "Circuit breaker from a service to a peer: 0 closed, 1 half-open, 2 open",
            labels=peer,
        )
        bus = {
            name: CounterMetricFamily(
                f"bot_bus_{name}", f"Frames {name} on a service's channel to a peer", labels=peer
            )
            for name in BUS_COUNTERS
        }
        unacked = GaugeMetricFamily(
            "bot_bus_unacked", "Durable events sent and not yet acknowledged", labels=peer
        )
        figures: dict[str, Metric] = {}
        for s in status.services:
            name = s["name"]
            up.add_metric([name], 1 if s["state"] == "RUNNING" else 0)
            for st in STATES:
                state.add_metric([name, st], 1 if s["state"] == st else 0)
            critical.add_metric([name], 1 if s.get("critical") else 0)
            restarts.add_metric([name], s["restarts"])
            uptime.add_metric([name], s.get("uptime_s") or 0)
            process = self.m.process_figures(s["pid"]) if s.get("pid") else None
            if process is not None:
                rss.add_metric([name], process[0])
                cpu.add_metric([name], process[1])
            for ch in s.get("channels") or []:
                labels = [name, str(ch.get("peer"))]
                if ch.get("breaker") in BREAKER_STATES:
                    breaker.add_metric(labels, BREAKER_STATES[ch["breaker"]])
                for counter in BUS_COUNTERS:
                    if isinstance(ch.get(counter), int):
                        bus[counter].add_metric(labels, ch[counter])
                if isinstance(ch.get("unacked"), int):
                    unacked.add_metric(labels, ch["unacked"])
            for fig, value in (s.get("figures") or {}).items():
                if not self.m.figure_name(name, fig) or not isinstance(value, int | float):
                    continue
                family = figures.get(fig)
                if family is None:
                    help_text = f"{fig}, as the service reports it in its heartbeats"
                    family = figures[fig] = (
                        CounterMetricFamily(f"bot_{fig}", help_text, labels=svc)
                        if fig.endswith("_total")
                        else GaugeMetricFamily(f"bot_{fig}", help_text, labels=svc)
                    )
                family.add_metric([name], value)
        yield from (up, state, critical, restarts, uptime, rss, cpu, breaker, *bus.values())
        yield unacked
        yield from figures.values()
        healthy, _ = health(status)
        yield GaugeMetricFamily(
            "bot_healthy", "1 while every critical service runs (as /healthz)", value=int(healthy)
        )
        yield GaugeMetricFamily(
            "bot_supervisor_uptime_seconds",
            "Time since the supervisor started",
            value=status.supervisor.get("uptime_s") or 0,
        )
        conn = self.m.connection
        if conn is not None:
            yield GaugeMetricFamily(
                "bot_discord_connected",
                "1 while the gateway holds a Discord connection (last reported)",
                value=1 if conn.state in CONNECTED_STATES else 0,
            )
            if conn.latency_ms is not None:
                yield GaugeMetricFamily(
                    "bot_discord_latency_seconds",
                    "Discord gateway heartbeat latency (last reported, every 15 s)",
                    value=conn.latency_ms / 1000,
                )


class MetricsServer:
    """/metrics and /healthz over HTTP, on the supervisor's event loop."""

    def __init__(self, metrics: Metrics, address: str) -> None:
        self.metrics = metrics
        self.address = address
        self.url: str | None = None  # the /metrics URL once listening
        self._runner: web.AppRunner | None = None

    async def start(self) -> str | None:
        """Listen (port 0 picks a free one); None, with one error line, if it cannot."""
        if self._runner is not None:
            return self.url
        from aiohttp import web  # only a supervisor that serves metrics needs it

        host, port = split_address(self.address)
        metrics = self.metrics

        async def scrape(request: web.Request) -> web.Response:
            return web.Response(body=metrics.text(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def healthz(request: web.Request) -> web.Response:
            healthy, reason = health(metrics.status())
            return web.Response(text=reason + "\n", status=200 if healthy else 503)

        async def index(request: web.Request) -> web.Response:
            return web.Response(text=INDEX)

        app = web.Application()
        app.router.add_get("/metrics", scrape)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/", index)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            logger.error(
                "metrics_address {}: cannot listen ({}); no metrics are served",
                self.address,
                exc.strerror or exc,
            )
            return None
        self._runner = runner
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}/metrics"
        return self.url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
