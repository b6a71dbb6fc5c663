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
own memory); `ImportedRing` is the processor's half (the entries it has
accepted and the completions it still owes, always a contiguous stretch in
ring order). Neither sends messages: the session (session.py) turns what
they report into DRING_DATA messages.

Runs of entries are handled at once where the memory allows: the state
bytes of consecutive entries are one strided slice of the ring memory, so
checking or moving a hundred entries costs one slice operation, not a
hundred (this is what makes the benchmark targets reachable in Python).
A payload is always written before the state byte that publishes it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ProtocolError
from .constants import ACK_ENABLE, DESC_HEADER_SIZE, END_OPEN, DescState

_READY, _ACCEPTED, _DONE, _FREE = DescState.READY, DescState.ACCEPTED, DescState.DONE, DescState.FREE
# An entry header as queue() first writes it (FREE; READY is published after the payload).
_HEADER_ACK = bytes((_FREE, ACK_ENABLE)) + bytes(DESC_HEADER_SIZE - 2)
_HEADER_NO_ACK = bytes((_FREE, 0)) + bytes(DESC_HEADER_SIZE - 2)


class RingError(ProtocolError):
    """A ring entry is not in the state the protocol requires."""


class RingMemory:
    """Byte access to a ring that may span several pieces of memory."""

    def __init__(self, views: Sequence[memoryview]) -> None:
        self._views = list(views)
        self.single = self._views[0] if len(self._views) == 1 else None
        self.size = sum(len(v) for v in self._views)

    def read(self, offset: int, length: int) -> bytes:
        if self.single is not None:
            return bytes(self.single[offset : offset + length])
        return b"".join(bytes(view) for view in self._pieces(offset, length))

    def write(self, offset: int, data: bytes) -> None:
        if self.single is not None:
            self.single[offset : offset + len(data)] = data
            return
        position = 0
        for view in self._pieces(offset, len(data)):
            view[:] = data[position : position + len(view)]
            position += len(view)

    def byte(self, offset: int) -> int:
        if self.single is not None:
            return self.single[offset]
        return self.read(offset, 1)[0]

    def set_byte(self, offset: int, value: int) -> None:
        if self.single is not None:
            self.single[offset] = value
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

    # ---- runs: `n` consecutive entries from `first`, not wrapping past the end ---------

    def states(self, first: int, n: int) -> bytes:
        view = self.memory.single
        if view is not None:
            return bytes(view[first * self.size : (first + n) * self.size : self.size])
        return bytes(self.state(i) for i in range(first, first + n))

    def set_states(self, first: int, n: int, state: int) -> None:
        view = self.memory.single
        if view is not None:
            view[first * self.size : (first + n) * self.size : self.size] = bytes((state,)) * n
        else:
            for index in range(first, first + n):
                self.memory.set_byte(index * self.size, state)

    def ack_bits(self, first: int, n: int) -> bytes:
        view = self.memory.single
        if view is not None:
            return bytes(view[first * self.size + 1 : (first + n) * self.size : self.size])
        return bytes(self.memory.byte(i * self.size + 1) for i in range(first, first + n))

    def payloads(self, first: int, n: int) -> list[bytes]:
        data = self.memory.read(first * self.size, n * self.size)
        size = self.size
        return [data[i * size + DESC_HEADER_SIZE : (i + 1) * size] for i in range(n)]

    def runs(self, first: int, n: int) -> list[tuple[int, int]]:
        """`n` entries from `first` in ring order, as at most two non-wrapping runs."""
        head = min(n, self.count - first)
        return [(first, head), (0, n - head)] if n > head else [(first, n)]


