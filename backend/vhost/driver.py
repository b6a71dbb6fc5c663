"""The driver's side of guest memory and split virtqueues: what a guest kernel does, for the front-end.

`GuestRam` is memfd-backed "guest memory" with a small allocator; `DriverQueue`
lays out a split ring in it, adds chains (direct or indirect), reads the used
ring and decides when to kick, like Linux's virtio_ring. With an `Iommu`
(iommu.py) the queue does what the DMA API does: rings are mapped once,
each chain's buffers are mapped when added and unmapped when returned, and
the device only ever sees I/O virtual addresses. Tests and the guest
simulator also use the raw writers to hand a back-end deliberately bad rings.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass

from .constants import (
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
)
from .iommu import Iommu
from .messages import MemoryRegion, VringAddr
from .ring_words import fence, words
from .virtqueue import DESC, USED_ELEM, check_queue_size, ring_sizes

PAGE = 4096


@dataclass(frozen=True, slots=True)
class Buffer:
    """A range of guest memory by guest-physical address."""

    gpa: int
    length: int


class GuestRam:
    """Guest memory in a memfd the back-end maps too, with a first-fit allocator."""

    def __init__(self, size: int, *, gpa_base: int = 0, name: str = "vhost-guest-ram") -> None:
        if size <= 0 or size % PAGE:
            raise ValueError(f"guest memory size {size} must be a positive multiple of {PAGE}")
        self.size = size
        self.gpa_base = gpa_base
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.fd, size)
        self._map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.data = memoryview(self._map)
        self.uva = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        self._free: list[tuple[int, int]] = [(0, size)]  # (offset, length), sorted

    def region(self) -> MemoryRegion:
        return MemoryRegion(self.gpa_base, self.size, self.uva, 0)

    def alloc(self, length: int, align: int = 16) -> Buffer:
        for slot, (start, size) in enumerate(self._free):
            aligned = -(-start // align) * align
            if aligned + length <= start + size:
                pieces = [(start, aligned - start), (aligned + length, start + size - aligned - length)]
                self._free[slot : slot + 1] = [p for p in pieces if p[1]]
                return Buffer(self.gpa_base + aligned, length)
        raise MemoryError(f"guest memory has no {length} free bytes aligned to {align}")

    def free(self, buffer: Buffer) -> None:
        self._free.append((buffer.gpa - self.gpa_base, buffer.length))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for start, size in self._free:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1] = (merged[-1][0], merged[-1][1] + size)
            else:
                merged.append((start, size))
        self._free = merged

    def view(self, gpa: int, length: int) -> memoryview:
        offset = gpa - self.gpa_base
        if offset < 0 or offset + length > self.size:
            raise ValueError(f"GPA 0x{gpa:x}+{length} is outside guest memory")
        return self.data[offset : offset + length]

    def uva_of(self, gpa: int) -> int:
        return self.uva + gpa - self.gpa_base

    def close(self) -> None:
        self.data.release()
        try:
            self._map.close()
        except BufferError:
            pass  # views handed out still exist; the mapping goes with them
        os.close(self.fd)


class DriverQueue:
    """The driver half of one split virtqueue in `ram`."""

    def __init__(self, ram: GuestRam, index: int, size: int, *, event_idx: bool = False, iommu: Iommu | None = None) -> None:
        check_queue_size(size)
        self.ram = ram
        self.iommu = iommu
        self.unmapped: list[tuple[int, int]] = []  # IOVA ranges unmapped since the front-end last looked
        self.index = index
        self.size = size
        self.event_idx = event_idx
        desc_len, avail_len, used_len = ring_sizes(size)
        self.desc_buf = ram.alloc(desc_len, PAGE)
        self.avail_buf = ram.alloc(avail_len, 2)
        self.used_buf = ram.alloc(used_len, PAGE)
        self.desc = ram.view(self.desc_buf.gpa, desc_len)
        self.avail = ram.view(self.avail_buf.gpa, avail_len)
        self.used = ram.view(self.used_buf.gpa, used_len)
        for view in (self.desc, self.avail, self.used):
            view[:] = bytes(len(view))
        self.avail_words, self.used_words = words(self.avail), words(self.used)  # the words the device reads as we write
        self._free_heads = list(range(size))
        self._chains: dict[int, tuple[list[int], Buffer | None]] = {}
        self._dma: dict[int, list[tuple[int, int]]] = {}  # head -> IOVA ranges mapped for the chain
        if iommu is not None:
            self._ring_iovas = [iommu.map(b.gpa, b.length, write) for b, write in
                                ((self.desc_buf, False), (self.avail_buf, False), (self.used_buf, True))]
        self.avail_idx = 0
        self.last_used = 0
        self._kicked_at = 0

    def addresses(self) -> VringAddr:
        """SET_VRING_ADDR payload: ring addresses in the front-end's virtual address space (IOVAs behind an IOMMU)."""
        if self.iommu is not None:
            desc, avail, used = self._ring_iovas
            return VringAddr(self.index, 0, desc, used, avail)
        return VringAddr(self.index, 0, self.ram.uva_of(self.desc_buf.gpa), self.ram.uva_of(self.used_buf.gpa), self.ram.uva_of(self.avail_buf.gpa))

    def _bus(self, buffer: Buffer, write: bool, mapped: list[tuple[int, int]]) -> int:
        """The address the device is given for a buffer: its GPA, or a fresh IOVA mapping."""
        if self.iommu is None:
            return buffer.gpa
        iova = self.iommu.map(buffer.gpa, buffer.length, write)
        mapped.append((iova, buffer.length))
        return iova

    @property
    def free_descriptors(self) -> int:
        return len(self._free_heads)

    def add(self, readable: Sequence[Buffer], writable: Sequence[Buffer] = (), *, indirect: bool = False) -> int:
        """Make one chain available; returns its head (the id the used ring will carry)."""
        parts = [(b, 0) for b in readable] + [(b, VRING_DESC_F_WRITE) for b in writable]
        if not parts:
            raise ValueError("a chain needs at least one buffer")
        mapped: list[tuple[int, int]] = []
        if indirect:
            table = self.ram.alloc(16 * len(parts), 16)
            view = self.ram.view(table.gpa, table.length)
            for i, (buffer, flags) in enumerate(parts):
                last = i == len(parts) - 1
                DESC.pack_into(view, 16 * i, self._bus(buffer, bool(flags), mapped), buffer.length,
                               flags | (0 if last else VRING_DESC_F_NEXT), 0 if last else i + 1)
            head = self._take(1)[0]
            self.write_descriptor(head, self._bus(table, False, mapped), table.length, VRING_DESC_F_INDIRECT, 0)
            self._chains[head] = ([head], table)
        else:
            if len(parts) > len(self._free_heads):
                raise MemoryError(f"queue {self.index} has {len(self._free_heads)} free descriptors, chain needs {len(parts)}")
            ids = self._take(len(parts))
            for i, (buffer, flags) in enumerate(parts):
                last = i == len(parts) - 1
                self.write_descriptor(ids[i], self._bus(buffer, bool(flags), mapped), buffer.length,
                                      flags | (0 if last else VRING_DESC_F_NEXT), 0 if last else ids[i + 1])
            head = ids[0]
            self._chains[head] = (ids, None)
        self._dma[head] = mapped
        self.publish(head)
        return head

    def _take(self, count: int) -> list[int]:
        if count > len(self._free_heads):
            raise MemoryError(f"queue {self.index} is full")
        taken, self._free_heads = self._free_heads[:count], self._free_heads[count:]
        return taken

    def write_descriptor(self, index: int, addr: int, length: int, flags: int, next_index: int) -> None:
        """Raw access (also for handing a back-end bad descriptors on purpose)."""
        DESC.pack_into(self.desc, 16 * index, addr, length, flags, next_index)

    def publish(self, head: int) -> None:
        """Put `head` in the avail ring and move the index (the element first, then the index)."""
        self.avail_words[2 + self.avail_idx % self.size] = head
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.avail_words[1] = self.avail_idx

    def set_avail_idx(self, value: int) -> None:
        """Raw: claim any avail index (bad-input tests)."""
        self.avail_idx = value & 0xFFFF
        self.avail_words[1] = self.avail_idx

    def kick_needed(self) -> bool:
        """Does the device want a kick for what we published since the last one? (2.7.10)"""
        new, old = self.avail_idx, self._kicked_at
        self._kicked_at = new
        fence()  # the avail index we published, before we read whether the device wants a kick
        if self.event_idx:
            avail_event = self.used_words[2 + 4 * self.size]
            return ((new - avail_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        return not self.used_words[0] & VRING_USED_F_NO_NOTIFY

    def take_used(self, *, rearm: bool = True) -> list[tuple[int, int]]:
        """Chains the device returned since last time: (head, bytes written). Frees their descriptors.

        With event index, `rearm` asks for a call on the next completion; without
        it the used_event index stays behind and the device does not call (a
        transmit queue reclaims its buffers when it needs them instead)."""
        out = []
        used_idx = self.used_words[1]
        while self.last_used != used_idx:
            head, written = USED_ELEM.unpack_from(self.used, 4 + 8 * (self.last_used % self.size))
            self.last_used = (self.last_used + 1) & 0xFFFF
            ids, table = self._chains.pop(head, ([], None))
            self._free_heads += ids
            for iova, length in self._dma.pop(head, []):
                self.unmapped.append(self.iommu.unmap(iova, length))  # type: ignore[union-attr]
            if table is not None:
                self.ram.free(table)
            out.append((head, written))
        if self.event_idx and rearm:
            self.avail_words[2 + self.size] = self.last_used  # used_event: call me on the next one
            fence()  # before the caller looks at the used index again (pending_used)
        return out

    def used_index(self) -> int:
        """The used ring's index as the device last wrote it."""
        return self.used_words[1]

    def pending_used(self) -> bool:
        return self.used_words[1] != self.last_used


__all__ = ["Buffer", "DriverQueue", "GuestRam"]
