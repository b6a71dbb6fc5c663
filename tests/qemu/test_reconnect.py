"""Reconnect without losing I/O: an x86_64 guest writes a checksummed stream to a disk served by
`vio vhost-blk` while the back-end is killed with SIGKILL and restarted, several times. QEMU's
chardev reconnects (reconnect=1) and hands the new back-end the inflight region; every write the
guest saw acknowledged (after fsync) must be on disk, and the guest must see no I/O error.

Prints the reconnect times: SIGKILL to the restarted back-end serving the device again.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from backend.qemu import BackendProcess, Guest, VhostUserBlk

from .helpers import BOOT_TIMEOUT, run, spec_for

pytestmark = pytest.mark.slow

BLOCK = 65536
BLOCKS = 240
KILLS = 4
DISK_BYTES = 32 << 20

STREAM = f"""
echo STREAM-START
i=0
while [ $i -lt {BLOCKS} ]; do
  dd if=/dev/urandom of=/tmp/b bs={BLOCK} count=1 2>/dev/null
  if dd if=/tmp/b of=/dev/vda bs={BLOCK} seek=$i conv=fsync 2>/dev/null; then
    echo "ACK $i $(md5sum < /tmp/b)"
  else
    echo "IOERR $i"
  fi
  i=$((i + 1))
done
dmesg | grep -ci "i/o error" | sed 's/^/KERNEL-IO-ERRORS /'
"""


def backend_argv(sock: str, disk: Path) -> list[str]:
    return [sys.executable, "-m", "backend", "-v", "vhost-blk", "--socket", sock, "--disk", str(disk)]


async def serving_again(log: Path, deadline: float) -> None:
    """Until the restarted back-end has QEMU's rings again (SET_VRING_KICK logged as a memory table first)."""
    while "memory table" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"QEMU did not come back:\n{log.read_text()[-1500:]}"
        await asyncio.sleep(0.05)


def test_guest_write_stream_survives_sigkilled_back_ends(tmp_path: Path) -> None:
    disk, sock = tmp_path / "disk.img", str(tmp_path / "vub.sock")
    disk.write_bytes(bytes(DISK_BYTES))

    async def scenario() -> tuple[str, list[float], int]:
        backend = BackendProcess(backend_argv(sock, disk), sock)
        await backend.start()
        reconnects, resubmitted = [], 0
        try:
            spec = spec_for("x86_64", [VhostUserBlk("vub0", sock, reconnect=1)], STREAM)
            async with Guest(spec) as guest:
                await guest.ready(BOOT_TIMEOUT)
                await guest.expect("STREAM-START", 60)
                for _ in range(KILLS):
                    await guest.expect(r"ACK \d+", 60)
                    await asyncio.sleep(0.5)
                    assert backend.process is not None
                    backend.process.send_signal(signal.SIGKILL)
                    await backend.process.wait()
                    killed = time.monotonic()
                    await backend.start()
                    await serving_again(backend.log, killed + 30)
                    reconnects.append(time.monotonic() - killed)
                    await asyncio.sleep(0.3)
                    resubmitted += sum(int(n) for n in re.findall(r"resubmitting (\d+) requests", backend.log.read_text()))
                assert await guest.command_exit(300) == 0
                await guest.expect("GUEST-DONE", 30)
                await guest.wait_exit(60)
                return "\n".join(guest.console.log.lines), reconnects, resubmitted
        finally:
            await backend.stop()

    console, reconnects, resubmitted = run(scenario())
    assert "IOERR" not in console, console[-3000:]
    assert re.search(r"KERNEL-IO-ERRORS 0\b", console), console[-3000:]
    acked = {int(n): digest for n, digest in re.findall(r"ACK (\d+) ([0-9a-f]{32})", console)}
    assert sorted(acked) == list(range(BLOCKS)), "the stream did not finish"
    data = disk.read_bytes()
    lost = [n for n, digest in acked.items() if hashlib.md5(data[n * BLOCK : (n + 1) * BLOCK]).hexdigest() != digest]
    assert not lost, f"{len(lost)} acknowledged blocks are not on disk: {lost[:10]}"
    print("reconnect times (SIGKILL to serving again): " + ", ".join(f"{t:.2f} s" for t in reconnects)
          + f"; {resubmitted} requests resubmitted from the inflight region")
