"""The first code a service process runs: `python -m supervisor.child NAME`.

It ties the process's life to the supervisor's (PR_SET_PDEATHSIG, so even a
SIGKILLed supervisor leaves no orphan), sets up logging, reads services.toml,
builds the service from its module's `build()` and hands it to the runtime. A
configuration problem exits with EXIT_CONFIG, one line per problem, and the
supervisor stops start-up rather than restarting it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

import anyio
from loguru import logger

from protocol.runtime import EXIT_CONFIG, ConfigurationError, RuntimeContext
from supervisor import logs
from supervisor.config import CLOCK_OFFSET_ENV, ConfigError, load
from supervisor.preflight import build_service

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


def main(argv: list[str]) -> int:
    name = argv[1]
    supervisor_pid = int(os.environ["BOT_SUPERVISOR_PID"])
    die_with_parent(supervisor_pid)
    try:
        config = load(Path(os.environ["BOT_CONFIG"]), Path(os.environ["BOT_DATA_DIR"]))
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    sup = config.supervisor
    try:
        spec = config.service(name)
    except KeyError:  # removed from services.toml since the supervisor started
        print(f"services.{name}: no longer in {config.path}; restart the bot", file=sys.stderr)
        return EXIT_CONFIG
    log_format = os.environ.get("BOT_LOG_FORMAT") or sup.log_format  # run.py --log-format
    logs.setup(
        name, log_format, sup.log_dir or sup.data_dir / "logs", logs.level_for(spec.log_level)
    )
    try:
        service = build_service(spec)
    except ConfigurationError as exc:
        logger.error(str(exc))
        return EXIT_CONFIG
    ctx = RuntimeContext(
        name=name,
        topology=config.topology(),
        data_dir=sup.data_dir,
        settings=spec.settings,
        heartbeat_interval_s=min(sup.heartbeat_interval_s, spec.heartbeat_timeout_s / 3),
        supervisor_pid=supervisor_pid,
        stop_timeout_s=max(0.1, spec.stop_grace_s - 0.5),
        clock_offset_s=float(os.environ.get(CLOCK_OFFSET_ENV) or 0.0),
    )
    try:
        anyio.run(service.run, ctx)
    except ConfigurationError as exc:
        for line in str(exc).splitlines():
            logger.error(line)
        return EXIT_CONFIG
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
