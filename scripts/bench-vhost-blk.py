"""vhost-user-blk back-ends under a real x86_64 guest running fio (issue 7, Benchmark).

One guest (TCG, 1 vCPU) gets two vhost-user-blk disks of the same file (in the
host page cache): vda served by ours (`vio vhost-blk`), vdb by QEMU's
qemu-storage-daemon, the reference, measured in the same run. fio (Debian's,
in the benchmark initramfs from scripts/build-x86-guest) runs each workload on
one disk, then the other, `--repeats` times, O_DIRECT with libaio: 4 KiB random
read at depth 1 and 32, 1 MiB sequential read and write at depth 4.

Under TCG the guest is the bottleneck, so besides IOPS and MB/s the back-end
process's CPU time (utime+stime of all its threads from /proc/PID/stat, before
and after each fio run) per I/O and per MB is printed: that measures the
back-end itself. Medians over the repeats; the load average is printed too
(the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.qemu import (
    BackendProcess,
    Guest,
    GuestImage,
    GuestSpec,
    VhostUserBlk,
    arch_profile,
    guest_image,
    storage_daemon_argv,
    vio_vhost_blk_argv,
)

from procstat import cpu_seconds  # scripts/procstat.py

MiB = 1 << 20
BOOT_TIMEOUT = 180.0
BENCH_INITRD = "initramfs-fio.cpio"  # written next to the test initramfs by scripts/build-x86-guest
# fio --minimal (terse v3) fields, 0-based: total KiB, bandwidth KiB/s, IOPS; the write block follows the read block
READ_KB, WRITE_KB = 5, 46


@dataclass(frozen=True)
class Workload:
    label: str
    rw: str
    block: int
    depth: int


WORKLOADS = [
    Workload("4 KiB random read, depth 1", "randread", 4096, 1),
    Workload("4 KiB random read, depth 32", "randread", 4096, 32),
    Workload("1 MiB sequential read, depth 4", "read", MiB, 4),
    Workload("1 MiB sequential write, depth 4", "write", MiB, 4),
]


@dataclass(frozen=True)
class Sample:
    iops: float
    mbps: float
    cpu_us_per_io: float
    cpu_ms_per_mb: float


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def print_table(labels: list[str], ours: dict[str, Sample], reference: dict[str, Sample], reference_name: str) -> None:
    """Both back-ends per workload, then ours / reference (throughput up is good, CPU down is good)."""
    print(f"{'workload':32} {'back-end':20} {'IOPS':>8} {'MB/s':>8} {'CPU us/IO':>10} {'CPU ms/MB':>10}")
    for label in labels:
        for who, results in (("vio vhost-blk", ours), (reference_name, reference)):
            s = results[label]
            print(f"{label:32} {who:20} {s.iops:8.0f} {s.mbps:8.1f} {s.cpu_us_per_io:10.1f} {s.cpu_ms_per_mb:10.2f}")
        a, b = ours[label], reference[label]
        cpu = a.cpu_us_per_io / b.cpu_us_per_io if b.cpu_us_per_io else float("inf")
        print(f"{'':32} {'ours / reference':20} {a.iops / b.iops:7.2f}x {'':8} {cpu:9.2f}x")


def fio_command(device: str, work: Workload, seconds: float) -> str:
    return (f"fio --name=bench --filename=/dev/{device} --direct=1 --ioengine=libaio --rw={work.rw} "
            f"--bs={work.block} --iodepth={work.depth} --time_based --runtime={seconds:g} --minimal")


def parse_terse(output: str, work: Workload) -> tuple[float, int]:
    """(seconds the job ran, I/Os it completed) from fio's terse line."""
    line = next((ln for ln in output.splitlines() if ln.startswith("3;fio-")), None)
    if line is None:
        raise SystemExit(f"fio printed no result line:\n{output[-2000:]}")
    fields = line.split(";")
    first = WRITE_KB if work.rw == "write" else READ_KB
    kib, bandwidth = int(fields[first]), int(fields[first + 1])
    if not kib or not bandwidth:
        raise SystemExit(f"fio moved no data:\n{line}")
    return kib / bandwidth, kib * 1024 // work.block


