"""DS message codec, stream framing and version negotiation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.ds.messages import (
    HEADER, MAX_MESSAGE, Data, DsError, Framer, InitAck, InitNack, InitReq, MsgType, Nack, RegAck, RegNack, RegReq,
    Result, UnregAck, UnregNack, UnregReq, decode, encode, negotiate,
)

CASES = [
    (InitReq(1, 0), "00000000" "00000004" "0001" "0000"),
    (InitAck(0), "00000001" "00000002" "0000"),  # 10 bytes, as illumos checks
    (InitNack(0), "00000002" "00000002" "0000"),
    (RegReq(0x100000001, 1, 0, "md-update"), "00000003" "00000019" "0000000100000001" "0001" "0000" + b"md-update".hex() + "00000000"),
    (RegAck(0x100000001, 0), "00000004" "00000010" "0000000100000001" "0000" "000000000000"),
    (RegNack(0x200000003, Result.REG_VER_NACK, 0), "00000005" "00000018" "0000000200000003" "0000000000000001" "0000" "000000000000"),
    (UnregReq(7), "00000006" "00000008" "0000000000000007"),
    (UnregAck(7), "00000007" "00000008" "0000000000000007"),
    (UnregNack(7), "00000008" "00000008" "0000000000000007"),
    (Data(0x100000001, b"\x00" * 7 + b"\x01"), "00000009" "00000010" "0000000100000001" "0000000000000001"),
    (Nack(9, Result.INV_HDL), "0000000a" "00000010" "0000000000000009" "0000000000000003"),
]


@pytest.mark.parametrize("message, wire", CASES)
def test_exact_bytes_both_ways(message, wire) -> None:
    assert encode(message).hex() == wire
    kind, length = HEADER.unpack_from(bytes.fromhex(wire), 0)
    assert length == len(bytes.fromhex(wire)) - 8
    assert decode(kind, bytes.fromhex(wire)[8:]) == message


def test_linux_shapes_are_accepted() -> None:
    assert decode(MsgType.INIT_ACK, bytes.fromhex("00000000")) == InitAck(0)  # Linux pads to 4
    short_nack = bytes.fromhex("0000000100000002" "0003")  # Linux struct: handle, major
    assert decode(MsgType.REG_NACK, short_nack) == RegNack(0x100000002, Result.REG_VER_NACK, 3)


@pytest.mark.parametrize(
    "kind, payload, why",
    [
        (0x0B, b"", "unknown"),
        (MsgType.INIT_REQ, b"\x00\x01", "truncated"),
        (MsgType.REG_REQ, bytes(16), "without a service id"),
        (MsgType.REG_REQ, bytes(12) + b"\xff\xfe\x00\x00", "not ASCII"),
        (MsgType.DATA, bytes(7), "truncated"),
    ],
)
def test_bad_messages(kind, payload, why) -> None:
    with pytest.raises(DsError, match=why):
        decode(kind, payload)


def test_framer_splits_a_stream_however_it_arrives() -> None:
    stream = b"".join(encode(m) for m, _ in CASES)
    framer = Framer()
    got = []
    for i in range(0, len(stream), 5):
        got += framer.feed(stream[i : i + 5])
    assert [decode(k, p) for k, p in got] == [m for m, _ in CASES]


def test_framer_refuses_absurd_lengths() -> None:
    with pytest.raises(DsError, match="announced"):
        Framer().feed(HEADER.pack(9, MAX_MESSAGE + 1))


@pytest.mark.parametrize(
    "ours, major, minor, expected",
    [
        (((1, 3),), 1, 5, (True, 3)),
        (((1, 3),), 1, 1, (True, 1)),
        (((3, 0), (2, 1)), 1, 0, (False, 2)),  # all ours above: offer the lowest
        (((1, 0),), 4, 0, (False, 1)),  # all below: offer the highest
        (((5, 0), (3, 0), (1, 0)), 4, 0, (False, 3)),  # in between: highest below
        ((), 1, 0, (False, 0)),
    ],
)
def test_version_negotiation(ours, major, minor, expected) -> None:
    assert negotiate(ours, major, minor) == expected


def test_reg_req_refuses_bad_ids() -> None:
    for bad in ("", "a\0b"):
        with pytest.raises(ValueError):
            encode(RegReq(1, 1, 0, bad))


@given(st.integers(0, 0x0C), st.binary(max_size=64))
def test_decoder_raises_only_ds_errors(kind: int, payload: bytes) -> None:
    try:
        message = decode(kind, payload)
    except DsError:
        return
    again = encode(message)
    assert decode(*HEADER.unpack_from(again, 0)[:1], again[8:]) == message


@given(st.lists(st.binary(max_size=40), max_size=20))
def test_framer_never_raises_on_sane_chunks(chunks) -> None:
    framer = Framer()
    for chunk in chunks:
        try:
            framer.feed(chunk)
        except DsError:
            framer.reset()
