"""Message types only the backbone's test services use."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.messages import Message, message


@message("test.item", durable=True)
@dataclass(frozen=True, slots=True)
class Item(Message):
    n: int


@message("test.note")
@dataclass(frozen=True, slots=True)
class Note(Message):
    n: int


@message("test.produce")
@dataclass(frozen=True, slots=True)
class Produce(Message):
    start: int
    count: int


@message("test.misbehave")
@dataclass(frozen=True, slots=True)
class Misbehave(Message):
    how: str  # crash | hang | grow
    mb: int = 0


@message("test.count")
@dataclass(frozen=True, slots=True)
class Count(Message):
    pass
