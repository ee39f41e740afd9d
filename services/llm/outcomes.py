"""Every way an exchange with the model can end, each with exactly one user-visible message.

One enum instead of scattered strings (openai/gpt-discord-bot's CompletionResult): the
service decides the outcome once, and both what the user reads and what `LlmExchange`
records follow from it.
"""

from __future__ import annotations

import enum
import math


class Outcome(enum.Enum):
    OK = "ok"
    CACHE_HIT = "cache_hit"
    RATE_LIMITED_USER = "rate_limited_user"
    PROMPT_TOO_LONG = "prompt_too_long"
    MODEL_UNAVAILABLE = "model_unavailable"
    MODEL_BUSY = "model_busy"
    AUTH_FAILED = "auth_failed"
    CONTEXT_TOO_LONG = "context_too_long"
    TIMEOUT = "timeout"
    BAD_RESPONSE = "bad_response"
    ERROR = "error"
    TOO_LATE = "too_late"  # open when the llm restarted, and too old to answer now

    @property
    def ok(self) -> bool:
        return self in (Outcome.OK, Outcome.CACHE_HIT)

    def message(self, retry_in_s: float | None = None, max_chars: int | None = None) -> str:
        """What the user reads; empty for successes (they read the answer)."""
        seconds = max(1, math.ceil(retry_in_s or 0))
        return _MESSAGES[self].format(s=seconds, max_chars=max_chars or 0)


_MESSAGES: dict[Outcome, str] = {
    Outcome.OK: "",
    Outcome.CACHE_HIT: "",
    Outcome.RATE_LIMITED_USER: "Slow down: too many questions at once. Try again in {s} s.",
    Outcome.PROMPT_TOO_LONG: "That message is too long for me: keep it under {max_chars} "
    "characters.",
    Outcome.MODEL_UNAVAILABLE: "The model is unavailable, try again in {s} s.",
    Outcome.MODEL_BUSY: "The model is busy (rate limited), try again in {s} s.",
    Outcome.AUTH_FAILED: "I can't reach the model: it rejected my credentials. "
    "The bot's operator has been told.",
    Outcome.CONTEXT_TOO_LONG: "This conversation is too long for the model, even trimmed. "
    "Use /reset to start afresh.",
    Outcome.TIMEOUT: "The model took too long to answer. Please try again.",
    Outcome.BAD_RESPONSE: "The model sent back a broken answer. Please try again.",
    Outcome.ERROR: "Something went wrong while answering. Please try again.",
    Outcome.TOO_LATE: "Sorry, I was restarted while answering this, and it is too old for "
    "me to pick up again now. Please ask again.",
}
