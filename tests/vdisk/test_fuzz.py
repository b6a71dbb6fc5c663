"""Hypothesis: every vDisk decoder on random bytes, and random descriptors against a vds.

Decoders may only refuse input with OSError (the errno becomes a descriptor
status); what they accept must re-encode to the bytes it came from, up to the
reserved fields, and decode again to the same value. The server fuzz drives a
VdsDevice through the in-process VIO loopback with descriptors a buggy or
hostile vdc could send, and checks the backing file against a model after each.
"""

from __future__ import annotations

import errno
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from backend.errors import BackendError
from backend.ldc.memory import PERM_RO, PERM_RW, TransportCookie
from backend.vdisk import labels
from backend.vdisk.client import VdcDevice
from backend.vdisk.devid import DeviceId, device_id_for
from backend.vdisk.engine import DiskEngine
from backend.vdisk.protocol import (
    DESC_PAYLOAD_MIN,
    SLICE_ABSOLUTE,
    DiskAttrs,
    DiskRequest,
    Op,
)
from backend.vdisk.scsi import VD_SCSI_HEADER_SIZE, VdScsi
from backend.vdisk.server import MAX_COOKIES, Export, VdsDevice
from backend.vio.loopback import connect, make_pair, pump

u8, u32, u64 = (st.integers(0, 2**n - 1) for n in (8, 32, 64))


# --- decoders --------------------------------------------------------------------------


def _with_small_fields(size: int, fmt: str = "", *offsets: int, limit: int = 16) -> st.SearchStrategy[bytes]:
    """Random bytes: any, or at least `size` with the count fields (`fmt`) at `offsets` often small.

    Short inputs and uniformly random lengths and counts almost never fit,
    so without this the decoders' success paths would go untested.
    """

    @st.composite
    def build(draw) -> bytes:
        data = bytearray(draw(st.one_of(st.binary(max_size=size), st.binary(min_size=size, max_size=size + 400))))
        for offset in offsets:
            if len(data) >= offset + struct.calcsize(fmt) and draw(st.sampled_from([True, True, True, False])):
                struct.pack_into(fmt, data, offset, draw(st.integers(0, limit)))
        return bytes(data)

    return build()


def _decoded(decode: Callable[[bytes], object], data: bytes) -> object | None:
    """The decoded value, or None when the decoder refused (with OSError: nothing else may escape)."""
    try:
        value = decode(data)
    except OSError:
        event("refused")
        return None
    event("decoded")
    return value


def _mask(data: bytes, *spans: tuple[int, int]) -> bytes:
    """`data` with the reserved byte ranges zeroed (the encoders write zeros there)."""
    out = bytearray(data)
    for start, end in spans:
        out[start:end] = bytes(len(out[start:end]))
    return bytes(out)


def _round_trip(decode: Callable[[bytes], object], data: bytes, *reserved: tuple[int, int]) -> object | None:
    """Decode; re-encode; the bytes agree up to `reserved` and decode to the same value."""
    value = _decoded(decode, data)
    if value is not None:
        encoded = value.encode()  # type: ignore[attr-defined]
        assert decode(encoded) == value
        assert encoded == _mask(data[: len(encoded)], *reserved)
    return value


@settings(max_examples=300)
@given(_with_small_fields(48))
def test_disk_attrs(data: bytes) -> None:
    _round_trip(DiskAttrs.decode, data, (3, 4), (36, 48))


@settings(max_examples=300)
@given(_with_small_fields(DESC_PAYLOAD_MIN, ">I", 32, limit=6), st.integers(0, 70))
def test_disk_request(data: bytes, max_cookies: int) -> None:
    request = _round_trip(lambda b: DiskRequest.decode(b, max_cookies), data, (10, 12), (36, 40))
    assert request is None or len(request.cookies) <= max_cookies  # type: ignore[attr-defined]


@settings(max_examples=300)
@given(_with_small_fields(8, ">I", 4))
def test_device_id(data: bytes) -> None:
    _round_trip(DeviceId.decode, data, (0, 2))


@settings(max_examples=200)
@given(st.one_of(st.binary(max_size=400), st.binary(min_size=labels.Vtoc.SIZE, max_size=labels.Vtoc.SIZE)))
def test_vtoc(data: bytes) -> None:
    # Text fields end at their first NUL and the partitions' reserved words are
    # ignored, so the bytes need not come back: the decoded value must.
    vtoc = _decoded(labels.Vtoc.decode, data)
    if vtoc is not None:
        assert labels.Vtoc.decode(vtoc.encode()) == vtoc  # type: ignore[attr-defined]


@settings(max_examples=200)
@given(st.one_of(st.binary(max_size=40), st.binary(min_size=labels.Geometry.SIZE, max_size=labels.Geometry.SIZE)))
def test_geometry(data: bytes) -> None:
    _round_trip(labels.Geometry.decode, data)


@settings(max_examples=300)
@given(_with_small_fields(16, ">Q", 8))
def test_efi_transfer(data: bytes) -> None:
    _round_trip(labels.EfiTransfer.decode, data)


