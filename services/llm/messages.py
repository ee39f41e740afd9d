"""Message types private to the llm service (not part of the shared protocol)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.messages import Message, Request, message


@message("llm.stats.reply")
@dataclass(frozen=True, slots=True)
class LlmStats(Message):
    """The llm's counters since the process started."""

    requests: int
    cache_hits: int
    cache_entries: int
    errors_by_outcome: dict[str, int]  # failures only
    outcomes: dict[str, int]
    latency_p50_ms: float | None  # of recent successful answers
    breaker: str  # the first provider's breaker: closed | open | half_open
    # Each provider in order: {name, model, breaker, answered, failed} (failed: questions
    # it gave up on, after its retries, handed to the next or answered with the failure).
    providers: list[dict[str, Any]] = field(default_factory=list)
    last_provider: str | None = None  # who answered the latest question the model answered


@message("llm.stats")
@dataclass(frozen=True, slots=True)
class StatsRequest(Request[LlmStats]):
    pass
