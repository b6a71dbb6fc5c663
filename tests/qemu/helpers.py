"""Shared pieces of the real-guest tests: disks with a host pattern, the guest-side
round-trip script and the host-side check of what the guest reported."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from pathlib import Path

from backend.qemu import Device, Guest, GuestSpec, arch_profile, guest_image

BLOCK = 4096
PATTERN_BLOCKS = 16                       # 64 KiB each way
PATTERN_BYTES = BLOCK * PATTERN_BLOCKS
DISK_BYTES = 16 << 20
BOOT_TIMEOUT = 120.0


def make_disk(path: Path) -> bytes:
    """A zero disk with a random pattern in its first 64 KiB; returns the pattern."""
    pattern = os.urandom(PATTERN_BYTES)
    with path.open("wb") as disk:
        disk.truncate(DISK_BYTES)
        disk.write(pattern)
    return pattern


def roundtrip_script(device: str) -> str:
    """Guest side: report the md5 of the host's pattern (first 64 KiB) and write a fresh
    random pattern into the next 64 KiB, reporting its md5."""
    return f"""
set -e
echo "READ-MD5 $(dd if=/dev/{device} bs={BLOCK} count={PATTERN_BLOCKS} 2>/dev/null | md5sum)"
dd if=/dev/urandom of=/tmp/pattern bs={BLOCK} count={PATTERN_BLOCKS} 2>/dev/null
dd if=/tmp/pattern of=/dev/{device} bs={BLOCK} seek={PATTERN_BLOCKS} conv=fsync 2>/dev/null
echo "WROTE-MD5 $(md5sum < /tmp/pattern)"
"""


def check_roundtrip(console_text: str, disk: Path, host_pattern: bytes) -> None:
    """Host side: the guest read our pattern, and its pattern is in the file."""
    read = re.search(r"READ-MD5 ([0-9a-f]{32})", console_text)
    wrote = re.search(r"WROTE-MD5 ([0-9a-f]{32})", console_text)
    assert read and wrote, f"guest did not report both checksums:\n{console_text[-2000:]}"
    assert read.group(1) == hashlib.md5(host_pattern).hexdigest(), "guest read something else than the host wrote"
    on_disk = disk.read_bytes()[PATTERN_BYTES:2 * PATTERN_BYTES]
    assert hashlib.md5(on_disk).hexdigest() == wrote.group(1), "the guest's pattern is not in the file"
    assert on_disk != bytes(PATTERN_BYTES)


def spec_for(arch: str, devices: list[Device], command: str | None = None, **options) -> GuestSpec:
    return GuestSpec(arch_profile(arch), guest_image(arch), devices=devices, command=command, **options)


async def run_command_guest(spec: GuestSpec) -> tuple[int, str, int]:
    """Boot a guest that runs spec.command and powers off; (command rc, console, QEMU rc)."""
    async with Guest(spec) as guest:
        await guest.ready(BOOT_TIMEOUT)
        rc = await guest.command_exit(BOOT_TIMEOUT)
        await guest.expect("GUEST-DONE", 30)
        qemu_rc = await guest.wait_exit(60)
        return rc, "\n".join(guest.console.log.lines), qemu_rc


def run(coroutine):
    return asyncio.run(coroutine)


async def wait_for_block_device(guest: Guest, name: str, present: bool) -> None:
    test = f"[ -e /sys/block/{name} ]" if present else f"[ ! -e /sys/block/{name} ]"
    rc, output = await guest.run(f"for i in $(seq 100); do {test} && exit 0; sleep 0.2; done; exit 1")
    assert rc == 0, f"/dev/{name} {'never appeared' if present else 'did not go away'}: {output}"


async def vhost_blk_scenario(tmp_path: Path, backend_argv) -> None:
    """x86_64 guest with a vhost-user disk at start and a second one hot-plugged:
    data both ways on each, unplug (device_del, DEVICE_DELETED, chardev-remove), power-down.
    `backend_argv(socket, disk)` is the back-end's command line."""
    from backend.qemu import BackendProcess, VhostUserBlk

    disks = [tmp_path / "boot.img", tmp_path / "hot.img"]
    patterns = [make_disk(disk) for disk in disks]
    sockets = [str(tmp_path / "boot.sock"), str(tmp_path / "hot.sock")]
    boot, hot = VhostUserBlk("vub0", sockets[0]), VhostUserBlk("vub1", sockets[1])
    async with BackendProcess(backend_argv(sockets[0], str(disks[0])), sockets[0]), \
            BackendProcess(backend_argv(sockets[1], str(disks[1])), sockets[1]):
        async with Guest(spec_for("x86_64", [boot])) as guest:
            assert await guest.ready(BOOT_TIMEOUT) == ["vda"]
            rc, output = await guest.run(roundtrip_script("vda"))
            assert rc == 0, output
            check_roundtrip(output, disks[0], patterns[0])
            await guest.plug(hot)
            await wait_for_block_device(guest, "vdb", present=True)
            rc, output = await guest.run(roundtrip_script("vdb"))
            assert rc == 0, output
            check_roundtrip(output, disks[1], patterns[1])
            await guest.unplug(hot)
            await wait_for_block_device(guest, "vdb", present=False)
            assert await guest.power_down(60), "guest ignored the ACPI power button"
            assert guest.process.returncode == 0
