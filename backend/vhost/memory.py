"""Guest memory as the back-end sees it: regions, and address spaces that translate with bounds checks.

vhost-user names memory two ways: descriptors carry guest-physical addresses
(GPA), SET_VRING_ADDR carries the front-end's own virtual addresses (UVA).
Both resolve through the same regions. With VIRTIO_F_ACCESS_PLATFORM a third
way, I/O virtual addresses, goes through the device IOTLB (iotlb.py) first;
the virtqueue only sees the `AddressSpace` seam.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from ..errors import GuestError
from .messages import MemoryRegion


class AddressSpace(Protocol):
    """Turns (address, length) into views of shared memory, or raises GuestError."""

    def views(self, addr: int, length: int, write: bool = False) -> list[memoryview]: ...

    def view(self, addr: int, length: int, write: bool = False) -> memoryview: ...

    def end_request(self) -> None:
        """A request was taken whole: translations kept only for it may go (IOTLB rule)."""


@dataclass(frozen=True, slots=True)
class MappedRegion:
    region: MemoryRegion
    data: memoryview  # exactly region.size bytes

    def contains(self, start: int, addr: int) -> bool:
        return start <= addr < start + self.region.size


class GuestMemory:
    """The regions of one memory table, with their mappings."""

    def __init__(self, regions: Iterable[MappedRegion] = ()) -> None:
        self.regions = list(regions)
        for mapped in self.regions:
            if len(mapped.data) != mapped.region.size:
                raise GuestError(f"region at GPA 0x{mapped.region.guest_phys_addr:x} maps {len(mapped.data)} bytes, claims {mapped.region.size}")
        _check_disjoint(self.regions, lambda r: r.guest_phys_addr, "guest-physical")
        _check_disjoint(self.regions, lambda r: r.user_addr, "front-end virtual")
        self.gpa = _RegionSpace(self.regions, lambda r: r.guest_phys_addr, "GPA")
        self.uva = _RegionSpace(self.regions, lambda r: r.user_addr, "UVA")

    @property
    def size(self) -> int:
        return sum(mapped.region.size for mapped in self.regions)

    def uva_to_gpa(self, uva: int) -> int:
        for mapped in self.regions:
            if mapped.contains(mapped.region.user_addr, uva):
                return uva - mapped.region.user_addr + mapped.region.guest_phys_addr
        raise GuestError(f"UVA 0x{uva:x} is in no memory region")


class _RegionSpace:
    """One numbering of the regions (GPA or UVA)."""

    def __init__(self, regions: list[MappedRegion], start_of, label: str) -> None:
        self._regions = sorted(regions, key=lambda m: start_of(m.region))
        self._start_of = start_of
        self._label = label

    def _find(self, addr: int) -> MappedRegion:
        for mapped in self._regions:
            if mapped.contains(self._start_of(mapped.region), addr):
                return mapped
        raise GuestError(f"{self._label} 0x{addr:x} is in no memory region")

    def view(self, addr: int, length: int, write: bool = False) -> memoryview:
        """One contiguous view (rings, indirect tables): must sit inside a single region."""
        if length < 0 or addr < 0:
            raise GuestError(f"bad {self._label} range 0x{addr:x}+{length}")
        mapped = self._find(addr)
        offset = addr - self._start_of(mapped.region)
        if offset + length > mapped.region.size:
            raise GuestError(f"{self._label} 0x{addr:x}+{length} runs past the end of its region")
        return mapped.data[offset : offset + length]

    def views(self, addr: int, length: int, write: bool = False) -> list[memoryview]:
        """Views for a buffer that may cross into an adjacent region."""
        if length < 0 or addr < 0 or addr + length > 1 << 64:
            raise GuestError(f"bad {self._label} range 0x{addr:x}+{length}")
        out = []
        while length:
            mapped = self._find(addr)
            offset = addr - self._start_of(mapped.region)
            take = min(length, mapped.region.size - offset)
            out.append(mapped.data[offset : offset + take])
            addr += take
            length -= take
        return out

    def end_request(self) -> None:
        """Region translations never expire."""


def _check_disjoint(regions: list[MappedRegion], start_of, what: str) -> None:
    spans = sorted((start_of(m.region), m.region.size) for m in regions)
    for (start, size), (next_start, _) in zip(spans, spans[1:]):
        if start + size > next_start:
            raise GuestError(f"memory regions overlap in {what} addresses at 0x{next_start:x}")
    for start, size in spans:
        if size <= 0 or start + size > 1 << 64:
            raise GuestError(f"memory region at {what} 0x{start:x} has bad size {size}")
