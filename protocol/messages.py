"""The message types services exchange, declared once, typed.

Each type is a frozen dataclass registered under its wire name. `decode` turns
an envelope body into an instance and rejects missing fields, unknown fields
and wrong types with a `MessageError`, so handlers only ever see valid data.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar


class MessageError(ValueError):
    """A body that does not match its declared type."""


class Message:
    """Base of every declared message. `TYPE` is the wire name."""

    TYPE: ClassVar[str] = ""
    # Durable events are written to the sender's outbox and acknowledged.
    DURABLE: ClassVar[bool] = False

    def to_body(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


REGISTRY: dict[str, type[Message]] = {}
_HINTS: dict[type[Message], dict[str, Any]] = {}
M = TypeVar("M", bound=type[Message])


def message(name: str, *, durable: bool = False):
    """Register a dataclass as the message type `name`."""

    def register(cls: M) -> M:
        if name in REGISTRY and REGISTRY[name].__qualname__ != cls.__qualname__:
            raise TypeError(f"message type {name!r} declared twice")
        cls.TYPE = name
        cls.DURABLE = durable
        REGISTRY[name] = cls
        return cls

    return register


def _check(value: Any, hint: Any, path: str) -> None:
    origin = typing.get_origin(hint)
    if hint is Any:
        return
    if origin in (typing.Union, types.UnionType):
        for alt in typing.get_args(hint):
            try:
                _check(value, alt, path)
                return
            except MessageError:
                continue
        raise MessageError(f"{path}: {type(value).__name__} does not match {hint}")
    if hint is type(None):
        if value is not None:
            raise MessageError(f"{path}: expected null")
        return
    if origin is list:
        if not isinstance(value, list):
            raise MessageError(f"{path}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint) or (Any,)
        for i, v in enumerate(value):
            _check(v, item, f"{path}[{i}]")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise MessageError(f"{path}: expected a map, got {type(value).__name__}")
        return
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise MessageError(f"{path}: expected {hint.__name__}, got {type(value).__name__}")


def decode(type_name: str, body: dict[str, Any]) -> Message:
    """Validate `body` against the declared type and build it."""
    cls = REGISTRY.get(type_name)
    if cls is None:
        raise MessageError(f"unknown message type {type_name!r}")
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    extra = set(body) - set(fields)
    if extra:
        raise MessageError(f"{type_name}: unknown fields {sorted(extra)}")
    for name, f in fields.items():
        if name in body:
            _check(body[name], hints[name], f"{type_name}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise MessageError(f"{type_name}: missing field {name!r}")
    return cls(**body)


# --- Control plane: supervisor <-> service -------------------------------------------


@message("service.ready")
@dataclass(frozen=True, slots=True)
class ServiceReady(Message):
    name: str
    pid: int


@message("service.heartbeat")
@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """Sent from the service's event loop: a loop that stops sending is a hung loop."""

    pid: int
    channels: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@message("service.stop")
@dataclass(frozen=True, slots=True)
class StopService(Message):
    reason: str = "supervisor stopping"


@message("supervisor.status")
@dataclass(frozen=True, slots=True)
class StatusRequest(Message):
    pass


@message("supervisor.restart")
@dataclass(frozen=True, slots=True)
class RestartRequest(Message):
    service: str


@message("service.clock.advance")
@dataclass(frozen=True, slots=True)
class AdvanceClock(Message):
    """Move a service's clock forward; answered `{monotonic, wall}`. Served only when the
    service's setting `allow_clock_control` is true (the sandbox sets it), so a real bot
    never lets a peer move its schedules."""

    seconds: float


@message("ping")
@dataclass(frozen=True, slots=True)
class Ping(Message):
    """Any service answers a ping with its name: the cheapest liveness probe."""

    text: str = ""
