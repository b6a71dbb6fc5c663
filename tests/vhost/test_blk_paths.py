"""virtio-blk request paths: cached reads served on the event loop, the rest in the I/O threads,
and request layouts other than Linux's (header, data and status sharing buffers)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

import pytest

from backend.vdisk.devid import DeviceId
from backend.vdisk.engine import DiskEngine
from backend.vhost.constants import VIRTIO_F_ACCESS_PLATFORM, DeviceStatus
from backend.vhost.devices import blk
from backend.vhost.frontend import VirtioGuest

from ..page_cache import drop_from_page_cache
from .helpers import blk_request, serving

DISK = 4 << 20
ALL = ((1 << 64) - 1) & ~VIRTIO_F_ACCESS_PLATFORM


class ThreadNoting(DiskEngine):
    """A real engine that notes which thread each read ran in (the I/O threads are named vhost-io-*)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.reads: list[tuple[str, str]] = []  # (how, thread name)

    def read_into(self, offset: int, buffers: Sequence[memoryview]) -> int:
        self.reads.append(("read_into", threading.current_thread().name))
        return super().read_into(offset, buffers)

    def try_read_into(self, offset: int, buffers: Sequence[memoryview]) -> int:
        done = super().try_read_into(offset, buffers)
        self.reads.append(("cached", threading.current_thread().name))
        return done


@pytest.fixture
def disk(tmp_path) -> str:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(DISK))
    return str(path)


@pytest.fixture
def engine(disk):
    engine = ThreadNoting(disk)
    yield engine
    engine.close()


@pytest.fixture
def guest(engine, tmp_path):
    sock = str(tmp_path / "blk.sock")
    with serving({sock: blk.BlockDevice(engine, DeviceId(3, bytes(16)))}):
        g = VirtioGuest.connect(sock)
        g.negotiate(ALL)
        g.start_queue(0, 64)
        yield g
        g.close()


def expected(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="needs preadv2 RWF_NOWAIT")
def test_a_cached_read_is_served_on_the_loop_and_an_uncached_one_in_an_io_thread(guest, engine, disk) -> None:
    expected(disk, 0, DISK)  # the whole file in the page cache
    status, data, written = blk_request(guest, 0, blk.T_IN, 16, read=8192)
    assert (status, data, written) == (blk.S_OK, expected(disk, 16 * 512, 8192), 8193)
    assert engine.reads == [("cached", engine.reads[0][1])] and not engine.reads[0][1].startswith("vhost-io")

    engine.reads.clear()
    drop_from_page_cache(disk)
    status, data, written = blk_request(guest, 0, blk.T_IN, 2048, read=65536)
    assert (status, data, written) == (blk.S_OK, expected(disk, 2048 * 512, 65536), 65537)
    assert [how for how, _ in engine.reads] == ["read_into"] and engine.reads[0][1].startswith("vhost-io")


def test_reads_larger_than_the_inline_limit_go_to_the_io_threads(guest, engine, disk) -> None:
    expected(disk, 0, DISK)
    length = blk.INLINE_READ_MAX + 4096
    status, data, _ = blk_request(guest, 0, blk.T_IN, 0, read=length)
    assert status == blk.S_OK and data == expected(disk, 0, length)
    assert [how for how, _ in engine.reads] == ["read_into"]


def test_writes_are_read_back_through_the_cached_path(guest, engine, disk) -> None:
    pattern = os.urandom(4096)
    assert blk_request(guest, 0, blk.T_OUT, 40, data=pattern)[0] == blk.S_OK
    assert blk_request(guest, 0, blk.T_IN, 40, read=4096)[1] == pattern
    assert expected(disk, 40 * 512, 4096) == pattern


def test_header_data_and_status_sharing_buffers(guest, disk) -> None:
    """One readable buffer with header and data, one writable buffer with data and status."""
    pattern = os.urandom(1024)
    request = guest.buffer(blk.REQUEST_HEADER.pack(blk.T_OUT, 0, 8) + pattern)
    status = guest.buffer(b"\xff")
    guest.queues[0].add([request], [status])
    guest.kick(0)
    assert guest.wait_used(0)[0][1] == 1 and guest.ram.view(status.gpa, 1)[0] == blk.S_OK
    assert expected(disk, 8 * 512, 1024) == pattern

    header = guest.buffer(blk.REQUEST_HEADER.pack(blk.T_IN, 0, 8))
    data_and_status = guest.buffer(b"\xff" * 1025)
    guest.queues[0].add([header], [data_and_status], indirect=True)
    guest.kick(0)
    assert guest.wait_used(0)[0][1] == 1025
    back = bytes(guest.ram.view(data_and_status.gpa, 1025))
    assert back[:1024] == pattern and back[1024] == blk.S_OK


def test_a_header_split_over_two_buffers_is_understood(guest, disk) -> None:
    raw = blk.REQUEST_HEADER.pack(blk.T_IN, 0, 3)
    first, second = guest.buffer(raw[:5]), guest.buffer(raw[5:])
    data, status = guest.buffer(512), guest.buffer(b"\xff")
    guest.queues[0].add([first, second], [data, status])
    guest.kick(0)
    assert guest.wait_used(0)[0][1] == 513 and guest.ram.view(status.gpa, 1)[0] == blk.S_OK
    assert bytes(guest.ram.view(data.gpa, 512)) == expected(disk, 3 * 512, 512)


@pytest.mark.parametrize("layout", ["short header", "no status"])
def test_a_request_without_header_or_status_marks_the_device_broken(guest, layout) -> None:
    if layout == "short header":
        readable, writable = [guest.buffer(bytes(8))], [guest.buffer(1)]
    else:
        readable, writable = [guest.buffer(blk.REQUEST_HEADER.pack(blk.T_IN, 0, 0))], []
    guest.queues[0].add(readable, writable)
    guest.kick(0)
    for _ in range(100):
        if guest.status() & DeviceStatus.NEEDS_RESET:
            break
        time.sleep(0.01)
    assert guest.status() & DeviceStatus.NEEDS_RESET
