"""The vhost-user message codec: layouts, fd placement, and garbage in."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.errors import ProtocolError
from backend.vhost.constants import FLAG_NEED_REPLY, FLAG_REPLY, VERSION, Request
from backend.vhost.messages import (
    ConfigSpace,
    InflightInfo,
    IotlbMessage,
    MemoryRegion,
    Message,
    MessageDecoder,
    VringAddr,
    VringState,
    decode_mem_table,
    decode_single_region,
    decode_u64,
    encode_mem_table,
    encode_single_region,
    encode_u64,
)


def test_header_layout_is_little_endian_request_flags_size() -> None:
    raw = Message(Request.SET_VRING_NUM, VERSION | FLAG_NEED_REPLY, VringState(1, 256).encode()).encode()
    assert raw == bytes.fromhex("08000000" "09000000" "08000000" "01000000" "00010000")


def test_payload_sizes_match_the_c_structs() -> None:
    assert len(VringAddr(0, 0, 1, 2, 3).encode()) == 40
    assert len(InflightInfo(1, 2, 3, 4).encode()) == 24
    assert len(IotlbMessage(1, 2, 3, 3, 2).encode()) == 32
    assert len(encode_mem_table([MemoryRegion(0, 1, 2, 3)])) == 8 + 32
    assert len(encode_single_region(MemoryRegion(0, 1, 2, 3))) == 40


def test_roundtrips() -> None:
    regions = [MemoryRegion(0, 1 << 30, 0x7F0000000000, 0), MemoryRegion(1 << 32, 1 << 20, 0x7F1000000000, 4096)]
    assert decode_mem_table(encode_mem_table(regions)) == regions
    assert decode_single_region(encode_single_region(regions[1])) == regions[1]
    assert decode_u64(encode_u64(0xDEADBEEF)) == 0xDEADBEEF
    assert VringAddr.decode(VringAddr(2, 0, 10, 20, 30, 40).encode()) == VringAddr(2, 0, 10, 20, 30, 40)
    config = ConfigSpace(8, 4, 0, b"abcd")
    assert ConfigSpace.decode(config.encode()) == config
    assert IotlbMessage.decode(IotlbMessage(1, 2, 3, 3, 2).encode()) == IotlbMessage(1, 2, 3, 3, 2)


def test_reply_sets_the_reply_flag_and_keeps_the_request() -> None:
    reply = Message(Request.GET_FEATURES).reply(encode_u64(5))
    assert reply.is_reply and reply.flags == VERSION | FLAG_REPLY and reply.request == Request.GET_FEATURES


@pytest.mark.parametrize(
    "payload",
    [
        encode_mem_table([])[:4],
        bytes(8),  # zero regions
        (9).to_bytes(4, "little") + bytes(4) + bytes(9 * 32),  # too many regions
        (2).to_bytes(4, "little") + bytes(4) + bytes(32),  # says 2, carries 1
    ],
)
def test_bad_memory_tables_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_mem_table(payload)


@pytest.mark.parametrize("payload", [ConfigSpace(0, 4, 0, b"abc").encode(), ConfigSpace(250, 10, 0, bytes(10)).encode(), b"\x00"])
def test_bad_config_windows_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        ConfigSpace.decode(payload)


def test_decoder_reassembles_split_messages_and_attaches_fds_to_the_right_one() -> None:
    first = Message(Request.SET_OWNER).encode()
    second = Message(Request.SET_VRING_KICK, VERSION, encode_u64(0)).encode()
    decoder = MessageDecoder()
    assert decoder.feed(first[:5]) == []
    # The kernel ends a read at the segment with fds: tail of one message, then the fd-bearing one.
    messages = decoder.feed(first[5:] + second, [42])
    assert [m.request for m in messages] == [Request.SET_OWNER, Request.SET_VRING_KICK]
    assert messages[0].fds == () and messages[1].fds == (42,)


def test_decoder_refuses_wrong_version_and_huge_sizes() -> None:
    with pytest.raises(ProtocolError):
        MessageDecoder().feed(Message(1, 0x2).encode())
    with pytest.raises(ProtocolError):
        MessageDecoder().feed((1).to_bytes(4, "little") + (1).to_bytes(4, "little") + (1 << 20).to_bytes(4, "little"))


def test_unknown_requests_decode_and_keep_their_code() -> None:
    (message,) = MessageDecoder().feed(Message(999, VERSION, b"xy").encode())
    assert message.request == 999 and message.payload == b"xy" and message.name == "request 999"


@given(st.lists(st.binary(max_size=80), max_size=20), st.lists(st.booleans(), max_size=20))
def test_decoder_survives_any_byte_stream(chunks: list[bytes], with_fd: list[bool]) -> None:
    decoder = MessageDecoder()
    try:
        for chunk, has_fd in zip(chunks, with_fd + [False] * len(chunks)):
            for message in decoder.feed(chunk, [7] if has_fd and chunk else []):
                assert len(message.fds) <= 8
    except ProtocolError:
        pass


@given(st.binary(max_size=300))
def test_payload_decoders_raise_only_protocol_errors(payload: bytes) -> None:
    for decode in (decode_mem_table, decode_single_region, decode_u64, VringAddr.decode, VringState.decode,
                   ConfigSpace.decode, InflightInfo.decode, IotlbMessage.decode):
        try:
            decode(payload)
        except ProtocolError:
            pass


@given(st.lists(st.tuples(st.integers(0, 50), st.binary(max_size=64)), max_size=10), st.integers(1, 40))
def test_any_split_of_valid_messages_decodes_to_the_same_messages(specs: list[tuple[int, bytes]], step: int) -> None:
    messages = [Message(code, VERSION, payload) for code, payload in specs]
    stream = b"".join(m.encode() for m in messages)
    decoder = MessageDecoder()
    out: list[Message] = []
    for start in range(0, len(stream), step):
        out += decoder.feed(stream[start : start + step])
    assert out == messages


def test_real_fd_numbers_are_only_carried_not_touched() -> None:
    fd = os.eventfd(0)
    try:
        (message,) = MessageDecoder().feed(Message(Request.SET_VRING_CALL, VERSION, encode_u64(0)).encode(), [fd])
        assert message.fds == (fd,)
    finally:
        os.close(fd)
