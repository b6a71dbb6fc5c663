"""The device IOTLB: the translation cache on its own (fuzzed), then a real back-end serving a
Python front-end that plays an IOMMU (IOVA page table, answering misses, invalidating)."""

from __future__ import annotations

import select
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.errors import GuestError, ProtocolError
from backend.vhost.constants import (
    IOTLB_INVALIDATE,
    IOTLB_RO,
    IOTLB_RW,
    IOTLB_UPDATE,
    IOTLB_WO,
    VIRTIO_F_ACCESS_PLATFORM,
    DeviceStatus,
    Request,
)
from backend.vhost.devices import blk
from backend.vhost.driver import GuestRam
from backend.vhost.frontend import VirtioGuest
from backend.vhost.iommu import Iommu
from backend.vhost.iotlb import DeviceIotlb, IotlbMiss, IotlbSpace
from backend.vhost.memory import GuestMemory, MappedRegion
from backend.vhost.messages import IotlbMessage

from .helpers import blk_request, two_blk_disks

ALL = (1 << 64) - 1
RAM = 1 << 20


@pytest.fixture
def iotlb():
    ram = GuestRam(RAM, gpa_base=0x4000_0000)
    table = DeviceIotlb(GuestMemory([MappedRegion(ram.region(), ram.data)]))
    yield table, ram
    table.clear()
    ram.close()


def update(iova: int, size: int, uva: int, perm: int = IOTLB_RW) -> IotlbMessage:
    return IotlbMessage(iova, size, uva, perm, IOTLB_UPDATE)


# ---- the cache -----------------------------------------------------------------------------


def test_translation_spans_entries_and_checks_permissions(iotlb) -> None:
    table, ram = iotlb
    table.update(update(0x1000, 0x1000, ram.uva + 0x8000, IOTLB_RO))
    table.update(update(0x2000, 0x1000, ram.uva + 0x3000, IOTLB_RW))
    space = IotlbSpace(table)
    ram.data[0x8FF0:0x9000] = b"a" * 16
    ram.data[0x3000:0x3010] = b"b" * 16
    assert b"".join(bytes(v) for v in space.views(0x1FF0, 32)) == b"a" * 16 + b"b" * 16
    with pytest.raises(GuestError, match="read-only"):
        space.views(0x1000, 16, write=True)
    with pytest.raises(GuestError, match="not contiguous"):
        space.view(0x1FF0, 32)  # a ring cannot straddle two pages that are apart in memory
    with pytest.raises(IotlbMiss) as miss:
        space.views(0x2FF0, 32, write=True)
    assert miss.value.iova == 0x3000 and miss.value.write


@pytest.mark.parametrize("bad", [
    lambda ram: update(0x1000, 0, ram.uva),                                # empty
    lambda ram: update(0x1000, 0x1000, 0x10),                              # front-end address outside every region
    lambda ram: update(0x1000, 0x2000, ram.uva + RAM - 0x1000),            # runs past the end of the region
    lambda ram: update((1 << 64) - 0x1000, 0x2000, ram.uva),               # IOVA wraps
    lambda ram: IotlbMessage(0x1000, 0x1000, ram.uva, 0, IOTLB_UPDATE),    # no permission
    lambda ram: IotlbMessage(0x1000, 0x1000, ram.uva, 7, IOTLB_UPDATE),    # unknown permission
], ids=["empty", "outside", "past-end", "wraps", "no-perm", "bad-perm"])
def test_impossible_updates_are_refused_and_change_nothing(iotlb, bad) -> None:
    table, ram = iotlb
    with pytest.raises(GuestError):
        table.update(bad(ram))
    assert len(table) == 0


def test_one_request_rule_ring_translations_stay_buffer_translations_go(iotlb) -> None:
    table, ram = iotlb
    table.update(update(0x1000, 0x1000, ram.uva))
    table.update(update(0x9000, 0x1000, ram.uva + 0x1000))
    rings, buffers = IotlbSpace(table, ring=True), IotlbSpace(table)
    rings.view(0x1000, 64)
    buffers.views(0x9000, 64)
    buffers.end_request()
    rings.end_request()
    assert table.has(0x1000) and not table.has(0x9000)
    with pytest.raises(IotlbMiss):
        buffers.views(0x9000, 64)
    assert table.invalidate(0x1800, 1) is True  # the ring's entry went: the caller re-resolves rings
    assert not table.has(0x1000)


