"""Finishing offloaded frames in software: checksum completion and TCP segmentation.

A frame that left a virtio driver (or a tap with IFF_VNET_HDR) may be
unfinished: its virtio_net_hdr says "the L4 checksum still needs doing"
(NEEDS_CSUM: the field at csum_start + csum_offset holds only the
pseudo-header sum) or "this is one large TCP frame to cut into gso_size
pieces" (GSO TCPV4/TCPV6). A port that cannot carry such frames (a vnet over
LDC, a tap without vnet headers, a guest that did not negotiate the
offload) gets the finished frames this module makes.

Nothing in the header or frame is trusted: every offset is checked against
the frame, segmentation only cuts Ethernet (optionally 802.1Q) + IPv4/IPv6 +
TCP frames whose headers parse, and the segment count is bounded. Anything
else raises OffloadError.
"""

from __future__ import annotations

import struct

from ..errors import GuestError
from ..native import native
from .port import Offloads
from .vnet_hdr import VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VirtioNetHdr

# gso_type values of struct virtio_net_hdr (<linux/virtio_net.h>)
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_ECN = 0x80

ETH_P_IPV4 = 0x0800
ETH_P_IPV6 = 0x86DD
TPID_8021Q = 0x8100
IPPROTO_TCP = 6
IPPROTO_UDP = 17

TCP_FIN, TCP_PSH, TCP_CWR = 0x01, 0x08, 0x80
#: Most segments one frame may be cut into (a 64 KiB frame at an MSS of 64 bytes).
MAX_SEGMENTS = 1024

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class OffloadError(GuestError):
    """The offload request in a virtio_net_hdr does not fit the frame it came with."""


ALL = Offloads.CSUM | Offloads.TSO4 | Offloads.TSO6 | Offloads.ECN


def needed(hdr: VirtioNetHdr) -> Offloads:
    """The offloads a port must have to take a frame with this header as it is."""
    need = Offloads.CSUM if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM else Offloads.NONE
    kind = hdr.gso_type & ~GSO_ECN
    if kind == GSO_TCPV4:
        need |= Offloads.TSO4
    elif kind == GSO_TCPV6:
        need |= Offloads.TSO6
    if hdr.gso_type & GSO_ECN:
        need |= Offloads.ECN
    return need


def is_gso(hdr: VirtioNetHdr) -> bool:
    return hdr.gso_type != VIRTIO_NET_HDR_GSO_NONE


