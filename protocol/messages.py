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
from typing import Any, ClassVar, Generic, TypeVar


class MessageError(ValueError):
    """A body that does not match its declared type."""


class Message:
    """Base of every declared message. `TYPE` is the wire name."""

    TYPE: ClassVar[str] = ""
    # Durable events are written to the sender's outbox and acknowledged.
    DURABLE: ClassVar[bool] = False
    # Retained events: the sender keeps the latest one (per value of the field RETAIN_BY
    # names, or just one when it is "") and gives it again to a subscriber that
    # (re)connects, so a service that starts late needs not ask for it.
    RETAIN_BY: ClassVar[str | None] = None

    def to_body(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


R = TypeVar("R", bound=Message)


class Request(Message, Generic[R]):
    """A message that is answered: `class Send(Request[Sent])` declares its reply type
    once, and `Service.call` returns exactly that type."""

    REPLY: ClassVar[type[Message]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            if typing.get_origin(base) is Request:
                (cls.REPLY,) = typing.get_args(base)


REGISTRY: dict[str, type[Message]] = {}
_HINTS: dict[type[Message], dict[str, Any]] = {}
M = TypeVar("M", bound=type[Message])


def message(name: str, *, durable: bool = False, retain_by: str | None = None):
    """Register a dataclass as the message type `name`; `retain_by` makes it a retained
    event (see Message.RETAIN_BY)."""

    def register(cls: M) -> M:
        if name in REGISTRY and REGISTRY[name].__qualname__ != cls.__qualname__:
            raise TypeError(f"message type {name!r} declared twice")
        if issubclass(cls, Request) and not isinstance(getattr(cls, "REPLY", None), type):
            raise TypeError(f"request {name!r} does not declare its reply: Request[Reply]")
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if retain_by and retain_by not in fields:
            raise TypeError(f"{name!r} is retained by {retain_by!r}, which is not a field")
        cls.TYPE = name
        cls.DURABLE = durable
        cls.RETAIN_BY = retain_by
        REGISTRY[name] = cls
        return cls

    return register


def check_type(value: Any, hint: Any, path: str) -> None:
    """Raise MessageError unless `value` (msgpack or TOML data) matches the type `hint`."""
    _check(value, hint, path)


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
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise MessageError(f"{path}: expected a list, got {type(value).__name__}")
        (item, *_) = typing.get_args(hint) or (Any,)
        for i, v in enumerate(value):
            _check(v, item, f"{path}[{i}]")
        return
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(repr(a) for a in typing.get_args(hint))
            raise MessageError(f"{path}: {value!r} is not one of {choices}")
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

SUPERVISOR = "supervisor"  # its name on the bus


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
    # Numbers the service keeps about its own work (Service.figures), exported as metrics.
    figures: dict[str, float] = dataclasses.field(default_factory=dict)


@message("service.stop")
@dataclass(frozen=True, slots=True)
class StopService(Message):
    reason: str = "supervisor stopping"


@message("ok")
@dataclass(frozen=True, slots=True)
class Done(Message):
    """The reply of a request that has nothing to say but that it was done."""


@message("supervisor.status", retain_by="")
@dataclass(frozen=True, slots=True)
class SupervisorStatus(Message):
    """Every service's state, pid, restarts, uptime, RSS, last exit and channels. The
    answer to `supervisor.status.get`, and an event the supervisor publishes at each state
    transition (and every few seconds, for RSS and breakers) to its subscribers."""

    supervisor: dict[str, Any]
    services: list[dict[str, Any]]
    metrics_url: str | None = None  # Prometheus text; /healthz beside it

    def service(self, name: str) -> dict[str, Any] | None:
        return next((s for s in self.services if s.get("name") == name), None)


@message("supervisor.status.get")
@dataclass(frozen=True, slots=True)
class StatusRequest(Request[SupervisorStatus]):
    pass


@message("supervisor.outcome")
@dataclass(frozen=True, slots=True)
class Outcome(Message):
    ok: bool
    detail: str


@message("supervisor.restart")
@dataclass(frozen=True, slots=True)
class RestartRequest(Request[Outcome]):
    service: str


@message("supervisor.reload")
@dataclass(frozen=True, slots=True)
class ReloadRequest(Request[Outcome]):
    """Re-read services.toml and apply every service's settings (also on SIGHUP)."""


@message("service.settings")
@dataclass(frozen=True, slots=True)
class ApplySettings(Request[Outcome]):
    """New settings for a running service: it validates them against its schema, applies
    what can change live and names the rest (`detail`)."""

    settings: dict[str, Any]


@message("service.clock")
@dataclass(frozen=True, slots=True)
class ClockReading(Message):
    monotonic: float
    wall: float


@message("service.clock.advance")
@dataclass(frozen=True, slots=True)
class AdvanceClock(Request[ClockReading]):
    """Move a service's clock forward. Served only when the service's setting
    `allow_clock_control` is true (the sandbox sets it), so a real bot never lets a peer
    move its schedules."""

    seconds: float


@message("pong")
@dataclass(frozen=True, slots=True)
class Pong(Message):
    name: str
    pid: int
    text: str = ""


@message("ping")
@dataclass(frozen=True, slots=True)
class Ping(Request[Pong]):
    """Any service answers a ping with its name: the cheapest liveness probe."""

    text: str = ""
