"""LDC shared memory: the exporter's map table, cookies, and the importer's view.

Theory of operation
-------------------
On sun4v the hypervisor resolves cookies: each domain registers a map table
whose entries (MTEs) name a real page and what the peer may do with it, and
`ldc_copy` / `ldc_mem_map` look a cookie up in the *exporter's* table. We play
the hypervisor's part with shared memory: the exporter's table lives in a
buffer the importer can read (over the Unix transport: a memfd), and the
pages live in *segments* (also memfds) known to both sides by a number.

An MTE keeps the hypervisor's layout: a "real address" under the mask
0x0fffffffffffe000, permissions in bits 10..4, the page-size code in bits
3..0. Our real address is
(segment number << 36) | offset in the segment. An entry with no permission
bits is invalid, so clearing an entry revokes it at once for the importer.

Everything the importer reads from the table is untrusted: segment numbers,
offsets and sizes are checked against what was really shared before any
byte is touched.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntFlag
from typing import Any, NamedTuple

from ..errors import GuestError, LinkDownError

COOKIE_CODE_SHIFT = 60
BASE_PAGE_SHIFT = 13  # 8 KiB, the sun4v base page
MAX_PAGE_CODE = 3  # 8 KiB, 64 KiB, 512 KiB, 4 MiB
SEGMENT_SHIFT = 36  # our real address: segment number above, offset below
MAX_SEGMENT_ID = (1 << (56 - SEGMENT_SHIFT)) - 1
MAX_SEGMENT_SIZE = 1 << SEGMENT_SHIFT
MTE_ADDRESS_MASK = 0x0FFF_FFFF_FFFF_E000
MTE_PAGE_CODE_MASK = 0xF
MTE = struct.Struct(">Q")
_MTE_UNPACK = MTE.unpack_from
_INDEX_BITS = (1 << COOKIE_CODE_SHIFT) - 1
_MTE_PERM_BITS = 0x7F0
_OFFSET_IN_SEGMENT = (MAX_SEGMENT_SIZE - 1) & MTE_ADDRESS_MASK
TRANSPORT_COOKIE = struct.Struct(">QQ")


class Perm(IntFlag):
    """MTE permission bits, as the sun4v hypervisor defines them."""

    READ = 0x010  # direct map, read
    WRITE = 0x020  # direct map, write
    EXEC = 0x040
    IOMMU_READ = 0x080
    IOMMU_WRITE = 0x100
    COPY_READ = 0x200  # the importer may copy in (read the page)
    COPY_WRITE = 0x400  # the importer may copy out (write the page)

    @classmethod
    def all_bits(cls) -> int:
        return sum(int(p) for p in cls)


_COPY_READ, _COPY_WRITE = int(Perm.COPY_READ), int(Perm.COPY_WRITE)
_ALL_PERMS = Perm.all_bits()

#: What a typical read/write buffer grants: copy both ways and direct mapping.
PERM_RW = Perm.READ | Perm.WRITE | Perm.COPY_READ | Perm.COPY_WRITE
PERM_RO = Perm.READ | Perm.COPY_READ


class CookieError(GuestError):
    """A cookie names memory that is not (or no longer) shared, or not that way."""


def page_shift(code: int) -> int:
    """log2 of the page size for a page-size code (each code step is x8)."""
    return BASE_PAGE_SHIFT + 3 * code


def make_cookie(code: int, index: int, offset: int) -> int:
    if not 0 <= code <= MAX_PAGE_CODE:
        raise ValueError(f"page-size code {code} not in 0..{MAX_PAGE_CODE}")
    shift = page_shift(code)
    if not 0 <= offset < 1 << shift:
        raise ValueError(f"offset {offset} outside a page of code {code}")
    if not 0 <= index < 1 << (COOKIE_CODE_SHIFT - shift):
        raise ValueError(f"map table index {index} does not fit a cookie of code {code}")
    return (code << COOKIE_CODE_SHIFT) | (index << shift) | offset


def split_cookie(cookie: int) -> tuple[int, int, int]:
    """(page-size code, map-table index, offset in page) of a cookie."""
    code = cookie >> COOKIE_CODE_SHIFT
    shift = page_shift(code)
    return code, (cookie & ((1 << COOKIE_CODE_SHIFT) - 1)) >> shift, cookie & ((1 << shift) - 1)


class TransportCookie(NamedTuple):
    """What goes on the wire: a cookie and how many bytes are valid from it.

    A NamedTuple rather than a dataclass: one is built per descriptor on the
    data path, and a tuple is several times cheaper to make.
    """

    addr: int
    size: int

    def encode(self) -> bytes:
        return TRANSPORT_COOKIE.pack(self.addr, self.size)

    @classmethod
    def decode(cls, data: bytes | memoryview, offset: int = 0) -> TransportCookie:
        if len(data) - offset < TRANSPORT_COOKIE.size:
            raise CookieError(f"transport cookie truncated: {len(data) - offset} of 16 bytes")
        return cls._make(TRANSPORT_COOKIE.unpack_from(data, offset))


class Segment:
    """A piece of memory one side shares: a number and a writable buffer."""

    def __init__(self, segment_id: int, buffer: bytearray | memoryview | object) -> None:
        if not 0 < segment_id <= MAX_SEGMENT_ID:
            raise ValueError(f"segment id {segment_id} out of range 1..{MAX_SEGMENT_ID}")
        self.id = segment_id
        self.view = memoryview(buffer).cast("B")  # type: ignore[arg-type]
        if len(self.view) > MAX_SEGMENT_SIZE:
            raise ValueError("segment larger than 64 GiB")

    @property
    def size(self) -> int:
        return len(self.view)


@dataclass(frozen=True, slots=True)
class Export:
    """One exported buffer: its cookies and the table entries behind them."""

    cookies: tuple[TransportCookie, ...]
    first_index: int
    count: int
    generation: int = 0  # the table's generation when exported (revoke_all starts a new one)


_FREE_RUNS: dict[int, bytes] = {}


class MapTable:
    """The exporter's side: allocates table entries and writes MTEs."""

    def __init__(self, buffer: bytearray | memoryview | object) -> None:
        self._table = memoryview(buffer).cast("B")  # type: ignore[arg-type]
        if len(self._table) % MTE.size or not self._table:
            raise ValueError("map table size must be a non-zero multiple of 8 bytes")
        self.entries = len(self._table) // MTE.size
        self._used = bytearray(self.entries)
        self._segments: dict[int, Segment] = {}
        self.generation = 0
        self._cursor = 0

    def add_segment(self, segment: Segment) -> None:
        """Make a segment's pages exportable (the transport shares it with the peer)."""
        self._segments[segment.id] = segment

    def export(self, segment: Segment, offset: int, length: int, perms: int, page_code: int = 0) -> Export:
        """Share `length` bytes at `offset` of `segment`; returns the cookies."""
        if self._segments.get(segment.id) is not segment:
            raise ValueError(f"segment {segment.id} was not added to this map table")
        if not 0 <= page_code <= MAX_PAGE_CODE:
            raise ValueError(f"page-size code {page_code} not in 0..{MAX_PAGE_CODE}")
        if length <= 0 or offset < 0 or offset + length > segment.size:
            raise ValueError(f"export of {length} bytes at {offset} outside segment of {segment.size} bytes")
        perms = int(perms)
        if perms & ~_ALL_PERMS or not perms:
            raise ValueError(f"bad permission bits 0x{perms:x}")
        shift = BASE_PAGE_SHIFT + 3 * page_code
        first_page = offset >> shift
        last_page = (offset + length - 1) >> shift
        if (last_page + 1) << shift > segment.size:
            raise ValueError(f"segment size {segment.size} is not a whole number of {1 << shift}-byte pages")
        count = last_page - first_page + 1
        index = self._allocate(count)
        # One pack for all the entries: consecutive pages of one segment.
        first = (segment.id << SEGMENT_SHIFT) | (first_page << shift) | perms | page_code
        step = 1 << shift
        if count == 1:
            MTE.pack_into(self._table, index * MTE.size, first)
        else:
            struct.pack_into(f">{count}Q", self._table, index * MTE.size, *range(first, first + count * step, step))
        # Consecutive entries covering contiguous memory need only one cookie.
        cookie = TransportCookie(make_cookie(page_code, index, offset & (step - 1)), length)
        return Export((cookie,), index, count, self.generation)

    def unmap(self, export: Export) -> None:
        """Revoke an export: the importer's next access fails.

        An export that revoke_all() already took (a channel reset) is gone:
        unmapping it again is harmless and does nothing.
        """
        if export.generation != self.generation:
            return
        first, count = export.first_index, export.count
        if self._used.find(0, first, first + count) >= 0:
            raise ValueError(f"map table entries {first}..{first + count - 1} are not all in use")
        self._table[first * MTE.size : (first + count) * MTE.size] = bytes(count * MTE.size)
        self._used[first : first + count] = bytes(count)

    def revoke_all(self) -> None:
        """Clear every entry (used on channel reset: no cookie outlives a session)."""
        self._table[:] = bytes(len(self._table))
        self._used[:] = bytes(self.entries)
        self.generation += 1

    @property
    def entries_in_use(self) -> int:
        return sum(self._used)

    def _allocate(self, count: int) -> int:
        """Next fit: search on from the last allocation (round-robin, as illumos does),
        so a busy table is not rescanned from the start every time."""
        free = _FREE_RUNS.get(count) or _FREE_RUNS.setdefault(count, bytes(count))
        start = self._used.find(free, self._cursor)
        if start < 0:
            start = self._used.find(free)
        if start < 0:
            raise MemoryError(f"map table full: no {count} consecutive free entries of {self.entries}")
        self._used[start : start + count] = b"\1" * count
        self._cursor = start + count
        return start


