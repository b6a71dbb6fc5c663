"""virtio-blk (virtio 1.x, 5.2) on the vDisk disk engine.

The device only translates: a request chain becomes an engine call on
memoryviews of guest memory (preadv/pwritev straight into the shared
mapping, no copy), run in the core's I/O threads. FLUSH is a barrier: it
starts once every request taken before it has finished, then makes the data
stable. VIRTIO_BLK_F_CONFIG_WCE maps the config `writeback` byte onto the
engine's write-cache mode.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

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
        header, data_in = _split(chain.readable, REQUEST_HEADER.size)
        if header is None or not chain.writable or len(chain.writable[-1]) < 1:
            queue.fail(f"virtio-blk request {chain.head} lacks its header or status byte")
            return
        kind, _, sector = REQUEST_HEADER.unpack(header)
        last = chain.writable[-1]
        status = last[len(last) - 1 : len(last)]
        data_out = chain.writable[:-1] + ([last[: len(last) - 1]] if len(last) > 1 else [])
        finish = _finisher(queue, chain, status)

        if kind == T_IN:
            self._transfer(queue, finish, sector, data_out, self.engine.read_into, lambda moved: moved + 1)
        elif kind == T_OUT:
            if self.read_only:
                finish(S_IOERR, 1)
            else:
                self._transfer(queue, finish, sector, data_in, self.engine.write_from, _status_only)
        elif kind == T_FLUSH:
            self._after_earlier(lambda: self._submit(queue, finish, self.engine.flush, _status_only))
        elif kind == T_GET_ID:
            count = min(ID_BYTES, sum(len(v) for v in data_out))
            _scatter(self.serial[:count], data_out)
            finish(S_OK, count + 1)
        elif kind in (T_DISCARD, T_WRITE_ZEROES) and not self.read_only:
            self._ranges(queue, finish, kind, b"".join(data_in))
        else:
            finish(S_UNSUPP, 1)

    def _transfer(self, queue: ServedQueue, finish: Finish, sector: int, views: list[memoryview],
                  call: Callable[[int, list[memoryview]], int], written: Callable[[object], int]) -> None:
        length = sum(len(v) for v in views)
        if length % SECTOR or sector * SECTOR + length > self.engine.size_bytes:
            log.warning("virtio-blk: %d bytes at sector %d are outside the %d-byte disk or not whole sectors", length, sector, self.engine.size_bytes)
            finish(S_IOERR, 1)
            return
        self._submit(queue, finish, lambda: call(sector * SECTOR, views), written)

    def _ranges(self, queue: ServedQueue, finish: Finish, kind: int, table: bytes) -> None:
        if not table or len(table) % SEGMENT.size or len(table) // SEGMENT.size > MAX_RANGE_SEGMENTS:
            finish(S_UNSUPP if len(table) // SEGMENT.size > MAX_RANGE_SEGMENTS else S_IOERR, 1)
            return
        segments = [SEGMENT.unpack_from(table, i) for i in range(0, len(table), SEGMENT.size)]
        for sector, count, flags in segments:
            if count > MAX_RANGE_SECTORS or (sector + count) * SECTOR > self.engine.size_bytes or flags & ~WRITE_ZEROES_UNMAP:
                finish(S_IOERR if flags & ~WRITE_ZEROES_UNMAP == 0 else S_UNSUPP, 1)
                return

        def work() -> None:
            for sector, count, flags in segments:
                if kind == T_DISCARD:
                    self.engine.discard(sector * SECTOR, count * SECTOR)
                else:
                    self.engine.write_zeroes(sector * SECTOR, count * SECTOR, unmap=bool(flags & WRITE_ZEROES_UNMAP))

        self._submit(queue, finish, work, _status_only)

    def _submit(self, queue: ServedQueue, finish: Finish, work: Callable[[], object], written: Callable[[object], int]) -> None:
        """Run `work` in the I/O threads; the request counts as open (for FLUSH) until it ends."""
        self._seq += 1
        seq = self._seq
        self._open.add(seq)

        def done(result: object) -> None:
            self._open.discard(seq)
            if isinstance(result, BaseException):
                log.warning("virtio-blk I/O failed: %s", result)
                finish(S_IOERR, 1)
            else:
                finish(S_OK, written(result))
            self._release_barriers(seq)

        queue.run_blocking(work, done)

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


Finish = Callable[[int, int], None]  # (status, bytes written into the chain)


def _status_only(_: object) -> int:
    return 1


def _finisher(queue: ServedQueue, chain: DescriptorChain, status: memoryview) -> Finish:
    def finish(code: int, written: int) -> None:
        status[0] = code
        queue.complete(chain, written)

    return finish


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