def test_a_refused_iova_fails_until_an_update_covers_it(iotlb) -> None:
    table, ram = iotlb
    table.refused(0x5000)
    with pytest.raises(GuestError, match="refused"):
        IotlbSpace(table).views(0x5000, 8)
    table.update(update(0x5000, 0x1000, ram.uva))
    assert IotlbSpace(table).views(0x5000, 8)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=48))
def test_fuzz_iotlb_decoder_takes_exactly_32_bytes(data: bytes) -> None:
    try:
        message = IotlbMessage.decode(data)
    except ProtocolError:
        assert len(data) != 32
        return
    assert len(data) == 32 and message.encode()[:26] == data[:26]  # the 6 padding bytes are ignored


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([IOTLB_UPDATE, IOTLB_INVALIDATE]), st.integers(0, 1 << 64), st.integers(0, 1 << 22),
                          st.integers(-(1 << 21), 1 << 21), st.integers(0, 255)), max_size=12),
       st.integers(0, 1 << 64), st.integers(0, 1 << 16))
def test_fuzz_updates_never_yield_a_view_outside_shared_memory(ops, probe: int, length: int) -> None:
    ram = GuestRam(RAM)
    try:
        table = DeviceIotlb(GuestMemory([MappedRegion(ram.region(), ram.data)]))
        for kind, iova, size, uva_offset, perm in ops:
            message = IotlbMessage(iova % (1 << 64), size, max(0, ram.uva + uva_offset), perm, kind)
            try:
                if kind == IOTLB_UPDATE:
                    table.update(message)
                else:
                    table.invalidate(message.iova, message.size)
            except GuestError:
                pass
        try:
            views = IotlbSpace(table).views(probe, length, write=bool(probe & 1))
        except (GuestError, IotlbMiss):
            return
        base = memoryview(ram.data).obj
        assert sum(len(v) for v in views) == length
        assert all(v.obj is base for v in views)  # every view is a slice of the shared mapping
    finally:
        ram.close()


# ---- a back-end behind the Python front-end's IOMMU -------------------------------------


@pytest.fixture
def disks(tmp_path):
    with two_blk_disks(tmp_path) as served:
        yield served


def iommu_guest(sock: str, *, invalidate: bool = True, page: int = 8192) -> VirtioGuest:
    guest = VirtioGuest.connect(sock, iommu=Iommu(page))
    assert guest.negotiate(ALL) & VIRTIO_F_ACCESS_PLATFORM
    guest.invalidate_on_unmap = invalidate
    guest.start_queue(0, 16)
    return guest


