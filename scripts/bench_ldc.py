"""LDC benchmark: two processes over the Unix SOCK_SEQPACKET transport.

Prints, for each case, what our LDC stack achieves and a reference measured
in the same run on the same machine: the bare socket moving the same bytes
in the same record sizes without LDC (for messages), and a plain in-process
memcpy (for shared memory). Run via scripts/bench-ldc.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time

from backend.ldc import Mode, PERM_RW
from backend.ldc.aio import LdcEndpoint, listen
from backend.ldc import records

MODES = {"unreliable": Mode.UNRELIABLE, "reliable": Mode.RELIABLE}


async def receiver(path: str, mode: Mode, count: int) -> None:
    listener = listen(path)
    print("ready", flush=True)
    endpoint = await LdcEndpoint.accept(listener, mode)
    await endpoint.open(timeout=None)
    await endpoint.receive_message()  # "start"
    start = time.perf_counter()
    received = 0
    for _ in range(count):
        received += len(await endpoint.receive_message())
    elapsed = time.perf_counter() - start
    await endpoint.send_message(f"{elapsed} {received}".encode())
    await endpoint.receive_message()  # wait for the sender to finish reading
    endpoint.close()


async def sender(path: str, mode: Mode, count: int, size: int) -> tuple[float, int]:
    endpoint = await LdcEndpoint.connect(path, mode)
    await endpoint.open()
    message = os.urandom(size)
    await endpoint.send_message(b"start")
    batch = max(1, 16384 // max(size, 1))
    sent = 0
    while sent < count:
        n = min(batch, count - sent)
        await endpoint.send_messages([message] * n)
        sent += n
    elapsed, received = (await endpoint.receive_message()).split()
    await endpoint.send_message(b"bye")
    return float(elapsed), int(received)


def run_ldc(mode_name: str, count: int, size: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.sock")
        child = subprocess.Popen(
            [sys.executable, __file__, "--receiver", path, "--mode", mode_name, "--count", str(count)],
            stdout=subprocess.PIPE, text=True,
        )
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        try:
            return asyncio.run(sender(path, MODES[mode_name], count, size))
        finally:
            child.wait(timeout=120)


def run_socket_reference(count: int, size: int, record_size: int) -> float:
    """The same bytes through a bare SEQPACKET pair in another process, no LDC."""
    total = count * size
    records_needed = max(1, -(-total // record_size))
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        left.close()
        for _ in range(records_needed):
            right.recv(record_size + 64)
        right.send(b"done")
        os._exit(0)
    right.close()
    payload = bytes(record_size)
    start = time.perf_counter()
    for _ in range(records_needed):
        left.send(payload)
    left.recv(16)
    elapsed = time.perf_counter() - start
    os.waitpid(pid, 0)
    return elapsed


def shared_memory_copy(size: int, rounds: int) -> tuple[float, float]:
    """Copy-in of `size` bytes exported by another process, and plain memcpy."""
    async def main() -> float:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            right.close()

            async def exporter() -> None:
                endpoint = LdcEndpoint(left, _channel())
                await endpoint.open()
                segment = endpoint.allocate_segment(size)
                segment.view[:] = os.urandom(size)
                export = endpoint.export(segment, 0, size, PERM_RW)
                await endpoint.send_message(export.cookies[0].encode())
                await endpoint.receive_message()

            asyncio.run(exporter())
            os._exit(0)
        left.close()
        endpoint = LdcEndpoint(right, _channel())
        await endpoint.open()
        from backend.ldc.memory import TransportCookie

        cookie = TransportCookie.decode(await endpoint.receive_message())
        dest = bytearray(size)
        start = time.perf_counter()
        for _ in range(rounds):
            endpoint.peer_memory.copy_in([cookie], 0, dest)
        elapsed = time.perf_counter() - start
        await endpoint.send_message(b"bye")
        os.waitpid(pid, 0)
        return elapsed

    ldc = asyncio.run(main())
    source, dest = bytearray(os.urandom(size)), bytearray(size)
    start = time.perf_counter()
    for _ in range(rounds):
        memoryview(dest)[:] = source
    return ldc, time.perf_counter() - start


def _channel():
    from backend.ldc import Channel

    return Channel(Mode.RELIABLE)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--receiver")
    parser.add_argument("--mode", default="unreliable")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args()
    if args.receiver:
        asyncio.run(receiver(args.receiver, MODES[args.mode], args.count))
        return
    scale = 10 if args.quick else 1
    print(f"LDC benchmark, two processes over AF_UNIX SOCK_SEQPACKET ({os.cpu_count()} CPUs)")
    print(f"{'case':44} {'LDC':>14} {'reference':>16}")
    for mode_name in ("unreliable", "reliable"):
        count = 200_000 // scale
        elapsed, received = run_ldc(mode_name, count, 64)
        assert received == count * 64
        packets = 2 if mode_name == "unreliable" else 2  # 64 bytes = 2 packets in either mode
        reference = run_socket_reference(count, 64 * packets, records.MAX_RECORD - records.RECORD_HEADER.size)
        print(f"{'64-byte messages/s, ' + mode_name:44} {count / elapsed:>14,.0f} {count / reference:>14,.0f}/s (bare socket, same bytes)")
    for mode_name in ("unreliable", "reliable"):
        count = 400 // scale
        elapsed, received = run_ldc(mode_name, count, 65536)
        assert received == count * 65536
        reference = run_socket_reference(count, 65536, records.MAX_RECORD)
        mb = received / 1e6
        print(f"{'64 KiB messages, MB/s, ' + mode_name:44} {mb / elapsed:>14,.1f} {mb / reference:>11,.1f} MB/s (bare socket)")
    size, rounds = 1 << 20, 2000 // scale
    ldc, memcpy = shared_memory_copy(size, rounds)
    print(f"{'shared-memory copy-in of 1 MiB, MB/s':44} {size * rounds / ldc / 1e6:>14,.0f} {size * rounds / memcpy / 1e6:>11,.0f} MB/s (memcpy)")


if __name__ == "__main__":
    main()
