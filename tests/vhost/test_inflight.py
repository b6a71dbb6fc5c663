"""Inflight tracking: the region layout on its own, a crashed back-end's state handed to a new one,
and a real `vio vhost-blk` process killed with SIGKILL again and again under a write stream."""

from __future__ import annotations

import hashlib
import mmap
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.errors import GuestError
from backend.vdisk.devid import DeviceId
from backend.vdisk.engine import DiskEngine
from backend.vhost.devices import blk
from backend.vhost.frontend import VirtioGuest
from backend.vhost.inflight import (
    DESC_STATE,
    HEADER,
    InflightRing,
    queue_region_size,
    region_size,
)

from .helpers import blk_request, serving

ALL = (1 << 64) - 1
SECTOR = 512


def test_layout_matches_the_c_structs_and_libvhost_user_sizes() -> None:
    assert HEADER.size == 16 and DESC_STATE.size == 16
    assert queue_region_size(256) == 4160 and queue_region_size(128) == 2112  # ALIGN_UP(16 * n + 2, 64) there
    assert region_size(2, 256) == 2 * 4160


def test_marks_survive_and_come_back_oldest_first() -> None:
    region = memoryview(bytearray(queue_region_size(8)))
    ring = InflightRing(region, 8)
    assert ring.recover(used_idx=5) is None  # fresh: initialised, nothing to resubmit
    for head in (6, 2, 4):
        ring.taken(head)
    ring.putting(2)
    ring.put(2, 6)
    again = InflightRing(region, 8)
    assert again.recover(used_idx=6) == [6, 4]


def test_a_head_put_in_the_used_ring_just_before_the_crash_is_not_resubmitted() -> None:
    region = memoryview(bytearray(queue_region_size(8)))
    ring = InflightRing(region, 8)
    ring.recover(0)
    ring.taken(3)
    ring.taken(1)
    ring.putting(3)  # the used ring got head 3 (its index went to 1), then the back-end died
    assert InflightRing(region, 8).recover(used_idx=1) == [1]


def test_a_region_for_another_queue_size_or_a_bad_last_head_is_refused() -> None:
    region = memoryview(bytearray(queue_region_size(16)))
    InflightRing(region, 16).recover(0)
    with pytest.raises(GuestError):
        InflightRing(region, 8).recover(0)
    HEADER.pack_into(region, 0, 0, 1, 16, 999, 7)
    with pytest.raises(GuestError):
        InflightRing(region, 16).recover(3)
    with pytest.raises(GuestError):
        InflightRing(memoryview(bytearray(64)), 16)


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "d.img"
    path.write_bytes(bytes(1 << 20))
    sock = str(tmp_path / "d.sock")
    with serving({sock: blk.BlockDevice(DiskEngine(str(path)), DeviceId(3, b"x" * 16))}) as servers:
        yield sock, path, servers[sock]


def test_a_new_back_end_resubmits_what_the_dead_one_had_taken(disk) -> None:
    sock, path, server = disk
    guest = VirtioGuest.connect(sock)
    guest.negotiate(ALL)
    inflight = guest.get_inflight(1, 16)
    guest.set_inflight(*inflight)
    queue = guest.start_queue(0, 16)
    assert blk_request(guest, 0, blk.T_OUT, 0, data=b"z" * SECTOR)[0] == blk.S_OK
    guest.frontend.close()  # the back-end goes away ...
    used = queue.used_index()
    # ... having taken three writes (marked in the region) that never reached the used ring.
    heads = []
    for n in range(3):
        header = guest.buffer(blk.REQUEST_HEADER.pack(blk.T_OUT, 0, 10 + n))
        heads.append(queue.add([header, guest.buffer(bytes([n + 1]) * SECTOR)], [guest.buffer(1)]))
    region = mmap.mmap(inflight[0], inflight[1].mmap_size)
    ring = InflightRing(memoryview(region), 16)
    for head in reversed(heads):  # taken in the other order: resubmission follows the counters
        ring.taken(head)
    del ring
    guest.reconnect(sock, ALL, inflight=inflight)
    done = guest.wait_used(0, count=3)
    # resubmitted oldest first (test_marks_survive_and_come_back_oldest_first); writes then
    # complete in whatever order the I/O threads finish them
    assert sorted(head for head, _ in done) == sorted(heads)
    queue_state = server.connection.protocol.vrings[0].queue
    assert queue_state.resubmitted == 3 and queue_state.last_avail == (used + 3) & 0xFFFF
    data = path.read_bytes()
    assert [data[(10 + n) * SECTOR] for n in range(3)] == [1, 2, 3]
    assert blk_request(guest, 0, blk.T_IN, 10, read=SECTOR)[1] == bytes([1]) * SECTOR  # and the ring goes on
    guest.close()


def _start_backend(sock: str, disk: Path) -> subprocess.Popen:
    """Start `vio vhost-blk` and return once it listens (it says so after listen(); the
    socket file alone appears at bind(), before a connection can be taken)."""
    if os.path.exists(sock):
        os.unlink(sock)
    said = Path(sock + ".out")
    with open(said, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "backend", "vhost-blk", "--socket", sock, "--disk", str(disk)],
                                   cwd=Path(__file__).resolve().parents[2], stdout=out, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while "serving" not in said.read_text():
        assert process.poll() is None and time.monotonic() < deadline, "back-end did not listen"
        time.sleep(0.02)
    return process


def test_sigkilled_back_end_restarted_loses_no_acknowledged_write(tmp_path) -> None:
    """A write stream with 8 requests in flight; the back-end process is killed (SIGKILL) and
    restarted five times; every write completes once and is on disk."""
    disk, sock = tmp_path / "d.img", str(tmp_path / "d.sock")
    disk.write_bytes(bytes(1 << 20))
    process = _start_backend(sock, disk)
    try:
        guest = VirtioGuest.connect(sock)
        guest.negotiate(ALL)
        inflight = guest.get_inflight(1, 64)
        guest.set_inflight(*inflight)
        queue = guest.start_queue(0, 64)
        expected: dict[int, bytes] = {}
        acked: set[int] = set()
        owner: dict[int, int] = {}
        sector = unacked_at_kills = 0

        def fill() -> None:
            """Keep 8 checksummed writes in flight."""
            nonlocal sector
            while queue.free_descriptors >= 3 and len(owner) < 8:
                data = hashlib.sha256(f"{sector}".encode()).digest() * 16
                head = queue.add([guest.buffer(blk.REQUEST_HEADER.pack(blk.T_OUT, 0, sector)), guest.buffer(data)],
                                 [guest.buffer(1)])
                owner[head], expected[sector] = sector, data
                sector += 1
            guest.kick(0, force=True)

        for round_ in range(6):
            for _ in range(40):
                fill()
                for head, _ in guest.wait_used(0):
                    acked.add(owner.pop(head))
            if round_ < 5:
                fill()  # kill with requests surely in flight
                unacked_at_kills += len(owner)
                process.send_signal(signal.SIGKILL)
                process.wait()
                process = _start_backend(sock, disk)
                guest.reconnect(sock, ALL, inflight=inflight)
        while owner:
            for head, _ in guest.wait_used(0):
                acked.add(owner.pop(head))
        guest.close()
    finally:
        process.kill()
        process.wait()
    assert unacked_at_kills > 0  # the kills did catch requests the guest was still waiting for
    assert acked == set(expected)
    on_disk = disk.read_bytes()
    bad = [s for s, data in expected.items() if on_disk[s * SECTOR : (s + 1) * SECTOR] != data]
    assert not bad, f"{len(bad)} acknowledged writes are not on disk, first sector {bad[0]}"
