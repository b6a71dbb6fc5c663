"""A real QEMU 7.2 x86_64 guest (TCG) on our vhost-user-blk back-end: patterns both ways."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DISK = 32 << 20


def guest_image() -> Path:
    out = subprocess.run([str(REPO / "scripts" / "build-x86-guest")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_guest_writes_and_reads_patterns_through_our_backend(tmp_path: Path) -> None:
    image = guest_image()
    disk, sock = tmp_path / "disk.img", tmp_path / "blk.sock"
    host_pattern = os.urandom(1 << 20)
    with open(disk, "wb") as f:
        f.truncate(DISK)
        f.seek(4 << 20)
        f.write(host_pattern)
    backend = subprocess.Popen([sys.executable, "-m", "backend", "vhost-blk", "--socket", str(sock), "--disk", str(disk), "--queues", "2"],
                               cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert "serving" in backend.stdout.readline()
        script = (
            "dd if=/dev/urandom of=/tmp/pat bs=65536 count=16 2>/dev/null\n"
            "dd if=/tmp/pat of=/dev/vda bs=65536 count=16 seek=2 oflag=direct 2>/dev/null && sync\n"
            "echo WROTE $(md5sum < /tmp/pat)\n"
            "echo READ $(dd if=/dev/vda bs=65536 count=16 skip=64 iflag=direct 2>/dev/null | md5sum)\n"
            "echo SIZE $(cat /sys/block/vda/size)\n"
        )
        cmd64 = base64.b64encode(script.encode()).decode()
        qemu = subprocess.run(
            ["qemu-system-x86_64", "-accel", "tcg", "-m", "256M", "-nographic", "-no-reboot",
             "-machine", "q35,memory-backend=mem", "-object", "memory-backend-memfd,id=mem,size=256M,share=on",
             "-chardev", f"socket,id=c0,path={sock}", "-device", "vhost-user-blk-pci,chardev=c0,num-queues=2",
             "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initramfs.cpio.gz"),
             "-append", f"console=ttyS0 quiet guest.cmd64={cmd64}"],
            capture_output=True, text=True, timeout=240,
        )
        lines = {line.split()[0]: line.split()[1:] for line in qemu.stdout.splitlines() if line.split()[:1] in (["WROTE"], ["READ"], ["SIZE"])}
        assert "GUEST-DONE" in qemu.stdout, qemu.stdout[-2000:] + qemu.stderr
        assert lines["SIZE"] == [str(DISK // 512)]
        assert lines["READ"][0] == hashlib.md5(host_pattern).hexdigest()
        with open(disk, "rb") as f:
            f.seek(2 * 65536)
            assert hashlib.md5(f.read(1 << 20)).hexdigest() == lines["WROTE"][0]
        assert backend.poll() is None  # the back-end outlives the guest, ready for the next
    finally:
        backend.terminate()
        backend.wait(10)
