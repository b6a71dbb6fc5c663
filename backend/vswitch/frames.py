"""Ethernet II frames and IEEE 802.1Q tags: parse, build, tag, untag.

The switch looks at a frame once, through `parse`, and learns everything it
needs from the result: addresses, the VLAN a tag names (None when untagged or
priority-tagged), the tag's priority and where the payload starts. Frames stay
`bytes`; nothing here copies more than a tag insertion or removal needs.

Layout (network byte order)::

    dst(6) src(6) [TPID 0x8100(2) TCI(2)] ethertype-or-length(2) payload

TCI = PCP(3) DEI(1) VID(12). VID 0 marks a priority tag (no VLAN), VID 4095 is
reserved and never valid on the wire. Stacked tags (802.1ad S-tags 0x88a8, or a
second 0x8100) are refused: the engine switches on one tag only. Type values
below 0x0600 are 802.3 length fields; they pass through like any ethertype.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import ConfigError, ProtocolError

MAC_LEN = 6
HEADER_LEN = 14
TAG_LEN = 4
TAGGED_HEADER_LEN = HEADER_LEN + TAG_LEN

TPID_8021Q = 0x8100
TPID_8021AD = 0x88A8
#: Pre-standard S-tag TPIDs some switches still emit; refused like 0x88a8.
TPID_LEGACY_QINQ = frozenset({0x9100, 0x9200, 0x9300})
_STACKED = frozenset({TPID_8021Q, TPID_8021AD}) | TPID_LEGACY_QINQ

VID_PRIORITY = 0
VID_RESERVED = 0xFFF
VID_MIN, VID_MAX = 1, 4094
PCP_MAX = 7

BROADCAST = b"\xff" * MAC_LEN
_HEX = frozenset("0123456789abcdefABCDEF")

_TYPE = struct.Struct(">H")
_TAG = struct.Struct(">HH")


class FrameError(ProtocolError):
    """Bytes that are not a frame the switch can forward."""


class RuntFrameError(FrameError):
    """Shorter than its own header (14 bytes, 18 with a tag)."""


class VlanTagError(FrameError):
    """A tag names a VLAN id that may not appear on the wire (4095)."""


class UnsupportedFrameError(FrameError):
    """Well-formed, but outside what the engine switches (stacked tags)."""


@dataclass(frozen=True, slots=True)
class EthernetFrame:
    """What `parse` learns from a frame's header.

    `vlan` is None for an untagged or priority-tagged frame; `tagged` says
    whether an 802.1Q tag is present at all (so a priority tag is tagged with
    vlan None). `pcp` is 0 without a tag.
    """

    dst: bytes
    src: bytes
    vlan: int | None
    pcp: int
    ethertype: int
    payload_offset: int

    @property
    def tagged(self) -> bool:
        return self.payload_offset == TAGGED_HEADER_LEN


def parse(frame: bytes | bytearray | memoryview) -> EthernetFrame:
    """Decode the header; raise a FrameError subclass that says what is wrong."""
    size = len(frame)
    if size < HEADER_LEN:
        raise RuntFrameError(f"runt frame: {size} bytes, an Ethernet header needs {HEADER_LEN}")
    dst = bytes(frame[0:6])
    src = bytes(frame[6:12])
    (tpid,) = _TYPE.unpack_from(frame, 12)
    if tpid == TPID_8021AD or tpid in TPID_LEGACY_QINQ:
        raise UnsupportedFrameError(f"stacked VLAN tags (TPID {tpid:#06x}) are not supported")
    if tpid != TPID_8021Q:
        return EthernetFrame(dst, src, None, 0, tpid, HEADER_LEN)
    if size < TAGGED_HEADER_LEN:
        raise RuntFrameError(f"runt tagged frame: {size} bytes, an 802.1Q header needs {TAGGED_HEADER_LEN}")
    tci, ethertype = _TAG.unpack_from(frame, 14)
    if ethertype in _STACKED:
        raise UnsupportedFrameError(f"double VLAN tag (inner TPID {ethertype:#06x}) is not supported")
    vid = tci & 0xFFF
    if vid == VID_RESERVED:
        raise VlanTagError("VLAN id 4095 is reserved")
    return EthernetFrame(dst, src, vid or None, tci >> 13, ethertype, TAGGED_HEADER_LEN)


def build(
    dst: bytes, src: bytes, ethertype: int, payload: bytes = b"", *, vlan: int | None = None, pcp: int = 0
) -> bytes:
    """Assemble a frame, tagged when `vlan` is given (0 for a priority tag).

    No padding to the 60-byte wire minimum: virtual ports carry short frames.
    """
    _check_mac(dst, "destination")
    _check_mac(src, "source")
    if not 0 <= ethertype <= 0xFFFF:
        raise FrameError(f"ethertype {ethertype:#x} does not fit 16 bits")
    if vlan is None:
        return dst + src + _TYPE.pack(ethertype) + bytes(payload)
    return dst + src + _tag_bytes(vlan, pcp) + _TYPE.pack(ethertype) + bytes(payload)


def tag(frame: bytes, vlan: int, pcp: int = 0) -> bytes:
    """Insert an 802.1Q tag into an untagged frame (vlan 0: priority tag).

    A frame that already carries a tag is refused rather than double-tagged;
    `untag` it first to retag.
    """
    info = parse(frame)
    if info.tagged:
        raise FrameError("frame is already tagged")
    frame = bytes(frame)
    return frame[:12] + _tag_bytes(vlan, pcp) + frame[12:]


def untag(frame: bytes) -> bytes:
    """Remove the 802.1Q tag if there is one; an untagged frame comes back as is."""
    info = parse(frame)
    frame = bytes(frame)
    if not info.tagged:
        return frame
    return frame[:12] + frame[16:]


def _tag_bytes(vlan: int, pcp: int) -> bytes:
    if not (vlan == VID_PRIORITY or VID_MIN <= vlan <= VID_MAX):
        raise VlanTagError(f"VLAN id {vlan} out of range (0 for priority, {VID_MIN}..{VID_MAX})")
    if not 0 <= pcp <= PCP_MAX:
        raise FrameError(f"priority {pcp} out of range 0..{PCP_MAX}")
    return _TAG.pack(TPID_8021Q, pcp << 13 | vlan)


def _check_mac(mac: bytes, what: str) -> None:
    if len(mac) != MAC_LEN:
        raise FrameError(f"{what} MAC address must be {MAC_LEN} bytes, got {len(mac)}")


def is_multicast(mac: bytes) -> bool:
    """Group bit set (the I/G bit, bit 0 of the first octet); broadcast included."""
    return bool(mac[0] & 1)


def is_broadcast(mac: bytes) -> bool:
    return mac == BROADCAST


def is_valid_source(mac: bytes) -> bool:
    """A station address: not a group address and not all zeros."""
    return not is_multicast(mac) and mac != bytes(MAC_LEN)


def format_mac(mac: bytes) -> str:
    """aa:bb:cc:dd:ee:ff, the form tcpdump and ip(8) print."""
    if len(mac) != MAC_LEN:
        raise FrameError(f"MAC address must be {MAC_LEN} bytes, got {len(mac)}")
    return ":".join(f"{b:02x}" for b in mac)


def parse_mac(text: str) -> bytes:
    """Read aa:bb:cc:dd:ee:ff (or with '-'); one or two hex digits per octet."""
    parts = text.strip().replace("-", ":").split(":")
    try:
        if len(parts) != MAC_LEN or not all(1 <= len(p) <= 2 and set(p) <= _HEX for p in parts):
            raise ValueError
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ConfigError(f"not a MAC address: {text!r} (expected six hex octets, aa:bb:cc:dd:ee:ff)") from None
