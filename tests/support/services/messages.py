"""Message types only the backbone's test services use."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.messages import Done, Message, Request, message


@message("test.item", durable=True)
@dataclass(frozen=True, slots=True)
class Item(Message):
    n: int


@message("test.note")
@dataclass(frozen=True, slots=True)
class Note(Message):
    n: int


@message("test.produced")
@dataclass(frozen=True, slots=True)
class Produced(Message):
    published: int


@message("test.produce")
@dataclass(frozen=True, slots=True)
class Produce(Request[Produced]):
    start: int
    count: int


@message("test.misbehave")
@dataclass(frozen=True, slots=True)
class Misbehave(Request[Done]):
    how: str  # crash | crash_once | hang | grow
    mb: int = 0


@message("test.counted")
@dataclass(frozen=True, slots=True)
class Counted(Message):
    rows: int
    handled: int
    notes: int
    label: str = ""  # the echo service's `label` setting in force


@message("test.count")
@dataclass(frozen=True, slots=True)
class Count(Request[Counted]):
    pass