class OwnedRing(Ring):
    """The requester's ring: queue requests, reap what the processor finished."""

    def __init__(self, memory: RingMemory, count: int, size: int, options: int, *, ack_each: bool = True,
                 open_ended: bool = False) -> None:
        super().__init__(memory, count, size)
        self.options = options
        self.ack_each = ack_each  # set the ACK bit unless a request says otherwise
        self.open_ended = open_ended  # kick with end_idx = -1 and let the processor walk
        self.unregistering = False  # our DRING_UNREG is out
        self.ident: int | None = None  # given by the peer's DRING_REG ACK
        self.seq = 0  # last DRING_DATA seq we sent for this ring
        self.cons = 0  # next entry we expect back
        self.pending = 0  # entries queued and not yet reaped
        self.processor_active = False  # the processor is walking an open range
        for first, n in self.runs(0, count):
            self.set_states(first, n, _FREE)

    @property
    def prod(self) -> int:
        """The next entry we fill."""
        return (self.cons + self.pending) % self.count

    def free_entries(self) -> int:
        """Entries we may still queue. One always stays unused: with the ring
        completely full, an ACK naming the entry before `cons` could mean
        "all of them" or "none" (a late, already reaped ACK); as Linux does,
        we never let the ring fill to remove that ambiguity."""
        return self.count - 1 - self.pending

    def queue(self, payload: bytes, ack: bool) -> int:
        """Fill the next entry and mark it READY; returns its index."""
        index = self.prod
        if self.pending >= self.count - 1 or self.state(index) != _FREE:
            raise RingError(f"ring full: entry {index} is not FREE")
        if len(payload) > self.size - DESC_HEADER_SIZE:
            raise ValueError(f"payload of {len(payload)} bytes does not fit a {self.size}-byte descriptor")
        offset = index * self.size
        self.memory.write(offset, (_HEADER_ACK if ack else _HEADER_NO_ACK) + payload)
        self.memory.set_byte(offset, _READY)  # last: the processor may look at any time
        self.pending += 1
        return index

    def queue_many(self, payloads: list[bytes], ack_every: int) -> int:
        """Fill consecutive entries (every `ack_every`-th and the last asking for
        an ACK) and mark them READY in order; returns the first index (indices
        past the end of the ring wrap to 0). All or nothing: a burst that does
        not fit changes no entry."""
        first, n = self.prod, len(payloads)
        if self.pending + n > self.count - 1:
            raise RingError(f"ring full: {n} entries asked for, {self.free_entries()} free")
        for start, length in self.runs(first, n):
            if self.states(start, length) != bytes((_FREE,)) * length:
                raise RingError(f"ring full: an entry of {start}..{start + length - 1} is not FREE")
        room = self.size - DESC_HEADER_SIZE
        if max(map(len, payloads), default=0) > room:
            raise ValueError(f"a payload does not fit a {self.size}-byte descriptor")
        write, size = self.memory.write, self.size
        index, last = first, n - 1
        for position, payload in enumerate(payloads):
            ack = position == last or position % ack_every == ack_every - 1
            write(index * size, (_HEADER_ACK if ack else _HEADER_NO_ACK) + payload)
            index = index + 1 if index + 1 < self.count else 0
        for start, length in self.runs(first, n):  # last, in ring order: the processor may look at any time
            self.set_states(start, length, _READY)
        self.pending += n
        return first

    def reap(self, end_idx: int) -> list[tuple[int, bytes]]:
        """Take back every entry from `cons` through `end_idx`, which must all be DONE;
        returns (index, payload as the processor left it) for each, in ring order."""
        if not self._pending(end_idx):
            return []  # an ACK for nothing we have outstanding: stale, ignore
        n = (end_idx - self.cons) % self.count + 1
        done: list[tuple[int, bytes]] = []
        for first, length in self.runs(self.cons, n):
            done += zip(range(first, first + length), self.payloads(first, length))
        self.release(end_idx)
        return done

    def release(self, end_idx: int) -> int:
        """Like reap, for a device that does not read what the processor wrote back:
        the entries become FREE without a copy of each; returns how many."""
        if not self._pending(end_idx):
            return 0
        n = (end_idx - self.cons) % self.count + 1
        for first, length in self.runs(self.cons, n):
            states = self.states(first, length)
            if states != bytes((_DONE,)) * length:
                bad = first + next(i for i, s in enumerate(states) if s != _DONE)
                raise RingError(f"processor acknowledged entry {end_idx} but entry {bad} is in state {self.state(bad)}")
            self.set_states(first, length, _FREE)
        self.cons = (end_idx + 1) % self.count
        self.pending -= n
        return n

    def ready_after(self, end_idx: int) -> int | None:
        """The first READY entry after `end_idx` that we queued, if any (to re-kick)."""
        index = self.next(end_idx) if end_idx != END_OPEN else self.cons
        if self._pending(index) and self.state(index) == _READY:
            return index
        return None

    def _pending(self, index: int) -> bool:
        if not 0 <= index < self.count:
            return False
        return (index - self.cons) % self.count < self.pending


