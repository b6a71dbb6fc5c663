"""The vDisk server (vds): a VIO device class that serves one exported disk.

`Export` says what a client sees (the whole backing store as a disk, or a
window of it as a slice). `VdsDevice` is the per-connection device: it
answers the attribute exchange, takes the client's ring (or in-band
descriptors), and runs every operation through an `IoRunner` so that disk
I/O can happen off the event loop; the status goes back in the descriptor
as the errno value a Solaris client expects. Data moves straight between
the disk and the client's shared memory (preadv into / pwritev from views
of the client's pages), with a bounce buffer only when the client granted
copy access but not direct mapping.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import BackendError
from ..ldc.memory import PeerMemory
from ..native import native
from ..vio.constants import DevClass, DringOption, XferMode
from ..vio.device import AttrReply, Device
from ..vio.messages import DringReg
from ..vio.dring import ImportedRing, RingError
from ..vio.session import Session
from . import labels, scsi
from .access import Client, DiskReservations
from .devid import DeviceId
from .engine import DiskEngine
from .protocol import (
    ACCESS,
    ACCESS_ALLOWED,
    ACCESS_DENIED,
    CAPACITY,
    DESC_PAYLOAD_MIN,
    SIZE_UNKNOWN,
    SLICE_ABSOLUTE,
    VERSIONS,
    WCE,
    DiskAttrs,
    DiskRequest,
    DiskType,
    MediaType,
    Op,
    ops_for,
    ops_mask,
    to_wire_status,
)

log = logging.getLogger(__name__)

MAX_XFER_BYTES = 1 << 20
MAX_COOKIES = 64
MAX_CONTROL_BYTES = 1 << 20  # label and SCSI buffers we copy in
WALK_STEP = 32


@dataclass
class Export:
    """One exported disk: a backing store, or a window of it exported as a slice."""

    engine: DiskEngine
    device_id: DeviceId
    disk_type: DiskType = DiskType.DISK
    media_type: MediaType = MediaType.FIXED
    start: int = 0  # byte offset of the window (slice exports)
    length: int | None = None  # bytes in the window (None: to the end)
    reservations: DiskReservations = field(init=False)

    def __post_init__(self) -> None:
        if self.length is None:
            self.length = self.engine.size_bytes - self.start
        if self.start < 0 or self.start + self.length > self.engine.size_bytes or self.length <= 0:
            raise OSError(errno.EINVAL, f"export window {self.start}+{self.length} outside {self.engine.path}")
        self.reservations = DiskReservations(self.engine.path)

    @property
    def block_size(self) -> int:
        return self.engine.block_size

    @property
    def blocks(self) -> int:
        assert self.length is not None
        return self.length // self.block_size

    @property
    def read_only(self) -> bool:
        return self.engine.read_only

    @property
    def io(self) -> WindowIO:
        """The export as a BlockIO (what labels and SCSI emulation work on)."""
        assert self.length is not None
        return WindowIO(self.engine, self.start, self.length)


class WindowIO:
    """BlockIO over `length` bytes of an engine from `start` (a slice export, or all of it)."""

    def __init__(self, engine: DiskEngine, start: int, length: int) -> None:
        self.engine, self.start, self.length = engine, start, length
        self.block_size = engine.block_size
        self.read_only = engine.read_only

    @property
    def size_bytes(self) -> int:
        return self.length

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return self.engine.read(self.start + offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        self.engine.write(self.start + offset, data)

    def flush(self) -> None:
        self.engine.flush()

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.length:
            raise OSError(errno.EINVAL, f"{length} bytes at {offset} are outside the {self.length}-byte export")


class IoRunner(Protocol):
    """Runs `work` (maybe in another thread) and then `done(result)` on the session's thread.

    Jobs of one runner must run in the order given: a FLUSH is a barrier for
    the requests before it (the asyncio edge uses one I/O thread per client).
    """

    def __call__(self, work: Callable[[], list[int]], done: Callable[[list[int]], None]) -> None: ...


def run_inline(work: Callable[[], list[int]], done: Callable[[list[int]], None]) -> None:
    done(work())


class VdsDevice(Device):
    """The server side of one client connection."""

    dev_class = DevClass.DISK_SERVER
    peer_classes = frozenset({DevClass.DISK})
    versions = VERSIONS
    initiator = False
    sends_rdx = False
    expects_rdx = True

    def __init__(self, export: Export, runner: IoRunner = run_inline) -> None:
        self.export = export
        self.runner = runner
        self.access: Client = export.reservations.client()
        self.client_block_size = export.block_size
        self.xfer_mode = XferMode.DRING
        self.ops = ops_for(VERSIONS[0])
        self.max_xfer = MAX_XFER_BYTES
        self.geometry: labels.Geometry | None = None
        self._scsi_target: scsi.ScsiTarget | None = None
        self.completed = 0
        self._queued = 0  # jobs handed to the runner and not yet done
        self._access_ok = False  # access checked within the batch running now

    # ---- handshake ---------------------------------------------------------------------

    @property
    def expects_peer_ring(self) -> bool:  # type: ignore[override]
        return self.xfer_mode == XferMode.DRING

    def expects_attr(self, version: tuple[int, int]) -> bool:
        return True

    def on_attr_info(self, payload: bytes, version: tuple[int, int]) -> AttrReply:
        attrs = DiskAttrs.decode(payload)
        ours = self.export.block_size
        self.ops = ops_for(version)
        if attrs.xfer_mode not in (XferMode.DRING, XferMode.DESC):
            return AttrReply(False, payload)
        if attrs.vdisk_block_size and attrs.vdisk_block_size < ours:
            return AttrReply(False, payload)  # we cannot serve blocks smaller than the disk's
        # The client's max transfer is in its blocks, or bytes when its block size is 0.
        asked = attrs.max_xfer_size * (attrs.vdisk_block_size or 1)
        self.max_xfer = max(ours, min(asked or MAX_XFER_BYTES, MAX_XFER_BYTES))
        self.client_block_size = ours
        self.xfer_mode = XferMode(attrs.xfer_mode)
        reply = DiskAttrs(
            xfer_mode=attrs.xfer_mode,
            vdisk_type=self.export.disk_type,
            vdisk_mtype=self.export.media_type if version >= (1, 1) else 0,
            vdisk_block_size=ours,
            operations=ops_mask(self.supported_ops()),
            vdisk_size=self.export.blocks if version >= (1, 1) else 0,
            max_xfer_size=self.max_xfer // ours,
        )
        return AttrReply(True, reply.encode())

    def accepts_ring(self, reg: DringReg, version: tuple[int, int]) -> bool:
        return bool(reg.options & DringOption.TX) and reg.descr_size >= 8 + DESC_PAYLOAD_MIN

    def on_established(self, session: Session) -> None:
        # Walk steps of a client burst (our vdc's is up to 32): after each, the
        # ACKs so far leave and other channels get their turn. Steps of 8 got the
        # first completions out sooner but cost a record and a wake-up per 8.
        session.walk_budget = WALK_STEP

    def serve_in_place(self, session: Session, ring: ImportedRing, first: int, limit: int) -> tuple[int, list[int]]:
        """Cached plain reads straight from the ring, in C (backend/native/vdisk.c).

        Only while nothing of ours waits in the I/O thread (a FLUSH keeps its
        place), the disk is ours to read, and the ring is one piece of memory;
        the C step stops at the first entry that is anything but a valid BREAD
        whose data the page cache holds, and leaves it to `on_descriptors`.
        """
        engine = self.export.engine
        view = ring.memory.single
        if self._queued or not engine.nowait_reads or view is None or not self._native_reads:
            return 0, []
        memory = session.memory.peer_memory.native_view()
        if memory is None:
            return 0, []
        self._access_ok = False  # asked once per walk step: another process may have taken the disk
        try:
            self._check_access()
        except OSError:
            return 0, []  # the Python path answers EACCES
        finally:
            self._access_ok = False
        ffi, lib = native()
        disk = ffi.new("struct vdisk_disk *", {
            "fd": engine.fd, "start": self.export.start, "length": self.export.length,
            "block_size": self.client_block_size, "max_xfer": self.max_xfer,
        })
        acks = ffi.new("uint32_t[]", limit)
        step = ffi.new("struct vdisk_step *")
        lib.vdisk_serve_reads(ffi.from_buffer(view), len(view), ring.count, ring.size, first, limit, memory, disk, acks, step)
        if step.stop == lib.VDISK_STOP_CHANGED:
            raise RingError(f"entry {step.changed} changed state while we served it")
        if step.stop == lib.VDISK_STOP_BLOCKED and step.error in (errno.EOPNOTSUPP, errno.EINVAL):
            engine.nowait_reads = False  # the filesystem has no RWF_NOWAIT: always use threads
        if step.served:
            self.completed += step.served
            engine.reads_served(step.served, step.nbytes)
        return step.served, list(acks[0 : step.nacks])

    @property
    def _native_reads(self) -> bool:
        """An engine that watches its reads (try_read_into overridden) must also hear of these."""
        kind = type(self.export.engine)
        return kind.try_read_into is DiskEngine.try_read_into or kind.reads_served is not DiskEngine.reads_served

    def supported_ops(self) -> frozenset[Op]:
        return self.ops & _HANDLED_OPS

    def on_reset(self, reason: str) -> None:
        # Seed 1.1.6.17: a lost connection acts as VD_OP_RESET.
        self.access.clear()

    # ---- requests ------------------------------------------------------------------------

    def on_descriptors(self, session: Session, ring: int, batch: list[tuple[int, bytes]]) -> None:
        """A run of ring descriptors: decoded here, executed as one job by the runner."""
        finishers = []
        for index, payload in batch:
            finishers.append((payload, self._ring_finisher(session, ring, index)))
        self._serve(session, finishers)

    def on_descriptor(self, session: Session, ring: int, index: int, payload: bytes) -> None:
        self._serve(session, [(payload, self._ring_finisher(session, ring, index))])

    def on_inband(self, session: Session, handle: int, payload: bytes) -> None:
        def finish(request: DiskRequest) -> None:
            session.complete_inband(handle, request.status_update() + payload[DESC_PAYLOAD_MIN:], ok=True)

        self._serve(session, [(payload, finish)])

    @staticmethod
    def _ring_finisher(session: Session, ring: int, index: int) -> Callable[[DiskRequest], None]:
        return lambda request: session.complete(ring, index, request.status_update())

    def _serve(self, session: Session, items: list[tuple[bytes, Callable[[DiskRequest], None]]]) -> None:
        """Run requests in order, in one job (a FLUSH stays behind what came before it)."""
        jobs: list[Job] = []
        for payload, finish in items:
            try:
                request = DiskRequest.decode(payload, MAX_COOKIES)
            except OSError:
                request = _salvage(payload)
                request.status = to_wire_status(errno.EINVAL)
                finish(request)
                continue
            handler = HANDLERS.get(request.operation) if request.operation in self.ops else None
            if handler is None:
                request.status = to_wire_status(errno.ENOTSUP)
                finish(request)
                continue
            jobs.append((request, handler, finish))
        if not jobs:
            return
        memory = session.memory.peer_memory
        if not self._queued:
            jobs = self._serve_cached(jobs, memory)
            if not jobs:
                return

        def work() -> list[int]:
            self._access_ok = False  # a new batch: another process may have taken the disk meanwhile
            try:
                return [self._execute(handler, request, memory) for request, handler, _ in jobs]
            finally:
                self._access_ok = False

        def done(codes: list[int]) -> None:
            self._queued -= 1
            for (request, _, finish), code in zip(jobs, codes, strict=True):
                request.status = to_wire_status(code)
                self.completed += 1
                finish(request)

        self._queued += 1
        self.runner(work, done)

    def _serve_cached(self, jobs: list[Job], memory: PeerMemory) -> list[Job]:
        """Serve the leading reads the page cache holds right here; return the rest.

        Only while the runner has nothing queued for us, so requests still
        finish in order behind a FLUSH; the first read that would block (or
        anything but a read) and all after it go to the runner.
        """
        engine = self.export.engine
        self._access_ok = False
        try:
            for position, (request, handler, finish) in enumerate(jobs):
                if handler is not VdsDevice._bread or not engine.nowait_reads:
                    return jobs[position:]
                try:
                    self._bread(request, memory, nowait=True)
                    code = 0
                except BlockingIOError:
                    return jobs[position:]
                except OSError as exc:
                    code = exc.errno or errno.EIO
                except BackendError as exc:
                    log.info("vds: request %d (op %d) refused: %s", request.req_id, request.operation, exc)
                    code = errno.EINVAL
                request.status = to_wire_status(code)
                self.completed += 1
                finish(request)
            return []
        finally:
            self._access_ok = False

    def _execute(self, handler: Handler, request: DiskRequest, memory: PeerMemory) -> int:
        try:
            handler(self, request, memory)
            return 0
        except OSError as exc:
            return exc.errno or errno.EIO
        except BackendError as exc:  # bad cookies and the like: the client's fault
            log.info("vds: request %d (op %d) refused: %s", request.req_id, request.operation, exc)
            return errno.EINVAL

    # ---- operations (run by the runner, maybe in another thread) ---------------------------

    def _byte_range(self, request: DiskRequest) -> tuple[int, int]:
        """Absolute byte offset and length of a read/write, after the slice rules."""
        block = self.client_block_size
        if request.size % block or request.size > self.max_xfer:
            raise OSError(errno.EINVAL, f"transfer of {request.size} bytes (block {block}, max {self.max_xfer})")
        assert self.export.length is not None
        base, limit = 0, self.export.length
        if request.slice != SLICE_ABSOLUTE:
            base, limit = self._slice_window(request.slice)
        offset = request.offset * block
        if offset + request.size > limit:
            raise OSError(errno.EINVAL, f"{request.size} bytes at block {request.offset} are past the end of slice {request.slice}")
        return self.export.start + base + offset, request.size

    def _slice_window(self, number: int) -> tuple[int, int]:
        """Byte offset and length of a slice: from the disk's label on a whole-disk export."""
        assert self.export.length is not None
        if self.export.disk_type == DiskType.SLICE:
            if number != 0:
                raise OSError(errno.EINVAL, f"a slice export has only slice 0, not {number}")
            return 0, self.export.length
        io, block = self.export.io, self.export.block_size
        try:
            vtoc, _ = labels.read_smi(io)
            parts = [(p.start_block, p.num_blocks) for p in vtoc.partitions]
        except OSError:
            try:
                table = labels.read_gpt(io)
            except OSError:
                raise OSError(errno.EINVAL, f"slice {number} asked for, but the disk has no label") from None
            parts = [(0, 0)] * 16
            for p in table.partitions:
                if p.slot is not None and p.slot < len(parts):
                    parts[p.slot] = (p.first_lba, p.last_lba - p.first_lba + 1)
        if number >= len(parts) or not parts[number][1]:
            raise OSError(errno.EINVAL, f"slice {number} is not in the disk's label")
        start, count = parts[number]
        return start * block, count * block

    def _check_access(self) -> None:
        """EACCES unless we may use the disk; asked of the OS once per batch
        (a lock query is a syscall), again after anything that changes access."""
        if self._access_ok:
            return
        if not self.access.allowed():
            raise OSError(errno.EACCES, "another client holds exclusive access")
        self._access_ok = True

    def _bread(self, request: DiskRequest, memory: PeerMemory, nowait: bool = False) -> None:
        self._check_access()
        offset, length = self._byte_range(request)
        try:
            views = memory.map(request.cookies, length, writable=True)
        except BackendError:
            if nowait:
                raise BlockingIOError(errno.EAGAIN, "bounce-buffer reads go to the I/O thread") from None
            bounce = bytearray(length)  # the client allowed copying but not mapping
            self.export.engine.read_into(offset, [memoryview(bounce)])
            memory.copy_out(request.cookies, 0, bounce)
            return
        if nowait:
            self.export.engine.try_read_into(offset, views)
        else:
            self.export.engine.read_into(offset, views)

    def _bwrite(self, request: DiskRequest, memory: PeerMemory) -> None:
        self._check_access()
        offset, length = self._byte_range(request)
        try:
            views = memory.map(request.cookies, length, writable=False)
        except BackendError:
            bounce = bytearray(length)
            memory.copy_in(request.cookies, 0, bounce)
            views = [memoryview(bounce)]
        self.export.engine.write_from(offset, views)

    def _flush(self, request: DiskRequest, memory: PeerMemory) -> None:
        self._check_access()
        self.export.engine.flush()

    def _get_wce(self, request: DiskRequest, memory: PeerMemory) -> None:
        memory.copy_out(request.cookies, 0, WCE.pack(1 if self.export.engine.write_cache else 0))

    def _set_wce(self, request: DiskRequest, memory: PeerMemory) -> None:
        value = bytearray(WCE.size)
        memory.copy_in(request.cookies, 0, value)
        self.export.engine.write_cache = bool(WCE.unpack(value)[0])

    def _get_devid(self, request: DiskRequest, memory: PeerMemory) -> None:
        encoded = self.export.device_id.encode()
        if request.size < len(encoded):
            raise OSError(errno.EINVAL, f"device id needs {len(encoded)} bytes, buffer has {request.size}")
        memory.copy_out(request.cookies, 0, encoded)

    def _get_capacity(self, request: DiskRequest, memory: PeerMemory) -> None:
        memory.copy_out(request.cookies, 0, CAPACITY.pack(self.export.block_size, self.export.blocks or SIZE_UNKNOWN))

    def _get_vtoc(self, request: DiskRequest, memory: PeerMemory) -> None:
        if self.export.disk_type == DiskType.SLICE:
            vtoc = labels.default_vtoc(self.export.io.size_bytes, self.export.block_size)
        else:
            vtoc, _ = labels.read_smi(self.export.io)
        memory.copy_out(request.cookies, 0, vtoc.encode())

    def _set_vtoc(self, request: DiskRequest, memory: PeerMemory) -> None:
        if self.export.disk_type == DiskType.SLICE:
            raise OSError(errno.ENOTSUP, "a slice export has no label of its own")
        vtoc = labels.Vtoc.decode(self._copy_in(request, memory, labels.VTOC_SIZE))
        labels.write_smi(self.export.io, vtoc, self._geometry())

    def _get_geometry(self, request: DiskRequest, memory: PeerMemory) -> None:
        memory.copy_out(request.cookies, 0, self._geometry().encode())

    def _set_geometry(self, request: DiskRequest, memory: PeerMemory) -> None:
        geometry = labels.Geometry.decode(self._copy_in(request, memory, labels.GEOMETRY_SIZE))
        try:
            vtoc, _ = labels.read_smi(self.export.io)
        except OSError:
            self.geometry = geometry  # kept for the SET_VTOC that follows
            return
        labels.write_smi(self.export.io, vtoc, geometry)

    def _geometry(self) -> labels.Geometry:
        try:
            return labels.read_smi(self.export.io)[1]
        except OSError:
            return self.geometry or labels.default_geometry(self.export.io.size_bytes, self.export.block_size)

    def _get_efi(self, request: DiskRequest, memory: PeerMemory) -> None:
        asked = labels.EfiTransfer.decode(self._copy_in(request, memory, request.size))
        data = labels.efi_read(self.export.io, asked.lba, asked.length)
        memory.copy_out(request.cookies, 0, labels.EfiTransfer(asked.lba, asked.length, data).encode())

    def _set_efi(self, request: DiskRequest, memory: PeerMemory) -> None:
        given = labels.EfiTransfer.decode(self._copy_in(request, memory, request.size))
        labels.efi_write(self.export.io, given.lba, given.data[: given.length])
        try:
            labels.sync_backup_gpt(self.export.io)  # keep host tools' view consistent
        except OSError:
            pass  # no valid primary yet (the guest writes entries and header separately)

    def _scsi(self, request: DiskRequest, memory: PeerMemory) -> None:
        reply = scsi.serve_scsicmd(self.scsi_target, self._copy_in(request, memory, request.size))
        memory.copy_out(request.cookies, 0, reply)

    @property
    def scsi_target(self) -> scsi.ScsiTarget:
        if self._scsi_target is None:
            engine = self.export.engine
            self._scsi_target = scsi.ScsiTarget(
                self.export.io, self.export.device_id.id, self.export.device_id.id.hex()[:16],
                write_cache=lambda: engine.write_cache,
            )
        return self._scsi_target

    def _copy_in(self, request: DiskRequest, memory: PeerMemory, length: int) -> bytes:
        if request.size < length or length > MAX_CONTROL_BYTES:
            raise OSError(errno.EINVAL, f"operation needs {length} bytes, the request gives {request.size}")
        buffer = bytearray(length)
        memory.copy_in(request.cookies, 0, buffer)
        return bytes(buffer)

    def _reset(self, request: DiskRequest, memory: PeerMemory) -> None:
        self._access_ok = False
        self.access.clear()

    def _get_access(self, request: DiskRequest, memory: PeerMemory) -> None:
        memory.copy_out(request.cookies, 0, ACCESS.pack(ACCESS_ALLOWED if self.access.allowed() else ACCESS_DENIED))

    def _set_access(self, request: DiskRequest, memory: PeerMemory) -> None:
        self._access_ok = False
        value = bytearray(ACCESS.size)
        memory.copy_in(request.cookies, 0, value)
        self.access.set_access(ACCESS.unpack(value)[0])