async def measure(guest: Guest, device: str, pid: int, work: Workload, seconds: float) -> Sample:
    before = cpu_seconds(pid)
    rc, output = await guest.run(fio_command(device, work, seconds), timeout=seconds + 120)
    cpu = cpu_seconds(pid) - before
    if rc != 0:
        raise SystemExit(f"fio on /dev/{device} failed ({rc}):\n{output[-2000:]}")
    elapsed, ios = parse_terse(output, work)
    megabytes = ios * work.block / 1e6
    return Sample(ios / elapsed, megabytes / elapsed, cpu / ios * 1e6, cpu / megabytes * 1e3)


def median(samples: list[Sample]) -> Sample:
    return Sample(*(statistics.median(getattr(s, f) for s in samples) for f in Sample.__dataclass_fields__))


async def bench(disk: str, tmp: str, seconds: float, repeats: int, workloads: list[Workload]) -> dict[str, dict[str, Sample]]:
    built = guest_image("x86_64")
    image = GuestImage("x86_64", built.kernel, built.initrd.with_name(BENCH_INITRD))
    if not image.initrd.is_file():
        raise SystemExit(f"{image.initrd} missing: run scripts/build-x86-guest")
    sockets = {"ours": os.path.join(tmp, "ours.sock"), "qsd": os.path.join(tmp, "qsd.sock")}
    samples: dict[str, dict[str, list[Sample]]] = {who: {w.label: [] for w in workloads} for who in sockets}
    async with BackendProcess(vio_vhost_blk_argv(sockets["ours"], disk), sockets["ours"]) as ours, \
            BackendProcess(storage_daemon_argv(sockets["qsd"], disk), sockets["qsd"]) as qsd:
        devices = [VhostUserBlk("ours", sockets["ours"]), VhostUserBlk("qsd", sockets["qsd"])]
        spec = GuestSpec(arch_profile("x86_64"), image, memory_mb=512, cpus=1, devices=devices)
        async with Guest(spec, "bench-vhost-blk") as guest:
            disks = await guest.ready(BOOT_TIMEOUT)
            if disks[:2] != ["vda", "vdb"]:
                raise SystemExit(f"guest sees {disks}, expected vda (ours) and vdb (qemu-storage-daemon)")
            pids = {"ours": ours.process.pid, "qsd": qsd.process.pid}
            targets = {"ours": "vda", "qsd": "vdb"}
            for repeat in range(repeats):
                for work in workloads:
                    for who in ("ours", "qsd") if repeat % 2 == 0 else ("qsd", "ours"):
                        sample = await measure(guest, targets[who], pids[who], work, seconds)
                        samples[who][work.label].append(sample)
                        print(f"  run {repeat + 1} {who:4} {work.label:32} {sample.iops:8.0f} IOPS {sample.mbps:7.1f} MB/s "
                              f"{sample.cpu_us_per_io:8.1f} us/IO  load {load_average()}", flush=True)
            await guest.power_down(30)
    return {who: {label: median(runs) for label, runs in per.items()} for who, per in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each fio run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each workload on each back-end (medians printed)")
    parser.add_argument("--disk-mb", type=int, default=256, help="size of the shared disk file")
    parser.add_argument("--only", action="append", choices=[w.rw + str(w.depth) for w in WORKLOADS],
                        help="run only these workloads (randread1, randread32, read4, write4)")
    args = parser.parse_args()
    workloads = [w for w in WORKLOADS if not args.only or w.rw + str(w.depth) in args.only]
    print(f"load average before: {load_average()} ({os.cpu_count()} CPUs)", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-vhost-blk-") as tmp:
        disk = os.path.join(tmp, "disk.img")
        with open(disk, "wb") as f:
            f.writelines(os.urandom(MiB) for _ in range(args.disk_mb))
        results = asyncio.run(bench(disk, tmp, args.seconds, args.repeats, workloads))
    print(f"load average after: {load_average()}; medians of {args.repeats} runs of {args.seconds:g} s")
    print_table([w.label for w in workloads], results["ours"], results["qsd"], "qemu-storage-daemon")
    return 0


if __name__ == "__main__":
    sys.exit(main())
