"""x86_64 guest under TCG with QEMU's own virtio-blk: data both ways, clean power-off."""

import pytest

from backend.qemu import FileDisk

from .helpers import check_roundtrip, make_disk, roundtrip_script, run, run_command_guest, spec_for

pytestmark = pytest.mark.slow


def test_guest_reads_host_pattern_and_writes_its_own(tmp_path):
    disk = tmp_path / "disk.img"
    pattern = make_disk(disk)
    spec = spec_for("x86_64", [FileDisk("disk0", str(disk))], roundtrip_script("vda"))
    rc, console, qemu_rc = run(run_command_guest(spec))
    assert rc == 0, console[-2000:]
    assert qemu_rc == 0, "QEMU did not end cleanly after the guest powered off"
    check_roundtrip(console, disk, pattern)
