"""Descriptor rings in LDC shared memory, for both ends of a ring.

Theory of operation
-------------------
A ring is `count` entries of `size` bytes; each entry starts with the 8-byte
header {dstate u8, ack u8, reserved} and carries a device payload. The
*owner* (requester) exports the ring and moves entries FREE -> READY and
DONE -> FREE; the *processor* imports it and moves READY -> ACCEPTED ->
DONE. Each side checks, before it moves an entry, that the entry is in the
state it expects: memory the peer can write is never trusted.

`OwnedRing` is the requester's half (producer and consumer indices over its
own memory); `ImportedRing` is the processor's half (its walk over the
peer's memory and the completions it still owes). Neither sends messages:
they return what happened and the session (session.py) turns that into
DRING_DATA messages.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ProtocolError
from .constants import ACK_ENABLE, DESC_HEADER_SIZE, END_OPEN, DescState

HEADER = struct.Struct(">BB6x")


class RingError(ProtocolError):
    """A ring entry is not in the state the protocol requires."""


class RingMemory:
    """Byte access to a ring that may span several pieces of memory."""

    def __init__(self, views: Sequence[memoryview]) -> None:
        self._views = list(views)
        self._single = self._views[0] if len(self._views) == 1 else None
        self.size = sum(len(v) for v in self._views)

    def read(self, offset: int, length: int) -> bytes:
        if self._single is not None:
            return bytes(self._single[offset : offset + length])
        return b"".join(bytes(view) for view in self._pieces(offset, length))

    def write(self, offset: int, data: bytes) -> None:
        if self._single is not None:
            self._single[offset : offset + len(data)] = data
            return
        position = 0
        for view in self._pieces(offset, len(data)):
            view[:] = data[position : position + len(view)]
            position += len(view)

    def byte(self, offset: int) -> int:
        if self._single is not None:
            return self._single[offset]
        return self.read(offset, 1)[0]

    def set_byte(self, offset: int, value: int) -> None:
        if self._single is not None:
            self._single[offset] = value
        else:
            self.write(offset, bytes((value,)))

    def _pieces(self, offset: int, length: int) -> list[memoryview]:
        pieces = []
        for view in self._views:
            if offset >= len(view):
                offset -= len(view)
                continue
            take = min(len(view) - offset, length)
            pieces.append(view[offset : offset + take])
            length -= take
            offset = 0
            if not length:
                break
        return pieces


class Ring:
    """Entry access shared by both halves."""

    def __init__(self, memory: RingMemory, count: int, size: int) -> None:
        if count * size > memory.size:
            raise ValueError(f"{count} descriptors of {size} bytes do not fit {memory.size} bytes of ring memory")
        self.memory = memory
        self.count = count
        self.size = size

    def state(self, index: int) -> int:
        return self.memory.byte(index * self.size)

    def set_state(self, index: int, state: DescState) -> None:
        self.memory.set_byte(index * self.size, state)

    def wants_ack(self, index: int) -> bool:
        return bool(self.memory.byte(index * self.size + 1) & ACK_ENABLE)

    def payload(self, index: int) -> bytes:
        return self.memory.read(index * self.size + DESC_HEADER_SIZE, self.size - DESC_HEADER_SIZE)

    def set_payload(self, index: int, payload: bytes) -> None:
        if len(payload) > self.size - DESC_HEADER_SIZE:
            raise ValueError(f"payload of {len(payload)} bytes does not fit a {self.size}-byte descriptor")
        self.memory.write(index * self.size + DESC_HEADER_SIZE, payload)

    def next(self, index: int) -> int:
        return index + 1 if index + 1 < self.count else 0


@dataclass(slots=True)
class Done:
    """A descriptor the processor finished: its index and payload as it left them."""

    index: int
    payload: bytes


class OwnedRing(Ring):
    """The requester's ring: queue requests, reap what the processor finished."""

    def __init__(self, memory: RingMemory, count: int, size: int, options: int) -> None:
        super().__init__(memory, count, size)
        self.options = options
        self.ident: int | None = None  # given by the peer's DRING_REG ACK
        self.seq = 0  # last DRING_DATA seq we sent for this ring
        self.cons = 0  # next entry we expect back
        self.pending = 0  # entries queued and not yet reaped
        self.processor_active = False  # the processor is walking an open range
        for index in range(count):
            self.memory.write(index * size, HEADER.pack(DescState.FREE, 0))

    @property
    def prod(self) -> int:
        """The next entry we fill."""
        return (self.cons + self.pending) % self.count

    def free_entries(self) -> int:
        return self.count - self.pending

    def queue(self, payload: bytes, ack: bool) -> int:
        """Fill the next entry and mark it READY; returns its index."""
        index = self.prod
        if self.free_entries() == 0 or self.state(index) != DescState.FREE:
            raise RingError(f"ring full: entry {index} is not FREE")
        self.set_payload(index, payload)
        self.memory.set_byte(index * self.size + 1, ACK_ENABLE if ack else 0)
        self.set_state(index, DescState.READY)  # last: the processor may look at any time
        self.pending += 1
        return index

    def reap(self, end_idx: int) -> list[Done]:
        """Take back every entry from `cons` through `end_idx`, which must all be DONE."""
        if not self._pending(end_idx):
            return []  # an ACK for nothing we have outstanding: stale, ignore
        done = []
        while True:
            index = self.cons
            if self.state(index) != DescState.DONE:
                raise RingError(f"processor acknowledged entry {end_idx} but entry {index} is in state {self.state(index)}")
            done.append(Done(index, self.payload(index)))
            self.set_state(index, DescState.FREE)
            self.cons = self.next(index)
            self.pending -= 1
            if index == end_idx:
                return done

    def ready_after(self, end_idx: int) -> int | None:
        """The first READY entry after `end_idx` that we queued, if any (to re-kick)."""
        index = self.next(end_idx) if end_idx != END_OPEN else self.cons
        if self._pending(index) and self.state(index) == DescState.READY:
            return index
        return None

    def _pending(self, index: int) -> bool:
        if not 0 <= index < self.count:
            return False
        return (index - self.cons) % self.count < self.pending


