"""The IOMMU the Python front-end plays, so the device IOTLB is tested without QEMU.

Like a guest kernel's DMA API over a platform IOMMU: every buffer the driver
hands the device is mapped to an I/O virtual address (IOVA) in its own page
table first and unmapped when the device gave it back; rings are mapped once.
Like QEMU, the front-end answers the back-end's misses from that table (an
UPDATE covering the page, in front-end virtual addresses), and can
invalidate what it unmapped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .constants import IOTLB_RO, IOTLB_RW, IOTLB_UPDATE, IOTLB_WO
from .messages import IotlbMessage

IOVA_BASE = 0x8000_0000  # far from the guest-physical addresses, so a mix-up shows


@dataclass(frozen=True, slots=True)
class PageMapping:
    iova: int
    gpa: int
    perm: int


class Iommu:
    """An IOVA page table over guest-physical memory, with a bump allocator for IOVA space."""

    def __init__(self, page_size: int = 8192, *, base: int = IOVA_BASE) -> None:
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError(f"IOMMU page size {page_size} is not a power of two")
        self.page_size = page_size
        self._next = base
        self._pages: dict[int, PageMapping] = {}
        self.misses = 0
        self.refused = 0

    def map(self, gpa: int, length: int, write: bool = True) -> int:
        """Map [gpa, gpa+length) at fresh IOVAs (the in-page offset is kept); returns the IOVA of gpa."""
        page = self.page_size
        first, last = gpa - gpa % page, gpa + max(length, 1) - 1
        iova, perm = self._next, IOTLB_RW if write else IOTLB_RO
        pages = last // page - first // page + 1
        for i in range(pages):
            self._pages[iova + i * page] = PageMapping(iova + i * page, first + i * page, perm)
        self._next = iova + pages * page
        return iova + gpa % page

    def unmap(self, iova: int, length: int) -> tuple[int, int]:
        """Drop the pages of [iova, iova+length); returns the page-aligned range (to invalidate)."""
        page = self.page_size
        start = iova - iova % page
        end = -(-(iova + max(length, 1)) // page) * page
        for at in range(start, end, page):
            self._pages.pop(at, None)
        return start, end - start

    def lookup(self, iova: int, write: bool) -> PageMapping | None:
        mapping = self._pages.get(iova - iova % self.page_size)
        if mapping is None or (write and not mapping.perm & IOTLB_WO):
            return None
        return mapping

    def answer(self, iova: int, write: bool, uva_of: Callable[[int], int]) -> IotlbMessage | None:
        """The UPDATE for a miss (None: the IOVA is not mapped as asked, like QEMU answering nothing)."""
        self.misses += 1
        mapping = self.lookup(iova, write)
        if mapping is None:
            self.refused += 1
            return None
        return IotlbMessage(mapping.iova, self.page_size, uva_of(mapping.gpa), mapping.perm, IOTLB_UPDATE)

    @property
    def mapped_pages(self) -> int:
        return len(self._pages)

