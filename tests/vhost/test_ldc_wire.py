"""The LDC device's wire layouts: records in queue buffers and the channel table, with fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.errors import ProtocolError
from backend.ldc.constants import Mode
from backend.vhost.devices import ldc_wire as wire


def test_records_batch_back_to_back_and_decode_in_order() -> None:
    packets = bytes(range(64)) * 3
    buffer = b"".join([wire.encode_map_table(16, 0x2000), wire.encode_segment(1, 8192, 0x4000), *wire.encode_packets(packets),
                       wire.encode_reset(), wire.encode_pool(0x10000, 0x8000)])
    records = list(wire.decode(buffer))
    assert records[0] == wire.MapTable(16, 0x2000)
    assert records[1] == wire.SegmentAt(1, 8192, 0x4000)
    assert isinstance(records[2], wire.Packets) and bytes(records[2].data) == packets
    assert records[3] == wire.Reset() and records[4] == wire.Pool(0x10000, 0x8000)


def test_headers_are_big_endian_as_on_an_ldc() -> None:
    assert wire.encode_map_table(0x0102, 0x1122334455667788) == bytes([3, 0, 0, 0, 0, 0, 1, 2]) + bytes.fromhex("1122334455667788")


def test_packets_split_into_records_of_at_most_512() -> None:
    records = wire.encode_packets(bytes(64 * 600))
    assert [int.from_bytes(r[4:8], "big") for r in records] == [512, 88]
    assert len(records[0]) == wire.BUFFER_SIZE


@pytest.mark.parametrize("buffer, message", [
    (b"", "empty"),
    (bytes([1, 0, 0, 0, 0, 0, 0, 2]) + bytes(64), "PACKETS record of 2"),
    (bytes([1, 0, 0, 0, 0, 0, 0, 0]), "PACKETS record of 0"),
    (bytes([9, 0, 0, 0, 0, 0, 0, 0]), "unknown record kind 9"),
    (bytes([3, 0, 0, 0, 0, 0, 0, 1]) + bytes(4), "truncated"),
    (bytes([3, 0, 0, 0, 0, 0, 0, 0]) + bytes(8), "no entries"),
    (bytes([2, 0, 0, 0, 0, 0, 0, 1]), "RESET record with a value"),
    (bytes([2, 0, 0]), "shorter than a record header"),
])
def test_malformed_buffers_are_refused_with_a_reason(buffer: bytes, message: str) -> None:
    with pytest.raises(wire.RecordError, match=message):
        list(wire.decode(buffer))


def test_config_space_round_trips_the_channel_table() -> None:
    channels = [wire.ChannelInfo(0, wire.Service.VDISK, Mode.UNRELIABLE, 65536), wire.ChannelInfo(7, wire.Service.DS, Mode.RELIABLE, 0)]
    data = wire.encode_config(channels)
    assert len(data) == wire.config_size(2) and data[:2] == b"\x02\x00"  # little-endian, as virtio config is
    assert wire.decode_config(data) == (channels, wire.BUFFER_SIZE)


def test_config_space_limits_and_bad_rows() -> None:
    with pytest.raises(ValueError):
        wire.encode_config([wire.ChannelInfo(i, wire.Service.VNET, Mode.UNRELIABLE, 0) for i in range(wire.MAX_CHANNELS + 1)])
    row = wire.CONFIG_CHANNEL.pack(1, 9, 1, 0, 0)
    with pytest.raises(ProtocolError, match="channel 0"):
        wire.decode_config(wire.CONFIG_HEADER.pack(1, 0, 0) + row)
    with pytest.raises(ProtocolError, match="claims 3 channels"):
        wire.decode_config(wire.CONFIG_HEADER.pack(3, 0, 0) + row)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_decode_never_fails_other_than_by_record_error(data: bytes) -> None:
    try:
        for record in wire.decode(data):
            if isinstance(record, wire.Packets):
                assert len(record.data) % 64 == 0 and len(record.data) <= len(data)
    except wire.RecordError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([1, 2, 3, 4, 5]), max_size=6), st.binary(max_size=256))
def test_fuzz_decode_of_well_framed_kinds_with_random_bodies(kinds: list[int], noise: bytes) -> None:
    buffer = b"".join(bytes([k, 0, 0, 0]) + noise[:4].ljust(4, b"\0") + noise[4:20] for k in kinds) or b"\0"
    try:
        list(wire.decode(buffer))
    except wire.RecordError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_config_decoder(data: bytes) -> None:
    try:
        channels, _ = wire.decode_config(data)
        assert len(channels) <= wire.MAX_CHANNELS
    except ProtocolError:
        pass