@st.composite
def _scsi_buffers(draw) -> bytes:
    """Random buffers, often with lengths vds could accept (a CDB, one data direction, room for the areas)."""
    data = bytearray(draw(_with_small_fields(VD_SCSI_HEADER_SIZE, ">Q", 16, 24, 32, 40)))
    if len(data) < VD_SCSI_HEADER_SIZE or draw(st.booleans()):
        return bytes(data)
    cdb, sense, data_in, data_out = draw(st.integers(1, 16)), draw(st.integers(0, 24)), draw(st.integers(0, 24)), 0
    if draw(st.booleans()):
        data_in, data_out = data_out, data_in
    struct.pack_into(">4Q", data, 16, cdb, sense, data_in, data_out)
    total = VD_SCSI_HEADER_SIZE + sum((n + 7) & ~7 for n in (cdb, sense, data_in, data_out))
    data += draw(st.binary(min_size=total, max_size=total + 8))
    return bytes(data[: draw(st.sampled_from([total, len(data)]))])


@settings(max_examples=400)
@given(_scsi_buffers(), st.booleans())
def test_vd_scsi(data: bytes, exact: bool) -> None:
    request = _decoded(lambda b: VdScsi.decode(b, exact=exact), data)
    if not isinstance(request, VdScsi):
        return
    encoded = request.encode()
    assert VdScsi.decode(encoded, exact=True) == request
    assert encoded[:VD_SCSI_HEADER_SIZE] == data[:VD_SCSI_HEADER_SIZE]
    assert len(encoded) <= len(data) and (not exact or len(encoded) == len(data))
    # Each area's padding is not part of the value; the areas themselves are.
    _, sense, din, dout, _ = request.offsets()
    for offset, area in ((VD_SCSI_HEADER_SIZE, request.cdb), (sense, request.sense), (din, request.data_in), (dout, request.data_out)):
        assert data[offset : offset + len(area)] == area


# --- random descriptors against a server -----------------------------------------------

DISK = 1 << 20
BLOCK = 512
BUFFER = 256 << 10
#: Operations that may rewrite the disk besides BWRITE (labels, SCSI WRITE): not modelled.
OTHER_WRITERS = {Op.SET_VTOC, Op.SET_DISKGEOM, Op.SET_EFI, Op.SCSICMD}


