"""Two channel ends wired together in one process (tests, demos, fuzzing)."""

from __future__ import annotations

from typing import Protocol

from ..errors import LinkDownError
from .channel import RESET, Event, Output
from .memory import Export, MapTable, PeerMemory, Segment


class Endpoint(Protocol):
    def take_output(self) -> list[Output]: ...
    def take_events(self) -> list[Event]: ...
    def receive(self, data: bytes) -> None: ...
    def peer_reset(self, reason: str = ...) -> None: ...


def deliver(outputs: list[Output], to: Endpoint) -> None:
    """Hand one end's output to the other: packets in batches, resets in order."""
    batch: list[bytes] = []
    for item in outputs:
        if item is RESET:
            if batch:
                to.receive(b"".join(batch))
                batch = []
            to.peer_reset()
        else:
            batch.append(item)  # type: ignore[arg-type]
    if batch:
        to.receive(b"".join(batch))


def pump(a: Endpoint, b: Endpoint, *, max_rounds: int = 10_000) -> None:
    """Shuttle output between `a` and `b` until neither has anything to say."""
    for _ in range(max_rounds):
        out_a, out_b = a.take_output(), b.take_output()
        if not out_a and not out_b:
            return
        deliver(out_a, b)
        deliver(out_b, a)
    raise RuntimeError(f"channels still talking after {max_rounds} rounds (livelock?)")


class LocalMemory:
    """Exportable memory for an in-process end (what LdcEndpoint gives over a socket)."""

    def __init__(self, table_entries: int = 4096) -> None:
        self._table_buffer = bytearray(table_entries * 8)
        self.table = MapTable(self._table_buffer)
        self.segments: dict[int, memoryview] = {}
        self._peer: PeerMemory | None = None

    def allocate_segment(self, size: int) -> Segment:
        segment = Segment(len(self.segments) + 1, bytearray(size))
        self.table.add_segment(segment)
        self.segments[segment.id] = segment.view
        return segment

    def export(self, segment: Segment, offset: int, length: int, perms: int, page_code: int = 0) -> Export:
        return self.table.export(segment, offset, length, perms, page_code)

    def unmap(self, export: Export) -> None:
        self.table.unmap(export)

    @property
    def peer_memory(self) -> PeerMemory:
        if self._peer is None:
            raise LinkDownError("no peer memory linked")
        return self._peer

    @staticmethod
    def link(a: LocalMemory, b: LocalMemory) -> None:
        """Let each end reach what the other exports (the peers share one address space)."""
        a._peer = PeerMemory(b._table_buffer, b.segments)
        b._peer = PeerMemory(a._table_buffer, a.segments)
