"""The disk engine: one backing store (file or block device), no protocol.

Every front-end (the vds server over VIO, virtio-blk over vhost-user) calls
the same engine. It moves bytes straight between the backing store and the
caller's buffers (os.preadv / os.pwritev on memoryviews, which may be views
of a guest's shared memory), and keeps the durability rules:

- write cache on: a write may sit in the page cache until FLUSH;
- write cache off: a write returns only once it is stable (fdatasync);
- FLUSH is a barrier: it waits for every read and write that started before
  it, then makes the data stable.

Operations may run in several threads at once (the I/O edge runs them off
the event loop); the barrier bookkeeping is the only shared state.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268
BLKFLSBUF = 0x1261


@dataclass(frozen=True, slots=True)
class StoreInfo:
    path: str
    is_block_device: bool
    size_bytes: int
    block_size: int


class DiskEngine:
    """A backing store opened for I/O. Implements BlockIO (blockio.py)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        create_size: int | None = None,
        block_size: int | None = None,
        write_cache: bool = True,
    ) -> None:
        self.path = str(Path(path))
        if create_size is not None and not os.path.exists(self.path):
            create_sparse_file(self.path, create_size)
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        try:
            self.fd = os.open(self.path, flags)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot open backing store {self.path}: {exc.strerror}") from None
        try:
            self.info = _probe(self.fd, self.path, block_size)
        except BaseException:
            os.close(self.fd)
            raise
        self.read_only = read_only
        self.block_size = self.info.block_size
        self._write_cache = write_cache
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._next_ticket = 0
        self._in_flight: set[int] = set()
        self.nowait_reads = hasattr(os, "RWF_NOWAIT")  # cleared if the filesystem refuses it
        self.closed = False

    # ---- BlockIO ---------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        return self.info.size_bytes

    def read(self, offset: int, length: int) -> bytes:
        buffer = bytearray(length)
        self.read_into(offset, [memoryview(buffer)])
        return bytes(buffer)

    def write(self, offset: int, data: bytes) -> None:
        self.write_from(offset, [memoryview(data)])

    def flush(self) -> None:
        """Barrier: wait for everything started before, then make it stable."""
        with self._lock:
            before = {t for t in self._in_flight}
            while before & self._in_flight:
                self._idle.wait()
        if not self.read_only:
            os.fdatasync(self.fd)

    # ---- scatter/gather I/O -------------------------------------------------------------

    def read_into(self, offset: int, buffers: Sequence[memoryview]) -> int:
        """Fill `buffers` from `offset` (preadv, no extra copy); returns bytes read."""
        length = sum(len(b) for b in buffers)
        self._check_range(offset, length)
        ticket = self._begin()
        try:
            return _full_io(os.preadv, self.fd, list(buffers), offset, length)
        finally:
            self._end(ticket)

    def try_read_into(self, offset: int, buffers: Sequence[memoryview]) -> int:
        """read_into if the page cache holds every byte now; BlockingIOError if not.

        Lets an event loop serve cached reads itself instead of handing each to
        an I/O thread (a thread hand-off costs more than the copy). Nothing
        waits for a disk here: preadv with RWF_NOWAIT fails rather than block.
        """
        if not self.nowait_reads:
            raise BlockingIOError(errno.EAGAIN, "this backing store cannot say whether a read would block")
        length = sum(len(b) for b in buffers)
        self._check_range(offset, length)
        ticket = self._begin()
        try:
            return _full_io(_preadv_nowait, self.fd, list(buffers), offset, length)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self.nowait_reads = False  # the filesystem has no RWF_NOWAIT: always use threads
                raise BlockingIOError(errno.EAGAIN, "RWF_NOWAIT not supported") from None
            raise
        finally:
            self._end(ticket)

    def reads_served(self, count: int, nbytes: int) -> None:
        """`count` reads of `nbytes` in all were served from this store's page
        cache without read_into (the vds's C walk step reads the file itself).
        Nothing to do here; a subclass that counts reads overrides it."""

    def write_from(self, offset: int, buffers: Sequence[memoryview]) -> int:
        """Write `buffers` at `offset` (pwritev); stable on return if the cache is off."""
        if self.read_only:
            raise OSError(errno.EROFS, f"{self.path} is exported read-only")
        length = sum(len(b) for b in buffers)
        self._check_range(offset, length)
        ticket = self._begin()
        try:
            written = _full_io(os.pwritev, self.fd, list(buffers), offset, length)
            if not self._write_cache:
                os.fdatasync(self.fd)
            return written
        finally:
            self._end(ticket)

    def discard(self, offset: int, length: int) -> None:
        """Give the range back to the filesystem (reads return zeros afterwards)."""
        self.write_zeroes(offset, length, unmap=True)

    def write_zeroes(self, offset: int, length: int, *, unmap: bool = False) -> None:
        if self.read_only:
            raise OSError(errno.EROFS, f"{self.path} is exported read-only")
        self._check_range(offset, length)
        ticket = self._begin()
        try:
            if self.info.is_block_device:
                _zero_fill(self.fd, offset, length)
            else:
                mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE if unmap else FALLOC_FL_ZERO_RANGE
                try:
                    _fallocate(self.fd, mode, offset, length)
                except OSError:
                    _zero_fill(self.fd, offset, length)
            if not self._write_cache:
                os.fdatasync(self.fd)
        finally:
            self._end(ticket)

    # ---- cache mode ---------------------------------------------------------------------

    @property
    def write_cache(self) -> bool:
        return self._write_cache

    @write_cache.setter
    def write_cache(self, enabled: bool) -> None:
        """Turning the cache off first makes what it holds stable."""
        if not enabled and self._write_cache:
            self.flush()
        self._write_cache = enabled

    # ---- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        if not self.closed:
            if not self.read_only:
                self.flush()
            os.close(self.fd)
            self.closed = True

    def __enter__(self) -> DiskEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals ----------------------------------------------------------------------

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.info.size_bytes:
            raise OSError(errno.EINVAL, f"{length} bytes at offset {offset} are outside {self.path} ({self.info.size_bytes} bytes)")

    def _begin(self) -> int:
        with self._lock:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._in_flight.add(ticket)
            return ticket

    def _end(self, ticket: int) -> None:
        with self._lock:
            self._in_flight.discard(ticket)
            self._idle.notify_all()


