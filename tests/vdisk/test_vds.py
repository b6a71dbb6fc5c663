"""vds and vdc through the real VIO and LDC layers, in one process (fast paths)."""

from __future__ import annotations

import errno
import os
import random

import pytest

from backend.ldc.memory import PERM_RO, PERM_RW, TransportCookie
from backend.vdisk.client import VdcDevice
from backend.vdisk.devid import DeviceId, device_id_for
from backend.vdisk.engine import DiskEngine
from backend.vdisk.protocol import (
    ACCESS, ACCESS_EXCLUSIVE, CAPACITY, SLICE_ABSOLUTE, WCE, DiskAttrs, DiskRequest, DiskType, Op, ops_mask, OPS_1_0,
)
from backend.vdisk.server import Export, VdsDevice
from backend.vio.loopback import connect, make_pair, pump

MiB = 1 << 20


@pytest.fixture
def export(tmp_path):
    path = tmp_path / "disk.img"
    engine = DiskEngine(path, create_size=8 * MiB)
    yield Export(engine, device_id_for(str(path), tmp_path / "state"))
    engine.close()


class Harness:
    """A vdc and a vds in one process, with a synchronous request helper."""

    def __init__(self, export: Export, client: VdcDevice | None = None) -> None:
        self.client = client or VdcDevice()
        self.server = VdsDevice(export)
        self.a, self.b = make_pair(self.client, self.server)
        connect(self.a, self.b)
        self.segment = self.a.memory.allocate_segment(4 * MiB)

    def call(self, op: int, offset: int = 0, size: int = 0, *, slice_: int = SLICE_ABSOLUTE,
             data: bytes = b"", read: int = 0, perms: int = PERM_RW, cookies=None) -> tuple[int, bytes]:
        length = max(len(data), read)
        export = self.a.memory.export(self.segment, 0, length, perms) if length and cookies is None else None
        if data:
            self.segment.view[: len(data)] = data
        results: list[int] = []
        request = DiskRequest(0, op, slice_, 0, offset, size, list(cookies if cookies is not None else (export.cookies if export else [])))
        self.client.request(self.a.session, request, lambda code, done: results.append(code))
        pump(self.a, self.b)
        if export:
            self.a.memory.unmap(export)
        assert len(results) == 1, "request never completed"
        return results[0], bytes(self.segment.view[:read])