def pump(guest: VirtioGuest, done, timeout: float = 10.0) -> None:
    """Answer the back-end's misses until done() (a guest waiting for the device does this)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out pumping the back-end channel"
        if select.select([guest.backend], [], [], 0.05)[0]:
            guest.serve_backend()


def test_io_through_the_iommu_moves_data_both_ways(disks) -> None:
    socks, paths, servers = disks
    guest = iommu_guest(socks[0])
    data = bytes(range(256)) * 16
    assert blk_request(guest, 0, blk.T_OUT, 8, data=data)[0] == blk.S_OK
    status, read, _ = blk_request(guest, 0, blk.T_IN, 8, read=len(data), indirect=True)
    assert status == blk.S_OK and read == data
    with open(paths[0], "rb") as disk:
        disk.seek(8 * 512)
        assert disk.read(len(data)) == data
    assert guest.iommu.misses >= 4 and guest.iommu.refused == 0
    assert servers[socks[0]].connection.protocol.iotlb.misses == guest.iommu.misses
    guest.close()


def test_buffer_translations_serve_one_request_ring_translations_stay(disks) -> None:
    """Without invalidations (sun4u), every request misses again for its buffers, never for the rings."""
    socks, _, servers = disks
    guest = iommu_guest(socks[0], invalidate=False)
    blk_request(guest, 0, blk.T_IN, 0, read=512)
    protocol = servers[socks[0]].connection.protocol
    before = guest.iommu.misses
    for sector in range(1, 9):
        assert blk_request(guest, 0, blk.T_IN, sector, read=512)[0] == blk.S_OK
    per_request = (guest.iommu.misses - before) / 8
    assert per_request >= 3  # header, data and status buffers are fresh IOVAs each time
    ring_entries = [entry for entry in protocol.iotlb._entries.values() if entry.ring]
    assert ring_entries and len(protocol.iotlb) == len(ring_entries)  # no buffer translation outlived its request
    guest.close()


def test_invalidating_a_ring_page_rebinds_the_ring_and_io_goes_on(disks) -> None:
    socks, _, _ = disks
    guest = iommu_guest(socks[0])
    assert blk_request(guest, 0, blk.T_IN, 0, read=512)[0] == blk.S_OK
    desc = guest.queues[0].addresses().desc
    assert guest.send_iotlb(IotlbMessage(desc, 1, 0, 0, IOTLB_INVALIDATE)) == 0
    misses = guest.iommu.misses
    assert blk_request(guest, 0, blk.T_IN, 1, read=512)[0] == blk.S_OK
    assert guest.iommu.misses > misses
    guest.close()


def test_an_iova_the_iommu_refuses_breaks_only_that_device(disks) -> None:
    socks, _, _ = disks
    bad, good = iommu_guest(socks[0]), iommu_guest(socks[1])
    queue = bad.queues[0]
    header = bad.buffer(blk.REQUEST_HEADER.pack(blk.T_IN, 0, 0))
    status = bad.buffer(1)
    head = queue.add([header], [status])
    queue.write_descriptor(head, 0xDEAD_0000, 16, 1, queue._chains[head][0][1])  # IOVA never mapped
    bad.kick(0, force=True)
    pump(bad, lambda: bad.iommu.refused > 0)
    pump(bad, lambda: bad.status() & DeviceStatus.NEEDS_RESET)
    assert blk_request(good, 0, blk.T_IN, 0, read=512)[0] == blk.S_OK
    bad.close()
    good.close()


def test_bogus_iotlb_messages_get_an_error_ack_and_nothing_is_mapped(disks) -> None:
    socks, _, servers = disks
    guest = iommu_guest(socks[0])
    ram = guest.ram
    protocol = servers[socks[0]].connection.protocol
    kept = len(protocol.iotlb)
    for message in (IotlbMessage(0x1000, 0x1000, 0x10, IOTLB_RW, IOTLB_UPDATE),                 # outside guest memory
                    IotlbMessage(0x1000, 0x1000, ram.uva + ram.size - 0x800, IOTLB_WO, IOTLB_UPDATE),  # runs off the end
                    IotlbMessage(0x1000, 0, ram.uva, IOTLB_RW, IOTLB_UPDATE),                    # empty
                    IotlbMessage(0x1000, 0x1000, ram.uva, IOTLB_RW, 1),                          # a MISS is not for a back-end
                    IotlbMessage(0x1000, 0x1000, ram.uva, IOTLB_RW, 99)):
        assert guest.send_iotlb(message) != 0
    assert len(protocol.iotlb) == kept
    guest.frontend.send(Request.IOTLB_MSG, b"short", need_reply=True)
    assert guest.frontend.call_reply(Request.IOTLB_MSG) != bytes(8)
    assert blk_request(guest, 0, blk.T_IN, 0, read=512)[0] == blk.S_OK
    guest.close()


def test_iotlb_messages_without_access_platform_are_refused(disks) -> None:
    socks, _, _ = disks
    guest = VirtioGuest.connect(socks[0])
    assert not guest.negotiate(ALL) & VIRTIO_F_ACCESS_PLATFORM  # no IOMMU: guest-physical addresses
    assert guest.send_iotlb(IotlbMessage(0x1000, 0x1000, guest.ram.uva, IOTLB_RW, IOTLB_UPDATE)) != 0
    guest.close()


def test_a_front_end_vanishing_while_a_request_waits_for_a_miss(disks) -> None:
    socks, _, servers = disks
    gone = iommu_guest(socks[0])
    header = gone.buffer(blk.REQUEST_HEADER.pack(blk.T_IN, 0, 0))
    gone.queues[0].add([header], [gone.buffer(512), gone.buffer(1)])
    gone.kick(0)
    select.select([gone.backend], [], [], 5)  # the miss is on its way; nobody will answer it
    gone.close()
    deadline = time.monotonic() + 5
    while servers[socks[0]].connection is not None and not servers[socks[0]].connection.closed:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    guest = iommu_guest(socks[0])
    assert blk_request(guest, 0, blk.T_IN, 0, read=512)[0] == blk.S_OK
    guest.close()
