"""Message types private to the llm service (not part of the shared protocol)."""

from __future__ import annotations

from dataclasses import dataclass

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
    breaker: str  # the model endpoint's breaker: closed | open | half_open


@message("llm.stats")
@dataclass(frozen=True, slots=True)
class StatsRequest(Request[LlmStats]):
    pass
