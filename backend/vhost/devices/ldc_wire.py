"""Wire layouts of the LDC device over vhost-user (docs/ldc-over-vhost-user.md): sans-I/O codecs.

Two things cross the virtio boundary:

* **records** in queue buffers (big-endian, like everything on an LDC): a
  buffer holds one or more records back to back, each an 8-byte header
  {kind u8, 3 reserved bytes, value u32} and a body whose length the kind
  fixes. PACKETS carries `value` 64-byte LDC packets; RESET says "this end
  reset its queues"; MAP_TABLE / SEGMENT name the sender's map table and
  exportable segments by guest-physical address (the in-memory twins of the
  Unix transport's memfd records); POOL (driver -> device only) lends the
  device guest memory to export from.
* **config space** (little-endian, as virtio config is): the channel table.

Everything decoded here comes from the other side and is checked before it
is believed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from ...errors import ProtocolError
from ...ldc.constants import PACKET_SIZE, Mode

#: virtio device id: 0xb0 -> PCI 1af4:10f0, the range set aside for experimental devices.
VIRTIO_ID_LDC = 0xB0
#: The device exports memory out of guest-lent pools (POOL records); always offered, must be accepted.
F_POOL = 1 << 0

RECORD_HEADER = struct.Struct(">B3xI")
MAP_TABLE_BODY = struct.Struct(">Q")  # table GPA
SEGMENT_BODY = struct.Struct(">QQ")  # size, GPA
POOL_BODY = struct.Struct(">QQ")  # GPA, size
MAX_PACKETS_PER_RECORD = 512
#: Largest buffer the device fills on a receive queue (and a sensible transmit buffer size).
BUFFER_SIZE = RECORD_HEADER.size + MAX_PACKETS_PER_RECORD * PACKET_SIZE

CONFIG_HEADER = struct.Struct("<HHI")  # num_channels, reserved, buffer_size
CONFIG_CHANNEL = struct.Struct("<QBBHI")  # channel id, service, LDC mode, reserved, pool bytes wanted
MAX_CHANNELS = (256 - CONFIG_HEADER.size) // CONFIG_CHANNEL.size  # the vhost-user config window is 256 bytes


class Kind(IntEnum):
    PACKETS = 1
    RESET = 2
    MAP_TABLE = 3
    SEGMENT = 4
    POOL = 5


class Service(IntEnum):
    """What the device end of a channel is (the guest runs the matching client)."""

    VDISK = 1  # a vds export; the guest runs vdc
    VNET = 2  # a port of a vsw; the guest runs vnet
    DS = 3  # the control domain's DS port; the guest runs its DS agent


class RecordError(ProtocolError):
    """A malformed record in a queue buffer."""


@dataclass(frozen=True, slots=True)
class Packets:
    data: memoryview


@dataclass(frozen=True, slots=True)
class Reset:
    pass


@dataclass(frozen=True, slots=True)
class MapTable:
    entries: int
    gpa: int


@dataclass(frozen=True, slots=True)
class SegmentAt:
    segment_id: int
    size: int
    gpa: int


@dataclass(frozen=True, slots=True)
class Pool:
    gpa: int
    size: int


Record = Packets | Reset | MapTable | SegmentAt | Pool

_FIXED_BODY = {Kind.RESET: 0, Kind.MAP_TABLE: MAP_TABLE_BODY.size, Kind.SEGMENT: SEGMENT_BODY.size, Kind.POOL: POOL_BODY.size}


def encode_packets(data: bytes | memoryview) -> list[bytes]:
    """PACKETS records for whole packets in `data`, at most MAX_PACKETS_PER_RECORD each."""
    view = memoryview(data)
    if len(view) % PACKET_SIZE:
        raise ValueError(f"{len(view)} bytes are not whole packets")
    step = MAX_PACKETS_PER_RECORD * PACKET_SIZE
    return [RECORD_HEADER.pack(Kind.PACKETS, len(view[i : i + step]) // PACKET_SIZE) + view[i : i + step] for i in range(0, len(view), step)]


def encode_reset() -> bytes:
    return RECORD_HEADER.pack(Kind.RESET, 0)


def encode_map_table(entries: int, gpa: int) -> bytes:
    return RECORD_HEADER.pack(Kind.MAP_TABLE, entries) + MAP_TABLE_BODY.pack(gpa)


def encode_segment(segment_id: int, size: int, gpa: int) -> bytes:
    return RECORD_HEADER.pack(Kind.SEGMENT, segment_id) + SEGMENT_BODY.pack(size, gpa)


def encode_pool(gpa: int, size: int) -> bytes:
    return RECORD_HEADER.pack(Kind.POOL, 0) + POOL_BODY.pack(gpa, size)


def decode(buffer: bytes | bytearray | memoryview) -> Iterator[Record]:
    """The records in one buffer, in order; RecordError at the first malformed one
    (the records before it have been yielded and stand)."""
    view = memoryview(buffer).cast("B")
    offset, end = 0, len(view)
    if not end:
        raise RecordError("empty buffer")
    while offset < end:
        if end - offset < RECORD_HEADER.size:
            raise RecordError(f"{end - offset} trailing bytes are shorter than a record header")
        kind, value = RECORD_HEADER.unpack_from(view, offset)
        body = offset + RECORD_HEADER.size
        if kind == Kind.PACKETS:
            if not 0 < value <= MAX_PACKETS_PER_RECORD or body + value * PACKET_SIZE > end:
                raise RecordError(f"PACKETS record of {value} packets, {end - body} bytes left in the buffer")
            offset = body + value * PACKET_SIZE
            yield Packets(view[body:offset])
            continue
        size = _FIXED_BODY.get(kind)  # type: ignore[call-overload]
        if size is None:
            raise RecordError(f"unknown record kind {kind}")
        if body + size > end:
            raise RecordError(f"{Kind(kind).name} record truncated")
        offset = body + size
        if kind == Kind.RESET:
            if value:
                raise RecordError("RESET record with a value")
            yield Reset()
        elif kind == Kind.MAP_TABLE:
            if not value:
                raise RecordError("MAP_TABLE record with no entries")
            yield MapTable(value, MAP_TABLE_BODY.unpack_from(view, body)[0])
        elif kind == Kind.SEGMENT:
            size_, gpa = SEGMENT_BODY.unpack_from(view, body)
            if not value or not size_:
                raise RecordError("SEGMENT record must name a segment and its size")
            yield SegmentAt(value, size_, gpa)
        else:
            gpa, size_ = POOL_BODY.unpack_from(view, body)
            if value or not size_:
                raise RecordError("POOL record must have a size and no value")
            yield Pool(gpa, size_)


# ---- config space -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """One row of the channel table: channel `index` uses queues 2*index (rx) and 2*index+1 (tx)."""

    channel_id: int
    service: Service
    mode: Mode
    pool_size: int


def encode_config(channels: list[ChannelInfo]) -> bytes:
    if len(channels) > MAX_CHANNELS:
        raise ValueError(f"{len(channels)} channels do not fit the config space (at most {MAX_CHANNELS})")
    return CONFIG_HEADER.pack(len(channels), 0, BUFFER_SIZE) + b"".join(
        CONFIG_CHANNEL.pack(c.channel_id, c.service, c.mode, 0, c.pool_size) for c in channels
    )


def decode_config(data: bytes) -> tuple[list[ChannelInfo], int]:
    """(channel table, buffer size) from the config space a device reports."""
    if len(data) < CONFIG_HEADER.size:
        raise ProtocolError(f"config space of {len(data)} bytes has no header")
    count, _, buffer_size = CONFIG_HEADER.unpack_from(data, 0)
    if count > MAX_CHANNELS or len(data) < CONFIG_HEADER.size + count * CONFIG_CHANNEL.size:
        raise ProtocolError(f"config space claims {count} channels in {len(data)} bytes")
    channels = []
    for i in range(count):
        channel_id, service, mode, _, pool = CONFIG_CHANNEL.unpack_from(data, CONFIG_HEADER.size + i * CONFIG_CHANNEL.size)
        try:
            channels.append(ChannelInfo(channel_id, Service(service), Mode(mode), pool))
        except ValueError as exc:
            raise ProtocolError(f"channel {i}: {exc}") from None
    return channels, buffer_size


def config_size(channels: int) -> int:
    return CONFIG_HEADER.size + channels * CONFIG_CHANNEL.size