# ---- checksums ------------------------------------------------------------------------


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The 16-bit one's-complement sum of `data` (big-endian words, odd byte padded):
    0 only for all-zero data. In C (`backend/native/csum.c`): a 64 KiB frame whose
    checksum a vnet must finish took 50% of the guest simulator's time at MTU 65000
    as one Python big-integer operation."""
    ffi, lib = native()
    return lib.csum_ones_sum(ffi.from_buffer(data), len(data))


def fold(*sums: int) -> int:
    total = sum(sums)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(*parts: bytes | bytearray | memoryview) -> int:
    """Internet checksum (RFC 1071) over the concatenation of `parts` (each of even length but the last)."""
    return ~fold(*(ones_sum(p) for p in parts)) & 0xFFFF


def complete_checksum(frame: bytes, hdr: VirtioNetHdr) -> bytes:
    """Fill in the checksum a NEEDS_CSUM frame left open: sum from csum_start, store at +csum_offset."""
    start, field = hdr.csum_start, hdr.csum_start + hdr.csum_offset
    if hdr.csum_offset % 2 or start >= len(frame) or field + 2 > len(frame):
        raise OffloadError(f"checksum at {start}+{hdr.csum_offset} does not fit a {len(frame)}-byte frame")
    value = checksum(memoryview(frame)[start:]) or 0xFFFF  # 0 and 0xFFFF mean the same; UDP reserves 0
    return frame[:field] + _U16.pack(value) + frame[field + 2 :]


# ---- segmentation ---------------------------------------------------------------------


class TcpFrame:
    """Where the headers of an Ethernet + IP + TCP frame are (checked against its length)."""

    __slots__ = ("frame", "ip", "ipv6", "payload", "tcp")

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        if len(frame) < 14:
            raise OffloadError(f"a {len(frame)}-byte frame has no Ethernet header")
        ethertype, self.ip = _U16.unpack_from(frame, 12)[0], 14
        if ethertype == TPID_8021Q:
            if len(frame) < 18:
                raise OffloadError("a tagged frame ends inside its tag")
            ethertype, self.ip = _U16.unpack_from(frame, 16)[0], 18
        if ethertype == ETH_P_IPV4:
            self.ipv6 = False
            ihl = (frame[self.ip] & 0x0F) * 4 if len(frame) > self.ip else 0
            if len(frame) < self.ip + 20 or frame[self.ip] >> 4 != 4 or ihl < 20:
                raise OffloadError("not a well-formed IPv4 header")
            if frame[self.ip + 9] != IPPROTO_TCP:
                raise OffloadError(f"IPv4 protocol {frame[self.ip + 9]} is not TCP")
            if _U16.unpack_from(frame, self.ip + 6)[0] & 0x3FFF:
                raise OffloadError("a fragment cannot be segmented")
            self.tcp = self.ip + ihl
        elif ethertype == ETH_P_IPV6:
            self.ipv6 = True
            if len(frame) < self.ip + 40 or frame[self.ip] >> 4 != 6:
                raise OffloadError("not a well-formed IPv6 header")
            if frame[self.ip + 6] != IPPROTO_TCP:
                raise OffloadError(f"IPv6 next header {frame[self.ip + 6]} is not TCP (extension headers are not segmented)")
            self.tcp = self.ip + 40
        else:
            raise OffloadError(f"ethertype 0x{ethertype:04x} is not IPv4 or IPv6")
        if len(frame) < self.tcp + 20:
            raise OffloadError("the frame ends inside the TCP header")
        doff = (frame[self.tcp + 12] >> 4) * 4
        if doff < 20 or len(frame) < self.tcp + doff:
            raise OffloadError(f"TCP data offset {doff} does not fit the frame")
        self.payload = self.tcp + doff

    def pseudo_header(self, tcp_length: int, frame: bytes | bytearray | None = None) -> bytes:
        data = self.frame if frame is None else frame
        if self.ipv6:
            return bytes(data[self.ip + 8 : self.ip + 40]) + _U32.pack(tcp_length) + b"\0\0\0" + bytes([IPPROTO_TCP])
        return bytes(data[self.ip + 12 : self.ip + 20]) + b"\0" + bytes([IPPROTO_TCP]) + _U16.pack(tcp_length)


def segment(frame: bytes, hdr: VirtioNetHdr, *, limit: int | None = None) -> list[bytes]:
    """Cut a GSO TCP frame into finished frames of at most gso_size payload bytes each.

    Each segment gets its own IP length (and IPv4 id and header checksum), TCP
    sequence number and a complete TCP checksum; FIN and PSH stay on the last
    segment only, CWR on the first only. `limit` stops after that many
    segments (the switch judges a GSO frame by its first one).
    """
    kind = hdr.gso_type & ~GSO_ECN
    if kind not in (GSO_TCPV4, GSO_TCPV6):
        raise OffloadError(f"gso_type {hdr.gso_type} is not TCP segmentation")
    parsed = TcpFrame(frame)
    if parsed.ipv6 != (kind == GSO_TCPV6):
        raise OffloadError(f"gso_type {hdr.gso_type} does not match the frame's IP version")
    mss = hdr.gso_size
    data = len(frame) - parsed.payload
    if mss < 1 or data < 1:
        raise OffloadError(f"nothing to segment: gso_size {mss}, {data} payload bytes")
    count = -(-data // mss)
    if count > MAX_SEGMENTS:
        raise OffloadError(f"{data} bytes at gso_size {mss} would make {count} segments (most {MAX_SEGMENTS})")
    headers = bytearray(frame[: parsed.payload])
    ip, tcp = parsed.ip, parsed.tcp
    seq = _U32.unpack_from(frame, tcp + 4)[0]
    ip_id = 0 if parsed.ipv6 else _U16.unpack_from(frame, ip + 4)[0]
    flags = frame[tcp + 13]
    out = []
    for index in range(count if limit is None else min(count, limit)):
        chunk = frame[parsed.payload + index * mss : parsed.payload + (index + 1) * mss]
        tcp_length = parsed.payload - tcp + len(chunk)
        if parsed.ipv6:
            _U16.pack_into(headers, ip + 4, tcp_length)
        else:
            _U16.pack_into(headers, ip + 2, tcp - ip + tcp_length)
            _U16.pack_into(headers, ip + 4, (ip_id + index) & 0xFFFF)
            _U16.pack_into(headers, ip + 10, 0)
            _U16.pack_into(headers, ip + 10, checksum(headers[ip:tcp]))
        _U32.pack_into(headers, tcp + 4, (seq + index * mss) & 0xFFFFFFFF)
        last = index == count - 1
        headers[tcp + 13] = flags & ~(0 if last else TCP_FIN | TCP_PSH) & ~(0 if index == 0 else TCP_CWR)
        _U16.pack_into(headers, tcp + 16, 0)
        _U16.pack_into(headers, tcp + 16, checksum(parsed.pseudo_header(tcp_length, headers), headers[tcp:], chunk))
        out.append(bytes(headers) + chunk)
    return out


def check(frame: bytes, hdr: VirtioNetHdr) -> None:
    """Refuse a header whose offload request does not fit the frame (before anyone acts on it)."""
    if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and (hdr.csum_offset % 2 or hdr.csum_start + hdr.csum_offset + 2 > len(frame)):
        raise OffloadError(f"checksum at {hdr.csum_start}+{hdr.csum_offset} does not fit a {len(frame)}-byte frame")
    if is_gso(hdr):
        segment(frame, hdr, limit=1)


def finish(frame: bytes, hdr: VirtioNetHdr) -> list[bytes]:
    """The finished frame(s) a port without offloads needs in place of this one."""
    if is_gso(hdr):
        return segment(frame, hdr)
    if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        return [complete_checksum(frame, hdr)]
    return [frame]


def first_segment(frame: bytes, hdr: VirtioNetHdr) -> bytes:
    """What one wire frame of this frame looks like: the frame itself, or its first segment."""
    return segment(frame, hdr, limit=1)[0] if is_gso(hdr) else frame
