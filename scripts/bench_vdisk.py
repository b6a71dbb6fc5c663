"""vDisk benchmark: vdc (this process) -> vds (another process) over a shared ring.

The backing file sits in the page cache (it is read once before measuring), so
the numbers are the cost of the protocol stack, not of a disk. The reference,
measured in the same run, is this process doing the same preads straight on
the file with no protocol, no second process and no shared memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from backend.vdisk.client import VdcClient

from procstat import cpu_seconds  # scripts/procstat.py

MiB = 1 << 20
DISK = 256 * MiB


async def random_reads(client: VdcClient, depth: int, total: int) -> tuple[float, list[float]]:
    rng = random.Random(1)
    latencies: list[float] = []
    blocks = DISK // 4096

    async def worker(count: int) -> None:
        for _ in range(count):
            offset = rng.randrange(blocks) * 4096
            start = time.perf_counter()
            await client.read(offset, 4096)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker(total // depth) for _ in range(depth)))
    return time.perf_counter() - start, latencies


async def random_reads_callbacks(client: VdcClient, depth: int, total: int) -> tuple[float, list[float]]:
    """The same reads through `start_read` (a callback per read, no coroutine or future):
    what a server of many small requests (the NBD export) uses."""
    loop = asyncio.get_running_loop()
    rng = random.Random(1)
    latencies: list[float] = []
    blocks = DISK // 4096
    finished = loop.create_future()
    issued = 0

    def issue() -> None:
        nonlocal issued
        issued += 1
        start = time.perf_counter()

        def done(code: int, _view: memoryview | None) -> None:
            latencies.append(time.perf_counter() - start)
            if code and not finished.done():
                finished.set_exception(OSError(code, "vDisk read failed"))
            elif issued < total:
                issue()
            elif len(latencies) == total and not finished.done():
                finished.set_result(None)

        if not client.start_read(rng.randrange(blocks) * 4096, 4096, done):
            raise RuntimeError("no free buffer slot: depth is above the ring's")

    start = time.perf_counter()
    for _ in range(depth):
        issue()
    await finished
    return time.perf_counter() - start, latencies


async def read_in_place(client: VdcClient, offset: int) -> None:
    async with client.read_view(offset, MiB) as view:
        view[0]  # the data is there to use; no copy out of the shared buffer


async def sequential(client: VdcClient, write: bool, total: int, in_place: bool = False) -> float:
    data = os.urandom(MiB)
    start = time.perf_counter()
    pending = set()
    for n in range(total // MiB):
        offset = (n * MiB) % DISK
        if write:
            task = asyncio.ensure_future(client.write(offset, data))
        else:
            task = asyncio.ensure_future(read_in_place(client, offset) if in_place else client.read(offset, MiB))
        pending.add(task)
        if len(pending) >= 8:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.gather(*pending)
    return time.perf_counter() - start


def reference(path: str, total: int) -> tuple[float, float]:
    fd = os.open(path, os.O_RDONLY)
    rng = random.Random(1)
    buffer = bytearray(4096)
    start = time.perf_counter()
    for _ in range(total):
        os.preadv(fd, [buffer], rng.randrange(DISK // 4096) * 4096)
    small = time.perf_counter() - start
    big = bytearray(MiB)
    start = time.perf_counter()
    for n in range(512):
        os.preadv(fd, [big], (n * MiB) % DISK)
    seq = time.perf_counter() - start
    os.close(fd)
    return total / small, 512 / seq


def ms(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1e3


async def measure(socket_path: str, scale: int, server_pid: int) -> dict[str, float]:
    """The four cases, each with the CPU time per request of both processes
    (less sensitive than IOPS to other work on a shared machine)."""
    client = await VdcClient.connect(socket_path)
    results: dict[str, float] = {}
    for offset in range(0, DISK, MiB):  # warm the page cache on the server side
        await client.read(offset, MiB)

    def cpu() -> tuple[float, float]:
        return time.process_time(), cpu_seconds(server_pid)

    def per_request(key: str, before: tuple[float, float], count: int) -> None:
        after = cpu()
        results[f"{key}_cpu_client"] = (after[0] - before[0]) / count * 1e6
        results[f"{key}_cpu_server"] = (after[1] - before[1]) / count * 1e6

    before = cpu()
    elapsed, lat = await random_reads(client, 1, 20_000 // scale)
    per_request("qd1", before, len(lat))
    results["qd1_iops"], results["qd1_p50"], results["qd1_p99"] = len(lat) / elapsed, ms(lat, 50), ms(lat, 99)
    before = cpu()
    elapsed, lat = await random_reads(client, 32, 64_000 // scale)
    per_request("qd32", before, len(lat))
    results["qd32_iops"], results["qd32_p50"], results["qd32_p99"] = len(lat) / elapsed, ms(lat, 50), ms(lat, 99)
    before = cpu()
    elapsed, lat = await random_reads_callbacks(client, 32, 64_000 // scale)
    per_request("qd32cb", before, len(lat))
    results["qd32cb_iops"], results["qd32cb_p50"], results["qd32cb_p99"] = len(lat) / elapsed, ms(lat, 50), ms(lat, 99)
    total = 1024 * MiB // scale
    before = cpu()
    results["seq_read"] = total / MiB / await sequential(client, False, total)
    per_request("seq_read", before, total // MiB)
    before = cpu()
    results["seq_view"] = total / MiB / await sequential(client, False, total, in_place=True)
    per_request("seq_view", before, total // MiB)
    before = cpu()
    results["seq_write"] = total / MiB / await sequential(client, True, total)
    per_request("seq_write", before, total // MiB)
    client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    scale = 8 if args.quick else 1
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.img")
        with open(path, "wb") as f:
            for _ in range(DISK // MiB):
                f.write(os.urandom(MiB))
        server = subprocess.Popen(
            [sys.executable, "-m", "backend", "vds", "--disk", f"bench={path}", "--socket-dir", tmp],
            stdout=subprocess.PIPE, text=True,
        )
        assert server.stdout is not None and "serving" in server.stdout.readline()
        try:
            r = asyncio.run(measure(os.path.join(tmp, "bench.sock"), scale, server.pid))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        ref_iops, ref_seq = reference(path, 20_000 // scale)
    print(f"vDisk benchmark: vdc -> vds, two processes, {DISK // MiB} MiB file in page cache ({os.cpu_count()} CPUs)")
    print(f"{'case':38} {'vDisk':>12} {'p50 ms':>8} {'p99 ms':>8} {'reference (pread, no protocol)':>34}")
    print(f"{'4 KiB random read, depth 1, IOPS':38} {r['qd1_iops']:>12,.0f} {r['qd1_p50']:>8.3f} {r['qd1_p99']:>8.3f} {ref_iops:>26,.0f} IOPS")
    print(f"{'4 KiB random read, depth 32, IOPS':38} {r['qd32_iops']:>12,.0f} {r['qd32_p50']:>8.3f} {r['qd32_p99']:>8.3f}")
    print(f"{'  the same with start_read callbacks':38} {r['qd32cb_iops']:>12,.0f} {r['qd32cb_p50']:>8.3f} {r['qd32cb_p99']:>8.3f}")
    print(f"{'1 MiB sequential read, MB/s':38} {r['seq_read'] * 1.048576:>12,.0f} {'':>8} {'':>8} {ref_seq * 1.048576:>26,.0f} MB/s")
    print(f"{'1 MiB sequential read in place, MB/s':38} {r['seq_view'] * 1.048576:>12,.0f}   (read_view: no copy out)")
    print(f"{'1 MiB sequential write, MB/s':38} {r['seq_write'] * 1.048576:>12,.0f}")
    print(f"CPU per request, us (vdc process + vds process); load average {os.getloadavg()[0]:.1f}")
    for key, name in (("qd1", "4 KiB random read, depth 1"), ("qd32", "4 KiB random read, depth 32"),
                      ("qd32cb", "  the same with start_read callbacks"),
                      ("seq_read", "1 MiB sequential read"), ("seq_view", "1 MiB sequential read in place"),
                      ("seq_write", "1 MiB sequential write")):
        client, server = r[f"{key}_cpu_client"], r[f"{key}_cpu_server"]
        print(f"{name:38} {client:>8.1f} + {server:>8.1f} = {client + server:>8.1f}")


if __name__ == "__main__":
    main()
