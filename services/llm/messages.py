"""Message types private to the llm service (not part of the shared protocol)."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.messages import Message, message


@message("llm.stats")
@dataclass(frozen=True, slots=True)
class StatsRequest(Message):
    """Answered with `{requests, cache_hits, cache_entries, errors_by_outcome, outcomes,
    latency_p50_ms, breaker}` since the process started."""
