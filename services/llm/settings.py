"""The llm service's settings: `[services.llm.settings]`, declared once with their bounds.

Prompts, channels, rates and limits apply live (a reload: SIGHUP or `run.py reload`).
The connection settings (base_url, request_timeout_s, fallbacks) and max_concurrent
apply on restart: the AsyncOpenAI clients of the process are built from them.
OPENAI_BASE_URL in the environment wins over base_url (the sandbox points it at the
stand-in).

The provider is base_url + model with the key in OPENAI_API_KEY; `fallbacks` adds
others, tried in order when the ones before fail (after their retries) or have their
breaker open:

    fallbacks = [{ name = "backup", base_url = "https://openrouter.ai/api/v1",
                   model = "openai/gpt-4o-mini", api_key_env = "OPENROUTER_API_KEY" }]
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from protocol.discord import MESSAGE_LIMIT
from protocol.settings import ServiceSettings, channel, setting, template

DEFAULT_KEY_ENV = "OPENAI_API_KEY"

# What a system prompt may say: filled in for each answer (conversation.system_prompt).
PLACEHOLDERS = ("guild", "channel", "date", "user")


@dataclass(frozen=True)
class Rate:
    """A token bucket's size, refilled completely in `per_s` seconds: `{tokens, per_s}`."""

    tokens: float = setting(min=1)  # a burst of this many is allowed
    per_s: float = setting(min=0.001)


def _http_url(value: str) -> tuple[str, str] | None:
    if value.startswith(("http://", "https://")):
        return None
    return f"{value!r} is not an http(s) URL", 'write it as "https://host/v1"'


def _not_empty(value: str) -> tuple[str, str] | None:
    return None if value.strip() else ("is empty", "set a value")


def _env_name(value: str) -> tuple[str, str] | None:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        return None
    return f"{value!r} is not an environment variable name", 'name the variable, e.g. "MY_KEY"'


@dataclass(frozen=True)
class Provider:
    """Another OpenAI-compatible endpoint: `{name, base_url, model, api_key_env}`."""

    base_url: str = setting(check=_http_url)
    model: str = setting(check=_not_empty)
    api_key_env: str = setting(DEFAULT_KEY_ENV, check=_env_name)  # holds its key
    name: str = setting("")  # in /usage and status; default: the URL's host


def _unique_names(value: tuple[Provider, ...]) -> tuple[str, str] | None:
    names = [p.name for p in value if p.name]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return f"the name {twice[0]!r} is given twice", "give each provider its own name"
    return None


def _channels(value: tuple[str, ...]) -> tuple[str, str] | None:
    return next((found for c in value if (found := channel(c)) is not None), None)


def _prompts(value: dict[str, Any]) -> tuple[str, str] | None:
    for key, prompt in value.items():
        if not isinstance(prompt, str):
            return f"the prompt for {key!r} is not a string", "write each prompt as a string"
    return template(*PLACEHOLDERS)(list(value.values()))


@dataclass(frozen=True)
class Settings(ServiceSettings):
    base_url: str = setting("https://api.openai.com/v1", check=_http_url, live=False)
    model: str = setting("gpt-4o-mini", check=_not_empty)
    provider_name: str = setting("", live=False)  # base_url's; default: its host
    # Tried in order when the providers before them fail or have their breaker open.
    fallbacks: tuple[Provider, ...] = setting((), check=_unique_names, live=False)
    max_context_tokens: int = setting(3000, min=1)
    max_prompt_chars: int = setting(4000, min=1)
    max_completion_tokens: int | None = setting(None, min=1)  # None: the model's own limit
    max_answer_chars: int = setting(8000, min=1)  # a longer stream is cut: ~5 messages
    request_timeout_s: float = setting(30.0, min=0.1, live=False)
    system_prompt: str = setting(
        "You are a helpful Discord bot in {guild} #{channel}. Today is {date}. "
        "You are talking to {user}.",
        check=template(*PLACEHOLDERS),
    )
    # Per channel or guild (id or name), before system_prompt.
    system_prompts: dict[str, str] = setting(factory=dict, check=_prompts)
    user_rate: Rate = setting(factory=lambda: Rate(5, 60))
    guild_rate: Rate = setting(factory=lambda: Rate(30, 60))
    conversation_channels: tuple[str, ...] = setting((), check=_channels)  # ids or names
    cache_ttl_s: float = setting(300.0, min=0)
    allow_mentions: bool = setting(False)  # True: answers may ping the users they name
    log_prompts: bool = setting(False)
    history_limit: int = setting(50, min=1, max=100)  # persistence gives at most 100
    # Discord: ~5 sends+edits per 5 s per channel; one write a second leaves room.
    edit_interval_s: float = setting(1.0, min=0)
    split_at: int = setting(1900, min=100, max=MESSAGE_LIMIT)
    typing_interval_s: float = setting(8.0, min=0.1, max=10)  # Discord shows it for 10 s
    max_attempts: int = setting(3, min=1)
    retry_after_cap_s: float = setting(10.0, min=0)
    retry_initial_s: float = setting(0.5, min=0)
    breaker_failures: int = setting(5, min=1)
    breaker_reset_s: float = setting(30.0, min=0.1)
    context_retries: int = setting(3, min=0)  # context_length_exceeded: halve the budget
    store_timeout_s: float = setting(2.0, min=0.05)
    gateway_timeout_s: float = setting(5.0, min=0.05)
    max_concurrent: int = setting(8, min=1, live=False)
    # All retries included; the gateway waits 120 s for /ask.
    answer_deadline_s: float = setting(100.0, min=1, max=120)
    usage_window_s: float = setting(7 * 86400.0, min=60)
    # A question the gateway found in Discord's history after a gap is answered (late,
    # and saying so) only if it is younger than this; older ones are left unanswered.
    late_answer_max_age_s: float = setting(600.0, min=0)
    # A question still open when the llm restarts is answered if younger than this;
    # an older one gets one short apology instead (an /ask only within its 15 minutes).
    pending_max_age_s: float = setting(600.0, min=0)


def base_url(settings: Settings) -> str:
    """The endpoint in force: OPENAI_BASE_URL in the environment wins over the setting."""
    return os.environ.get("OPENAI_BASE_URL") or settings.base_url
