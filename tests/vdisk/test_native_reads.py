"""The vds's C walk step (backend/native/vdisk.c): same results as the Python path, and safe on hostile rings."""

from __future__ import annotations

import errno
import os
import random

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from backend.ldc.memory import PERM_RO, PERM_RW, PeerMemory, Perm, TransportCookie
from backend.native import native
from backend.vdisk.devid import device_id_for
from backend.vdisk.engine import DiskEngine
from backend.vdisk.protocol import DESC_HEAD, SLICE_ABSOLUTE, DiskRequest, Op, descriptor_size
from backend.vdisk.server import Export
from backend.vio.loopback import pump
from backend.vio.session import SessionReset

from .test_vds import Harness

MiB = 1 << 20
DISK = 8 * MiB


class CountingEngine(DiskEngine):
    """Counts the reads the C step serves (its override also lets the C step run)."""

    served = 0

    def reads_served(self, count: int, nbytes: int) -> None:
        self.served += count


@pytest.fixture
def disk_path(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(random.Random(5).randbytes(DISK))
    return path


def _export(path, tmp_path) -> Export:
    return Export(CountingEngine(path), device_id_for(str(path), tmp_path / "state"))


# (op, block, size, slice, read bytes, perms, cookies): good and bad requests alike.
CASES = [
    (Op.BREAD, 0, 4096, SLICE_ABSOLUTE, 4096, PERM_RW, None),
    (Op.BREAD, 123, 512, SLICE_ABSOLUTE, 512, PERM_RW, None),
    (Op.BREAD, DISK // 512 - 1, 512, SLICE_ABSOLUTE, 512, PERM_RW, None),  # the last block
    (Op.BREAD, 8, MiB, SLICE_ABSOLUTE, MiB, PERM_RW, None),  # the largest transfer
    (Op.BREAD, DISK // 512, 512, SLICE_ABSOLUTE, 512, PERM_RW, None),  # past the end
    (Op.BREAD, DISK // 512 - 1, 1024, SLICE_ABSOLUTE, 1024, PERM_RW, None),  # runs past the end
    (Op.BREAD, (1 << 64) - 1, 512, SLICE_ABSOLUTE, 512, PERM_RW, None),  # an offset that overflows
    (Op.BREAD, 0, 100, SLICE_ABSOLUTE, 100, PERM_RW, None),  # not whole blocks
    (Op.BREAD, 0, 2 * MiB, SLICE_ABSOLUTE, 3 * MiB, PERM_RW, None),  # above the maximum transfer
    (Op.BREAD, 0, 512, 3, 512, PERM_RW, None),  # a slice the disk has no label for
    (Op.BREAD, 0, 512, SLICE_ABSOLUTE, 512, Perm.COPY_READ | Perm.COPY_WRITE, None),  # copy only: a bounce buffer
    (Op.BREAD, 0, 512, SLICE_ABSOLUTE, 512, PERM_RO, None),  # the client's buffer is read-only
    (Op.BREAD, 0, 512, SLICE_ABSOLUTE, 0, PERM_RW, [TransportCookie(0xDEAD << 13, 512)]),  # no such entry
    (Op.BREAD, 0, 4096, SLICE_ABSOLUTE, 512, PERM_RW, None),  # cookies cover less than asked
    (Op.BREAD, 0, 0, SLICE_ABSOLUTE, 0, PERM_RW, []),  # nothing at all
    (Op.BWRITE, 0, 512, SLICE_ABSOLUTE, 512, PERM_RW, None),  # not a read: Python's
    (Op.FLUSH, 0, 0, SLICE_ABSOLUTE, 0, PERM_RW, []),
]


def _run_cases(h: Harness) -> list[tuple[int, bytes]]:
    results = []
    for op, block, size, slice_, read, perms, cookies in CASES:
        results.append(h.call(op, block, size, slice_=slice_, read=read, perms=perms, cookies=cookies,
                              data=bytes(512) if op == Op.BWRITE else b""))
    return results


def test_c_step_answers_as_the_python_path(disk_path, tmp_path) -> None:
    copy = tmp_path / "copy.img"
    copy.write_bytes(disk_path.read_bytes())  # the cases write too: each run has its own disk
    with_c = Harness(_export(disk_path, tmp_path))
    fast = _run_cases(with_c)
    served = with_c.server.export.engine.served
    python = Harness(_export(copy, tmp_path))
    python.server.export.engine.nowait_reads = False  # every request through the Python device
    slow = _run_cases(python)
    assert fast == slow
    assert [code for code, _ in fast][:4] == [0, 0, 0, 0] and errno.EINVAL in [code for code, _ in fast]
    assert served == 4 and python.server.export.engine.served == 0  # the four good plain reads went through C


def test_c_step_serves_a_burst_and_acks_what_asks(disk_path, tmp_path) -> None:
    h = Harness(_export(disk_path, tmp_path))
    engine = h.server.export.engine
    ring = h.a.session.own_rings[0]
    exports, expected = [], []
    for n in range(20):
        export = h.a.memory.export(h.segment, n * 4096, 4096, PERM_RW)
        exports.append(export)
        expected.append(engine.read((n * 7) * 4096, 4096))
    payloads = [DiskRequest(n + 1, Op.BREAD, SLICE_ABSOLUTE, 0, n * 7 * 8, 4096, list(e.cookies)).encode()
                for n, e in enumerate(exports)]
    done: list[tuple[int, int]] = []
    h.client.on_descriptor_done = lambda ring_id, index, payload: done.append((index, DESC_HEAD.unpack_from(payload)[3]))
    h.a.session.submit_many(ring, payloads, ack_every=8)
    pump(h.a, h.b)
    assert sorted(done) == [(n, 0) for n in range(20)] and engine.served == 20
    assert [bytes(h.segment.view[n * 4096 : (n + 1) * 4096]) for n in range(20)] == expected


# ---- the C entry point itself, on hostile rings ---------------------------------------------

COUNT = 8
SIZE = descriptor_size(4)
PAGE = 8192


def _peer(overrides: list[tuple[int, int]]) -> tuple[PeerMemory, memoryview]:
    """A table mapping entry i to page i of a 16-page segment (read/write), then the hostile overrides."""
    table = bytearray(64 * 8)
    for index in range(16):
        table[index * 8 : index * 8 + 8] = ((1 << 36) | (index << 13) | int(PERM_RW)).to_bytes(8, "big")
    for index, entry in overrides:
        table[index * 8 : index * 8 + 8] = entry.to_bytes(8, "big")
    segment = memoryview(bytearray(16 * PAGE))
    return PeerMemory(table, {1: segment}), segment


_ENTRY = st.tuples(st.integers(0, 63), st.one_of(
    st.builds(lambda page, perms, code: (1 << 36) | (page << 13) | perms | code,
              st.integers(0, 17), st.sampled_from([int(PERM_RW), int(PERM_RO), 0]), st.integers(0, 1)),
    st.integers(0, (1 << 64) - 1),
))


def _descriptor(state: int, ack: int, op: int, slice_: int, block: int, size: int, ncookies: int,
                cookies: list[tuple[int, int]]) -> bytes:
    encoded = b"".join(a.to_bytes(8, "big") + n.to_bytes(8, "big") for a, n in cookies)
    return (bytes((state, ack)) + bytes(6) + DESC_HEAD.pack(7, op, slice_, 0x55, block, size, ncookies) + encoded).ljust(SIZE, b"\0")[:SIZE]


# Plausible reads (most of them valid) and anything at all.
_PLAUSIBLE = st.builds(
    lambda ack, block, pages, page, offset: _descriptor(2, ack, Op.BREAD, SLICE_ABSOLUTE, block, pages * 512, 1,
                                                        [((page << 13) | offset, pages * 512)]),
    st.integers(0, 1), st.integers(0, DISK // 512 - 16), st.integers(1, 16), st.integers(0, 15), st.sampled_from([0, 512, 8000]),
)
_HOSTILE = st.builds(
    _descriptor,
    st.sampled_from([2, 2, 1, 3, 4, 0]), st.integers(0, 255), st.sampled_from([1, 1, 2, 3, 0x30]),
    st.sampled_from([0xFF, 0xFF, 0, 7]), st.one_of(st.integers(0, DISK // 512 + 2), st.integers(0, (1 << 64) - 1)),
    st.sampled_from([512, 4096, 8192, 100, 0, MiB, 2 * MiB, (1 << 64) - 1]), st.integers(0, 6),
    st.lists(st.tuples(st.integers(0, 20 << 13), st.sampled_from([512, 4096, 8192, 16384, 0, (1 << 64) - 1])), max_size=4),
)
_DESCRIPTOR = st.one_of(_PLAUSIBLE, _HOSTILE, st.binary(max_size=SIZE).map(lambda b: b.ljust(SIZE, b"\0")))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    entries=st.lists(_ENTRY, max_size=6),
    descriptors=st.lists(_DESCRIPTOR, min_size=COUNT, max_size=COUNT),
    first=st.integers(0, COUNT - 1),
    limit=st.integers(0, COUNT + 3),
)
def test_hostile_rings(disk_path, entries, descriptors, first, limit) -> None:
    ffi, lib = native()
    peer, segment = _peer(entries)
    ring = bytearray(b"".join(descriptors))
    before = bytes(ring)
    fd = os.open(disk_path, os.O_RDONLY)
    try:
        disk = ffi.new("struct vdisk_disk *", {"fd": fd, "start": 0, "length": DISK, "block_size": 512, "max_xfer": MiB})
        acks = ffi.new("uint32_t[]", max(1, limit))
        step = ffi.new("struct vdisk_step *")
        assert lib.vdisk_serve_reads(ffi.from_buffer(ring), len(ring), COUNT, SIZE, first, limit, peer.native_view(), disk, acks, step) == 0
    finally:
        os.close(fd)
    served = step.served
    event(f"served {min(served, 2)}+, stop {step.stop}")
    assert served <= min(limit, COUNT - first) and step.stop != lib.VDISK_STOP_CHANGED
    data = disk_path.read_bytes()
    base = int(ffi.cast("uintptr_t", ffi.from_buffer(segment)))
    written: list[tuple[list[int], bytes]] = []  # per served entry: the segment bytes it filled, in order, and what it read
    for index in range(first, first + served):
        entry, old = ring[index * SIZE : (index + 1) * SIZE], before[index * SIZE : (index + 1) * SIZE]
        assert old[0] == 2 and entry[0] == 4  # READY -> DONE
        assert entry[1:] == old[1:8] + old[8:20] + bytes(4) + old[24:]  # status 0, nothing else changed
        request = DESC_HEAD.unpack_from(old, 8)
        assert request[1] == Op.BREAD and request[2] == SLICE_ABSOLUTE
        cookies = [TransportCookie(int.from_bytes(old[48 + 16 * i : 56 + 16 * i], "big"),
                                   int.from_bytes(old[56 + 16 * i : 64 + 16 * i], "big")) for i in range(request[6])]
        views = peer.resolve(cookies, 0, request[5], int(Perm.READ | Perm.WRITE))  # Python accepts what C served
        where: list[int] = []
        for view in views:
            start = int(ffi.cast("uintptr_t", ffi.from_buffer(view))) - base
            where.extend(range(start, start + len(view)))
        written.append((where, data[request[4] * 512 : request[4] * 512 + request[5]]))
    for position, (where, expected) in enumerate(written):
        if not any(set(where) & set(later) for later, _ in written[position + 1 :]):  # not overwritten later
            assert bytes(segment[i] for i in where) == expected
    assert list(acks[0 : step.nacks]) == [i for i in range(first, first + served) if before[i * SIZE + 1] & 1]
    assert ring[: first * SIZE] == before[: first * SIZE]
    assert ring[(first + served) * SIZE :] == before[(first + served) * SIZE :]  # the rest untouched (left READY)


def test_arguments_that_are_no_ring_touch_nothing() -> None:
    ffi, lib = native()
    peer, _ = _peer([])
    ring = bytearray(COUNT * SIZE)
    disk = ffi.new("struct vdisk_disk *", {"fd": -1, "start": 0, "length": DISK, "block_size": 512, "max_xfer": MiB})
    acks = ffi.new("uint32_t[]", 4)
    step = ffi.new("struct vdisk_step *")
    for count, size, first in [(COUNT + 1, SIZE, 0), (COUNT, 16, 0), (COUNT, SIZE, COUNT)]:
        assert lib.vdisk_serve_reads(ffi.from_buffer(ring), len(ring), count, size, first, 4, peer.native_view(), disk, acks, step) == -1
    assert ring == bytearray(COUNT * SIZE)


def test_a_client_that_changes_an_entry_mid_read_resets_the_session(disk_path, tmp_path) -> None:
    """The read lands on the entry's own state byte (its cookie names the ring): the
    step sees the entry no longer ACCEPTED and the session resets, as for any entry
    changed behind the processor's back."""
    with open(disk_path, "r+b") as f:
        f.write(bytes((1,)) * 512)  # block 0 reads as FREE state bytes
    h = Harness(_export(disk_path, tmp_path))
    ring = h.a.session.own_rings[0]
    ring_cookie = h.a.session._own_exports[0][0].cookies[0]
    assert ring.prod == 0  # the request goes into entry 0, where the ring's memory starts
    payload = DiskRequest(1, Op.BREAD, SLICE_ABSOLUTE, 0, 0, 512, [TransportCookie(ring_cookie.addr, 512)]).encode()
    h.a.session.submit(ring, payload)
    pump(h.a, h.b)
    resets = [e for e in h.b.session.take_events() if isinstance(e, SessionReset)]
    assert any("changed state while we served it" in e.reason for e in resets)
