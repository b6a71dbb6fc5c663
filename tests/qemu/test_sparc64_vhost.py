"""sun4u guests on our vhost-user back-ends behind the sabre IOMMU (iommu_platform=on): the device
IOTLB in real use. Needs the QEMU of scripts/build-qemu-sparc64 (stock 7.2 never shares sun4u RAM).

Prints what docs/sparc64-vhost-user.md records: boot-to-I/O time and IOTLB misses per MB moved.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from backend.qemu import BackendProcess, Guest, VhostUserBlk, VhostUserNet
from backend.vswitch.netns import add_netns_host, unique_name

from .helpers import (
    BOOT_TIMEOUT,
    check_roundtrip,
    make_disk,
    roundtrip_script,
    run,
    run_command_guest,
    spec_for,
)

pytestmark = pytest.mark.slow

#: Modern-only virtio (a transitional device cannot carry ACCESS_PLATFORM), through the IOMMU.
BEHIND_IOMMU = {"iommu_platform": True, "disable-legacy": "on"}
BULK_MB = 4
HOST_IP = "198.19.91.2"


def vio_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "backend", "-v", *args]


def iotlb_stats(log: Path) -> tuple[int, int]:
    """(request bytes, IOTLB misses) the back-end logged when the front-end left."""
    found = re.findall(r"front-end gone: (\d+) request bytes, (\d+) IOTLB misses", log.read_text())
    assert found, f"back-end logged no statistics:\n{log.read_text()[-2000:]}"
    return int(found[-1][0]), int(found[-1][1])


def test_sparc64_guest_disk_through_the_iommu(tmp_path: Path) -> None:
    disk, sock = tmp_path / "disk.img", str(tmp_path / "vub.sock")
    pattern = make_disk(disk)
    script = roundtrip_script("vda") + f"""
echo "IO-START"
dd if=/dev/vda of=/dev/null bs=65536 skip=2 count={BULK_MB * 16} 2>/dev/null
echo "IO-DONE"
"""

    async def scenario() -> tuple[str, float, float, Path]:
        async with BackendProcess(vio_argv("vhost-blk", "--socket", sock, "--disk", str(disk)), sock) as backend:
            spec = spec_for("sparc64", [VhostUserBlk("vub0", sock)], script, device_props=BEHIND_IOMMU)
            started = time.monotonic()
            async with Guest(spec) as guest:
                assert "vda" in await guest.ready(BOOT_TIMEOUT)
                await guest.expect("READ-MD5", BOOT_TIMEOUT)
                first_io = time.monotonic() - started
                await guest.expect("IO-START", 60)
                bulk_start = time.monotonic()
                await guest.expect("IO-DONE", 120)
                bulk = time.monotonic() - bulk_start
                assert await guest.command_exit(60) == 0, guest.console.log.tail()
                await guest.wait_exit(60)
                console = "\n".join(guest.console.log.lines)
        return console, first_io, bulk, backend.log

    console, first_io, bulk, log = run(scenario())
    check_roundtrip(console, disk, pattern)
    moved, misses = iotlb_stats(log)
    assert misses > 0, "the guest's disk did not go through the device IOTLB"
    print(f"sparc64 boot-to-I/O {first_io:.1f} s; {BULK_MB} MiB of uncached reads in {bulk:.1f} s; "
          f"{misses} IOTLB misses for {moved / 1e6:.1f} MB = {misses / (moved / (1 << 20)):.1f} misses/MiB")
    assert moved >= BULK_MB << 20


def test_sparc64_guest_pings_through_the_vswitch_behind_the_iommu(tmp_path: Path) -> None:
    tap, bridge = unique_name("stap"), unique_name("sbr")
    sock = str(tmp_path / "net0.sock")
    script = f"ping -c 3 -W 5 {HOST_IP}"

    async def scenario() -> tuple[int, str, Path]:
        argv = vio_argv("vhost-net", "--port", f"g0={sock}", "--uplink", tap, "--bridge", bridge)
        async with BackendProcess(argv, sock) as backend:
            with add_netns_host(bridge, f"{HOST_IP}/24"):
                spec = spec_for("sparc64", [VhostUserNet("net0", sock, "52:54:00:00:00:20")], script,
                                ip="198.19.91.5/24", device_props=BEHIND_IOMMU)
                rc, console, qemu_rc = await run_command_guest(spec)
                assert qemu_rc == 0, console[-3000:]
        return rc, console, backend.log

    rc, console, log = run(scenario())
    assert rc == 0 and re.search(r"3 packets transmitted, 3 (packets )?received", console), console[-3000:]
    moved, misses = iotlb_stats(log)
    assert misses > 0, "the guest's NIC did not go through the device IOTLB"
    print(f"sparc64 ping through the vSwitch: {misses} IOTLB misses for {moved} request bytes")