class ImportedRing(Ring):
    """The processor's view of a peer's ring: accept READY entries, complete them in order."""

    def __init__(self, memory: RingMemory, count: int, size: int, ident: int) -> None:
        super().__init__(memory, count, size)
        self.ident = ident
        self.seq = 0  # last DRING_DATA seq accepted
        self.stopped = False  # a sequence gap: no more data on this ring this session
        self.finished: dict[int, bytes | None] = {}  # accepted index -> payload to write back (None: not yet)
        self.order: deque[int] = deque()  # accepted indices, in ring order
        self.walk: Walk | None = None

    def busy(self, index: int) -> bool:
        return index in self.finished

    def accept_run(self, first: int, limit: int) -> list[tuple[int, bytes]]:
        """Accept consecutive READY entries from `first` (at most `limit`, no wrap).

        READY -> ACCEPTED; returns (index, payload) with private copies of
        the payloads as they were when accepted.
        """
        limit = min(limit, self.count - first, self.count - len(self.order))
        if limit <= 0:
            return []
        states = self.states(first, limit)
        n = len(states) - len(states.lstrip(bytes((_READY,))))
        if n == 0:
            return []
        self.set_states(first, n, _ACCEPTED)
        payloads = self.payloads(first, n)
        for index in range(first, first + n):
            self.finished[index] = None
            self.order.append(index)
        return list(zip(range(first, first + n), payloads, strict=True))

    def finish(self, index: int, payload: bytes | None) -> None:
        """The device is done with `index`; it becomes DONE when all before it are."""
        if self.finished.get(index, b"") is not None:
            raise ValueError(f"entry {index} of ring {self.ident} is not awaiting completion")
        self.finished[index] = b"" if payload is None else payload

    def flush(self) -> list[int]:
        """Mark the finished prefix DONE, in ring order; returns the indices that want an ACK."""
        order, finished = self.order, self.finished
        n = 0
        for index in order:
            if finished[index] is None:
                break
            n += 1
        if not n:
            return []
        first = order[0]
        wants_ack: list[int] = []
        for start, length in self.runs(first, n):
            if self.states(start, length) != bytes((_ACCEPTED,)) * length:
                bad = start + next(i for i, s in enumerate(self.states(start, length)) if s != _ACCEPTED)
                raise RingError(f"entry {bad} changed to state {self.state(bad)} while we processed it")
            for index in range(start, start + length):
                payload = finished.pop(index)
                if payload:
                    self.set_payload(index, payload)
            acks = self.ack_bits(start, length)
            wants_ack.extend(start + i for i, bit in enumerate(acks) if bit & ACK_ENABLE)
            self.set_states(start, length, _DONE)
        for _ in range(n):
            order.popleft()
        return wants_ack


@dataclass(slots=True)
class Walk:
    """One DRING_DATA request being processed: where it started, where it must stop."""

    seq: int
    start: int
    end: int  # END_OPEN: until an entry is not READY
    last: int | None = None  # last index accepted in this walk
    finished: bool = False  # no more entries to accept
