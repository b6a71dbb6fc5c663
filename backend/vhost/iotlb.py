"""The device IOTLB: translating the I/O virtual addresses (IOVAs) a driver behind an IOMMU hands out.

With VIRTIO_F_ACCESS_PLATFORM every ring and buffer address is an IOVA. The
front-end owns the IOMMU: we report a miss on the back-end channel, it answers
with an UPDATE (IOVA range -> its own virtual address, permission) on the main
channel, and sends INVALIDATE when a mapping goes away. Nothing here waits:
a lookup that misses raises `IotlbMiss`, the caller parks the request and
retries once an update arrived (protocol.py drives the misses).

Every translation is checked twice: at UPDATE, the target range must lie
inside one shared memory region (else the update is refused); at use, the
resulting front-end address goes through GuestMemory's bounds checks again,
because the memory table may have changed meanwhile.

The cache rule (docs/sparc64-vhost-user.md): QEMU's sun4u IOMMU never
notifies unmaps, so a cached buffer translation could outlive the guest's
mapping. Translations used for rings (coherent memory, mapped once per device
start) stay until reset or invalidation; translations used for a request's
buffers are dropped as soon as that request is taken (`end_request`).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field

from ..errors import BackendError, GuestError
from .constants import IOTLB_RO, IOTLB_RW, IOTLB_WO
from .memory import GuestMemory
from .messages import IotlbMessage

#: Most translations kept; beyond it the oldest buffer translations go (a front-end
#: pushing endless unsolicited updates costs bounded memory).
MAX_ENTRIES = 4096
ADDRESS_LIMIT = 1 << 64


class IotlbMiss(BackendError):
    """No translation for `iova` yet: ask the front-end, park, retry after its update.

    Not a GuestError: the driver did nothing wrong, the device just does not know yet."""

    def __init__(self, iova: int, write: bool) -> None:
        super().__init__(f"IOTLB miss at IOVA 0x{iova:x} ({'write' if write else 'read'})")
        self.iova = iova
        self.write = write


@dataclass(slots=True)
class Translation:
    iova: int
    size: int
    uva: int
    perm: int
    ring: bool = False  # used by a ring: kept until reset or invalidation

    def covers(self, iova: int) -> bool:
        return self.iova <= iova < self.iova + self.size

    def allows(self, write: bool) -> bool:
        return bool(self.perm & (IOTLB_WO if write else IOTLB_RO))


@dataclass
class DeviceIotlb:
    """Translations the front-end gave us, and IOVAs it refused to translate."""

    memory: GuestMemory = field(default_factory=GuestMemory)
    _entries: OrderedDict[int, Translation] = field(default_factory=OrderedDict)
    _refused: set[int] = field(default_factory=set)
    misses: int = 0  # misses sent (statistics: docs measure misses per MB)

    def __len__(self) -> int:
        return len(self._entries)

    def update(self, message: IotlbMessage) -> None:
        """Take an UPDATE; raises GuestError (the update is refused) if it is impossible."""
        iova, size, uva, perm = message.iova, message.size, message.user_addr, message.perm
        if not size or iova + size > ADDRESS_LIMIT or uva + size > ADDRESS_LIMIT:
            raise GuestError(f"IOTLB update IOVA 0x{iova:x}+0x{size:x} -> 0x{uva:x} is empty or wraps")
        if perm not in (IOTLB_RO, IOTLB_WO, IOTLB_RW):
            raise GuestError(f"IOTLB update for IOVA 0x{iova:x} has permission {perm}")
        self.memory.uva.view(uva, size)  # inside one shared region, or GuestError
        self._drop(iova, size)
        self._entries[iova] = Translation(iova, size, uva, perm)
        self._refused = {bad for bad in self._refused if not iova <= bad < iova + size}
        while len(self._entries) > MAX_ENTRIES:
            oldest = next((key for key, entry in self._entries.items() if not entry.ring), None)
            if oldest is None:
                raise GuestError(f"IOTLB holds {MAX_ENTRIES} ring translations; refusing more")
            del self._entries[oldest]

    def invalidate(self, iova: int, size: int) -> bool:
        """Drop every translation overlapping the range; True if one of them served a ring."""
        if iova + size > ADDRESS_LIMIT:
            raise GuestError(f"IOTLB invalidate 0x{iova:x}+0x{size:x} wraps")
        dropped = self._drop(iova, size)
        self._refused = {bad for bad in self._refused if not iova <= bad < iova + size}
        return any(entry.ring for entry in dropped)

    def refused(self, iova: int) -> None:
        """The front-end answered our miss without a translation: lookups there now fail."""
        self._refused.add(iova)

    def clear(self) -> None:
        self._entries.clear()
        self._refused.clear()

    def has(self, iova: int) -> bool:
        return self._find(iova) is not None

    def translate(self, iova: int, length: int, write: bool, *, ring: bool = False) -> list[tuple[int, int, Translation]]:
        """(front-end address, length, entry) pieces for the range; raises IotlbMiss or GuestError."""
        if length < 0 or iova < 0 or iova + length > ADDRESS_LIMIT:
            raise GuestError(f"bad IOVA range 0x{iova:x}+{length}")
        pieces = []
        while length:
            entry = self._find(iova)
            if entry is None:
                if iova in self._refused:
                    raise GuestError(f"IOVA 0x{iova:x} has no translation (the IOMMU refused it)")
                raise IotlbMiss(iova, write)
            if not entry.allows(write):
                raise GuestError(f"IOVA 0x{iova:x} is mapped {'read' if write else 'write'}-only")
            entry.ring |= ring
            take = min(length, entry.iova + entry.size - iova)
            pieces.append((entry.uva + iova - entry.iova, take, entry))
            iova += take
            length -= take
        return pieces

    def forget(self, entries: list[Translation]) -> None:
        """Drop buffer translations (rings keep theirs): the one-request rule."""
        for entry in entries:
            if not entry.ring and self._entries.get(entry.iova) is entry:
                del self._entries[entry.iova]

    def _find(self, iova: int) -> Translation | None:
        for entry in self._entries.values():
            if entry.covers(iova):
                return entry
        return None

    def _drop(self, iova: int, size: int) -> list[Translation]:
        gone = [entry for entry in self._entries.values() if entry.iova < iova + size and iova < entry.iova + entry.size]
        for entry in gone:
            del self._entries[entry.iova]
        return gone


class IotlbSpace:
    """An AddressSpace over the IOTLB: what the virtqueue walks when ACCESS_PLATFORM is on.

    One per ring set (`ring=True`) or per queue's buffers; the buffer space
    remembers the translations a request used and forgets them in `end_request`.
    """

    def __init__(self, iotlb: DeviceIotlb, *, ring: bool = False) -> None:
        self.iotlb = iotlb
        self.ring = ring
        self._used: list[Translation] = []

    def views(self, addr: int, length: int, write: bool = False) -> list[memoryview]:
        out = []
        for uva, take, entry in self.iotlb.translate(addr, length, write, ring=self.ring):
            self._used.append(entry)
            out += self.iotlb.memory.uva.views(uva, take)
        return out

    def view(self, addr: int, length: int, write: bool = False) -> memoryview:
        """One contiguous view: the IOVA range must map to consecutive front-end addresses."""
        pieces = self.iotlb.translate(addr, length, write, ring=self.ring)
        self._used += [entry for _, _, entry in pieces]
        for (uva, take, _), (next_uva, _, _) in itertools.pairwise(pieces):
            if uva + take != next_uva:
                raise GuestError(f"IOVA 0x{addr:x}+{length} is not contiguous in guest memory")
        start = pieces[0][0] if pieces else 0
        return self.iotlb.memory.uva.view(start, length)

    def end_request(self) -> None:
        if not self.ring:
            self.iotlb.forget(self._used)
        self._used.clear()
