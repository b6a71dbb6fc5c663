"""One LDC channel end whose packets and memory travel through virtqueues (either side of the device).

`QueueEndpoint` is a `backend.ldc.endpoint.ChannelEndpoint`, as the Unix
socket's `LdcEndpoint` is (open, send/receive messages, a listener, shared
memory, close), so the VIO session, vds, vnet and DS code run on it unchanged. What differs is
below it: records go to a `RecordLink` (the device's receive queue, or the
driver's transmit queue) and come back through `receive_buffer`; memory is
guest memory named by guest-physical address (`ChannelMemory`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from ...errors import BackendError, GuestError, LinkDownError, ProtocolError
from ...ldc.channel import Channel
from ...ldc.endpoint import HIGH_WATER, ChannelEndpoint
from ...ldc.memory import MAX_SEGMENT_ID, MTE, Export, MapTable, PeerMemory, Segment
from . import ldc_wire as wire

log = logging.getLogger(__name__)

MAX_PEER_SEGMENTS = 4096
SEGMENT_ALIGN = 8192  # the sun4v base page: exports are whole pages

#: (GPA, length) -> a view of exactly that memory, or GuestError
Resolver = Callable[[int, int], memoryview]
#: bytes -> (GPA, view) of fresh memory to export from, or MemoryError
Carver = Callable[[int], tuple[int, memoryview]]


class RecordLink(Protocol):
    """Where an endpoint's records go: packed into queue buffers for the peer."""

    def transmit(self, records: list[bytes]) -> None: ...

    @property
    def backlog(self) -> int:
        """Record bytes not yet in a buffer."""


class ChannelMemory:
    """Our map table and segments (in guest memory), and the peer's, resolved by GPA."""

    def __init__(self, resolve: Resolver) -> None:
        self.resolve = resolve
        self.table: MapTable | None = None
        self._carve: Carver | None = None
        self._next_id = 1
        self._peer_segments: dict[int, memoryview] = {}
        self.peer: PeerMemory | None = None

    def lend(self, entries: int, carve: Carver) -> bytes:
        """Memory to export from: the table comes out of it first. Returns the MAP_TABLE record."""
        self._carve = carve
        gpa, view = carve(entries * MTE.size)
        view[:] = bytes(len(view))
        self.table = MapTable(view)
        return wire.encode_map_table(entries, gpa)

    def allocate(self, size: int) -> tuple[Segment, bytes]:
        """A new exportable segment and the SEGMENT record that names it to the peer."""
        if self._carve is None or self.table is None:
            raise LinkDownError("no guest memory lent to export from (POOL record missing)")
        size = -(-size // SEGMENT_ALIGN) * SEGMENT_ALIGN
        gpa, view = self._carve(size)
        segment = Segment(self._next_id, view)
        self._next_id += 1
        self.table.add_segment(segment)
        return segment, wire.encode_segment(segment.id, size, gpa)

    def peer_table(self, record: wire.MapTable) -> None:
        if self.peer is not None:
            raise ProtocolError("peer named its map table twice")
        view = self._view(record.gpa, record.entries * MTE.size, "map table")
        self.peer = PeerMemory(view.toreadonly(), self._peer_segments)

    def peer_segment(self, record: wire.SegmentAt) -> None:
        if not 0 < record.segment_id <= MAX_SEGMENT_ID:
            raise ProtocolError(f"peer's segment number {record.segment_id} is out of range 1..{MAX_SEGMENT_ID}")
        if record.segment_id in self._peer_segments:
            raise ProtocolError(f"peer named segment {record.segment_id} twice")
        if len(self._peer_segments) >= MAX_PEER_SEGMENTS:
            raise ProtocolError(f"peer names more than {MAX_PEER_SEGMENTS} segments")
        self._peer_segments[record.segment_id] = self._view(record.gpa, record.size, f"segment {record.segment_id}")

    def _view(self, gpa: int, size: int, what: str) -> memoryview:
        try:
            return self.resolve(gpa, size)
        except GuestError as exc:
            raise ProtocolError(f"peer's {what} at GPA 0x{gpa:x}+{size}: {exc}") from None

    def revoke(self) -> None:
        """The transport is gone: nothing of the peer's stays reachable."""
        if self.peer is not None:
            self.peer.revoke()
        self._peer_segments.clear()


class QueueEndpoint(ChannelEndpoint):
    """An LDC channel end over queue buffers: the LdcEndpoint API on a RecordLink."""

    channel: Channel

    def __init__(self, channel: Channel, memory: ChannelMemory, link: RecordLink) -> None:
        self.memory = memory
        self.link = link
        super().__init__(channel)

    def allocate_segment(self, size: int) -> Segment:
        segment, record = self.memory.allocate(size)
        self.link.transmit([record])  # before any message that could name it
        return segment

    def export(self, segment: Segment, offset: int, length: int, perms: int, page_code: int = 0) -> Export:
        if self.memory.table is None:
            raise LinkDownError("no map table yet")
        return self.memory.table.export(segment, offset, length, perms, page_code)

    def unmap(self, export: Export) -> None:
        if self.memory.table is not None:
            self.memory.table.unmap(export)

    @property
    def peer_memory(self) -> PeerMemory:
        if self.memory.peer is None:
            raise LinkDownError("the peer has not named its map table")
        return self.memory.peer

    # ---- ChannelEndpoint ------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        return self.link.backlog

    def _encode_packets(self, packets: list[bytes]) -> list[bytes]:
        return wire.encode_packets(packets[0] if len(packets) == 1 else b"".join(packets))

    def _encode_reset(self) -> bytes:
        return wire.encode_reset()

    def _transmit(self, records: list[bytes]) -> None:
        if records and not self.closed:
            self.link.transmit(records)

    def _revoke_exports(self) -> None:
        if self.memory.table is not None:
            self.memory.table.revoke_all()

    def _release(self) -> None:
        self.memory.revoke()

    # ---- the link's side ------------------------------------------------------------------

    def receive_buffer(self, buffer: memoryview | bytes) -> None:
        """Records the peer put in one queue buffer. Anything malformed resets this channel only."""
        if self.closed:
            return
        try:
            for record in wire.decode(buffer):
                self._apply(record)
        except BackendError as exc:
            log.warning("LDC channel over vhost-user: %s; resetting the channel", exc)
            self.channel.transport_error(str(exc))
        self.dispatch()

    def _apply(self, record: wire.Record) -> None:
        if isinstance(record, wire.Packets):
            self.channel.receive(record.data)
        elif isinstance(record, wire.Reset):
            self.channel.peer_reset()
        elif isinstance(record, wire.MapTable):
            self.memory.peer_table(record)
        elif isinstance(record, wire.SegmentAt):
            self.memory.peer_segment(record)
        else:
            self.pool_lent(record)

    def pool_lent(self, record: wire.Pool) -> None:
        """A POOL record: only the device side takes one (it overrides this)."""
        raise ProtocolError("POOL record sent to the driver side")

    def dispatch(self) -> None:
        """Hand channel events to the listener (or receive_message), then send what they caused."""
        self._dispatch_events()
        self.flush()
        self.drained()

    def drained(self) -> None:
        """The link took records into buffers (or the window moved): wake waiting senders."""
        if self.link.backlog <= HIGH_WATER and self.channel.pending_send == 0:
            self._writable.set()

    def link_lost(self, reason: str) -> None:
        """The queues went away (front-end gone, ring stopped): the peer vanished."""
        if self.closed:
            return
        self.channel.peer_reset(reason)
        self.dispatch()
        self.shut_down(reason)
