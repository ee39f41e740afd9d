"""The stats service's private request: moving its clock, for end-to-end tests only.

Served only when the setting `allow_clock_control` is true (the sandbox sets
it), so a production bot never lets a peer move its report schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.messages import Message, message


@message("stats.clock.advance")
@dataclass(frozen=True, slots=True)
class AdvanceClock(Message):
    """Answered with `{monotonic, wall}` after the move."""

    seconds: float
