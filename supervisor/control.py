"""The operator's side of the control socket: `run.py status`, `restart` and `reload`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, TypeVar

import anyio

from protocol.bus import Topology, request_once
from protocol.channel import RemoteError, RequestTimeout
from protocol.messages import (
    SUPERVISOR,
    Message,
    Outcome,
    ReloadRequest,
    Request,
    RestartRequest,
    StatusRequest,
    SupervisorStatus,
)

R = TypeVar("R", bound=Message)


class SupervisorUnreachable(Exception):
    pass


def ask(runtime_dir: Path, msg: Request[R], timeout: float = 3.0) -> R:
    """Send one request to the running supervisor and return its reply."""
    sock = runtime_dir.absolute() / "supervisor.sock"
    if not sock.exists():
        raise SupervisorUnreachable(f"no supervisor running (no socket at {sock})")
    return anyio.run(_ask, sock, msg, timeout)


async def _ask(sock: Path, msg: Request[R], timeout: float) -> R:
    topology = Topology({SUPERVISOR: f"ipc://{sock}"})
    try:
        return await request_once(f"cli-{os.getpid()}", topology, SUPERVISOR, msg, timeout)
    except RequestTimeout:
        raise SupervisorUnreachable(f"the supervisor did not answer on {sock}") from None
    except RemoteError as exc:
        raise SupervisorUnreachable(str(exc)) from None


def status(runtime_dir: Path) -> SupervisorStatus:
    return ask(runtime_dir, StatusRequest())


def restart(runtime_dir: Path, service: str) -> Outcome:
    return ask(runtime_dir, RestartRequest(service))


def reload(runtime_dir: Path) -> Outcome:
    return ask(runtime_dir, ReloadRequest(), timeout=30.0)


def format_status(data: dict[str, Any]) -> str:
    sup = data.get("supervisor", {})
    lines = [
        f"supervisor pid {sup.get('pid')}  up {sup.get('uptime_s')}s  "
        f"rss {sup.get('rss_mb')} MB  ({sup.get('summary')})",
        f"{'SERVICE':<14}{'STATE':<10}{'PID':>8}{'RESTARTS':>10}{'UPTIME':>10}{'RSS MB':>9}"
        "  LAST EXIT",
    ]
    for s in data.get("services", []):
        lines.append(
            f"{s['name']:<14}{s['state']:<10}{s['pid'] or '-':>8}{s['restarts']:>10}"
            f"{s['uptime_s']:>10}{s['rss_mb'] if s['rss_mb'] is not None else '-':>9}"
            f"  {s['last_exit'] or '-'}"
        )
        for ch in s.get("channels", []):
            lines.append(
                f"{'':<14}-> {ch['peer']:<12} breaker {ch['breaker']:<9} sent {ch['sent']} "
                f"failed {ch['failed']} retried {ch['retried']} dropped {ch['dropped']} "
                f"unacked {ch['unacked']}"
            )
    if data.get("metrics_url"):
        lines.append(f"metrics {data['metrics_url']}  (health: /healthz beside it)")
    lines.append(f"(as of {time.strftime('%H:%M:%S')})")
    return "\n".join(lines)
