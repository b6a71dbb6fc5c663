"""A tiny service over one LDC channel, to show and test two processes talking.

Requests (first byte):
- b"E" + data: the server answers b"E" + data (message echo).
- b"M" + {src cookie, dst cookie, length} (16 + 16 + 8 bytes): the server
  copies `length` bytes in from the client's exported `src` buffer, writes
  them reversed into the client's `dst` buffer (copy-out) and answers b"M" +
  the SHA-256 of what it read (shared-memory round trip).
Anything else gets b"?" + a reason.
"""

from __future__ import annotations

import hashlib
import os
import struct

from ..errors import BackendError, LinkDownError
from .aio import LdcEndpoint
from .memory import PERM_RO, PERM_RW, TransportCookie

LENGTH = struct.Struct(">Q")


async def serve_one(endpoint: LdcEndpoint) -> int:
    """Answer requests until the peer goes away; returns requests served."""
    await endpoint.open(timeout=None)
    served = 0
    while True:
        try:
            request = await endpoint.receive_message()
        except LinkDownError:
            return served
        await endpoint.send_message(answer(endpoint, request))
        served += 1


def answer(endpoint: LdcEndpoint, request: bytes) -> bytes:
    if request[:1] == b"E":
        return request
    if request[:1] == b"M" and len(request) == 1 + 16 + 16 + LENGTH.size:
        src = TransportCookie.decode(request, 1)
        dst = TransportCookie.decode(request, 17)
        (length,) = LENGTH.unpack_from(request, 33)
        if length > 64 << 20:
            return b"?length over 64 MiB"
        try:
            data = bytearray(length)
            endpoint.peer_memory.copy_in([src], 0, data)
            endpoint.peer_memory.copy_out([dst], 0, data[::-1])
        except BackendError as exc:
            return b"?" + str(exc).encode()
        return b"M" + hashlib.sha256(data).digest()
    return b"?unknown request"


async def run_client(endpoint: LdcEndpoint, sizes: list[int], shm_size: int, say=print) -> None:
    """Exercise the server: echo each size, then one shared-memory round trip."""
    version = await endpoint.open()
    say(f"link up: LDC {version[0]}.{version[1]}, {endpoint.channel.mode.name} mode")
    for size in sizes:
        payload = b"E" + os.urandom(size)
        await endpoint.send_message(payload)
        reply = await endpoint.receive_message()
        if reply != payload:
            raise RuntimeError(f"echo of {size} bytes came back different")
        say(f"echo {size:>8} bytes: ok")
    segment = endpoint.allocate_segment(2 * _round_up(shm_size))
    src_off, dst_off = 0, _round_up(shm_size)
    pattern = os.urandom(shm_size)
    segment.view[src_off : src_off + shm_size] = pattern
    src = endpoint.export(segment, src_off, shm_size, PERM_RO)
    dst = endpoint.export(segment, dst_off, shm_size, PERM_RW)
    request = b"M" + src.cookies[0].encode() + dst.cookies[0].encode() + LENGTH.pack(shm_size)
    await endpoint.send_message(request)
    reply = await endpoint.receive_message()
    if reply != b"M" + hashlib.sha256(pattern).digest():
        raise RuntimeError(f"shared-memory copy-in failed: {reply[:80]!r}")
    if bytes(segment.view[dst_off : dst_off + shm_size]) != pattern[::-1]:
        raise RuntimeError("shared-memory copy-out did not land in our buffer")
    say(f"shared memory {shm_size} bytes: peer copied in (sha256 matches) and copied out (verified)")
    endpoint.memory.table.unmap(src)
    endpoint.memory.table.unmap(dst)


def _round_up(size: int, page: int = 8192) -> int:
    return max(page, -(-size // page) * page)
