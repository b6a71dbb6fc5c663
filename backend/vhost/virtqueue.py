"""The device side of a split virtqueue (virtio 1.x, 2.7): walking chains, filling the used ring.

Nothing the driver wrote is trusted. Every index, address, length and flag is
checked; anything impossible raises QueueBroken, and the caller marks the
device NEEDS_RESET. The walker never loops (a chain is bounded by the queue
size, an indirect table by its own length) and never touches memory outside
what the AddressSpace hands out.

Layout (little-endian):
  descriptor table  N x {addr u64, len u32, flags u16, next u16}
  avail ring        flags u16, idx u16, ring[N] u16, used_event u16
  used ring         flags u16, idx u16, ring[N] {id u32, len u32}, avail_event u16
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import BackendError, GuestError
from .constants import (
    MAX_QUEUE_SIZE,
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
)
from .inflight import InflightRing
from .memory import AddressSpace
from .ring_words import fence, words

DESC = struct.Struct("<QIHH")
USED_ELEM = struct.Struct("<II")
MAX_CHAIN_BYTES = 1 << 32
REWIND_LIMIT = 64  # chains a device may give back (rewind): those it took last


class QueueBroken(GuestError):
    """The driver put something impossible in the ring; the device needs a reset."""


def ring_sizes(size: int) -> tuple[int, int, int]:
    """Bytes of the descriptor table, avail ring and used ring (with the event-index words)."""
    return 16 * size, 6 + 2 * size, 6 + 8 * size


def check_queue_size(size: int) -> None:
    if not 0 < size <= MAX_QUEUE_SIZE or size & (size - 1):
        raise QueueBroken(f"queue size {size} is not a power of two in 1..{MAX_QUEUE_SIZE}")


@dataclass(slots=True)
class DescriptorChain:
    """One request: the buffers the device reads, then the ones it writes."""

    head: int
    readable: list[memoryview] = field(default_factory=list)
    writable: list[memoryview] = field(default_factory=list)

    @property
    def readable_len(self) -> int:
        return sum(len(v) for v in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(len(v) for v in self.writable)


@dataclass(frozen=True, slots=True)
class RingViews:
    desc: memoryview
    avail: memoryview
    used: memoryview
    avail_words: memoryview  # avail as 16-bit words: [0] flags, [1] idx, [2 + i] ring, [2 + N] used_event
    used_words: memoryview  # used as 16-bit words: [0] flags, [1] idx, [2 + 4 * N] avail_event

    @classmethod
    def resolve(cls, space: AddressSpace, size: int, desc: int, avail: int, used: int) -> RingViews:
        """Views of the three parts, checked for alignment and bounds."""
        check_queue_size(size)
        if desc % 16 or avail % 2 or used % 4:
            raise QueueBroken(f"misaligned ring: desc 0x{desc:x} avail 0x{avail:x} used 0x{used:x}")
        desc_len, avail_len, used_len = ring_sizes(size)
        avail_view, used_view = space.view(avail, avail_len), space.view(used, used_len, True)
        return cls(space.view(desc, desc_len), avail_view, used_view, words(avail_view), words(used_view))


class RingsUnmapped(BackendError):
    """The rings' IOVAs have no translation yet: the queue waits for the IOTLB (not the driver's fault)."""


class SplitQueue:
    """The device's half of one split virtqueue.

    With a device IOTLB the rings may be unknown for a while (`rings` None until
    `bind`): taking requests raises RingsUnmapped, and completions wait in a
    list until the used ring is known again. With an inflight region (inflight.py)
    every head taken is marked there until the used ring carries it, and heads a
    crashed back-end left marked are taken again first.
    """

    def __init__(self, rings: RingViews | None, size: int, buffers: AddressSpace, *, last_avail: int = 0, event_idx: bool = False,
                 inflight: InflightRing | None = None) -> None:
        check_queue_size(size)
        self.size = size
        self.rings: RingViews | None = None
        self.buffers = buffers
        self.event_idx = event_idx
        self.last_avail = last_avail & 0xFFFF
        self.used_idx = 0
        self.inflight = inflight
        self.resubmitted = 0  # heads taken again from the inflight region (statistics)
        self._resubmit: list[int] = []
        self._taken: list[tuple[int, bool]] = []  # (head, was a resubmission), for rewind
        self._deferred: list[tuple[int, int]] = []  # completions while the used ring was unmapped
        self._started = False
        self._signalled_used = 0
        self._signalled_valid = False
        if rings is not None:
            self.bind(rings)

    def bind(self, rings: RingViews | None) -> None:
        """(Re)attach the rings; the first time, read where the used ring stands and recover inflight heads."""
        self.rings = rings
        if rings is None:
            return
        if not self._started:
            self._started = True
            self.used_idx = self._signalled_used = rings.used_words[1]
            if self.inflight is not None:
                heads = self.inflight.recover(self.used_idx)
                if heads is not None:
                    self._resubmit = heads
                    self.last_avail = (self.used_idx + len(heads)) & 0xFFFF
        deferred, self._deferred = self._deferred, []
        for head, written in deferred:
            self.push(head, written)

    @property
    def to_resubmit(self) -> int:
        """Heads a previous back-end left marked in the inflight region, not yet taken again."""
        return len(self._resubmit)

    def _bound(self) -> RingViews:
        if self.rings is None:
            raise RingsUnmapped("the rings have no IOTLB translation yet")
        return self.rings

    # ---- taking requests --------------------------------------------------------------

    def avail_idx(self) -> int:
        return self._bound().avail_words[1]

    def pending(self) -> int:
        """Chains the driver made available that we have not taken."""
        count = (self.avail_idx() - self.last_avail) & 0xFFFF
        if count > self.size:
            raise QueueBroken(f"avail index is {count} ahead of ours with {self.size} entries")
        return count + len(self._resubmit)

    def pop(self) -> DescriptorChain | None:
        """The next chain, or None. May raise IotlbMiss (nothing is taken then: retry after the update)."""
        rings = self._bound()
        if self._resubmit:
            head, resubmitted = self._resubmit[0], True
        else:
            if not self.pending():
                return None
            head, resubmitted = rings.avail_words[2 + self.last_avail % self.size], False
        try:
            chain = self._walk(head)
        except QueueBroken:
            raise
        except GuestError as exc:  # an address outside guest memory
            raise QueueBroken(f"chain {head}: {exc}") from None
        self.buffers.end_request()
        if resubmitted:
            self._resubmit.pop(0)
            self.resubmitted += 1
        else:
            self.last_avail = (self.last_avail + 1) & 0xFFFF
        if self.inflight is not None:
            self.inflight.taken(head)
        self._taken.append((head, resubmitted))
        del self._taken[:-REWIND_LIMIT]
        return chain

    def rewind(self, count: int) -> None:
        """Give back the last `count` chains taken and not completed: they are taken again later."""
        if not 0 <= count <= len(self._taken):
            raise ValueError(f"cannot rewind {count} chains, {len(self._taken)} were taken")
        for _ in range(count):
            head, resubmitted = self._taken.pop()
            if resubmitted:
                self._resubmit.insert(0, head)
                self.resubmitted -= 1
            else:
                self.last_avail = (self.last_avail - 1) & 0xFFFF
            if self.inflight is not None:
                self.inflight.untaken(head)

    def _walk(self, head: int) -> DescriptorChain:
        if head >= self.size:
            raise QueueBroken(f"chain head {head} outside a queue of {self.size}")
        chain = DescriptorChain(head)
        table, limit, index, seen, total = self._bound().desc, self.size, head, 0, 0
        indirect = False
        while True:
            seen += 1
            if seen > limit:
                raise QueueBroken(f"chain from head {head} is longer than {limit} descriptors (loop?)")
            addr, length, flags, nxt = DESC.unpack_from(table, 16 * index)
            if flags & VRING_DESC_F_INDIRECT:
                if indirect:
                    raise QueueBroken(f"nested indirect table in chain {head}")
                if flags & VRING_DESC_F_NEXT:
                    raise QueueBroken(f"indirect descriptor in chain {head} also has NEXT")
                if not length or length % 16 or length // 16 > MAX_QUEUE_SIZE:
                    raise QueueBroken(f"indirect table of {length} bytes in chain {head}")
                table, limit, index, seen, indirect = self.buffers.view(addr, length, False), length // 16, 0, 0, True
                continue
            total += length
            if total > MAX_CHAIN_BYTES:
                raise QueueBroken(f"chain {head} describes more than 4 GiB")
            if length:
                views = self.buffers.views(addr, length, bool(flags & VRING_DESC_F_WRITE))
                if flags & VRING_DESC_F_WRITE:
                    chain.writable += views
                elif chain.writable:
                    raise QueueBroken(f"chain {head} has a device-readable buffer after a writable one")
                else:
                    chain.readable += views
            if not flags & VRING_DESC_F_NEXT:
                return chain
            if nxt >= limit:
                raise QueueBroken(f"descriptor {index} of chain {head} points to {nxt}, outside {limit}")
            index = nxt

    # ---- giving results back ------------------------------------------------------------

    def push(self, head: int, written: int) -> None:
        """Return a chain; `written` is how many bytes the device wrote into it."""
        if self.rings is None:
            self._deferred.append((head, written))
            return
        if self._taken:
            self._taken = [taken for taken in self._taken if taken[0] != head]
        if self.inflight is not None:
            self.inflight.putting(head)
        slot = self.used_idx % self.size
        USED_ELEM.pack_into(self.rings.used, 4 + 8 * slot, head, written)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self.rings.used_words[1] = self.used_idx  # after the element: the driver reads idx first
        if self.inflight is not None:
            self.inflight.put(head, self.used_idx)

    def needs_notification(self) -> bool:
        """Should we signal the call fd for what was pushed since the last signal? (2.7.7.2)"""
        if self.rings is None:
            return False  # completions are deferred until the used ring is mapped again
        new, old = self.used_idx, self._signalled_used
        valid = self._signalled_valid
        self._signalled_used, self._signalled_valid = new, True
        if new == old and valid:
            return False
        rings = self.rings
        fence()  # the used index we published, before we read whether the driver wants to hear of it
        if not self.event_idx:
            return not rings.avail_words[0] & VRING_AVAIL_F_NO_INTERRUPT
        used_event = rings.avail_words[2 + self.size]
        return not valid or ((new - used_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)

    def enable_kicks(self) -> bool:
        """Ask the driver to kick on its next chain; True if chains arrived meanwhile (take them)."""
        if self.event_idx:
            self._bound().used_words[2 + 4 * self.size] = self.avail_idx()
            fence()  # avail_event out before we look at the avail index again
        return self.pending() > 0
