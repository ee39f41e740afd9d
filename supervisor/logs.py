"""Logging for the supervisor and every service, with loguru.

Every line names its service. `--log-format json` gives one JSON object a line.
Under journald ($JOURNAL_STREAM) lines carry `<N>` priority prefixes and no
timestamps (journald adds its own). With a log dir, each process writes its own
file: loguru rotates safely only within one process, so no file is shared.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from loguru import logger

# syslog priorities for journald's `<N>` prefix
_PRIORITY = {
    "TRACE": 7,
    "DEBUG": 7,
    "INFO": 6,
    "SUCCESS": 5,
    "WARNING": 4,
    "ERROR": 3,
    "CRITICAL": 2,
}


def _json_line(record: dict[str, Any]) -> str:
    payload = {
        "ts": record["time"].isoformat(),
        "level": record["level"].name,
        "service": record["extra"].get("service", "?"),
        "msg": record["message"],
    }
    if record["exception"] is not None:
        payload["exception"] = str(record["exception"].value)
    record["extra"]["_json"] = json.dumps(payload, ensure_ascii=False)
    return "{extra[_json]}\n"


def _journal_line(record: dict[str, Any]) -> str:
    record["extra"]["_prio"] = _PRIORITY.get(record["level"].name, 6)
    return "<{extra[_prio]}>{extra[service]}: {message}\n{exception}"


TEXT = "{time:HH:mm:ss.SSS} {level:<7} {extra[service]:<12} {message}"


class _ToLoguru(logging.Handler):
    """Libraries that log through the standard library (py-cord, aiohttp) end up here,
    so every line still names its service and follows the chosen format."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info).log(level, "{}: {}", record.name, record.getMessage())


def level_for(configured: str | None) -> str:
    """A service's own `log_level` in services.toml, else $LOG_LEVEL, else INFO."""
    level = (configured or os.environ.get("LOG_LEVEL") or "INFO").upper()
    return level if level in _PRIORITY else "INFO"


def setup(
    service: str, log_format: str = "text", log_dir: Path | None = None, level: str = "INFO"
) -> None:
    logger.remove()
    logger.configure(extra={"service": service})
    if log_format == "json":
        fmt: Any = _json_line
    elif os.environ.get("JOURNAL_STREAM"):
        fmt = _journal_line
    else:
        fmt = TEXT
    # diagnose=False: a traceback must never print local variables (prompts, tokens).
    logger.add(sys.stderr, format=fmt, level=level, colorize=False, backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[_ToLoguru()], level=logging.WARNING, force=True)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        logger.add(
            log_dir / f"{service}.log",
            format=_json_line if log_format == "json" else TEXT,
            level=level,
            rotation="10 MB",
            retention=5,
            enqueue=False,
            backtrace=False,
            diagnose=False,
        )
