"""A VIO session over the real Unix-socket LDC transport, shared memory through memfds."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

from backend.ldc import Mode
from backend.ldc.aio import LdcEndpoint
from backend.ldc.channel import Channel
from backend.ldc.memory import PERM_RW, TransportCookie
from backend.vio.aio import VioEndpoint

from .devices import Client, Server


class CopyingServer(Server):
    """Copies the buffer each descriptor names out of the client's memory."""

    def __init__(self) -> None:
        super().__init__()
        self.data: list[bytes] = []

    def on_descriptor(self, session, ring, index, payload):
        cookie = TransportCookie.decode(payload)
        buffer = bytearray(cookie.size)
        session.memory.peer_memory.copy_in([cookie], 0, buffer)
        self.data.append(bytes(buffer))
        session.complete(ring, index, b"ok")


def test_session_over_memfd_shared_memory() -> None:
    async def main() -> None:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        client, server = Client(), CopyingServer()
        a = VioEndpoint(LdcEndpoint(left, Channel(Mode.UNRELIABLE)), client)
        b = VioEndpoint(LdcEndpoint(right, Channel(Mode.UNRELIABLE)), server)
        versions = await asyncio.gather(a.open(), b.open())
        assert versions == [(1, 1), (1, 1)]
        segment = a.ldc.allocate_segment(64 * 1024)
        payloads = [os.urandom(4096) for _ in range(15)]  # a ring of 16 holds 15
        ring = a.session.own_rings[0]
        for n, data in enumerate(payloads):
            segment.view[n * 4096 : (n + 1) * 4096] = data
            export = a.ldc.export(segment, n * 4096, 4096, PERM_RW)
            a.submit(ring, export.cookies[0].encode())
        for _ in range(200):
            if len(client.done) == 15:
                break
            await asyncio.sleep(0.01)
        assert server.data == payloads
        assert [payload[:2] for _, _, payload in client.done] == [b"ok"] * 15
        a.ldc.close()
        await asyncio.sleep(0.05)
        assert not b.established.is_set()  # the peer saw the link go and reset its session

    asyncio.run(asyncio.wait_for(main(), 30))


def test_bench_vio_runs_and_reports() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/bench_vio.py", "--quick"], capture_output=True, text=True, timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert result.returncode == 0, result.stderr
    assert "empty descriptors/s" in result.stdout and "MB/s" in result.stdout
