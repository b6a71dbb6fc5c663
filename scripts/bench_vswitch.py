"""vSwitch benchmark: frames between two vnet clients in separate processes, through a vsw process.

Ring mode, 64-byte and 1500-byte frames, one way. The reference, measured in
the same run, is the same number of frames written and read through a plain
Unix socket pair between two processes (no LDC, no VIO, no switch).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from procstat import cpu_seconds  # scripts/procstat.py

from backend.vswitch.vnet_port import VnetClient

SENDER = bytes.fromhex("020000000a01")
RECEIVER = bytes.fromhex("020000000a02")
BURST = 256  # frames the sender hands its vnet at once (it queues what its ring has room for)


def frame(dst: bytes, src: bytes, size: int) -> bytes:
    return (dst + src + b"\x88\xb5").ljust(size, b"\x5a")  # local experimental ethertype


async def receiver(path: str, count: int) -> None:
    client = await VnetClient.connect(path, RECEIVER, on_frame=None)
    client.send(frame(SENDER, RECEIVER, 60))  # let the switch learn us
    print("ready", flush=True)
    first = await client.receive(30)
    cpu = time.process_time()
    start = last = time.perf_counter()
    got, size = 1, len(first)
    while got < count:
        try:
            got += len(await client.receive_many(2))
        except TimeoutError:
            break  # the rest were dropped on the way (a switch drops what it cannot deliver)
        last = time.perf_counter()
    elapsed = last - start
    print(f"{got} {elapsed} {size} {time.process_time() - cpu}", flush=True)
    client.close()


async def sender(path: str, count: int, size: int) -> None:
    client = await VnetClient.connect(path, SENDER)
    burst = [frame(RECEIVER, SENDER, size)] * BURST
    cpu = time.process_time()
    for sent in range(0, count, BURST):
        await client.send_all(burst[: count - sent])
    print(time.process_time() - cpu, flush=True)
    await asyncio.sleep(1)
    client.close()


def run(path: str, count: int, size: int, vsw_pid: int) -> tuple[int, float, tuple[float, float, float]]:
    """Frames received, seconds, and CPU seconds of sender, switch and receiver."""
    vsw_before = cpu_seconds(vsw_pid)
    recv = subprocess.Popen([sys.executable, __file__, "--receiver", path, "--count", str(count)], stdout=subprocess.PIPE, text=True)
    assert recv.stdout is not None and recv.stdout.readline().strip() == "ready"
    send = subprocess.Popen([sys.executable, __file__, "--sender", path, "--count", str(count), "--size", str(size)], stdout=subprocess.PIPE, text=True)
    got, elapsed, _, recv_cpu = recv.stdout.readline().split()
    vsw_cpu = cpu_seconds(vsw_pid) - vsw_before
    assert send.stdout is not None
    send_cpu = float(send.stdout.readline())
    send.wait(60)
    recv.wait(60)
    return int(got), float(elapsed), (send_cpu, vsw_cpu, float(recv_cpu))


def reference(count: int, size: int) -> float:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        left.close()
        for _ in range(count):
            right.recv(size)
        os._exit(0)
    right.close()
    data = bytes(size)
    start = time.perf_counter()
    for _ in range(count):
        left.send(data)
    os.waitpid(pid, 0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--receiver")
    parser.add_argument("--sender")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.receiver:
        asyncio.run(receiver(args.receiver, args.count))
        return
    if args.sender:
        asyncio.run(sender(args.sender, args.count, args.size))
        return
    count = 20_000 if args.quick else 200_000
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vsw.sock")
        vsw = subprocess.Popen([sys.executable, "-m", "backend", "vsw", "--name", "bench", "--socket", path], stdout=subprocess.PIPE, text=True)
        assert vsw.stdout is not None and "vnet ports" in vsw.stdout.readline()
        try:
            print(f"vSwitch benchmark: vnet -> vsw -> vnet, three processes, ring mode ({os.cpu_count()} CPUs)")
            print(f"{'case':30} {'frames/s':>12} {'Gbit/s':>8} {'lost':>6} {'reference frames/s':>20}"
                  f" {'CPU us/frame: sender + vsw + receiver':>40}")
            for size in (64, 1500):
                got, elapsed, cpu = run(path, count, size, vsw.pid)
                ref = reference(count, size)
                rate = got / elapsed
                per_frame = " + ".join(f"{c / count * 1e6:.1f}" for c in cpu)
                print(f"{f'{size}-byte frames':30} {rate:>12,.0f} {rate * size * 8 / 1e9:>8.2f} {count - got:>6} {count / ref:>20,.0f}"
                      f" {per_frame:>40}")
            print(f"load average {os.getloadavg()[0]:.1f}")
        finally:
            vsw.send_signal(signal.SIGTERM)
            vsw.wait(30)


if __name__ == "__main__":
    main()
