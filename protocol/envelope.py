"""The one msgpack envelope every frame on the bus is wrapped in.

A frame is a msgpack array, not a map: it is smaller and faster to pack, and the
field order is the schema. Decoding checks size, shape, version and kind before
anything else looks at the frame, so a bad frame becomes one `FrameError` and
never an exception deep inside a service.
"""

from __future__ import annotations

import enum
import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 1 << 20  # 1 MiB: a Discord message is at most ~16 KiB with embeds


class Kind(enum.IntEnum):
    EVENT = 1
    REQUEST = 2
    REPLY = 3
    ERROR = 4
    HEARTBEAT = 5
    CONTROL = 6
    ACK = 7


class FrameError(ValueError):
    """A frame that cannot be accepted; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str, corr: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.corr = corr


# Unique across processes and restarts without a uuid call per message:
# a random per-process prefix plus a counter.
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count()


def new_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):x}"


@dataclass(slots=True)
class Delivery:
    """Sequencing for durable events on one channel (sender to receiver).

    `epoch` names the sender's outbox (a new outbox starts a new sequence),
    `seq` is this event's place in it and `acked` the highest seq the sender
    has seen acknowledged, so a freshly started receiver knows what to expect next.
    """

    epoch: str
    seq: int
    acked: int


@dataclass(slots=True)
class Envelope:
    kind: Kind
    type: str
    src: str
    dst: str = ""
    body: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    corr: str | None = None
    ts: float = field(default_factory=time.time)
    deadline: float | None = None
    delivery: Delivery | None = None
    v: int = PROTOCOL_VERSION

    def pack(self) -> bytes:
        """The envelope frame. Delivery travels in a second frame, packed at send time."""
        return msgpack.packb(
            [
                self.v,
                int(self.kind),
                self.id,
                self.type,
                self.src,
                self.dst,
                self.corr,
                self.ts,
                self.deadline,
                self.body,
            ],
            use_bin_type=True,
        )

    def reply(self, body: dict[str, Any], type: str | None = None) -> Envelope:
        return Envelope(Kind.REPLY, type or self.type, self.dst, self.src, body, corr=self.id)

    def error(self, reason: str, detail: str) -> Envelope:
        return error_frame(self.dst, self.src, reason, detail, corr=self.id)


def error_frame(src: str, dst: str, reason: str, detail: str, corr: str | None) -> Envelope:
    return Envelope(Kind.ERROR, "error", src, dst, {"reason": reason, "detail": detail}, corr=corr)


_FIELDS = 10
_STR_OR_NONE = (str, type(None))
_NUM = (int, float)


def unpack(frame: bytes, max_bytes: int = MAX_FRAME_BYTES) -> Envelope:
    """Decode and validate one frame, or raise FrameError."""
    if len(frame) > max_bytes:
        raise FrameError("oversized", f"{len(frame)} bytes > limit {max_bytes}")
    try:
        raw = msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise FrameError("malformed", f"not msgpack ({type(exc).__name__})") from None
    if not isinstance(raw, list) or len(raw) != _FIELDS:
        raise FrameError("malformed", "not an envelope array")
    v, kind, id_, type_, src, dst, corr, ts, deadline, body = raw
    corr_hint = id_ if isinstance(id_, str) else None
    if v != PROTOCOL_VERSION:
        raise FrameError(
            "version", f"protocol version {v!r}, expected {PROTOCOL_VERSION}", corr_hint
        )
    try:
        kind = Kind(kind)
    except (ValueError, TypeError):
        raise FrameError("malformed", f"unknown kind {kind!r}", corr_hint) from None
    if not (isinstance(id_, str) and isinstance(type_, str) and isinstance(src, str)):
        raise FrameError("malformed", "id, type and src must be strings", corr_hint)
    if not isinstance(dst, str) or not isinstance(corr, _STR_OR_NONE):
        raise FrameError("malformed", "dst and corr must be strings", corr_hint)
    if not isinstance(ts, _NUM) or not isinstance(deadline, (*_NUM, type(None))):
        raise FrameError("malformed", "ts and deadline must be numbers", corr_hint)
    if not isinstance(body, dict):
        raise FrameError("malformed", "body must be a map", corr_hint)
    return Envelope(kind, type_, src, dst, body, id_, corr, float(ts), deadline, None, v)


def pack_delivery(d: Delivery) -> bytes:
    return msgpack.packb([d.epoch, d.seq, d.acked])


def unpack_delivery(frame: bytes) -> Delivery:
    """Decode the second frame of a durable event, or raise FrameError."""
    try:
        raw = msgpack.unpackb(frame, raw=False)
    except Exception as exc:
        raise FrameError(
            "malformed", f"delivery frame not msgpack ({type(exc).__name__})"
        ) from None
    if (
        not isinstance(raw, list)
        or len(raw) != 3
        or not isinstance(raw[0], str)
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in raw[1:])
    ):
        raise FrameError("malformed", "delivery must be [epoch, seq, acked]")
    return Delivery(raw[0], raw[1], raw[2])