class ImportedRing(Ring):
    """The processor's view of a peer's ring: walk READY entries, complete them in order."""

    def __init__(self, memory: RingMemory, count: int, size: int, ident: int) -> None:
        super().__init__(memory, count, size)
        self.ident = ident
        self.seq = 0  # last DRING_DATA seq accepted
        self.stopped = False  # a sequence gap: no more data on this ring this session
        self.accepted: dict[int, bytes | None] = {}  # index -> finished payload (None: not yet)
        self.order: list[int] = []  # accepted indices, in ring order
        self.walk: Walk | None = None

    def busy(self, index: int) -> bool:
        return index in self.accepted

    def accept(self, index: int) -> bytes:
        """READY -> ACCEPTED; returns the payload as we read it (a private copy)."""
        if self.state(index) != DescState.READY:
            raise RingError(f"entry {index} is in state {self.state(index)}, not READY")
        self.set_state(index, DescState.ACCEPTED)
        self.accepted[index] = None
        self.order.append(index)
        return self.payload(index)

    def finish(self, index: int, payload: bytes | None) -> None:
        """The device is done with `index`; it becomes DONE when all before it are."""
        if self.accepted.get(index, b"") is not None:
            raise ValueError(f"entry {index} of ring {self.ident} is not awaiting completion")
        self.accepted[index] = payload if payload is not None else b""

    def flush(self) -> list[tuple[int, bool]]:
        """Mark the finished prefix DONE, in ring order; returns (index, wants_ack)."""
        released = []
        while self.order and self.accepted[self.order[0]] is not None:
            index = self.order.pop(0)
            payload = self.accepted.pop(index)
            if self.state(index) != DescState.ACCEPTED:
                raise RingError(f"entry {index} changed to state {self.state(index)} while we processed it")
            if payload:
                self.set_payload(index, payload)
            wants_ack = self.wants_ack(index)
            self.set_state(index, DescState.DONE)
            released.append((index, wants_ack))
        return released


@dataclass(slots=True)
class Walk:
    """One DRING_DATA request being processed: where it started, where it must stop."""

    seq: int
    start: int
    end: int  # END_OPEN: until an entry is not READY
    last: int | None = None  # last index accepted in this walk
    finished: bool = False  # no more entries to accept
