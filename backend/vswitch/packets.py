"""ARP and ICMP echo frames built by hand, for tests and the demo (we have no IP stack)."""

from __future__ import annotations

import socket
import struct

BROADCAST = b"\xff" * 6


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def arp(op: int, src_mac: bytes, src_ip: str, dst_mac: bytes, dst_ip: str) -> bytes:
    eth_dst = BROADCAST if op == 1 else dst_mac
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, src_mac, socket.inet_aton(src_ip),
                       dst_mac if op == 2 else bytes(6), socket.inet_aton(dst_ip))
    return (eth_dst + src_mac + b"\x08\x06" + body).ljust(60, b"\0")


def parse_arp(frame: bytes) -> tuple[int, bytes, str, str] | None:
    """(op, sender MAC, sender IP, target IP) of an ARP frame, else None."""
    if frame[12:14] != b"\x08\x06":
        return None
    _, _, _, _, op, smac, sip, _, tip = struct.unpack("!HHBBH6s4s6s4s", frame[14:42])
    return op, smac, socket.inet_ntoa(sip), socket.inet_ntoa(tip)


def icmp_echo(src_mac: bytes, src_ip: str, dst_mac: bytes, dst_ip: str, *, reply: bool = False, ident: int = 7, seq: int = 1,
              payload: bytes = b"vio-ping") -> bytes:
    icmp = struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0x1234, 0, 64, 1, 0, socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return (dst_mac + src_mac + b"\x08\x00" + header + icmp).ljust(60, b"\0")


def parse_icmp(frame: bytes) -> tuple[int, str, str, int, int] | None:
    """(type, source IP, destination IP, id, seq) of an ICMP-over-IPv4 frame, else None."""
    if frame[12:14] != b"\x08\x00" or frame[23] != 1:
        return None
    ihl = (frame[14] & 0x0F) * 4
    kind, _, _, ident, seq = struct.unpack("!BBHHH", frame[14 + ihl : 22 + ihl])
    return kind, socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34]), ident, seq
