"""memfd-backed shared memory for one channel end: our exports, the peer's pages."""

from __future__ import annotations

import mmap
import os

from ..errors import ProtocolError
from .memory import MAX_SEGMENT_ID, MTE, MapTable, PeerMemory, Segment

#: Upper bounds on what a peer may make us map: one table or segment, all of them, how many.
MAX_PEER_MAPPING = 1 << 34
MAX_PEER_TOTAL = 1 << 36
MAX_PEER_SEGMENTS = 4096


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
    try:
        actual = os.fstat(fd).st_size
        if actual != size or not 0 < size <= MAX_PEER_MAPPING:
            raise ProtocolError(f"peer's {what} is {actual} bytes, record says {size} (limit {MAX_PEER_MAPPING})")
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        return mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
    except (OSError, ValueError) as exc:
        raise ProtocolError(f"cannot map the peer's {what}: {exc}") from exc


class SharedMemory:
    """Our map table and segments, and what we have mapped of the peer's."""

    def __init__(self, table_entries: int = 4096) -> None:
        self.table_fd, self._table_map = memfd_buffer("ldc-map-table", table_entries * MTE.size)
        self.table = MapTable(self._table_map)
        self.table_entries = table_entries
        self._segments: list[tuple[int, Segment, mmap.mmap]] = []
        self._peer_segments: dict[int, memoryview] = {}
        self._peer_maps: list[mmap.mmap] = []
        self._peer_total = 0
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
        if self.peer is not None:
            raise ProtocolError("peer shared its map table twice")
        mapping = map_peer_fd(fd, entries * MTE.size, "map table", writable=False)
        self._peer_maps.append(mapping)
        self.peer = PeerMemory(memoryview(mapping), self._peer_segments)

    def peer_segment(self, segment_id: int, size: int, fd: int) -> None:
        if not 0 < segment_id <= MAX_SEGMENT_ID:
            raise ProtocolError(f"peer's segment number {segment_id} is out of range 1..{MAX_SEGMENT_ID}")
        if segment_id in self._peer_segments:
            raise ProtocolError(f"peer shared segment {segment_id} twice")
        if len(self._peer_segments) >= MAX_PEER_SEGMENTS or self._peer_total + size > MAX_PEER_TOTAL:
            raise ProtocolError(f"peer shares more than {MAX_PEER_SEGMENTS} segments or {MAX_PEER_TOTAL} bytes")
        mapping = map_peer_fd(fd, size, f"segment {segment_id}", writable=True)
        self._peer_maps.append(mapping)
        self._peer_segments[segment_id] = memoryview(mapping)
        self._peer_total += size

    def close(self) -> None:
        os.close(self.table_fd)
        for fd, _, _ in self._segments:
            os.close(fd)
        # The mappings (and the duplicate fd each mmap keeps) go when the last
        # view of them does: a caller may still hold a Segment.
