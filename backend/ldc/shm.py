"""memfd-backed shared memory for one channel end: our exports, the peer's pages."""

from __future__ import annotations

import mmap
import os

from ..errors import ProtocolError
from .memory import MTE, MapTable, PeerMemory, Segment

#: Upper bound on what a peer may make us map (table or one segment).
MAX_PEER_MAPPING = 1 << 34


def memfd_buffer(name: str, size: int) -> tuple[int, mmap.mmap]:
    """A new memfd of `size` bytes and a shared writable mapping of it."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        return fd, mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise


def map_peer_fd(fd: int, size: int, what: str, writable: bool) -> mmap.mmap:
    """Map a memfd the peer sent, after checking it really is `size` bytes."""
    actual = os.fstat(fd).st_size
    if actual != size or not 0 < size <= MAX_PEER_MAPPING:
        raise ProtocolError(f"peer's {what} is {actual} bytes, record says {size}")
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    return mmap.mmap(fd, size, mmap.MAP_SHARED, prot)


class SharedMemory:
    """Our map table and segments, and what we have mapped of the peer's."""

    def __init__(self, table_entries: int = 4096) -> None:
        self.table_fd, self._table_map = memfd_buffer("ldc-map-table", table_entries * MTE.size)
        self.table = MapTable(self._table_map)
        self.table_entries = table_entries
        self._segments: list[tuple[int, Segment, mmap.mmap]] = []
        self._peer_segments: dict[int, memoryview] = {}
        self._peer_maps: list[mmap.mmap] = []
        self.peer: PeerMemory | None = None
        self._next_id = 1

    def allocate(self, size: int) -> tuple[Segment, int]:
        """A new segment we can export; returns it and the fd to send the peer."""
        fd, buffer = memfd_buffer(f"ldc-segment-{self._next_id}", size)
        segment = Segment(self._next_id, buffer)
        self._next_id += 1
        self.table.add_segment(segment)
        self._segments.append((fd, segment, buffer))
        return segment, fd

    def peer_table(self, entries: int, fd: int) -> None:
        """The peer shared its map table (read-only for us)."""
        mapping = map_peer_fd(fd, entries * MTE.size, "map table", writable=False)
        self._peer_maps.append(mapping)
        self.peer = PeerMemory(memoryview(mapping), self._peer_segments)

    def peer_segment(self, segment_id: int, size: int, fd: int) -> None:
        if segment_id in self._peer_segments:
            raise ProtocolError(f"peer shared segment {segment_id} twice")
        mapping = map_peer_fd(fd, size, f"segment {segment_id}", writable=True)
        self._peer_maps.append(mapping)
        self._peer_segments[segment_id] = memoryview(mapping)

    def close(self) -> None:
        os.close(self.table_fd)
        for fd, _, _ in self._segments:
            os.close(fd)
        # The mappings themselves go when the last view of them does.
