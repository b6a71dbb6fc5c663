"""LDC over a real Unix SOCK_SEQPACKET connection, in one process and across two."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import pytest

from backend.errors import LinkDownError
from backend.ldc import Mode, PERM_RW, records
from backend.ldc.aio import LdcEndpoint
from backend.ldc.memory import CookieError
from backend.ldc.packet import Packet, encode
from backend.ldc.constants import PacketType, SubType


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def pair(mode: Mode) -> tuple[LdcEndpoint, LdcEndpoint]:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a, b = LdcEndpoint(left, _channel(mode)), LdcEndpoint(right, _channel(mode))
    await asyncio.gather(a.open(), b.open())
    return a, b


def _channel(mode: Mode):
    from backend.ldc.aio import _make_channel

    return _make_channel(mode, {})


@pytest.mark.parametrize("mode", [Mode.UNRELIABLE, Mode.RELIABLE])
def test_messages_of_every_size_in_order(mode: Mode) -> None:
    async def main() -> None:
        a, b = await pair(mode)
        sent = [os.urandom(n) for n in (0, 1, 56, 57, 4096, 65536, 256 * 1024, 3)]
        for message in sent:
            await a.send_message(message)
        got = [await b.receive_message() for _ in sent]
        assert got == sent
        a.close()
        with pytest.raises(LinkDownError):
            await b.receive_message()

    run(main())


def test_raw_mode_sends_64_byte_messages() -> None:
    async def main() -> None:
        a, b = await pair(Mode.RAW)
        await a.send_message(bytes(range(64)))
        assert await b.receive_message() == bytes(range(64))
        with pytest.raises(ValueError):
            await a.send_message(b"short")

    run(main())


def test_shared_memory_through_memfds() -> None:
    async def main() -> None:
        a, b = await pair(Mode.RELIABLE)
        segment = a.allocate_segment(1 << 20)
        segment.view[:5] = b"hello"
        export = a.export(segment, 0, 1 << 20, PERM_RW)
        await a.send_message(export.cookies[0].encode())  # the segment record goes first
        await b.receive_message()
        got = bytearray(5)
        b.peer_memory.copy_in(export.cookies, 0, got)
        assert got == b"hello"
        b.peer_memory.copy_out(export.cookies, 100, b"written by b")
        assert bytes(segment.view[100:112]) == b"written by b"
        a.memory.table.unmap(export)
        with pytest.raises(CookieError):
            b.peer_memory.copy_in(export.cookies, 0, got)

    run(main())


def test_reset_revokes_exports() -> None:
    async def main() -> None:
        a, b = await pair(Mode.UNRELIABLE)
        segment = a.allocate_segment(8192)
        export = a.export(segment, 0, 8192, PERM_RW)
        await a.send_message(b"sync")
        await b.receive_message()
        b.channel.close()  # b resets the link: a's exports from this session die
        b.flush()
        with pytest.raises(LinkDownError):
            await a.receive_message()
        with pytest.raises(CookieError, match="revoked"):
            b.peer_memory.copy_in(export.cookies, 0, bytearray(8))

    run(main())


def test_malformed_records_reset_the_channel_and_it_recovers() -> None:
    async def main() -> None:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        endpoint = LdcEndpoint(right, _channel(Mode.UNRELIABLE))
        endpoint.channel.open()
        endpoint.flush()
        peer = LdcEndpoint(left, _channel(Mode.UNRELIABLE))
        peer.channel.open()
        peer.flush()
        await asyncio.gather(endpoint._up.wait(), peer._up.wait())
        oversized = records.RECORD_HEADER.pack(1, 600) + bytes(600 * 64)
        for garbage in (b"\x01", records.RECORD_HEADER.pack(9, 0), records.RECORD_HEADER.pack(1, 2) + bytes(64), oversized):
            left.send(garbage)
            with pytest.raises(LinkDownError, match="protocol error"):
                await endpoint.receive_message()
            await asyncio.wait_for(endpoint._up.wait(), 5)  # back up by itself
        await peer.send_message(b"still works")
        assert await endpoint.receive_message() == b"still works"

    run(main())


def test_peer_vanishes_mid_message() -> None:
    async def main() -> None:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        endpoint = LdcEndpoint(right, _channel(Mode.UNRELIABLE))
        peer = LdcEndpoint(left, _channel(Mode.UNRELIABLE))
        await asyncio.gather(endpoint.open(), peer.open())
        seq = peer.channel._snd_nxt
        first_fragment = encode(Packet(PacketType.DATA, SubType.INFO, 0, 0x40 | 56, seq + 1, 0, bytes(56)), Mode.UNRELIABLE)
        left.send(records.encode_packets([first_fragment])[0])
        await asyncio.sleep(0.05)
        peer._loop.remove_reader(left.fileno())
        left.close()
        with pytest.raises(LinkDownError, match="closed the connection"):
            await endpoint.receive_message()
        assert endpoint.closed

    run(main())


def test_two_processes_echo_and_shared_memory(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "backend", "ldc-echo", "--mode", "reliable", "--sizes", "0,1,100000,262144", "--shm-size", "300000"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "echo   262144 bytes: ok" in result.stdout
    assert "shared memory 300000 bytes" in result.stdout
    server_pid = int(result.stdout.split("server: pid ")[1].split()[0])
    assert server_pid != os.getpid()
    assert "peer gone after 5 requests" in result.stdout


def test_cli_rejects_bad_arguments() -> None:
    result = subprocess.run([sys.executable, "-m", "backend", "ldc-echo", "--serve"], capture_output=True, text=True)
    assert result.returncode == 2 and "--socket" in result.stderr
    result = subprocess.run([sys.executable, "-m", "backend", "ldc-echo", "--sizes", "1,x"], capture_output=True, text=True)
    assert result.returncode == 2 and "not a list of sizes" in result.stderr


def test_vio_entry_point_is_installed() -> None:
    vio = os.path.join(os.path.dirname(sys.executable), "vio")
    result = subprocess.run([vio, "ldc-echo", "--mode", "unreliable", "--sizes", "7", "--shm-size", "64"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "echo        7 bytes: ok" in result.stdout
