"""Frames: round trips, and every kind of bad input becomes one FrameError or MessageError."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.envelope import Envelope, FrameError, Kind, unpack, unpack_delivery
from protocol.messages import Heartbeat, MessageError, Ping, decode


def test_round_trip_keeps_every_field() -> None:
    env = Envelope(Kind.REQUEST, "ping", "a", "b", {"text": "hé\x00"}, corr="c1", deadline=5.0)
    back = unpack(env.pack())
    assert (
        back.kind,
        back.type,
        back.src,
        back.dst,
        back.body,
        back.corr,
        back.deadline,
        back.id,
    ) == (env.kind, env.type, env.src, env.dst, env.body, env.corr, env.deadline, env.id)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\xc1", "malformed"),  # never-used msgpack byte
        (b"", "malformed"),
        (msgpack.packb({"v": 1}), "malformed"),
        (msgpack.packb([2, 1, "id", "t", "s", "", None, 0.0, None, {}]), "version"),
        (msgpack.packb([1, 99, "id", "t", "s", "", None, 0.0, None, {}]), "malformed"),
        (msgpack.packb([1, 1, "id", "t", "s", "", None, 0.0, None, []]), "malformed"),
        (Envelope(Kind.EVENT, "t", "s", body={"x": "y" * 2_000_000}).pack(), "oversized"),
        (Envelope(Kind.EVENT, "t", "s").pack()[:-3], "malformed"),  # truncated
    ],
    ids=["bad-byte", "empty", "map", "version", "kind", "body", "oversized", "truncated"],
)
def test_bad_frames_are_rejected_with_a_reason(frame: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as info:
        unpack(frame)
    assert info.value.reason == reason


def test_wrong_version_keeps_the_id_so_the_error_can_be_correlated() -> None:
    frame = msgpack.packb([9, 2, "req-1", "ping", "s", "", None, 0.0, None, {}])
    with pytest.raises(FrameError) as info:
        unpack(frame)
    assert info.value.corr == "req-1"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise_anything_but_frame_error(data: bytes) -> None:
    try:
        unpack(data)
    except FrameError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.integers(-(2**63), 2**64 - 1),
            st.text(max_size=5),
            st.floats(),
            st.dictionaries(st.text(max_size=3), st.integers(-5, 5), max_size=2),
        ),
        min_size=0,
        max_size=12,
    )
)
def test_arbitrary_msgpack_arrays_never_raise_anything_but_frame_error(items: list) -> None:
    try:
        unpack(msgpack.packb(items))
    except FrameError:
        pass
    try:
        unpack_delivery(msgpack.packb(items))
    except FrameError:
        pass


def test_bodies_are_checked_against_their_declared_type() -> None:
    assert decode("ping", {"text": "x"}) == Ping("x")
    assert decode("service.heartbeat", {"pid": 3}) == Heartbeat(3)
    with pytest.raises(MessageError, match="unknown message type"):
        decode("nope", {})
    with pytest.raises(MessageError, match="missing field 'pid'"):
        decode("service.heartbeat", {})
    with pytest.raises(MessageError, match="expected int"):
        decode("service.heartbeat", {"pid": "3"})
    with pytest.raises(MessageError, match="unknown fields"):
        decode("ping", {"text": "x", "evil": 1})
    with pytest.raises(MessageError):
        decode("service.heartbeat", {"pid": True})
