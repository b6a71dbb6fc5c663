"""vhost-user-blk back-ends under our Python front-end (the role QEMU plays), without a guest.

Both back-ends serve the same file (in the page cache: read once first) on a
vhost-user socket: ours (`vio vhost-blk`) and QEMU's qemu-storage-daemon
vhost-user-blk export, the reference measured in the same run. Workloads:
4 KiB random read at depth 1 and 32, 1 MiB sequential read and write at depth 4.
Printed: IOPS, MB/s, and the back-end process's CPU time per I/O
(utime+stime from /proc/PID/stat, all threads, before and after).
The front-end is Python too, so absolute numbers are bounded by it; the
CPU-per-I/O column measures the back-end alone.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.vhost.constants import VIRTIO_F_ACCESS_PLATFORM  # noqa: E402
from backend.vhost.devices.blk import REQUEST_HEADER, T_IN, T_OUT  # noqa: E402
from backend.vhost.driver import Buffer  # noqa: E402
from backend.vhost.frontend import VirtioGuest  # noqa: E402

from procstat import cpu_seconds  # scripts/procstat.py

MiB = 1 << 20
DISK = 256 * MiB
MAX_REQUESTS = 60000


def wait_for(path: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 15
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"back-end did not create {path}")
        time.sleep(0.05)


def start_ours(disk: str, sock: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "backend", "vhost-blk", "--socket", sock, "--disk", disk], stdout=subprocess.DEVNULL)


def start_qsd(disk: str, sock: str) -> subprocess.Popen:
    return subprocess.Popen([
        "qemu-storage-daemon",
        "--blockdev", f"driver=file,node-name=file0,filename={disk},cache.direct=off",
        "--export", f"type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={sock},writable=on",
    ], stdout=subprocess.DEVNULL)


class Slots:
    """Pre-allocated requests (header, data, status) so the front-end does no allocation while measuring."""

    def __init__(self, guest: VirtioGuest, count: int, size: int) -> None:
        self.guest = guest
        self.items = [(guest.buffer(16), guest.buffer(size), guest.buffer(1)) for _ in range(count)]
        self.size = size

    def submit(self, slot: int, kind: int, offset: int) -> int:
        header, data, status = self.items[slot]
        self.guest.ram.view(header.gpa, 16)[:] = REQUEST_HEADER.pack(kind, 0, offset // 512)
        queue = self.guest.queues[0]
        if kind == T_IN:
            return queue.add([header], [data, status], indirect=True)
        return queue.add([header, data], [status], indirect=True)


def run(guest: VirtioGuest, kind: int, size: int, depth: int, total: int, sequential: bool) -> float:
    """Keep `depth` requests in flight until `total` completed; returns seconds."""
    rng = random.Random(7)
    slots = Slots(guest, depth, size)
    blocks = DISK // size
    position = 0

    def next_offset() -> int:
        nonlocal position
        if sequential:
            position = (position + 1) % blocks
            return position * size
        return rng.randrange(blocks) * size

    owner: dict[int, int] = {}
    start = time.perf_counter()
    for slot in range(depth):
        owner[slots.submit(slot, kind, next_offset())] = slot
    guest.kick(0)
    submitted = depth
    completed = 0
    while completed < total:
        for head, _ in guest.wait_used(0, timeout=30):
            completed += 1
            slot = owner.pop(head)
            if submitted < total:
                owner[slots.submit(slot, kind, next_offset())] = slot
                submitted += 1
        guest.kick(0)
    elapsed = time.perf_counter() - start
    for items in slots.items:
        for buffer in items:
            guest.ram.free(Buffer(buffer.gpa, buffer.length))
    return elapsed


WORKLOADS = [
    ("4 KiB random read, depth 1", T_IN, 4096, 1, False),
    ("4 KiB random read, depth 32", T_IN, 4096, 32, False),
    ("1 MiB sequential read, depth 4", T_IN, MiB, 4, True),
    ("1 MiB sequential write, depth 4", T_OUT, MiB, 4, True),
]


def bench(name: str, start, disk: str, tmp: str, seconds: float) -> dict[str, tuple[float, float, float]]:
    sock = os.path.join(tmp, f"{name}.sock")
    proc = start(disk, sock)
    results = {}
    try:
        wait_for(sock, proc)
        for label, kind, size, depth, sequential in WORKLOADS:
            # A fresh connection per workload, and fewer than 2^16 requests on it: the
            # reference stalled past the 16-bit ring index wrap under this front-end
            # (not yet understood; our back-end passes that wrap, see docs/vhost-user.md).
            guest = VirtioGuest.connect(sock, memory_size=64 * MiB)
            guest.negotiate(((1 << 64) - 1) & ~VIRTIO_F_ACCESS_PLATFORM)  # no IOMMU here, as QEMU without iommu_platform=on
            guest.start_queue(0, 256)
            probe = max(depth * 4, 32)
            elapsed = run(guest, kind, size, depth, probe, sequential)
            total = min(MAX_REQUESTS - probe, max(probe, int(seconds * probe / max(elapsed, 1e-6))))
            cpu0 = cpu_seconds(proc.pid)
            elapsed = run(guest, kind, size, depth, total, sequential)
            cpu = cpu_seconds(proc.pid) - cpu0
            results[label] = (total / elapsed, total * size / elapsed / 1e6, cpu / total * 1e6)
            guest.close()
    finally:
        proc.terminate()
        proc.wait(10)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="target length of each measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-vhost-blk-") as tmp:
        disk = os.path.join(tmp, "disk.img")
        with open(disk, "wb") as f:
            for _ in range(DISK // MiB):
                f.write(os.urandom(MiB))
        ours = bench("ours", start_ours, disk, tmp, args.seconds)
        reference = bench("qsd", start_qsd, disk, tmp, args.seconds)
    print(f"{'workload':34} {'back-end':22} {'IOPS':>9} {'MB/s':>8} {'CPU us/IO':>10}")
    for label, *_ in WORKLOADS:
        for who, results in (("vio vhost-blk", ours), ("qemu-storage-daemon", reference)):
            iops, mbps, cpu = results[label]
            print(f"{label:34} {who:22} {iops:9.0f} {mbps:8.1f} {cpu:10.1f}")
        ratio = ours[label][0] / reference[label][0]
        cpu_ratio = ours[label][2] / reference[label][2] if reference[label][2] else float("inf")
        print(f"{'':34} {'ours / reference':22} {ratio:9.2f}x {'':8} {cpu_ratio:9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