class PeerMemory:
    """The importer's side: resolves the peer's cookies through its map table."""

    def __init__(self, table: memoryview | bytes | bytearray, segments: Mapping[int, memoryview]) -> None:
        self._table: memoryview | None = memoryview(table).cast("B")
        self._entries = len(self._table) // MTE.size
        self._segments: Mapping[int, memoryview] | None = segments
        self._native: tuple[Any, int, list[Any]] | None = None  # see native_view(): view, segments in it, what keeps it valid

    def revoke(self) -> None:
        """Forget the peer's memory (channel reset or unmap of everything)."""
        self._table = None
        self._segments = None
        self._native = None

    def native_view(self) -> Any | None:
        """This memory as the C data path sees it (`struct ldc_peer_memory *`,
        backend/native/ldc.h), or None once revoked.

        Built again whenever the peer has shared another segment since; the
        pointers stay valid as long as the views (kept with it) do.
        """
        table, segments = self._table, self._segments
        if table is None or segments is None:
            return None
        if self._native is not None and self._native[1] == len(segments):
            return self._native[0]
        from ..native import native, pin

        ffi, _ = native()
        items = list(segments.items())
        array = ffi.new("struct ldc_segment[]", max(1, len(items)))
        table_keep, table_bytes = pin(table)
        keep: list[Any] = [array, table_keep]
        for slot, (segment_id, view) in zip(array, items):
            if view.readonly:
                raise ValueError(f"segment {segment_id} is read-only memory")
            buffer_keep, buffer = pin(view)
            keep.append(buffer_keep)
            slot.id, slot.base, slot.size = segment_id, buffer, len(view)
        view = ffi.new("struct ldc_peer_memory *", {"table": table_bytes, "entries": self._entries,
                                                      "segments": array, "nsegments": len(items)})
        self._native = (view, len(items), keep)
        return view

    def resolve(self, cookies: Iterable[TransportCookie], offset: int, length: int, need: int) -> list[memoryview]:
        """Views of `length` bytes starting `offset` bytes into the cookies' memory.

        Every page touched must be a valid entry granting `need`; the views
        cover exactly the bytes asked for, so nothing outside can be reached.
        """
        if self._table is None or self._segments is None:
            raise LinkDownError("peer memory was revoked (channel reset)")
        if offset < 0 or length < 0:
            raise CookieError(f"negative offset {offset} or length {length}")
        runs: list[list] = []  # [segment view, start, length], merged when contiguous
        remaining = length
        for cookie in cookies:
            if remaining == 0:
                break
            if offset >= cookie.size:
                offset -= cookie.size
                continue
            take = min(cookie.size - offset, remaining)
            self._resolve_cookie(cookie, offset, take, need, runs)
            remaining -= take
            offset = 0
        if remaining:
            raise CookieError(f"cookies cover {length - remaining} of the {length} bytes asked for")
        return [segment[start : start + size] for segment, start, size in runs]

    def copy_in(self, cookies: Sequence[TransportCookie], offset: int, dest: memoryview | bytearray) -> int:
        """Copy the peer's memory into `dest` (needs COPY_READ); returns bytes copied."""
        length = len(dest)
        if len(cookies) == 1 and offset == 0 and length <= cookies[0].size:
            view = self._contiguous(cookies[0].addr, length, _COPY_READ)
            if view is not None:
                dest[:] = view
                return length
        dest = memoryview(dest).cast("B")
        position = 0
        for view in self.resolve(cookies, offset, length, _COPY_READ):
            dest[position : position + len(view)] = view
            position += len(view)
        return position

    def read(self, cookies: Sequence[TransportCookie], length: int, start: int, stop: int) -> bytes:
        """Bytes `start`..`stop` of the first `length` bytes of the cookies' memory.

        The peer must grant COPY_READ for all `length` bytes (as for copy_in);
        the slice is copied once, straight out of the shared pages.
        """
        if not 0 <= start <= stop <= length:
            raise CookieError(f"slice {start}..{stop} outside the {length} bytes asked for")
        if len(cookies) == 1 and length <= cookies[0].size:
            view = self._contiguous(cookies[0].addr, length, _COPY_READ)
            if view is not None:
                return bytes(view[start:stop])
        buffer = bytearray(length)
        self.copy_in(cookies, 0, buffer)
        return bytes(buffer[start:stop])

    def copy_out(self, cookies: Sequence[TransportCookie], offset: int, data: bytes | bytearray | memoryview) -> int:
        """Copy `data` into the peer's memory (needs COPY_WRITE); returns bytes copied."""
        data = memoryview(data).cast("B")
        position = 0
        for view in self.resolve(cookies, offset, len(data), _COPY_WRITE):
            view[:] = data[position : position + len(view)]
            position += len(view)
        return position

    def map(self, cookies: Sequence[TransportCookie], length: int, writable: bool) -> list[memoryview]:
        """Direct views of the peer's memory (needs READ, and WRITE if writable)."""
        need = int(Perm.READ) | (int(Perm.WRITE) if writable else 0)
        views = self.resolve(cookies, 0, length, need)
        return views if writable else [v.toreadonly() for v in views]

    def _contiguous(self, addr: int, length: int, need: int) -> memoryview | None:
        """The common case in one go: `length` bytes from a cookie, all in one
        segment through consecutive entries. None when the pages are not
        contiguous (the general path handles that); CookieError when not allowed."""
        table, segments = self._table, self._segments
        code = addr >> COOKIE_CODE_SHIFT
        if table is None or segments is None or not length or code > MAX_PAGE_CODE:
            return None  # the general path reports what is wrong
        shift = BASE_PAGE_SHIFT + 3 * code
        page_mask = (1 << shift) - 1
        position = addr & page_mask
        index = (addr & _INDEX_BITS) >> shift
        count = (position + length + page_mask) >> shift
        if index + count > self._entries:
            return None
        if count == 1:
            (entry,) = _MTE_UNPACK(table, index << 3)
        else:
            entries = struct.unpack_from(f">{count}Q", table, index << 3)
            entry = entries[0]
            if list(entries) != list(range(entry, entry + (count << shift), 1 << shift)):
                return None
        if entry & MTE_PAGE_CODE_MASK != code or entry & need != need:  # need is never 0
            return None
        segment = segments.get((entry & MTE_ADDRESS_MASK) >> SEGMENT_SHIFT)
        start = (entry & _OFFSET_IN_SEGMENT) + position
        if segment is None or start + length > len(segment):
            return None
        return segment[start : start + length]

    def _resolve_cookie(self, cookie: TransportCookie, offset: int, length: int, need: int, runs: list[list]) -> None:
        assert self._table is not None
        addr = cookie.addr
        code = addr >> COOKIE_CODE_SHIFT
        if code > MAX_PAGE_CODE:
            raise CookieError(f"cookie 0x{addr:016x}: page-size code {code} unknown")
        shift = BASE_PAGE_SHIFT + 3 * code
        page_size = 1 << shift
        position = (addr & (page_size - 1)) + offset  # bytes from the start of page `index`
        index = ((addr & _INDEX_BITS) >> shift) + (position >> shift)
        position &= page_size - 1
        count = (position + length + page_size - 1) >> shift
        if index + count > self._entries:
            raise CookieError(f"cookie 0x{addr:016x}: map table index {max(index, self._entries)} out of range")
        if count == 1:
            self._add_run(cookie, index, _MTE_UNPACK(self._table, index * 8)[0], position, length, need, code, runs)
            return
        entries = struct.unpack_from(f">{count}Q", self._table, index * 8)
        first = entries[0]
        if list(entries) == list(range(first, first + count * page_size, page_size)):
            # The common case: consecutive entries for consecutive pages of one segment.
            self._add_run(cookie, index, first, position, length, need, code, runs)
            return
        for entry in entries:
            take = min(page_size - position, length)
            self._add_run(cookie, index, entry, position, take, need, code, runs)
            length -= take
            position = 0
            index += 1

    def _add_run(self, cookie: TransportCookie, index: int, entry: int, position: int, length: int, need: int, code: int, runs: list[list]) -> None:
        """Check one entry (and the bytes after it that it stands for) and record them."""
        assert self._segments is not None
        if entry & MTE_PAGE_CODE_MASK != code or not entry & _MTE_PERM_BITS:
            raise CookieError(f"cookie 0x{cookie.addr:016x}: map table entry {index} is not valid (revoked?)")
        if entry & need != need:
            raise CookieError(f"cookie 0x{cookie.addr:016x}: entry {index} lacks permission 0x{need:x}")
        real = entry & MTE_ADDRESS_MASK
        segment = self._segments.get(real >> SEGMENT_SHIFT)
        start = (real & (MAX_SEGMENT_SIZE - 1)) + position
        if segment is None or start + length > len(segment):
            raise CookieError(f"cookie 0x{cookie.addr:016x}: entry {index} points outside shared memory")
        last = runs[-1] if runs else None
        if last is not None and last[0] is segment and last[1] + last[2] == start:
            last[2] += length
        else:
            runs.append([segment, start, length])
