"""Between vnet LSO frames (descriptor extension: IPV4_LSO + MSS) and GSO frames with a virtio_net_hdr.

Inside the switch and at the taps a large TCP frame travels as the kernel
makes one: GSO TCPV4 with gso_size = MSS, and NEEDS_CSUM with the TCP
checksum field holding only the pseudo-header sum (the kernel finishes or
segments it). On a vnet ring an LSO frame is complete instead: valid IPv4
header checksum, full TCP checksum over the whole frame, because the
receiving vnet (Linux vnet_rx_one, on a switch port) checks it like any
frame. The descriptor's HCK flags only ask the receiver to fill in
checksums, which the conversion here always does anyway.
"""

from __future__ import annotations

import struct

from .offload import GSO_TCPV4, OffloadError, TcpFrame, checksum, complete_checksum, finish, fold, ones_sum
from .vnet_hdr import VIRTIO_NET_HDR_F_NEEDS_CSUM, VirtioNetHdr

_U16 = struct.Struct("!H")
TCP_CHECK = 16  # the checksum field's offset in the TCP header
MAX_MSS = 0xFFFF  # the descriptor's ipv4_lso_mss is 16 bits


def gso_from_lso(frame: bytes, mss: int) -> tuple[bytes, VirtioNetHdr]:
    """An LSO frame off a vnet ring as a GSO TCPV4 frame with its header (OffloadError if it is
    not one large TCP/IPv4 frame): the IPv4 header checksum filled in, the TCP checksum left
    to the far side (NEEDS_CSUM)."""
    parsed = TcpFrame(frame)
    if parsed.ipv6:
        raise OffloadError("an IPv4 LSO frame carries IPv6")
    ip, tcp = parsed.ip, parsed.tcp
    headers = bytearray(frame[: parsed.payload])
    _U16.pack_into(headers, ip + 10, 0)
    _U16.pack_into(headers, ip + 10, checksum(headers[ip:tcp]))
    total = _U16.unpack_from(headers, ip + 2)[0]
    if total != len(frame) - ip:
        raise OffloadError(f"IPv4 length {total} does not match a {len(frame)}-byte frame")
    _U16.pack_into(headers, tcp + TCP_CHECK, fold(ones_sum(parsed.pseudo_header(len(frame) - tcp, headers))))
    hdr = VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, GSO_TCPV4, parsed.payload, mss, tcp, TCP_CHECK)
    return bytes(headers) + frame[parsed.payload :], hdr


def lso_frames(frame: bytes, hdr: VirtioNetHdr | None, tsolen: int) -> list[tuple[bytes, int]]:
    """What goes on a vnet ring for a frame and its header: (frame, MSS) pairs, one complete
    LSO frame where it can be one (GSO TCPV4 up to `tsolen` bytes), else finished frames with
    MSS 0 (OffloadError when the header does not fit the frame)."""
    if hdr is None or hdr.is_plain:
        return [(frame, 0)]
    if hdr.gso_type == GSO_TCPV4 and len(frame) <= tsolen and 0 < hdr.gso_size <= MAX_MSS:
        parsed = TcpFrame(frame)
        if not parsed.ipv6:
            if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
                frame = complete_checksum(frame, hdr)
            return [(frame, hdr.gso_size)]
    return [(piece, 0) for piece in finish(frame, hdr)]
