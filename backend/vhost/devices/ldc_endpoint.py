"""One LDC channel end whose packets and memory travel through virtqueues (either side of the device).

`QueueEndpoint` offers what `backend.ldc.aio.LdcEndpoint` offers over a Unix
socket (open, send/receive messages, a listener, shared memory, close), so
the VIO session, vds, vnet and DS code run on it unchanged. What differs is
below it: records go to a `RecordLink` (the device's receive queue, or the
driver's transmit queue) and come back through `receive_buffer`; memory is
guest memory named by guest-physical address (`ChannelMemory`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from ...errors import BackendError, GuestError, LinkDownError, ProtocolError
from ...ldc.channel import (
    RESET,
    Channel,
    LinkReset,
    LinkUp,
    MessageReceived,
    ProtocolViolation,
)
from ...ldc.memory import MAX_SEGMENT_ID, MTE, Export, MapTable, PeerMemory, Segment
from . import ldc_wire as wire

log = logging.getLogger(__name__)

HIGH_WATER = 256 * 1024  # record bytes waiting for buffers before send_message() waits
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


class Listener(Protocol):
    def ldc_up(self) -> None: ...
    def ldc_reset(self, reason: str) -> None: ...
    def ldc_message(self, data: bytes) -> None: ...


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


class QueueEndpoint:
    """An LDC channel end over queue buffers: the LdcEndpoint API on a RecordLink."""

    def __init__(self, channel: Channel, memory: ChannelMemory, link: RecordLink) -> None:
        self.channel = channel
        self.memory = memory
        self.link = link
        channel._on_reset = self._revoke_exports  # no cookie outlives its session (as LdcEndpoint does)
        self.closed = False
        self.closed_event = asyncio.Event()
        self.last_reset: str | None = None
        self._listener: Listener | None = None
        self._messages: asyncio.Queue[bytes | LinkReset] = asyncio.Queue()
        self._up = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    # ---- the user's side (as LdcEndpoint) -------------------------------------------------

    async def open(self, timeout: float | None = 10.0) -> tuple[int, int]:
        self.channel.open()
        self.flush()
        await asyncio.wait_for(self._up.wait(), timeout)
        return self.channel.version or (1, 0)

    def set_listener(self, listener: Listener) -> None:
        self._listener = listener

    async def send_message(self, data: bytes | bytearray | memoryview) -> None:
        await self.send_messages((data,))

    async def send_messages(self, messages: Iterable[bytes | bytearray | memoryview]) -> None:
        if self.closed:
            raise LinkDownError(f"channel closed: {self.last_reset}")
        for data in messages:
            self.channel.send(data)
        self.flush()
        while not self.closed and (self.link.backlog > HIGH_WATER or self.channel.pending_send > 0):
            self._writable.clear()
            await self._writable.wait()

    async def receive_message(self) -> bytes:
        item = await self._messages.get()
        if isinstance(item, LinkReset):
            raise LinkDownError(f"LDC link reset: {item.reason}")
        return item

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

    def flush(self) -> None:
        """Channel output into records for the link (packets batched, resets in order)."""
        records: list[bytes] = []
        batch: list[bytes] = []
        for item in self.channel.take_output():
            if item is RESET:
                if batch:
                    records += wire.encode_packets(b"".join(batch))
                    batch = []
                records.append(wire.encode_reset())
            else:
                batch.append(item)  # type: ignore[arg-type]
        if batch:
            records += wire.encode_packets(batch[0] if len(batch) == 1 else b"".join(batch))
        if records and not self.closed:
            self.link.transmit(records)

    def close(self) -> None:
        if not self.closed:
            self.channel.close()
            self.flush()
            self.shut_down("closed locally")

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
        listener = self._listener
        for event in self.channel.take_events():
            if isinstance(event, MessageReceived):
                if listener is not None:
                    listener.ldc_message(event.data)
                else:
                    self._messages.put_nowait(event.data)
            elif isinstance(event, LinkUp):
                self._up.set()
                if listener is not None:
                    listener.ldc_up()
            elif isinstance(event, LinkReset):
                self._up.clear()
                self.last_reset = event.reason
                log.info("LDC link reset (%s): %s", "by peer" if event.by_peer else "locally", event.reason)
                if listener is not None:
                    listener.ldc_reset(event.reason)
                else:
                    self._messages.put_nowait(event)
            elif isinstance(event, ProtocolViolation):
                log.warning("LDC protocol violation by the peer: %s", event.reason)
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

    def shut_down(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.last_reset = self.last_reset or reason
        self.memory.revoke()
        self.closed_event.set()
        self._writable.set()
        self._messages.put_nowait(LinkReset(reason, by_peer=False))

    def _revoke_exports(self) -> None:
        if self.memory.table is not None:
            self.memory.table.revoke_all()