Handler = Callable[["VdsDevice", DiskRequest, PeerMemory], None]
Job = tuple[DiskRequest, Handler, Callable[[DiskRequest], None]]


def _salvage(payload: bytes) -> DiskRequest:
    """What we can read of a malformed descriptor, so the answer names its req_id."""
    head = payload[: DESC_PAYLOAD_MIN - 8].ljust(DESC_PAYLOAD_MIN - 8, b"\0") + bytes(8)  # no cookies
    return DiskRequest.decode(head, 0)


HANDLERS: dict[int, Handler] = {
    Op.BREAD: VdsDevice._bread,
    Op.BWRITE: VdsDevice._bwrite,
    Op.FLUSH: VdsDevice._flush,
    Op.GET_WCE: VdsDevice._get_wce,
    Op.SET_WCE: VdsDevice._set_wce,
    Op.GET_DEVID: VdsDevice._get_devid,
    Op.GET_CAPACITY: VdsDevice._get_capacity,
    Op.GET_VTOC: VdsDevice._get_vtoc,
    Op.SET_VTOC: VdsDevice._set_vtoc,
    Op.GET_DISKGEOM: VdsDevice._get_geometry,
    Op.SET_DISKGEOM: VdsDevice._set_geometry,
    Op.GET_EFI: VdsDevice._get_efi,
    Op.SET_EFI: VdsDevice._set_efi,
    Op.SCSICMD: VdsDevice._scsi,
    Op.RESET: VdsDevice._reset,
    Op.GET_ACCESS: VdsDevice._get_access,
    Op.SET_ACCESS: VdsDevice._set_access,
}
_HANDLED_OPS = frozenset(HANDLERS)
