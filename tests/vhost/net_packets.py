"""TCP frames built by hand (IPv4/IPv6, optional 802.1Q tag), finished or left for offload, and their checkers."""

from __future__ import annotations

import socket
import struct

from backend.vswitch.offload import GSO_TCPV4, GSO_TCPV6, checksum, fold, ones_sum
from backend.vswitch.vnet_hdr import VIRTIO_NET_HDR_F_NEEDS_CSUM, VirtioNetHdr

TCP_SYN, TCP_ACK, TCP_PSH, TCP_FIN = 0x02, 0x10, 0x08, 0x01


def tcp_frame(src_mac: bytes, dst_mac: bytes, src_ip: str, dst_ip: str, sport: int, dport: int, seq: int, ack: int,
              flags: int, payload: bytes = b"", *, window: int = 65535, options: bytes = b"", vlan: int | None = None,
              partial: bool = False, ip_id: int = 1) -> bytes:
    """An Ethernet/IP/TCP frame; `partial` leaves only the pseudo-header sum in the TCP checksum (NEEDS_CSUM)."""
    v6 = ":" in src_ip
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (5 + len(options) // 4) << 4, flags, window, 0, 0) + options
    length = len(tcp) + len(payload)
    if v6:
        pseudo = socket.inet_pton(socket.AF_INET6, src_ip) + socket.inet_pton(socket.AF_INET6, dst_ip) + struct.pack("!IxxxB", length, 6)
        ip = struct.pack("!IHBB", 6 << 28, length, 6, 64) + pseudo[:32]
        ethertype = b"\x86\xdd"
    else:
        addrs = socket.inet_aton(src_ip) + socket.inet_aton(dst_ip)
        pseudo = addrs + struct.pack("!BBH", 0, 6, length)
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + length, ip_id, 0x4000, 64, 6, 0) + addrs
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        ethertype = b"\x08\x00"
    value = fold(ones_sum(pseudo)) if partial else checksum(pseudo, tcp, payload)
    tcp = tcp[:16] + struct.pack("!H", value) + tcp[18:]
    l2 = dst_mac + src_mac + (b"\x81\x00" + struct.pack("!H", vlan) if vlan is not None else b"") + ethertype
    return l2 + ip + tcp + payload


def gso_header(frame: bytes, mss: int) -> VirtioNetHdr:
    """The header a driver sends with a TSO frame built by tcp_frame(partial=True)."""
    l3 = 18 if frame[12:14] == b"\x81\x00" else 14
    v6 = frame[l3] >> 4 == 6
    l4 = l3 + (40 if v6 else (frame[l3] & 0xF) * 4)
    end = l4 + (frame[l4 + 12] >> 4) * 4
    return VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, end, mss, l4, 16)


def parse_tcp(frame: bytes) -> dict | None:
    """Fields of a TCP/IPv4 or IPv6 frame, with whether both checksums verify; None if not TCP."""
    l3 = 18 if frame[12:14] == b"\x81\x00" else 14
    ethertype = frame[l3 - 2 : l3]
    if ethertype == b"\x08\x00" and frame[l3 + 9] == 6:
        ihl = (frame[l3] & 0xF) * 4
        total = struct.unpack_from("!H", frame, l3 + 2)[0]
        l4, end = l3 + ihl, l3 + total
        pseudo = frame[l3 + 12 : l3 + 20] + struct.pack("!BBH", 0, 6, end - l4)
        ip_ok = checksum(frame[l3 : l3 + ihl]) == 0
    elif ethertype == b"\x86\xdd" and frame[l3 + 6] == 6:
        l4 = l3 + 40
        end = l4 + struct.unpack_from("!H", frame, l3 + 4)[0]
        pseudo = frame[l3 + 8 : l3 + 40] + struct.pack("!IxxxB", end - l4, 6)
        ip_ok = True
    else:
        return None
    sport, dport, seq, ack, doff, flags, window = struct.unpack_from("!HHIIBBH", frame, l4)
    segment = frame[l4:end]
    return {
        "sport": sport, "dport": dport, "seq": seq, "ack": ack, "flags": flags, "window": window,
        "options": frame[l4 + 20 : l4 + (doff >> 4) * 4], "payload": frame[l4 + (doff >> 4) * 4 : end],
        "ok": ip_ok and checksum(pseudo, segment) == 0, "ip_id": struct.unpack_from("!H", frame, l3 + 4)[0],
    }