def create_sparse_file(path: str, size: int) -> None:
    """A new file of `size` bytes that takes no space until written."""
    if size <= 0:
        raise OSError(errno.EINVAL, f"disk size must be positive, not {size}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _probe(fd: int, path: str, block_size: int | None) -> StoreInfo:
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        size = struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, bytes(8)))[0]
        logical = struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, bytes(4)))[0]
        return StoreInfo(path, True, size, block_size or logical)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, f"{path} is neither a regular file nor a block device")
    return StoreInfo(path, False, st.st_size, block_size or 512)


def _full_io(call, fd: int, buffers: list[memoryview], offset: int, length: int) -> int:
    """preadv/pwritev until everything moved (they may return short counts)."""
    done = 0
    while done < length:
        count = call(fd, buffers, offset + done)
        if count <= 0:
            raise OSError(errno.EIO, f"short transfer: {done} of {length} bytes")
        done += count
        if done < length:
            buffers = _advance(buffers, count)
    return done


def _preadv_nowait(fd: int, buffers: list[memoryview], offset: int) -> int:
    return os.preadv(fd, buffers, offset, os.RWF_NOWAIT)


def _advance(buffers: list[memoryview], count: int) -> list[memoryview]:
    while count and buffers:
        first = buffers[0]
        if count >= len(first):
            count -= len(first)
            buffers = buffers[1:]
        else:
            buffers = [first[count:]] + buffers[1:]
            count = 0
    return buffers


FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.fallocate(fd, ctypes.c_int(mode), ctypes.c_long(offset), ctypes.c_long(length)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _zero_fill(fd: int, offset: int, length: int) -> None:
    chunk = bytes(min(length, 1 << 20))
    done = 0
    while done < length:
        take = min(len(chunk), length - done)
        os.pwrite(fd, chunk[:take], offset + done)
        done += take
