"""The vDisk client (vdc): a VIO device class and an asyncio library on top.

`VdcDevice` is sans-I/O: it negotiates attributes, registers its ring (or
uses in-band descriptors) and turns completed descriptors into callbacks.
`VdcClient` gives programs a plain async API (read, write, flush, labels,
device id, access...) over any vds reachable through an LdcEndpoint, with
data buffers exported from its own shared memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
from collections.abc import AsyncIterator, Callable

from ..ldc.aio import LdcEndpoint
from ..ldc.memory import PERM_RW, Export, Segment
from ..vio.aio import VioEndpoint
from ..vio.constants import DevClass, DringOption, XferMode
from ..vio.device import Device, RingSpec
from ..vio.dring import OwnedRing
from ..vio.session import Session
from . import labels, scsi
from .protocol import (
    ACCESS,
    CAPACITY,
    SLICE_ABSOLUTE,
    VERSIONS,
    WCE,
    DiskAttrs,
    DiskRequest,
    Op,
    descriptor_size,
    from_wire_status,
)

MAX_COOKIES = 16
Callback = Callable[[int, DiskRequest], None]


class VdcDevice(Device):
    """The client side of a vDisk session."""

    dev_class = DevClass.DISK
    peer_classes = frozenset({DevClass.DISK_SERVER})
    versions = VERSIONS
    initiator = True
    sends_rdx = True
    expects_rdx = False

    def __init__(self, *, inband: bool = False, ring_size: int = 64, block_size: int = 512, max_xfer: int = 1 << 20) -> None:
        self.inband = inband
        self.ring_size = ring_size
        self.block_size = block_size
        self.max_xfer = max_xfer
        self.server: DiskAttrs | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[DiskRequest, Callback]] = {}  # ring index or in-band handle
        self._ring: OwnedRing | None = None  # our ring in this session (looked up once)
        self.on_ready: Callable[[], None] | None = None

    def attr_payload(self, version: tuple[int, int]) -> bytes:
        mode = XferMode.DESC if self.inband else XferMode.DRING
        return DiskAttrs(mode, vdisk_block_size=self.block_size, max_xfer_size=self.max_xfer // self.block_size).encode()

    def on_attr_ack(self, payload: bytes, version: tuple[int, int]) -> bool:
        attrs = DiskAttrs.decode(payload)
        if not attrs.vdisk_block_size or attrs.vdisk_block_size > self.block_size or self.block_size % attrs.vdisk_block_size:
            return False  # we cannot address blocks larger than we asked for
        self.server = attrs
        return True

    def rings(self, version: tuple[int, int]) -> list[RingSpec]:
        if self.inband:
            return []
        # Open ranges with an ACK per descriptor: requests made together reach the
        # server in one walk, and each completes as soon as it is done.
        spec = RingSpec(self.ring_size, descriptor_size(MAX_COOKIES), DringOption.TX | DringOption.RX, ack_each=True, open_ended=True)
        return [spec]

    def on_established(self, session: Session) -> None:
        self._ring = None  # a new session has a new ring
        if self.on_ready is not None:
            self.on_ready()

    def on_reset(self, reason: str) -> None:
        self._ring = None
        pending, self._pending = self._pending, {}
        for request, callback in pending.values():
            callback(errno.ECONNRESET, request)

    def request(self, session: Session, request: DiskRequest, callback: Callback) -> None:
        """Send one request; `callback(errno, request)` runs when the server finished it."""
        request.req_id = next(self._ids)
        if self.inband:
            handle = session.send_inband(request.encode())
            self._pending[handle] = (request, callback)
        else:
            if self._ring is None:
                self._ring = session.own_rings[0]
            index = session.submit(self._ring, request.encode())
            self._pending[index] = (request, callback)

    def on_descriptor_done(self, ring: int, index: int, payload: bytes) -> None:
        self._finish(index, payload)

    def on_inband_done(self, handle: int, payload: bytes, ok: bool) -> None:
        self._finish(handle, payload)

    def _finish(self, key: int, payload: bytes) -> None:
        entry = self._pending.pop(key, None)
        if entry is None:
            return
        request, callback = entry
        try:
            done = DiskRequest.decode(payload, MAX_COOKIES)
        except OSError:
            callback(errno.EIO, request)
            return
        if done.req_id != request.req_id:
            callback(errno.EIO, request)
            return
        callback(from_wire_status(done.status), done)


class VdcClient:
    """An asyncio vDisk client over one LDC connection to a vds."""

    def __init__(self, ldc: LdcEndpoint, *, inband: bool = False) -> None:
        self.device = VdcDevice(inband=inband)
        self.endpoint = VioEndpoint(ldc, self.device)
        self.ldc = ldc
        # One buffer slot of the maximum transfer per request in flight; a memfd
        # only takes memory for the pages really touched.
        self._slot_size = self.device.max_xfer
        self._pool: Segment | None = None
        self._free_slots = list(range(self.device.ring_size))
        self._slots: asyncio.Semaphore | None = None

    @classmethod
    async def connect(cls, path: str, **kwargs: object) -> VdcClient:
        from ..ldc.constants import Mode

        client = cls(await LdcEndpoint.connect(path, Mode.UNRELIABLE), **kwargs)  # type: ignore[arg-type]
        await client.open()
        return client

    async def open(self, timeout: float = 10.0) -> None:
        await self.endpoint.open(timeout)
        self._pool = self.ldc.allocate_segment(self._slot_size * self.device.ring_size)
        self._slots = asyncio.Semaphore(self.device.ring_size)

    @property
    def attrs(self) -> DiskAttrs:
        assert self.device.server is not None
        return self.device.server

    @property
    def block_size(self) -> int:
        return self.attrs.vdisk_block_size

    @property
    def size_bytes(self) -> int:
        return self.attrs.vdisk_size * self.block_size

    def close(self) -> None:
        self.ldc.close()

    # ---- operations --------------------------------------------------------------------

    async def read(self, offset: int, length: int, *, slice_: int = SLICE_ABSOLUTE) -> bytes:
        self._aligned(offset, length)
        data, _ = await self.call(Op.BREAD, offset // self.block_size, length, slice_=slice_, read=length)
        return data

    async def write(self, offset: int, data: bytes, *, slice_: int = SLICE_ABSOLUTE) -> None:
        self._aligned(offset, len(data))
        await self.call(Op.BWRITE, offset // self.block_size, len(data), slice_=slice_, write=data)

    async def flush(self) -> None:
        await self.call(Op.FLUSH)

    async def get_wce(self) -> bool:
        data, _ = await self.call(Op.GET_WCE, size=WCE.size, read=WCE.size)
        return bool(WCE.unpack(data)[0])

    async def set_wce(self, enabled: bool) -> None:
        await self.call(Op.SET_WCE, size=WCE.size, write=WCE.pack(int(enabled)))

    async def get_devid(self) -> bytes:
        data, _ = await self.call(Op.GET_DEVID, size=64, read=64)
        return data

    async def get_capacity(self) -> tuple[int, int]:
        data, _ = await self.call(Op.GET_CAPACITY, size=CAPACITY.size, read=CAPACITY.size)
        return CAPACITY.unpack(data)

    async def get_access(self) -> bool:
        data, _ = await self.call(Op.GET_ACCESS, size=ACCESS.size, read=ACCESS.size)
        return bool(ACCESS.unpack(data)[0])

    async def set_access(self, flags: int) -> None:
        await self.call(Op.SET_ACCESS, size=ACCESS.size, write=ACCESS.pack(flags))

    async def reset(self) -> None:
        await self.call(Op.RESET)

    async def get_vtoc(self) -> labels.Vtoc:
        data, _ = await self.call(Op.GET_VTOC, size=labels.VTOC_SIZE, read=labels.VTOC_SIZE)
        return labels.Vtoc.decode(data)

    async def set_vtoc(self, vtoc: labels.Vtoc) -> None:
        await self.call(Op.SET_VTOC, size=labels.VTOC_SIZE, write=vtoc.encode())

    async def get_geometry(self) -> labels.Geometry:
        data, _ = await self.call(Op.GET_DISKGEOM, size=labels.GEOMETRY_SIZE, read=labels.GEOMETRY_SIZE)
        return labels.Geometry.decode(data)

    async def set_geometry(self, geometry: labels.Geometry) -> None:
        await self.call(Op.SET_DISKGEOM, size=labels.GEOMETRY_SIZE, write=geometry.encode())

    async def get_efi(self, lba: int, length: int) -> bytes:
        request = labels.EfiTransfer(lba, length, bytes(length)).encode()
        data, _ = await self.call(Op.GET_EFI, size=len(request), read=len(request), write=request)
        return labels.EfiTransfer.decode(data).data[:length]

    async def set_efi(self, lba: int, data: bytes) -> None:
        request = labels.EfiTransfer(lba, len(data), data).encode()
        await self.call(Op.SET_EFI, size=len(request), write=request)

    async def scsi(self, request: scsi.VdScsi) -> scsi.VdScsi:
        """One SCSI command through VD_OP_SCSICMD; the reply keeps the request's layout."""
        encoded = request.encode()
        data, _ = await self.call(Op.SCSICMD, size=len(encoded), read=len(encoded), write=encoded)
        return scsi.VdScsi.decode_reply(data, request)

    async def call(
        self, op: int, offset: int = 0, size: int = 0, *, slice_: int = SLICE_ABSOLUTE,
        read: int = 0, write: bytes | None = None,
    ) -> tuple[bytes, DiskRequest]:
        """One request; raises OSError with the server's status when it is not 0."""
        slot = await self._take_slot(max(read, len(write) if write else 0))
        try:
            data, done = await self._run(slot, op, offset, size, slice_, read, write)
            return bytes(data), done
        finally:
            self._give_back(slot)

    @contextlib.asynccontextmanager
    async def read_view(self, offset: int, length: int, *, slice_: int = SLICE_ABSOLUTE) -> AsyncIterator[memoryview]:
        """Read `length` bytes at `offset` and lend the buffer the server filled.

        No copy out of the shared buffer (a 1 MiB copy out of shared pages costs
        about as much as the server's read into them): the view is valid inside
        the `async with` block only, then released and its slot reused.
        """
        self._aligned(offset, length)
        slot = await self._take_slot(length)
        try:
            data, _ = await self._run(slot, Op.BREAD, offset // self.block_size, length, slice_, length, None)
            try:
                yield data
            finally:
                data.release()
        finally:
            self._give_back(slot)

    async def _take_slot(self, length: int) -> tuple[int, Export | None]:
        """A buffer slot for one request (waiting while all are in use), its first `length` bytes exported."""
        assert self._slots is not None and self._pool is not None
        if length > self._slot_size:
            raise ValueError(f"a {length}-byte transfer is larger than the {self._slot_size}-byte maximum")
        await self._slots.acquire()
        index = self._free_slots.pop()
        try:
            return index, (self.ldc.export(self._pool, index * self._slot_size, length, PERM_RW) if length else None)
        except BaseException:
            self._free_slots.append(index)
            self._slots.release()
            raise

    def _give_back(self, slot: tuple[int, Export | None]) -> None:
        assert self._slots is not None
        index, export = slot
        if export is not None:
            self.ldc.unmap(export)
        self._free_slots.append(index)
        self._slots.release()

    async def _run(
        self, slot: tuple[int, Export | None], op: int, offset: int, size: int, slice_: int, read: int, write: bytes | None,
    ) -> tuple[memoryview, DiskRequest]:
        """Send one request through `slot`; a view of the `read` bytes the server wrote, and its descriptor."""
        assert self._pool is not None
        index, export = slot
        base = index * self._slot_size
        view = self._pool.view
        if write:
            view[base : base + len(write)] = write
        request = DiskRequest(0, op, slice_, 0, offset, size, list(export.cookies) if export else [])
        future: asyncio.Future[tuple[int, DiskRequest]] = asyncio.get_running_loop().create_future()

        def finished(code: int, done: DiskRequest) -> None:
            if not future.done():
                future.set_result((code, done))

        self.device.request(self.endpoint.session, request, finished)
        self.endpoint.pump_soon()
        code, done = await future
        if code:
            raise OSError(code, f"vDisk {Op(op).name} failed: {errno.errorcode.get(code, code)}")
        return view[base : base + read], done

    def _aligned(self, offset: int, length: int) -> None:
        if offset % self.block_size or length % self.block_size:
            raise ValueError(f"offset and length must be multiples of the {self.block_size}-byte block")
