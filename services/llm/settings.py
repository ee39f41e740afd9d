"""The llm service's settings, typed, and re-read from services.toml when it changes.

A bad value never stops the service: it is logged and its default used, so an operator
editing the system prompt of a running bot cannot take it down with a typo. The
connection settings (base_url, request_timeout_s) and max_concurrent only apply on
restart: the one AsyncOpenAI client of the process is built from them. OPENAI_BASE_URL
in the environment wins over base_url (the sandbox points it at the stand-in).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from loguru import logger

from services.llm.ratelimit import Rate
from supervisor.child import settings_overrides
from supervisor.config import ConfigError, load

RESTART_ONLY = ("base_url", "request_timeout_s", "max_concurrent")


@dataclass(frozen=True)
class LlmSettings:
    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-mini"
    max_context_tokens: int = 3000
    max_prompt_chars: int = 4000
    max_completion_tokens: int | None = None
    max_answer_chars: int = 8000  # a longer stream is cut: at most ~5 Discord messages
    request_timeout_s: float = 30.0
    system_prompt: str = (
        "You are a helpful Discord bot in {guild} #{channel}. Today is {date}. "
        "You are talking to {user}."
    )
    system_prompts: dict[str, str] = field(default_factory=dict)  # channel/guild id or name
    user_rate: Rate = field(default_factory=lambda: Rate(5, 60))
    guild_rate: Rate = field(default_factory=lambda: Rate(30, 60))
    conversation_channels: tuple[str, ...] = ()  # ids or names
    cache_ttl_s: float = 300.0
    allow_mentions: bool = False
    log_prompts: bool = False
    history_limit: int = 50  # messages fetched from persistence for a conversation
    # Discord: ~5 sends+edits per 5 s per channel; one write a second leaves room.
    edit_interval_s: float = 1.0
    split_at: int = 1900
    typing_interval_s: float = 8.0
    max_attempts: int = 3
    retry_after_cap_s: float = 10.0
    retry_initial_s: float = 0.5
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0
    context_retries: int = 3  # context_length_exceeded: halve the budget this many times
    store_timeout_s: float = 2.0
    gateway_timeout_s: float = 5.0
    max_concurrent: int = 8
    answer_deadline_s: float = 100.0  # all retries included; the gateway waits 120 s for /ask
    usage_window_s: float = 7 * 86400.0
    reload_interval_s: float = 2.0

    @classmethod
    def effective(cls, raw: dict[str, Any]) -> LlmSettings:
        """The settings in force: services.toml's, with OPENAI_BASE_URL winning."""
        settings = cls.parse(raw)
        env_url = os.environ.get("OPENAI_BASE_URL")
        return dataclasses.replace(settings, base_url=env_url) if env_url else settings

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> LlmSettings:
        defaults = cls()
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in raw:
                continue
            value, default = raw[f.name], getattr(defaults, f.name)
            parsed = _coerce(f.name, value, default)
            if parsed is _BAD:
                logger.warning(
                    "llm setting {} = {!r} is invalid: using {!r}", f.name, value, default
                )
            else:
                values[f.name] = parsed
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            logger.warning("unknown llm settings ignored: {}", ", ".join(sorted(unknown)))
        return cls(**values)


_BAD = object()


def _coerce(name: str, value: Any, default: Any) -> Any:
    if isinstance(default, Rate):
        rate = Rate.parse(value, Rate(0, 0))
        return _BAD if rate.tokens == 0 else rate
    if name == "system_prompts":
        ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        return {str(k): v for k, v in value.items()} if ok else _BAD
    if name == "conversation_channels":
        ok = isinstance(value, list) and all(isinstance(v, str | int) for v in value)
        return tuple(str(v).lstrip("#") for v in value) if ok else _BAD
    if name == "max_completion_tokens":
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)
        return value if ok else _BAD
    if isinstance(default, bool):
        return value if isinstance(value, bool) else _BAD
    if isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        return value if ok else _BAD
    if isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
        return float(value) if ok else _BAD
    if isinstance(default, str):
        return value if isinstance(value, str) and (value or name == "system_prompt") else _BAD
    return _BAD


class SettingsWatcher:
    """Re-reads `[services.<name>.settings]` from $BOT_CONFIG whenever its mtime changes."""

    def __init__(self, name: str, path: Path | None) -> None:
        self.name = name
        self.path = path
        self._mtime: float | None = None

    @classmethod
    def from_env(cls, name: str) -> SettingsWatcher:
        path = os.environ.get("BOT_CONFIG")
        return cls(name, Path(path) if path else None)

    async def prime(self) -> None:
        """Remember the current mtime: what the runtime was started with is current."""
        self._mtime = await self._stat()

    async def _stat(self) -> float | None:
        if self.path is None:
            return None
        try:
            return (await anyio.Path(self.path).stat()).st_mtime
        except OSError:
            return None

    async def poll(self) -> dict[str, Any] | None:
        """The new raw settings if the file changed (and still parses), else None."""
        mtime = await self._stat()
        if mtime is None or mtime == self._mtime:
            return None
        self._mtime = mtime
        path = self.path
        assert path is not None
        try:
            config = await anyio.to_thread.run_sync(load, path)
            return {**config.service(self.name).settings, **settings_overrides(self.name)}
        except ConfigError as exc:
            logger.warning("{} changed but is invalid; keeping the old settings: {}", path, exc)
        except KeyError:
            logger.warning(
                "{} no longer has [services.{}]; keeping the old settings", path, self.name
            )
        return None


def restart_only_changes(old: LlmSettings, new: LlmSettings) -> list[str]:
    return [k for k in RESTART_ONLY if getattr(old, k) != getattr(new, k)]