class Server:
    """A vdc and a vds over the loopback (as test_vds.Harness), with a model of the backing file."""

    def __init__(self, directory: Path, inband: bool) -> None:
        path = directory / "disk.img"
        self.engine = DiskEngine(path, create_size=DISK)
        self.engine.write(0, bytes(range(256)) * (DISK // 256))
        self.model = bytearray(self.engine.read(0, DISK))
        self.client = VdcDevice(inband=inband)
        self.server = VdsDevice(Export(self.engine, device_id_for(str(path), directory / "state")))
        self.a, self.b = make_pair(self.client, self.server)
        connect(self.a, self.b)
        assert self.a.session.established
        self.segment = self.a.memory.allocate_segment(BUFFER)

    def close(self) -> None:
        self.engine.close()

    def label(self) -> None:
        """An SMI label with slices 0 (blocks 200..599), 1 (600..799) and the backup slice 2."""
        geometry = labels.default_geometry(DISK, BLOCK)
        assert geometry.blocks_per_cyl == 200
        vtoc = labels.default_vtoc(DISK, BLOCK, geometry)
        vtoc.partitions[0] = labels.VtocPartition(2, 0, 200, 400)
        vtoc.partitions[1] = labels.VtocPartition(3, 1, 600, 200)
        labels.write_smi(self.server.export.io, vtoc, geometry)
        self.model[:] = self.engine.read(0, DISK)

    def submit(self, payload: bytes) -> list[int]:
        """Send one raw descriptor payload, run until quiet; the statuses the client saw.

        The server sees a ring entry's whole payload area, which is fresh (zero)
        past what we wrote: the req_id it answers with is read the same way.
        """
        req_id = int.from_bytes(payload[:8].ljust(8, b"\0"), "big")
        results: list[int] = []
        pending = (req_id, lambda code, done: results.append(code), None)
        session = self.a.session
        if self.client.inband:
            self.client._pending[session.send_inband(payload)] = pending
        else:
            self.client._pending[session.submit(session.own_rings[0], payload)] = pending
        pump(self.a, self.b)
        return results

    def bwrite_effect(self, payload: bytes) -> tuple[DiskRequest | None, tuple[int, bytes] | None]:
        """The request the server will see, and where and what it may write if it is a BWRITE.

        The bytes come through the server's view of the client's memory before
        the request runs (the test checks the range, not the memory layer).
        None when the slice or the buffer does not exist: then it must fail.
        """
        seen = payload if self.client.inband else payload.ljust(DESC_PAYLOAD_MIN, b"\0")
        try:
            request = DiskRequest.decode(seen, MAX_COOKIES)
        except OSError:
            return None, None
        if request.operation != Op.BWRITE or request.size > BUFFER:
            return request, None
        base = 0
        if request.slice != SLICE_ABSOLUTE:
            try:
                base, _ = self.server._slice_window(request.slice)
            except OSError:
                return request, None
        data = bytearray(request.size)
        try:
            self.b.memory.peer_memory.copy_in(request.cookies, 0, data)
        except BackendError:  # cookies that name no readable memory
            return request, None
        return request, (base + request.offset * BLOCK, bytes(data))


@st.composite
def descriptors(draw, cookies: list[TransportCookie], length: int) -> bytes:
    """A descriptor payload: plausible, or well-formed with wild values, or raw bytes."""
    kind = draw(st.sampled_from(["plausible", "plausible", "wild", "wild", "raw"]))
    if kind == "raw":
        return draw(st.binary(max_size=DESC_PAYLOAD_MIN + 16 * 3))
    if kind == "plausible":  # what a vdc sends, near the ends of the disk and of its slices
        op = draw(st.sampled_from([Op.BREAD, Op.BWRITE, Op.BWRITE, Op.FLUSH]))
        slice_ = draw(st.sampled_from([SLICE_ABSOLUTE, 0, 1, 2]))
        size = draw(st.integers(0, length // BLOCK)) * BLOCK
        offset = draw(st.integers(0, DISK // BLOCK))
        return DiskRequest(draw(u64), op, slice_, 0, offset, size, cookies).encode()
    op = draw(st.integers(0, 0x20))
    slice_ = draw(st.one_of(st.just(SLICE_ABSOLUTE), st.integers(0, 8), u8))
    offset = draw(st.one_of(st.integers(0, DISK // BLOCK + 4), u64))
    size = draw(st.one_of(st.integers(0, 128).map(lambda n: n * BLOCK), st.integers(0, BUFFER + 1024), u64))
    junk = [TransportCookie(draw(u64), draw(u64)) for _ in range(draw(st.integers(0, 2)))]
    chosen = draw(st.sampled_from([
        cookies, cookies[:-1], cookies + junk, junk, [], junk + cookies, cookies[::-1],
        [TransportCookie(c.addr, c.size // 2) for c in cookies],
    ]))  # fmt: skip
    status = draw(st.sampled_from([0, draw(u32)]))
    return DiskRequest(draw(u64), op, slice_, status, offset, size, chosen).encode()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data(), st.booleans(), st.booleans())
def test_random_descriptors_keep_the_disk_consistent(data, inband: bool, labelled: bool) -> None:
    with tempfile.TemporaryDirectory() as directory:
        h = Server(Path(directory), inband)
        try:
            if labelled:
                h.label()
            _random_descriptors(h, data)
        finally:
            h.close()


def _random_descriptors(h: Server, data) -> None:
    for _ in range(data.draw(st.integers(1, 12), label="descriptors")):
        length = data.draw(st.sampled_from([BLOCK, 4096, 8192 + BLOCK, 64 << 10, BUFFER]), label="buffer")
        h.segment.view[:length] = data.draw(st.binary(min_size=length, max_size=length), label="buffer bytes")
        export = h.a.memory.export(h.segment, 0, length, data.draw(st.sampled_from([PERM_RW, PERM_RO])))
        payload = data.draw(descriptors(list(export.cookies), length), label="payload")
        request, effect = h.bwrite_effect(payload)

        results = h.submit(payload)  # must not raise
        h.a.memory.unmap(export)

        assert len(results) == 1, f"descriptor completed {len(results)} times"
        assert h.a.session.established, "the server reset the session"
        disk = h.engine.read(0, DISK)
        if request is not None:
            event(f"op {request.operation:#x} status {results[0]}")
        if request is not None and results[0] == 0 and request.operation == Op.BWRITE:
            assert effect is not None, f"{request} succeeded though its slice or buffer does not exist"
            start, written = effect
            h.model[start : start + len(written)] = written
        elif request is not None and results[0] == 0 and request.operation in OTHER_WRITERS:
            h.model[:] = disk
        _assert_same(disk, h.model)

    # The server still serves a plain read afterwards.
    export = h.a.memory.export(h.segment, 0, 4096, PERM_RW)
    assert h.submit(DiskRequest(999, Op.BREAD, SLICE_ABSOLUTE, 0, 8, 4096, list(export.cookies)).encode()) == [0]
    assert bytes(h.segment.view[:4096]) == h.model[8 * BLOCK : 8 * BLOCK + 4096]
    h.a.memory.unmap(export)


def _assert_same(disk: bytes, model: bytearray) -> None:
    if disk != model:
        differ = [i for i, (x, y) in enumerate(zip(disk, model, strict=True)) if x != y]
        raise AssertionError(f"backing file differs from the model in bytes {differ[0]}..{differ[-1]}")


def test_unknown_operation_completes_with_enotsup(tmp_path: Path) -> None:
    """The plain case the fuzz leans on: an operation number nobody defined."""
    h = Server(tmp_path, inband=False)
    try:
        assert h.submit(DiskRequest(5, 0x20, SLICE_ABSOLUTE, 0, 0, 0).encode()) == [errno.ENOTSUP]
    finally:
        h.close()
