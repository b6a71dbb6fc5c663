"""The disk engine on real files and a real loop block device."""

from __future__ import annotations

import errno
import os
import subprocess
import threading

import pytest

from backend.vdisk.devid import DEVID_FAB, DeviceId, device_id_for
from backend.vdisk.engine import DiskEngine, create_sparse_file

MiB = 1 << 20


@pytest.fixture
def disk(tmp_path):
    with DiskEngine(tmp_path / "disk.img", create_size=16 * MiB) as engine:
        yield engine


def test_created_file_is_sparse_and_sized(tmp_path, disk) -> None:
    st = os.stat(tmp_path / "disk.img")
    assert st.st_size == 16 * MiB and st.st_blocks * 512 < MiB
    assert disk.size_bytes == 16 * MiB and disk.block_size == 512


def test_scatter_gather_round_trip(disk) -> None:
    data = [os.urandom(4096), os.urandom(512), os.urandom(8192)]
    assert disk.write_from(1 * MiB, [memoryview(d) for d in data]) == sum(map(len, data))
    targets = [bytearray(1000), bytearray(len(b"".join(data)) - 1000)]
    assert disk.read_into(1 * MiB, [memoryview(t) for t in targets]) == sum(map(len, data))
    assert b"".join(targets) == b"".join(data)


def test_out_of_range_and_read_only(tmp_path, disk) -> None:
    with pytest.raises(OSError) as info:
        disk.read(16 * MiB - 10, 20)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        disk.write(-1, b"x")
    assert info.value.errno == errno.EINVAL
    with DiskEngine(tmp_path / "disk.img", read_only=True) as ro:
        assert ro.read(0, 4) == bytes(4)
        with pytest.raises(OSError) as info:
            ro.write(0, b"x")
        assert info.value.errno == errno.EROFS


def test_write_cache_decides_when_data_is_made_stable(disk, monkeypatch) -> None:
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd)))
    disk.write(0, b"cached")
    assert synced == []  # cache on: the write may sit in the page cache
    disk.flush()
    assert len(synced) == 1
    disk.write(0, b"dirty")
    disk.write_cache = False  # turning the cache off makes what it holds stable first
    assert len(synced) == 2
    disk.write(0, b"stable")
    assert len(synced) == 3  # cache off: stable before the write returns


def test_flush_waits_for_earlier_io(disk) -> None:
    started, release = threading.Event(), threading.Event()
    real = os.pwritev

    def slow_pwritev(fd, buffers, offset):
        started.set()
        release.wait(5)
        return real(fd, buffers, offset)

    os.pwritev = slow_pwritev
    try:
        writer = threading.Thread(target=disk.write, args=(0, b"slow write"))
        writer.start()
        started.wait(5)
        flushed = threading.Event()
        flusher = threading.Thread(target=lambda: (disk.flush(), flushed.set()))
        flusher.start()
        assert not flushed.wait(0.2)  # the barrier waits for the write in flight
        release.set()
        assert flushed.wait(5)
        writer.join()
        flusher.join()
    finally:
        os.pwritev = real
    assert disk.read(0, 10) == b"slow write"


def test_discard_and_write_zeroes(disk) -> None:
    disk.write(0, b"\xff" * 65536)
    disk.write_zeroes(4096, 4096)
    disk.discard(16384, 16384)
    data = disk.read(0, 65536)
    assert data[4096:8192] == bytes(4096) and data[16384:32768] == bytes(16384)
    assert data[:4096] == b"\xff" * 4096 and data[8192:16384] == b"\xff" * 8192


def test_create_refuses_bad_size_and_existing(tmp_path) -> None:
    with pytest.raises(OSError):
        create_sparse_file(str(tmp_path / "x"), 0)
    create_sparse_file(str(tmp_path / "y"), 4096)
    with pytest.raises(FileExistsError):
        create_sparse_file(str(tmp_path / "y"), 4096)


def test_not_a_file_or_block_device(tmp_path) -> None:
    with pytest.raises(OSError) as info:
        DiskEngine(tmp_path)
    assert info.value.errno in (errno.EINVAL, errno.EISDIR)


def test_loop_block_device(tmp_path) -> None:
    backing = tmp_path / "backing.img"
    create_sparse_file(str(backing), 8 * MiB)
    loop = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=True).stdout.strip()
    try:
        with DiskEngine(loop) as engine:
            assert engine.info.is_block_device and engine.size_bytes == 8 * MiB and engine.block_size == 512
            engine.write_cache = False
            engine.write(MiB, b"through the loop device")
            engine.flush()
        with open(backing, "rb") as f:
            f.seek(MiB)
            assert f.read(23) == b"through the loop device"
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


def test_device_id_is_persistent_and_distinct(tmp_path) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    create_sparse_file(str(a), 4096)
    create_sparse_file(str(b), 4096)
    state = tmp_path / "state"
    first = device_id_for(str(a), state)
    assert first == device_id_for(str(a), state)  # a "restart": asked again
    assert first != device_id_for(str(b), state)
    assert first.type == DEVID_FAB and len(first.id) == 16
    assert DeviceId.decode(first.encode()) == first


def test_device_id_registry_when_xattrs_are_unavailable(tmp_path, monkeypatch) -> None:
    def no_xattr(*args, **kwargs):
        raise OSError(errno.ENOTSUP, "no xattrs here")

    monkeypatch.setattr(os, "getxattr", no_xattr)
    monkeypatch.setattr(os, "setxattr", no_xattr)
    disk = tmp_path / "d.img"
    create_sparse_file(str(disk), 4096)
    first = device_id_for(str(disk), tmp_path / "state")
    assert first == device_id_for(str(disk), tmp_path / "state")
    assert (tmp_path / "state" / "devids.json").exists()
