"""Records of the Unix-socket LDC transport (sans-I/O codec).

One SOCK_SEQPACKET record carries one of:

| kind        | value        | body                  | ancillary      |
|-------------|--------------|-----------------------|----------------|
| PACKETS 1   | packet count | count x 64-byte packets | -            |
| RESET 2     | 0            | -                     | -              |
| MAP_TABLE 3 | entries      | -                     | memfd of table |
| SEGMENT 4   | segment id   | size u64              | memfd of pages |

after an 8-byte header {kind u8, 3 reserved bytes, value u32}, big-endian
like everything else on an LDC. RESET plays the hypervisor's part of
telling one end that the other reset its queues; MAP_TABLE and SEGMENT play
its part of making exported memory reachable (docs/ldc-transport.md).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Union

from .constants import PACKET_SIZE
from ..errors import ProtocolError

RECORD_HEADER = struct.Struct(">B3xI")
SEGMENT_BODY = struct.Struct(">Q")
#: Packets per record: 512 x 64 = 32 KiB, well inside a socket buffer.
MAX_PACKETS_PER_RECORD = 512
MAX_RECORD = RECORD_HEADER.size + MAX_PACKETS_PER_RECORD * PACKET_SIZE


class Kind(IntEnum):
    PACKETS = 1
    RESET = 2
    MAP_TABLE = 3
    SEGMENT = 4


class RecordError(ProtocolError):
    """A transport record that is malformed."""


@dataclass(frozen=True, slots=True)
class Packets:
    data: memoryview  # whole packets


@dataclass(frozen=True, slots=True)
class Reset:
    pass


@dataclass(frozen=True, slots=True)
class MapTableShared:
    entries: int
    fd: int


@dataclass(frozen=True, slots=True)
class SegmentShared:
    segment_id: int
    size: int
    fd: int


Record = Union[Packets, Reset, MapTableShared, SegmentShared]


def encode_packets(chunks: list[bytes]) -> list[bytes]:
    """Records carrying the packets in `chunks` (each a multiple of 64 bytes),
    batched up to MAX_PACKETS_PER_RECORD per record."""
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(data) % PACKET_SIZE:
        raise ValueError(f"{len(data)} bytes are not whole packets")
    step = MAX_PACKETS_PER_RECORD * PACKET_SIZE
    view = memoryview(data)
    return [
        RECORD_HEADER.pack(Kind.PACKETS, len(view[start : start + step]) // PACKET_SIZE) + view[start : start + step]
        for start in range(0, len(data), step)
    ]


def encode_reset() -> bytes:
    return RECORD_HEADER.pack(Kind.RESET, 0)


def encode_map_table(entries: int) -> bytes:
    return RECORD_HEADER.pack(Kind.MAP_TABLE, entries)


def encode_segment(segment_id: int, size: int) -> bytes:
    return RECORD_HEADER.pack(Kind.SEGMENT, segment_id) + SEGMENT_BODY.pack(size)


def decode(data: bytes | memoryview, fds: list[int]) -> Record:
    """Parse one record; `fds` are the descriptors that came with it.

    Raises RecordError for anything malformed. The caller owns the fds and
    closes them once the record is handled (mapped or refused).
    """
    view = memoryview(data)
    if len(view) < RECORD_HEADER.size:
        raise RecordError(f"record of {len(view)} bytes is shorter than its {RECORD_HEADER.size}-byte header")
    kind, value = RECORD_HEADER.unpack_from(view, 0)
    body = view[RECORD_HEADER.size :]
    wants_fd = kind in (Kind.MAP_TABLE, Kind.SEGMENT)
    if len(fds) != (1 if wants_fd else 0):
        raise RecordError(f"record kind {kind} came with {len(fds)} file descriptors")
    if kind == Kind.PACKETS:
        if value == 0 or value > MAX_PACKETS_PER_RECORD or len(body) != value * PACKET_SIZE:
            raise RecordError(f"PACKETS record says {value} packets but carries {len(body)} bytes")
        return Packets(body)
    if kind == Kind.RESET:
        if body or value:
            raise RecordError("RESET record with a body")
        return Reset()
    if kind == Kind.MAP_TABLE:
        if body or value == 0:
            raise RecordError("MAP_TABLE record must have entries and no body")
        return MapTableShared(value, fds[0])
    if kind == Kind.SEGMENT:
        if len(body) != SEGMENT_BODY.size or value == 0:
            raise RecordError("SEGMENT record must name a segment and carry its size")
        return SegmentShared(value, SEGMENT_BODY.unpack_from(body, 0)[0], fds[0])
    raise RecordError(f"unknown record kind {kind}")
