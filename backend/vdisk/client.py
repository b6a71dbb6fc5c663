"""The vDisk client (vdc): a VIO device class and an asyncio library on top.

`VdcDevice` is sans-I/O: it negotiates attributes, registers its ring (or
uses in-band descriptors) and turns completed descriptors into callbacks.
`VdcClient` gives programs a plain async API (read, write, flush, labels,
device id, access...) over any vds reachable through an LdcEndpoint, with
data buffers exported from its own shared memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import errno
import functools
import itertools
from collections.abc import AsyncIterator, Callable, Coroutine

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
    DESC_DONE,
    DESC_HEAD,
    DESC_ONE_COOKIE,
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
#: Our vdc asks for an ACK on the last descriptor of a burst (and on every
#: 32nd of a longer one): one ACK message completes the whole burst, and the
#: next burst goes out with one kick. Smaller groups (8, 16) pipelined more but
#: cost more CPU per request in wake-ups on both sides (docs/performance-vdisk.md).
ACK_EVERY = 32
#: Page size code of the pre-exported buffer slots (64 KiB pages: 16 map-table
#: entries per 1 MiB slot, so 63 slots fit a 4096-entry table beside the ring).
SLOT_PAGE_CODE = 1
# glibc mallopt parameters (malloc.h) and the values read() needs (see _keep_freed_buffers).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 4 << 20
_TRIM_THRESHOLD = 128 << 20
#: `callback(errno, request)`: the request with its status set, or None for one
#: queued without a DiskRequest (`VdcDevice.queue_transfer`).
Callback = Callable[[int, DiskRequest | None], None]
#: What the device remembers of a request until it is done: its req_id, callback and request.
Pending = tuple[int, Callback, DiskRequest | None]


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
        self._pending: dict[int, Pending] = {}  # ring index or in-band handle
        # Made, not yet on the ring: the payloads and, in the same order, what to remember.
        self._queued_payloads: list[bytes] = []
        self._queued: list[Pending] = []
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
        queued, self._queued, self._queued_payloads = self._queued, [], []
        for _, callback, request in [*pending.values(), *queued]:
            callback(errno.ECONNRESET, request)

    def request(self, session: Session, request: DiskRequest, callback: Callback) -> None:
        """Send one request; `callback(errno, request)` runs when the server finished it."""
        self.queue(request, callback)
        self.submit_queued(session)

    def queue(self, request: DiskRequest, callback: Callback) -> None:
        """Hold a request for the next `submit_queued` (requests made together leave as one burst)."""
        request.req_id = next(self._ids)
        self._queued_payloads.append(request.encode())
        self._queued.append((request.req_id, callback, request))

    def queue_transfer(self, op: int, slice_: int, offset: int, size: int, addr: int, length: int,
                       callback: Callback) -> None:
        """`queue` for a request moving `length` bytes through one cookie at `addr` (none
        when `length` is 0), without a DiskRequest: the client's per-request path, where
        building and encoding one object per request was a measurable part of the cost.
        The callback gets None for the request."""
        req_id = next(self._ids)
        if length:
            payload = DESC_ONE_COOKIE.pack(req_id, op, slice_, 0, offset, size, 1, addr, length)
        else:
            payload = DESC_HEAD.pack(req_id, op, slice_, 0, offset, size, 0)
        self._queued_payloads.append(payload)
        self._queued.append((req_id, callback, None))

    def submit_queued(self, session: Session) -> None:
        """Put every queued request on the ring (or in-band) and kick the server once."""
        queued, payloads = self._queued, self._queued_payloads
        if not queued:
            return
        self._queued, self._queued_payloads = [], []
        if not session.established:
            for _, callback, request in queued:
                callback(errno.ENOTCONN, request)
            return
        if self.inband:
            for payload, entry in zip(payloads, queued):
                self._pending[session.send_inband(payload)] = entry
            return
        if self._ring is None:
            self._ring = session.own_rings[0]
        indices = session.submit_many(self._ring, payloads, ack_every=ACK_EVERY)
        self._pending.update(zip(indices, queued))

    def on_inband_done(self, handle: int, payload: bytes, ok: bool) -> None:
        self.on_descriptor_done(0, handle, payload)

    def on_descriptor_done(self, ring: int, key: int, payload: bytes) -> None:
        """The server finished `key` (ring index or in-band handle): the callback gets
        its status (run once per request, so no second call layer under it)."""
        entry = self._pending.pop(key, None)
        if entry is None:
            return
        req_id, callback, request = entry
        if len(payload) < DESC_DONE.size:
            callback(errno.EIO, request)
            return
        done_id, status = DESC_DONE.unpack_from(payload)
        if done_id != req_id:
            callback(errno.EIO, request)
            return
        if request is not None:
            request.status = status
        callback(from_wire_status(status) if status else 0, request)


class VdcClient:
    """An asyncio vDisk client over one LDC connection to a vds."""

    def __init__(self, ldc: LdcEndpoint, *, inband: bool = False) -> None:
        self.device = VdcDevice(inband=inband)
        self.device.on_ready = self._export_slots
        self.endpoint = VioEndpoint(ldc, self.device)
        self.ldc = ldc
        # One buffer slot of the maximum transfer per request in flight (one ring
        # entry always stays free); a memfd only takes memory for the pages touched.
        self._slot_size = self.device.max_xfer
        self._slot_count = self.device.ring_size - 1
        self._pool: Segment | None = None
        self._free_slots = list(range(self._slot_count))
        self._slot_waiters: collections.deque[asyncio.Future[int]] = collections.deque()
        self._slot_exports: list[Export] = []
        self._slot_addrs: list[int] = []  # each slot's cookie address
        self._block = 0  # the server's block size, once attributes are agreed
        self._submit_scheduled = False
        self._loop = asyncio.get_running_loop()  # looked up once: each lookup is a getpid() call

    @classmethod
    async def connect(cls, path: str, **kwargs: object) -> VdcClient:
        from ..ldc.constants import Mode

        client = cls(await LdcEndpoint.connect(path, Mode.UNRELIABLE), **kwargs)  # type: ignore[arg-type]
        await client.open()
        return client

    async def open(self, timeout: float = 10.0) -> None:
        _keep_freed_buffers()
        await self.endpoint.open(timeout)

    def _export_slots(self) -> None:
        """Export every buffer slot once per session (a reset revokes them all).

        Exporting per request cost a map-table update and a revocation each;
        the server is trusted with the slots for the session instead, and a
        request's cookie names only the bytes it moves.
        """
        if self._pool is None:
            self._pool = self.ldc.allocate_segment(self._slot_size * self._slot_count)
        for export in self._slot_exports:
            self.ldc.unmap(export)  # nothing if the reset already revoked them
        self._slot_exports = [
            self.ldc.export(self._pool, index * self._slot_size, self._slot_size, PERM_RW, SLOT_PAGE_CODE)
            for index in range(self._slot_count)
        ]
        self._slot_addrs = [export.cookies[0].addr for export in self._slot_exports]
        self._block = self.attrs.vdisk_block_size

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

    def read(self, offset: int, length: int, *, slice_: int = SLICE_ABSOLUTE) -> Coroutine[None, None, bytes]:
        """`await read(...)`: the bytes. A plain function handing back `call`'s coroutine,
        so each resumption of a small read runs one coroutine frame, not two; a bad
        offset or length raises at the call."""
        self._aligned(offset, length)
        return self.call(Op.BREAD, offset // self._block, length, slice_=slice_, read=length)

    async def write(self, offset: int, data: bytes, *, slice_: int = SLICE_ABSOLUTE) -> None:
        self._aligned(offset, len(data))
        await self.call(Op.BWRITE, offset // self._block, len(data), slice_=slice_, write=data)

    async def flush(self) -> None:
        await self.call(Op.FLUSH)

    async def get_wce(self) -> bool:
        data = await self.call(Op.GET_WCE, size=WCE.size, read=WCE.size)
        return bool(WCE.unpack(data)[0])

    async def set_wce(self, enabled: bool) -> None:
        await self.call(Op.SET_WCE, size=WCE.size, write=WCE.pack(int(enabled)))

    async def get_devid(self) -> bytes:
        data = await self.call(Op.GET_DEVID, size=64, read=64)
        return data

    async def get_capacity(self) -> tuple[int, int]:
        data = await self.call(Op.GET_CAPACITY, size=CAPACITY.size, read=CAPACITY.size)
        return CAPACITY.unpack(data)

    async def get_access(self) -> bool:
        data = await self.call(Op.GET_ACCESS, size=ACCESS.size, read=ACCESS.size)
        return bool(ACCESS.unpack(data)[0])

    async def set_access(self, flags: int) -> None:
        await self.call(Op.SET_ACCESS, size=ACCESS.size, write=ACCESS.pack(flags))

    async def reset(self) -> None:
        await self.call(Op.RESET)

    async def get_vtoc(self) -> labels.Vtoc:
        data = await self.call(Op.GET_VTOC, size=labels.VTOC_SIZE, read=labels.VTOC_SIZE)
        return labels.Vtoc.decode(data)

    async def set_vtoc(self, vtoc: labels.Vtoc) -> None:
        await self.call(Op.SET_VTOC, size=labels.VTOC_SIZE, write=vtoc.encode())

    async def get_geometry(self) -> labels.Geometry:
        data = await self.call(Op.GET_DISKGEOM, size=labels.GEOMETRY_SIZE, read=labels.GEOMETRY_SIZE)
        return labels.Geometry.decode(data)

    async def set_geometry(self, geometry: labels.Geometry) -> None:
        await self.call(Op.SET_DISKGEOM, size=labels.GEOMETRY_SIZE, write=geometry.encode())

    async def get_efi(self, lba: int, length: int) -> bytes:
        request = labels.EfiTransfer(lba, length, bytes(length)).encode()
        data = await self.call(Op.GET_EFI, size=len(request), read=len(request), write=request)
        return labels.EfiTransfer.decode(data).data[:length]

    async def set_efi(self, lba: int, data: bytes) -> None:
        request = labels.EfiTransfer(lba, len(data), data).encode()
        await self.call(Op.SET_EFI, size=len(request), write=request)

    async def scsi(self, request: scsi.VdScsi) -> scsi.VdScsi:
        """One SCSI command through VD_OP_SCSICMD; the reply keeps the request's layout."""
        encoded = request.encode()
        data = await self.call(Op.SCSICMD, size=len(encoded), read=len(encoded), write=encoded)
        return scsi.VdScsi.decode_reply(data, request)

    async def call(
        self, op: int, offset: int = 0, size: int = 0, *, slice_: int = SLICE_ABSOLUTE,
        read: int = 0, write: bytes | None = None,
    ) -> bytes:
        """One request; the first `read` bytes of its buffer once the server is done.
        Raises OSError with the server's status when it is not 0."""
        slot = self._free_slots.pop() if self._free_slots else await self._wait_for_slot()
        try:
            await self._start(slot, op, offset, size, slice_, max(read, len(write) if write else 0), write)
            base = slot * self._slot_size
            return bytes(self._pool.view[base : base + read]) if read else b""  # type: ignore[union-attr]
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
        slot = self._free_slots.pop() if self._free_slots else await self._wait_for_slot()
        try:
            await self._start(slot, Op.BREAD, offset // self._block, length, slice_, length, None)
            base = slot * self._slot_size
            data = self._pool.view[base : base + length]  # type: ignore[union-attr]
            try:
                yield data
            finally:
                data.release()
        finally:
            self._give_back(slot)

    async def _wait_for_slot(self) -> int:
        """All buffer slots are in use: wait for one (first come, first served)."""
        waiter: asyncio.Future[int] = self._loop.create_future()
        self._slot_waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._give_back(waiter.result())  # handed to us just as we were cancelled
            elif waiter in self._slot_waiters:
                self._slot_waiters.remove(waiter)
            raise

    def _give_back(self, slot: int) -> None:
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        self._free_slots.append(slot)

    def _start(self, slot: int, op: int, offset: int, size: int, slice_: int, length: int,
               write: bytes | None) -> asyncio.Future[None]:
        """Queue one request through `slot` (its first `length` bytes); the future is
        done when the server is, with the server's error as OSError."""
        future: asyncio.Future[None] = self._loop.create_future()

        def finished(code: int, _: DiskRequest | None) -> None:
            if future.done():
                return
            if code:
                future.set_exception(OSError(code, f"vDisk {Op(op).name} failed: {errno.errorcode.get(code, code)}"))
            else:
                future.set_result(None)

        self._queue(slot, op, offset, size, slice_, length, write, finished)
        return future

    def start_read(self, offset: int, length: int, done: Callable[[int, memoryview | None], None], *,
                   slice_: int = SLICE_ABSOLUTE) -> bool:
        """A read with a callback instead of a coroutine and a future, for servers of
        many small requests (the NBD export): `done(errno, view)` runs on the loop
        when the vds finished; `view` is the buffer it filled, valid during the call
        only, None on error; `done` must not raise. False, and nothing started, when
        every buffer slot is in use: await read() then (it waits for one)."""
        self._aligned(offset, length)
        if not self._free_slots:
            return False
        slot = self._free_slots.pop()
        base = slot * self._slot_size

        def finished(code: int, _: DiskRequest | None) -> None:
            try:
                if code:
                    done(code, None)
                else:
                    with self._pool.view[base : base + length] as view:  # type: ignore[union-attr]
                        done(0, view)
            finally:
                self._give_back(slot)

        try:
            self._queue(slot, Op.BREAD, offset // self._block, length, slice_, length, None, finished)
        except BaseException:
            self._give_back(slot)
            raise
        return True

    def _queue(self, slot: int, op: int, offset: int, size: int, slice_: int, length: int, write: bytes | None,
               finished: Callback) -> None:
        """Hand one request through `slot` to the device; it leaves with this loop iteration's burst."""
        if length > self._slot_size:
            raise ValueError(f"a {length}-byte transfer is larger than the {self._slot_size}-byte maximum")
        if write:
            base = slot * self._slot_size
            self._pool.view[base : base + len(write)] = write  # type: ignore[union-attr]
        self.device.queue_transfer(op, slice_, offset, size, self._slot_addrs[slot], length, finished)
        if not self._submit_scheduled:
            self._submit_scheduled = True
            self._loop.call_soon(self._submit)

    def _submit(self) -> None:
        """Everything requested in this loop iteration goes out as one burst."""
        self._submit_scheduled = False
        self.device.submit_queued(self.endpoint.session)
        self.endpoint.pump()

    def _aligned(self, offset: int, length: int) -> None:
        if offset % self._block or length % self._block:
            raise ValueError(f"offset and length must be multiples of the {self._block}-byte block")


@functools.cache
def _keep_freed_buffers() -> None:
    """Let glibc reuse freed transfer-sized buffers instead of returning them to the OS.

    `read()` returns a new bytes object of up to 1 MiB per request. With glibc's
    defaults such a buffer is soon trimmed from the heap (or mmapped alone) and
    the next one takes a page fault per 4 KiB page: 256 per MiB, which cost more
    than the copy itself (sequential 1 MiB reads: 800-950 us of client CPU per
    MiB instead of about 330). Buffers up to 4 MiB now come from the heap, and
    up to 128 MiB of freed heap stays with the process. Once per process; a C
    library without mallopt (not glibc) is left as it is.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
