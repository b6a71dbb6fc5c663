"""virtio-blk over vhost-user, driven by our front-end against a real file."""

from __future__ import annotations

import os

import pytest

from backend.vdisk.devid import DeviceId
from backend.vdisk.engine import DiskEngine
from backend.vhost.constants import VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, DeviceStatus
from backend.vhost.devices import blk
from backend.vhost.frontend import VirtioGuest

from .helpers import blk_request, serving

DISK = 8 << 20
ALL = ((1 << 64) - 1) & ~VIRTIO_F_ACCESS_PLATFORM  # no IOMMU: guest-physical addresses


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(DISK)
    return str(path)


def make_device(path: str, *, read_only: bool = False, queues: int = 1) -> blk.BlockDevice:
    return blk.BlockDevice(DiskEngine(path, read_only=read_only), DeviceId(3, bytes(range(16))), num_queues=queues)


@pytest.fixture
def guest(disk, tmp_path):
    sock = str(tmp_path / "blk.sock")
    with serving({sock: make_device(disk)}):
        g = VirtioGuest.connect(sock)
        g.negotiate(ALL)
        g.start_queue(0, 128)
        yield g
        g.close()


def test_features_include_version_1_indirect_and_event_idx(guest: VirtioGuest) -> None:
    needed = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX | blk.F_FLUSH | blk.F_DISCARD
    assert guest.features & needed == needed
    assert not guest.features & blk.F_RO


def test_config_space_describes_the_disk(guest: VirtioGuest) -> None:
    config = guest.read_config(0, 60)
    capacity, size_max, seg_max = blk.CONFIG.unpack_from(config.ljust(blk.CONFIG.size, b"\0"))[:3]
    assert capacity == DISK // 512 and size_max == blk.SIZE_MAX and seg_max == 254
    assert int.from_bytes(config[20:24], "little") == 512  # blk_size
    assert int.from_bytes(config[34:36], "little") == 1  # num_queues
    assert config[32] == 1  # writeback
    assert guest.read_config(0, 72)[:60] == config  # QEMU reads more than the 1.1 layout


@pytest.mark.parametrize("indirect", [False, True])
def test_write_then_read_back_and_the_file_holds_it(guest: VirtioGuest, disk: str, indirect: bool) -> None:
    data = os.urandom(64 << 10)
    assert blk_request(guest, 0, blk.T_OUT, 100, data=data, indirect=indirect)[0] == blk.S_OK
    status, back, written = blk_request(guest, 0, blk.T_IN, 100, read=len(data), indirect=indirect)
    assert status == blk.S_OK and back == data and written == len(data) + 1
    assert blk_request(guest, 0, blk.T_FLUSH, 0)[0] == blk.S_OK
    with open(disk, "rb") as f:
        f.seek(100 * 512)
        assert f.read(len(data)) == data


def test_many_requests_in_flight_complete(guest: VirtioGuest, disk: str) -> None:
    with open(disk, "r+b") as f:
        for i in range(64):
            f.seek(i * 4096)
            f.write(bytes([i]) * 4096)
    queue = guest.queues[0]
    requests = {}
    for i in range(40):
        header = guest.buffer(blk.REQUEST_HEADER.pack(blk.T_IN, 0, i * 8))
        data, status = guest.buffer(4096), guest.buffer(1)
        requests[queue.add([header], [data, status], indirect=i % 2 == 1)] = (i, data, status)
    guest.kick(0)
    done = guest.wait_used(0, count=40)
    assert sorted(head for head, _ in done) == sorted(requests)
    for head, written in done:
        i, data, status = requests[head]
        assert written == 4097 and guest.ram.view(status.gpa, 1)[0] == 0
        assert bytes(guest.ram.view(data.gpa, 4096)) == bytes([i]) * 4096


def test_get_id_returns_the_serial(guest: VirtioGuest) -> None:
    status, serial, written = blk_request(guest, 0, blk.T_GET_ID, 0, read=20)
    assert status == blk.S_OK and serial == bytes(range(16)).hex().encode()[:20] and written == 21


def test_out_of_range_io_gets_ioerr_and_the_device_keeps_working(guest: VirtioGuest) -> None:
    assert blk_request(guest, 0, blk.T_IN, DISK // 512 - 1, read=1024)[0] == blk.S_IOERR
    assert blk_request(guest, 0, blk.T_IN, 0, read=100)[0] == blk.S_IOERR  # not whole sectors
    assert blk_request(guest, 0, 77, 0)[0] == blk.S_UNSUPP
    assert blk_request(guest, 0, blk.T_IN, 0, read=512)[0] == blk.S_OK


def test_discard_and_write_zeroes_clear_the_range(guest: VirtioGuest, disk: str) -> None:
    blk_request(guest, 0, blk.T_OUT, 0, data=b"\xaa" * 16384)
    assert blk_request(guest, 0, blk.T_DISCARD, 0, data=blk.SEGMENT.pack(0, 8, 0))[0] == blk.S_OK
    assert blk_request(guest, 0, blk.T_WRITE_ZEROES, 0, data=blk.SEGMENT.pack(8, 8, 0) + blk.SEGMENT.pack(16, 8, 1))[0] == blk.S_OK
    assert blk_request(guest, 0, blk.T_IN, 0, read=16384)[1] == bytes(12288) + b"\xaa" * 4096
    assert blk_request(guest, 0, blk.T_DISCARD, DISK // 512, data=blk.SEGMENT.pack(DISK // 512, 8, 0))[0] == blk.S_IOERR


def test_write_cache_toggles_through_config(guest: VirtioGuest, tmp_path) -> None:
    guest.write_config(blk.CONFIG_WRITEBACK_OFFSET, b"\x00")
    assert guest.read_config(blk.CONFIG_WRITEBACK_OFFSET, 1) == b"\x00"
    guest.write_config(blk.CONFIG_WRITEBACK_OFFSET, b"\x01")
    assert guest.read_config(blk.CONFIG_WRITEBACK_OFFSET, 1) == b"\x01"


def test_read_only_export_offers_ro_and_refuses_writes(disk: str, tmp_path) -> None:
    sock = str(tmp_path / "ro.sock")
    with serving({sock: make_device(disk, read_only=True)}):
        guest = VirtioGuest.connect(sock)
        features = guest.negotiate(ALL)
        assert features & blk.F_RO and not features & blk.F_DISCARD
        guest.start_queue(0)
        assert blk_request(guest, 0, blk.T_OUT, 0, data=bytes(512))[0] == blk.S_IOERR
        assert blk_request(guest, 0, blk.T_IN, 0, read=512)[0] == blk.S_OK
        guest.close()


def test_multiqueue_serves_every_queue(disk: str, tmp_path) -> None:
    sock = str(tmp_path / "mq.sock")
    with serving({sock: make_device(disk, queues=4)}):
        guest = VirtioGuest.connect(sock)
        guest.negotiate(ALL)
        assert guest.queue_count() == 4
        for q in range(4):
            guest.start_queue(q, 64)
        for q in range(4):
            assert blk_request(guest, q, blk.T_OUT, q * 8, data=bytes([q + 1]) * 4096)[0] == blk.S_OK
        for q in range(4):
            assert blk_request(guest, (q + 1) % 4, blk.T_IN, q * 8, read=4096)[1] == bytes([q + 1]) * 4096
        guest.close()


def test_stop_returns_the_avail_index_and_restart_continues(guest: VirtioGuest) -> None:
    for _ in range(3):
        blk_request(guest, 0, blk.T_IN, 0, read=512)
    assert guest.stop_queue(0) == 3
    assert guest.status() & DeviceStatus.NEEDS_RESET == 0
