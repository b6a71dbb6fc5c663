"""The 64-byte LDC packet: one codec for every type, subtype and mode.

RAW packets are 64 bytes of payload. Every other packet starts with an
8-byte header (type, stype, ctrl, env, seqid). RELIABLE-mode DATA packets
add a pad word and an ackid, leaving 48 payload bytes. CTRL and ERR packets
have the same layout in every mode, 56 payload bytes from offset 8: the
handshake runs before the mode matters, so Linux and illumos put a VERS
version at offset 8 and an RDX ackid at offset 12 whatever the mode (see
docs/ldc.md). All integers are big-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import ProtocolError
from .constants import (
    CTRL_MASK,
    ENV_LENGTH_MASK,
    HEADER_SIZE,
    PACKET_SIZE,
    PAYLOAD_SIZE,
    Control,
    Mode,
    PacketType,
    SubType,
)

HEADER = struct.Struct(">BBBBI")
RELIABLE_HEADER = struct.Struct(">BBBBIII")
VERSION = struct.Struct(">HH")

_KNOWN_TYPES = frozenset(int(t) for t in PacketType)
_KNOWN_STYPE_BITS = int(SubType.INFO | SubType.ACK | SubType.NACK)
_KNOWN_CONTROLS = frozenset(int(c) for c in Control)


class PacketError(ProtocolError):
    """Bytes that are not a well-formed LDC packet for the channel's mode."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One decoded packet. `payload` is its whole payload area (see header_size).

    `ackid` is a field of RELIABLE-mode DATA packets only; CTRL packets that
    acknowledge (RDX) carry it in payload bytes 4..7 (`control_ackid`).
    """

    type: int = 0
    stype: int = 0
    ctrl: int = 0
    env: int = 0
    seqid: int = 0
    ackid: int = 0
    payload: bytes = b""

    @property
    def data_length(self) -> int:
        """Bytes of message data in a DATA packet (the env length field)."""
        return self.env & ENV_LENGTH_MASK

    @property
    def control(self) -> int:
        return self.ctrl & CTRL_MASK

    def version(self) -> tuple[int, int]:
        """The (major, minor) a VERS packet carries."""
        return VERSION.unpack_from(self.payload, 0)


def header_size(ptype: int, mode: Mode) -> int:
    """Where the payload starts: only RELIABLE DATA packets have the long header."""
    mode = Mode(mode)
    if mode is Mode.RAW:
        return 0
    if mode is Mode.RELIABLE and ptype == PacketType.DATA:
        return HEADER_SIZE[Mode.RELIABLE]
    return HEADER_SIZE[Mode.UNRELIABLE]


def encode(packet: Packet, mode: Mode) -> bytes:
    """Bytes on the wire for `packet`; the payload is zero-padded to its area."""
    mode = Mode(mode)
    room = PACKET_SIZE - header_size(packet.type, mode)
    if len(packet.payload) > room:
        raise PacketError(f"payload of {len(packet.payload)} bytes does not fit the {room} bytes of {mode.name} mode")
    payload = packet.payload.ljust(room, b"\0")
    if mode is Mode.RAW:
        return payload
    for name, limit in (("type", 0xFF), ("stype", 0xFF), ("ctrl", 0xFF), ("env", 0xFF), ("seqid", 0xFFFF_FFFF), ("ackid", 0xFFFF_FFFF)):
        if not 0 <= getattr(packet, name) <= limit:
            raise PacketError(f"{name}={getattr(packet, name)} does not fit its field")
    if packet.ackid and room != PAYLOAD_SIZE[Mode.RELIABLE]:
        raise PacketError("only RELIABLE-mode DATA packets have an ackid field")
    if room == PAYLOAD_SIZE[Mode.RELIABLE]:
        return RELIABLE_HEADER.pack(packet.type, packet.stype, packet.ctrl, packet.env, packet.seqid, 0, packet.ackid) + payload
    return HEADER.pack(packet.type, packet.stype, packet.ctrl, packet.env, packet.seqid) + payload


def decode(data: bytes | bytearray | memoryview, mode: Mode) -> Packet:
    """Parse and check one packet; raises PacketError with the reason."""
    if len(data) != PACKET_SIZE:
        raise PacketError(f"LDC packet must be {PACKET_SIZE} bytes, got {len(data)}")
    mode = Mode(mode)
    if mode is Mode.RAW:
        return Packet(payload=bytes(data))
    ptype, stype, ctrl, env, seqid = HEADER.unpack_from(data, 0)
    start = header_size(ptype, mode)
    ackid = RELIABLE_HEADER.unpack_from(data, 0)[6] if start == HEADER_SIZE[Mode.RELIABLE] else 0
    packet = Packet(ptype, stype, ctrl, env, seqid, ackid, bytes(data[start:]))
    check(packet, mode)
    return packet


def check(packet: Packet, mode: Mode) -> None:
    """Reject unknown types, subtypes and controls, and impossible lengths."""
    if packet.type not in _KNOWN_TYPES:
        raise PacketError(f"unknown packet type 0x{packet.type:02x}")
    if packet.stype == 0 or packet.stype & ~_KNOWN_STYPE_BITS:
        raise PacketError(f"unknown packet subtype 0x{packet.stype:02x}")
    if packet.type == PacketType.CTRL and packet.control not in _KNOWN_CONTROLS:
        raise PacketError(f"unknown control envelope 0x{packet.ctrl:02x}")
    if packet.type == PacketType.DATA and packet.data_length > PAYLOAD_SIZE[mode]:
        raise PacketError(
            f"data length {packet.data_length} exceeds the {PAYLOAD_SIZE[mode]}-byte payload of {mode.name} mode"
        )


CONTROL_ACKID = struct.Struct(">4xI")


def control(stype: int, ctrl: int, *, env: int = 0, seqid: int = 0, ackid: int = 0, payload: bytes = b"") -> Packet:
    """A CTRL packet (handshake); an ackid goes where Linux and illumos put it."""
    if ackid:
        if payload:
            raise ValueError("a control packet carries either a payload or an ackid")
        payload = CONTROL_ACKID.pack(ackid)
    return Packet(PacketType.CTRL, stype, ctrl, env, seqid, 0, payload)


def control_ackid(packet: Packet) -> int:
    """The ackid of a CTRL packet (u32 at packet offset 12)."""
    return CONTROL_ACKID.unpack_from(packet.payload, 0)[1]


def version_payload(major: int, minor: int) -> bytes:
    return VERSION.pack(major, minor)