def test_attributes_version_1_1(export) -> None:
    h = Harness(export)
    attrs = h.client.server
    assert h.a.session.version == (1, 1)
    assert (attrs.vdisk_block_size, attrs.vdisk_size, attrs.vdisk_type, attrs.vdisk_mtype) == (512, 8 * MiB // 512, DiskType.DISK, 1)
    assert attrs.max_xfer_size == MiB // 512
    assert attrs.operations & (1 << Op.GET_CAPACITY) and attrs.operations & (1 << Op.SET_ACCESS)


def test_attributes_version_1_0(export) -> None:
    client = VdcDevice()
    client.versions = ((1, 0),)
    h = Harness(export, client)
    attrs = h.client.server
    assert h.a.session.version == (1, 0)
    assert attrs.vdisk_size == 0 and attrs.vdisk_mtype == 0  # reserved in 1.0
    assert attrs.operations & ~ops_mask(OPS_1_0) == 0
    code, _ = h.call(Op.GET_CAPACITY, size=16, read=16)
    assert code == errno.ENOTSUP  # a 1.1 operation in a 1.0 session


def test_client_block_size_zero_means_bytes(export) -> None:
    server = VdsDevice(export)
    reply = server.on_attr_info(DiskAttrs(3, vdisk_block_size=0, max_xfer_size=65536).encode(), (1, 1))
    assert reply.ack and DiskAttrs.decode(reply.payload).max_xfer_size == 65536 // 512


def test_server_lowers_max_transfer_and_refuses_small_blocks(export) -> None:
    server = VdsDevice(export)
    reply = server.on_attr_info(DiskAttrs(3, vdisk_block_size=512, max_xfer_size=(16 * MiB) // 512).encode(), (1, 1))
    assert DiskAttrs.decode(reply.payload).max_xfer_size == MiB // 512
    assert not server.on_attr_info(DiskAttrs(3, vdisk_block_size=256, max_xfer_size=8).encode(), (1, 1)).ack
    assert not server.on_attr_info(DiskAttrs(1, vdisk_block_size=512, max_xfer_size=8).encode(), (1, 1)).ack  # PKT mode


@pytest.mark.parametrize("inband", [False, True])
def test_random_reads_and_writes_match_a_model(export, inband) -> None:
    h = Harness(export, VdcDevice(inband=inband))
    model = bytearray(8 * MiB)
    rng = random.Random(7)
    for _ in range(60):
        block = rng.randrange(0, 8 * MiB // 512 - 64)
        count = rng.randrange(1, 64)
        if rng.random() < 0.5:
            data = os.urandom(count * 512)
            assert h.call(Op.BWRITE, block, len(data), data=data)[0] == 0
            model[block * 512 : block * 512 + len(data)] = data
        else:
            code, data = h.call(Op.BREAD, block, count * 512, read=count * 512)
            assert code == 0 and data == model[block * 512 : (block + count) * 512]
    assert export.engine.read(0, 8 * MiB) == model


@pytest.mark.parametrize(
    "op, offset, size, slice_, expected",
    [
        (Op.BREAD, 8 * MiB // 512, 512, SLICE_ABSOLUTE, errno.EINVAL),  # past the end
        (Op.BREAD, 8 * MiB // 512 - 1, 1024, SLICE_ABSOLUTE, errno.EINVAL),  # runs past the end
        (Op.BREAD, 0, 100, SLICE_ABSOLUTE, errno.EINVAL),  # not whole blocks
        (Op.BREAD, 0, 2 * MiB, SLICE_ABSOLUTE, errno.EINVAL),  # above max transfer
        (Op.BREAD, 0, 512, 3, errno.EINVAL),  # a slice the disk has no label for
        (0x30, 0, 0, SLICE_ABSOLUTE, errno.ENOTSUP),  # reserved operation
    ],
)
def test_bad_requests_get_their_status(export, op, offset, size, slice_, expected) -> None:
    h = Harness(export)
    assert h.call(op, offset, size, slice_=slice_, read=min(size, 3 * MiB))[0] == expected
    assert h.call(Op.BREAD, 0, 512, read=512)[0] == 0  # and the server goes on


def test_bad_cookies_are_refused(export) -> None:
    h = Harness(export)
    bogus = [TransportCookie(0xDEAD << 13, 512)]
    assert h.call(Op.BREAD, 0, 512, cookies=bogus)[0] == errno.EINVAL
    assert h.call(Op.BREAD, 0, 4096, read=512)[0] == errno.EINVAL  # cookies cover less than asked


def test_copy_only_buffers_use_a_bounce_buffer(export) -> None:
    h = Harness(export)
    export.engine.write(0, b"bounce!!" * 64)
    from backend.ldc.memory import Perm

    code, data = h.call(Op.BREAD, 0, 512, read=512, perms=Perm.COPY_READ | Perm.COPY_WRITE)
    assert code == 0 and data == b"bounce!!" * 64
    assert h.call(Op.BWRITE, 0, 512, data=b"x" * 512, perms=PERM_RO)[0] == 0


def test_read_only_export(tmp_path, export) -> None:
    ro = Export(DiskEngine(export.engine.path, read_only=True), export.device_id)
    h = Harness(ro)
    assert h.call(Op.BWRITE, 0, 512, data=b"y" * 512)[0] == errno.EROFS
    assert h.call(Op.BREAD, 0, 512, read=512)[0] == 0


def test_flush_wce_devid_capacity(export) -> None:
    h = Harness(export)
    assert h.call(Op.FLUSH)[0] == 0
    code, data = h.call(Op.GET_WCE, size=4, read=4)
    assert code == 0 and WCE.unpack(data) == (1,)
    assert h.call(Op.SET_WCE, size=4, data=WCE.pack(0))[0] == 0
    assert export.engine.write_cache is False
    code, data = h.call(Op.GET_DEVID, size=64, read=64)
    assert code == 0 and DeviceId.decode(data) == export.device_id
    code, data = h.call(Op.GET_CAPACITY, size=16, read=16)
    assert code == 0 and CAPACITY.unpack(data) == (512, 8 * MiB // 512)


def test_slice_export_window(tmp_path, export) -> None:
    export.engine.write(MiB, b"slice start" + bytes(501))
    window = Export(export.engine, export.device_id, disk_type=DiskType.SLICE, start=MiB, length=2 * MiB)
    h = Harness(window)
    assert h.client.server.vdisk_type == DiskType.SLICE and h.client.server.vdisk_size == 2 * MiB // 512
    code, data = h.call(Op.BREAD, 0, 512, slice_=0, read=512)
    assert code == 0 and data.startswith(b"slice start")
    assert h.call(Op.BREAD, 2 * MiB // 512, 512, read=512)[0] == errno.EINVAL  # the window ends here
    assert h.call(Op.BREAD, 0, 512, slice_=1, read=512)[0] == errno.EINVAL


def test_exclusive_access_between_clients_and_reset(export) -> None:
    first, second = Harness(export), Harness(export)
    assert first.call(Op.SET_ACCESS, size=8, data=ACCESS.pack(ACCESS_EXCLUSIVE))[0] == 0
    assert second.call(Op.BREAD, 0, 512, read=512)[0] == errno.EACCES
    code, data = second.call(Op.GET_ACCESS, size=8, read=8)
    assert code == 0 and ACCESS.unpack(data) == (0,)
    assert second.call(Op.SET_ACCESS, size=8, data=ACCESS.pack(ACCESS_EXCLUSIVE))[0] == errno.EBUSY
    assert first.call(Op.RESET)[0] == 0  # a reset clears the reservation
    assert second.call(Op.BREAD, 0, 512, read=512)[0] == 0
    assert second.call(Op.SET_ACCESS, size=8, data=ACCESS.pack(ACCESS_EXCLUSIVE))[0] == 0
    second.a.channel.close()  # connection loss acts as a reset
    pump(second.a, second.b)
    assert first.call(Op.BREAD, 0, 512, read=512)[0] == 0


def test_malformed_descriptor_gets_einval(export) -> None:
    from backend.vdisk.protocol import DESC_HEAD

    h = Harness(export)
    results: list[int] = []
    bogus = DESC_HEAD.pack(77, Op.BREAD, SLICE_ABSOLUTE, 0, 0, 512, 999)  # claims 999 cookies
    ring = h.a.session.own_rings[0]
    h.client._pending[ring.prod] = (77, lambda code, done: results.append(code), None)
    h.a.session.submit(ring, bogus)
    pump(h.a, h.b)
    assert results == [errno.EINVAL]
    assert h.call(Op.BREAD, 0, 512, read=512)[0] == 0
