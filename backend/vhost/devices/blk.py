"""virtio-blk (virtio 1.x, 5.2) on the vDisk disk engine.

The device only translates: a request chain becomes an engine call on
memoryviews of guest memory (preadv/pwritev straight into the shared
mapping, no copy), run in the core's I/O threads - except a small read the
page cache already holds, which is served on the event loop at once (the
hand-off to a thread and back costs more than the copy). FLUSH is a barrier: it
starts once every request taken before it has finished, then makes the data
stable. VIRTIO_BLK_F_CONFIG_WCE maps the config `writeback` byte onto the
engine's write-cache mode.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from functools import partial
from typing import Any

from ...vdisk.devid import DeviceId
from ...vdisk.engine import DiskEngine
from ..constants import ProtocolFeature
from ..device import ServedQueue, VirtioDevice
from ..virtqueue import DescriptorChain

log = logging.getLogger(__name__)

SECTOR = 512
VIRTIO_ID_BLOCK = 2

# Feature bits (5.2.3)
F_SIZE_MAX = 1 << 1
F_SEG_MAX = 1 << 2
F_RO = 1 << 5
F_BLK_SIZE = 1 << 6
F_FLUSH = 1 << 9
F_TOPOLOGY = 1 << 10
F_CONFIG_WCE = 1 << 11
F_MQ = 1 << 12
F_DISCARD = 1 << 13
F_WRITE_ZEROES = 1 << 14

# Request types and status (5.2.6)
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
ID_BYTES = 20
WRITE_ZEROES_UNMAP = 1

REQUEST_HEADER = struct.Struct("<IIQ")
SEGMENT = struct.Struct("<QII")  # discard / write-zeroes range: sector, num_sectors, flags
# struct virtio_blk_config up to write_zeroes_may_unmap, then the three secure-erase words (unused)
CONFIG = struct.Struct("<QII HBB I BBHI BBH IIIIIB3x III")
CONFIG_WRITEBACK_OFFSET = 32

SIZE_MAX = 1 << 20
MAX_RANGE_SECTORS = (1 << 30) // SECTOR  # per discard/write-zeroes segment
MAX_RANGE_SEGMENTS = 16
# Reads up to this size are tried on the event loop first (RWF_NOWAIT: only if the page cache
# holds them): a copy this small costs less than the hand-off to an I/O thread and back; larger
# ones go to the threads, which copy in parallel and complete one by one (guest MB/s measured).
INLINE_READ_MAX = 128 << 10


class BlockDevice(VirtioDevice):
    """One disk, served to one driver, on `num_queues` request queues."""

    device_type = VIRTIO_ID_BLOCK

    def __init__(self, engine: DiskEngine, device_id: DeviceId, *, num_queues: int = 1, queue_size: int = 256) -> None:
        if not 1 <= num_queues <= 64:
            raise ValueError(f"num_queues {num_queues} must be 1..64")
        self.engine = engine
        self.serial = device_id.id.hex().encode()[:ID_BYTES].ljust(ID_BYTES, b"\0")
        self.num_queues = num_queues
        self.max_queue_size = queue_size
        self.read_only = engine.read_only
        self._initial_write_cache = engine.write_cache
        self._negotiated = 0
        self._seq = 0
        self._open: set[int] = set()
        self._barriers: list[tuple[set[int], Callable[[], None]]] = []

    # ---- the seam -------------------------------------------------------------------

    def features(self) -> int:
        bits = F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_TOPOLOGY | F_CONFIG_WCE | F_MQ
        return bits | (F_RO if self.read_only else F_DISCARD | F_WRITE_ZEROES)

    def protocol_features(self) -> ProtocolFeature:
        return ProtocolFeature.CONFIG | ProtocolFeature.MQ

    def set_features(self, features: int) -> None:
        self._negotiated = features

    def config(self) -> bytes:
        block = self.engine.block_size
        exp = max(0, (block // SECTOR).bit_length() - 1)
        ranges = 0 if self.read_only else 1
        return CONFIG.pack(
            self.engine.size_bytes // SECTOR, SIZE_MAX, self.max_queue_size - 2,
            0, 0, 0,  # geometry: not offered
            block,
            exp, 0, 1, 0,  # topology: physical block exponent, alignment, min/opt io size in blocks
            int(self.engine.write_cache), 0, self.num_queues,
            MAX_RANGE_SECTORS * ranges, MAX_RANGE_SEGMENTS * ranges, block // SECTOR,
            MAX_RANGE_SECTORS * ranges, MAX_RANGE_SEGMENTS * ranges, ranges,
            0, 0, 0,
        )

    def write_config(self, offset: int, data: bytes) -> None:
        if offset != CONFIG_WRITEBACK_OFFSET or len(data) != 1:
            raise ValueError(f"only the writeback byte ({CONFIG_WRITEBACK_OFFSET}) is writable, not {offset}+{len(data)}")
        if data[0] not in (0, 1):
            raise ValueError(f"writeback must be 0 or 1, not {data[0]}")
        self.engine.write_cache = bool(data[0])
        log.info("%s: write cache %s", self.engine.path, "on" if data[0] else "off (write-through)")

    def reset(self) -> None:
        self._negotiated = 0
        self.engine.write_cache = self._initial_write_cache

    def handle_queue(self, queue: ServedQueue) -> None:
        while (chain := queue.pop()) is not None:
            self._request(queue, chain)

    # ---- requests --------------------------------------------------------------------

    def _request(self, queue: ServedQueue, chain: DescriptorChain) -> None:
        readable, writable = chain.readable, chain.writable
        if readable and len(readable[0]) == REQUEST_HEADER.size:  # Linux: the header alone in its buffer
            kind, _, sector = REQUEST_HEADER.unpack(readable[0])
            data_in = readable[1:]
        else:
            header, data_in = _split(readable, REQUEST_HEADER.size)
            if header is None:
                queue.fail(f"virtio-blk request {chain.head} lacks its header")
                return
            kind, _, sector = REQUEST_HEADER.unpack(header)
        last = writable[-1] if writable else None
        if not last:
            queue.fail(f"virtio-blk request {chain.head} lacks its status byte")
            return
        if len(last) == 1:  # Linux: the status byte alone in its buffer
            status, data_out = last, writable[:-1]
        else:
            status, data_out = last[-1:], writable[:-1] + [last[:-1]]

        if kind == T_IN:
            length = self._checked_length(sector, data_out)
            if length is None:
                _finish(queue, chain, status, S_IOERR, 1)
            elif length > INLINE_READ_MAX or not self._read_cached(queue, chain, status, sector, data_out, length):
                self._submit(queue, chain, status, partial(self.engine.read_into, sector * SECTOR, data_out), _plus_status)
        elif kind == T_OUT:
            if self.read_only or self._checked_length(sector, data_in) is None:
                _finish(queue, chain, status, S_IOERR, 1)
            else:
                self._submit(queue, chain, status, partial(self.engine.write_from, sector * SECTOR, data_in), _status_only)
        elif kind == T_FLUSH:
            self._after_earlier(partial(self._submit, queue, chain, status, self.engine.flush, _status_only))
        elif kind == T_GET_ID:
            count = min(ID_BYTES, sum(len(v) for v in data_out))
            _scatter(self.serial[:count], data_out)
            _finish(queue, chain, status, S_OK, count + 1)
        elif kind in (T_DISCARD, T_WRITE_ZEROES) and not self.read_only:
            self._ranges(queue, chain, status, kind, b"".join(data_in))
        else:
            _finish(queue, chain, status, S_UNSUPP, 1)

    def _checked_length(self, sector: int, views: list[memoryview]) -> int | None:
        """Bytes the request moves, or None when they are not whole sectors inside the disk."""
        length = sum(map(len, views))
        if length % SECTOR or sector * SECTOR + length > self.engine.size_bytes:
            log.warning("virtio-blk: %d bytes at sector %d are outside the %d-byte disk or not whole sectors", length, sector, self.engine.size_bytes)
            return None
        return length

    def _read_cached(self, queue: ServedQueue, chain: DescriptorChain, status: memoryview, sector: int,
                     views: list[memoryview], length: int) -> bool:
        """Serve a read right here if the page cache holds it (no thread hand-off); False: it would block."""
        if not self.engine.nowait_reads:
            return False
        try:
            self.engine.try_read_into(sector * SECTOR, views)
        except BlockingIOError:
            return False
        except OSError as exc:
            log.warning("virtio-blk I/O failed: %s", exc)
            _finish(queue, chain, status, S_IOERR, 1)
            return True
        _finish(queue, chain, status, S_OK, length + 1)
        return True

    def _ranges(self, queue: ServedQueue, chain: DescriptorChain, status: memoryview, kind: int, table: bytes) -> None:
        if not table or len(table) % SEGMENT.size or len(table) // SEGMENT.size > MAX_RANGE_SEGMENTS:
            _finish(queue, chain, status, S_UNSUPP if len(table) // SEGMENT.size > MAX_RANGE_SEGMENTS else S_IOERR, 1)
            return
        segments = [SEGMENT.unpack_from(table, i) for i in range(0, len(table), SEGMENT.size)]
        for sector, count, flags in segments:
            if count > MAX_RANGE_SECTORS or (sector + count) * SECTOR > self.engine.size_bytes or flags & ~WRITE_ZEROES_UNMAP:
                _finish(queue, chain, status, S_IOERR if flags & ~WRITE_ZEROES_UNMAP == 0 else S_UNSUPP, 1)
                return

        def work() -> None:
            for sector, count, flags in segments:
                if kind == T_DISCARD:
                    self.engine.discard(sector * SECTOR, count * SECTOR)
                else:
                    self.engine.write_zeroes(sector * SECTOR, count * SECTOR, unmap=bool(flags & WRITE_ZEROES_UNMAP))

        self._submit(queue, chain, status, work, _status_only)

    def _submit(self, queue: ServedQueue, chain: DescriptorChain, status: memoryview, work: Callable[[], object],
                written: Callable[[Any], int]) -> None:
        """Run `work` in the I/O threads; the request counts as open (for FLUSH) until it ends."""
        self._seq += 1
        self._open.add(self._seq)
        queue.run_blocking(work, partial(self._done, queue, chain, status, self._seq, written))

    def _done(self, queue: ServedQueue, chain: DescriptorChain, status: memoryview, seq: int,
              written: Callable[[Any], int], result: object) -> None:
        self._open.discard(seq)
        if isinstance(result, BaseException):
            log.warning("virtio-blk I/O failed: %s", result)
            _finish(queue, chain, status, S_IOERR, 1)
        else:
            _finish(queue, chain, status, S_OK, written(result))
        if self._barriers:
            self._release_barriers(seq)

    def _after_earlier(self, start: Callable[[], None]) -> None:
        waiting = set(self._open)
        if waiting:
            self._barriers.append((waiting, start))
        else:
            start()

    def _release_barriers(self, seq: int) -> None:
        ready = []
        for waiting, start in self._barriers:
            waiting.discard(seq)
            if not waiting:
                ready.append(start)
        if ready:
            self._barriers = [(w, s) for w, s in self._barriers if w]
            for start in ready:
                start()


def _status_only(_: object) -> int:
    return 1


def _plus_status(moved: int) -> int:
    return moved + 1


def _finish(queue: ServedQueue, chain: DescriptorChain, status: memoryview, code: int, written: int) -> None:
    """Status byte, then the chain back to the driver with `written` bytes filled in."""
    status[0] = code
    queue.complete(chain, written)


def _split(views: list[memoryview], count: int) -> tuple[bytes | None, list[memoryview]]:
    """The first `count` bytes (copied: a header), and views of the rest."""
    head = bytearray()
    rest: list[memoryview] = []
    for view in views:
        if len(head) < count:
            take = min(count - len(head), len(view))
            head += view[:take]
            if take < len(view):
                rest.append(view[take:])
        else:
            rest.append(view)
    return (bytes(head) if len(head) == count else None), rest


def _scatter(data: bytes, views: list[memoryview]) -> None:
    offset = 0
    for view in views:
        take = min(len(view), len(data) - offset)
        view[:take] = data[offset : offset + take]
        offset += take
