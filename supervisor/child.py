"""The first code a service process runs: `python -m supervisor.child NAME`.

It ties the process's life to the supervisor's (PR_SET_PDEATHSIG, so even a
SIGKILLed supervisor leaves no orphan), sets up logging, reads services.toml,
imports the service module and hands its `service` to the runtime.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import signal
import sys
from pathlib import Path

import anyio
from loguru import logger

from protocol.runtime import RuntimeContext, Service
from supervisor import logs
from supervisor.config import ConfigError, load

PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int) -> None:
    """Ask the kernel to kill us when the supervisor dies, then close the race."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # SIGKILL, not SIGTERM: a child whose event loop is blocked could not act on a
        # SIGTERM and would live on as an orphan. Its outbox is on disk either way.
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the runtime's heartbeat loop still notices a changed parent
    if os.getppid() != expected_parent:
        sys.exit(1)  # the supervisor died before prctl took effect


def settings_overrides(name: str) -> dict:
    """Settings the sandbox changes for one service (JSON in BOT_SETTINGS_OVERRIDES)."""
    try:
        overrides = json.loads(os.environ.get("BOT_SETTINGS_OVERRIDES") or "{}")
    except ValueError:
        return {}
    value = overrides.get(name, {}) if isinstance(overrides, dict) else {}
    return value if isinstance(value, dict) else {}


def main(argv: list[str]) -> int:
    name = argv[1]
    supervisor_pid = int(os.environ["BOT_SUPERVISOR_PID"])
    die_with_parent(supervisor_pid)
    try:
        config = load(Path(os.environ["BOT_CONFIG"]), Path(os.environ["BOT_DATA_DIR"]))
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    sup = config.supervisor
    log_format = os.environ.get("BOT_LOG_FORMAT") or sup.log_format  # run.py --log-format
    logs.setup(name, log_format, sup.log_dir or sup.data_dir / "logs")
    spec = config.service(name)
    settings = {**spec.settings, **settings_overrides(name)}
    module = importlib.import_module(spec.module)
    service = getattr(module, "service", None)
    if not isinstance(service, Service):
        logger.error("{} has no `service = Service(...)`", spec.module)
        return 2
    ctx = RuntimeContext(
        name=name,
        topology=config.topology(),
        data_dir=sup.data_dir,
        settings=settings,
        heartbeat_interval_s=min(sup.heartbeat_interval_s, spec.heartbeat_timeout_s / 3),
        supervisor_pid=supervisor_pid,
        stop_timeout_s=max(0.1, spec.stop_grace_s - 0.5),
    )
    anyio.run(service.run, ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
