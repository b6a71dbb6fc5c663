"""The LDC device over vhost-user: a guest's LDC channels carried in virtqueues (docs/ldc-over-vhost-user.md).

A transport and nothing more, as `backend/ldc/aio.py` is for Unix sockets:
channel N uses queue 2N (receive: buffers the driver posts, the device fills
with records) and 2N+1 (transmit: records from the driver). Each channel
gets a `QueueEndpoint`, and its service (vds export, vsw port, DS port)
runs the existing VIO / vDisk / vSwitch / DS code on it unchanged.

A channel's endpoint lives while both its queues run: a stopped queue (the
front-end left, stopped the ring, or replaced the memory table) is that
channel's peer vanishing, exactly like a closed socket on the Unix
transport; the service is detached and a fresh one attaches when the queues
run again. Bad records reset that one channel (LDC reset); impossible rings
are the core's business (NEEDS_RESET for the device).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ...errors import GuestError
from ...ldc.channel import Channel
from ...vio.aio import VioEndpoint
from ..constants import ProtocolFeature
from ..device import ServedQueue, VirtioDevice
from ..memory import GuestMemory
from ..virtqueue import DescriptorChain
from . import ldc_wire as wire
from .ldc_endpoint import SEGMENT_ALIGN, ChannelMemory, QueueEndpoint

log = logging.getLogger(__name__)

TABLE_ENTRIES = 4096  # the device's map table per channel (32 KiB of the pool)

@dataclass(frozen=True)
class Attached:
    """A service running on a channel: how to take it off, and its VIO session if it has one
    (vds and vsw do; DS does not), so status can show the negotiated version."""

    detach: Callable[[], None]
    session: VioEndpoint | None = None


#: Attaches a service to a fresh endpoint and opens the channel.
Attach = Callable[[QueueEndpoint], Attached]


@dataclass
class ChannelSpec:
    """One channel a domain config gives a guest: its row in the config space and its service."""

    info: wire.ChannelInfo
    attach: Attach
    name: str = ""


class _DeviceEndpoint(QueueEndpoint):
    """The device's end: it exports out of the pool the driver lends."""

    pool_limit = 1 << 30

    def pool_lent(self, record: wire.Pool) -> None:
        if self.memory.table is not None:
            raise GuestError("the driver lent this channel a second pool")
        if record.size > self.pool_limit or record.gpa % SEGMENT_ALIGN:
            raise GuestError(f"pool at GPA 0x{record.gpa:x}+{record.size} is misaligned or larger than {self.pool_limit}")
        view = self.memory.resolve(record.gpa, record.size)  # raises GuestError when outside guest memory
        carver = _Bump(record.gpa, view)
        self.link.transmit([self.memory.lend(TABLE_ENTRIES, carver)])


class _Bump:
    """Carves page-aligned pieces off a pool, front to back (segments live as long as the pool)."""

    def __init__(self, gpa: int, view: memoryview) -> None:
        self.gpa, self.view, self.used = gpa, view, 0

    def __call__(self, size: int) -> tuple[int, memoryview]:
        start = -(-self.used // SEGMENT_ALIGN) * SEGMENT_ALIGN
        if start + size > len(self.view):
            raise MemoryError(f"the pool lent for this channel ({len(self.view)} bytes) has no {size} bytes left")
        self.used = start + size
        return self.gpa + start, self.view[start : start + size]


class _Channel:
    """One channel's queues: records out into held receive buffers, records in from transmit buffers."""

    def __init__(self, spec: ChannelSpec, memory: Callable[[], GuestMemory]) -> None:
        self.spec = spec
        self._memory = memory
        self.endpoint: QueueEndpoint | None = None
        self.attached: Attached | None = None
        self._pending: collections.deque[bytes] = collections.deque()
        self._pending_bytes = 0
        self._buffers: collections.deque[tuple[ServedQueue, DescriptorChain]] = collections.deque()
        self._receive_queue: ServedQueue | None = None  # where more buffers come from when ours run out

    # ---- RecordLink ---------------------------------------------------------------------

    def transmit(self, records: list[bytes]) -> None:
        self._pending.extend(records)
        self._pending_bytes += sum(len(r) for r in records)
        self._fill()

    @property
    def backlog(self) -> int:
        return self._pending_bytes

    # ---- queues -------------------------------------------------------------------------

    def ensure_endpoint(self) -> QueueEndpoint:
        if self.endpoint is None:
            resolve = lambda gpa, size: self._memory().gpa.view(gpa, size)
            self.endpoint = _DeviceEndpoint(Channel(self.spec.info.mode), ChannelMemory(resolve), self)
            self.attached = self.spec.attach(self.endpoint)
            log.info("LDC channel %d (%s) attached", self.spec.info.channel_id, self.spec.name or self.spec.info.service.name)
        return self.endpoint

    def take_buffers(self, queue: ServedQueue) -> None:
        """Hold every buffer the driver posted; they are filled as records arrive."""
        self.ensure_endpoint()
        self._receive_queue = queue
        self._hold_posted(queue)
        self._fill()

    def _hold_posted(self, queue: ServedQueue) -> None:
        while (chain := queue.pop()) is not None:
            self._buffers.append((queue, chain))

    def _starved(self) -> bool:
        """Records wait and every held buffer is used: take what the driver posted
        since (no kick needed for that), else ask for a kick on its next one."""
        queue = self._receive_queue
        if queue is None:
            return True
        self._hold_posted(queue)
        if not self._buffers and queue.want_kicks():
            self._hold_posted(queue)  # posted between our look and the request
        return not self._buffers

    def take_records(self, queue: ServedQueue) -> None:
        endpoint = self.ensure_endpoint()
        while (chain := queue.pop()) is not None:
            views = chain.readable
            endpoint.receive_buffer(views[0] if len(views) == 1 else b"".join(views))
            queue.complete(chain, 0)

    def _fill(self) -> None:
        while self._pending and (self._buffers or not self._starved()):
            queue, chain = self._buffers.popleft()
            capacity = chain.writable_len
            if len(self._pending[0]) > capacity:
                log.warning("LDC channel %d: a %d-byte receive buffer is smaller than a record; returned unused",
                            self.spec.info.channel_id, capacity)
                queue.complete(chain, 0)
                continue
            out = _Scatter(chain.writable)
            while self._pending and len(self._pending[0]) <= capacity - out.written:
                record = self._pending.popleft()
                self._pending_bytes -= len(record)
                out.write(record)
            queue.complete(chain, out.written)
        if self.endpoint is not None:
            self.endpoint.drained()

    def stop(self, reason: str, stopped_queue: int | None = None) -> None:
        """The peer is gone: the service sees the link vanish and is detached.

        A stopped ring's buffers are no longer ours to fill; when only `stopped_queue`
        stopped, the other ring's buffers stay held (None: every ring stopped).
        """
        self._buffers = collections.deque(item for item in self._buffers
                                          if stopped_queue is not None and item[0].index != stopped_queue)
        if stopped_queue is None or (self._receive_queue is not None and self._receive_queue.index == stopped_queue):
            self._receive_queue = None
        self._pending.clear()
        self._pending_bytes = 0
        endpoint, attached = self.endpoint, self.attached
        self.endpoint = self.attached = None
        if endpoint is not None:
            endpoint.link_lost(reason)
        if attached is not None:
            attached.detach()


class _Scatter:
    """Writes records one after another across a chain's writable views."""

    def __init__(self, views: list[memoryview]) -> None:
        self._views, self._index, self._offset, self.written = views, 0, 0, 0

    def write(self, data: bytes) -> None:
        source = memoryview(data)
        while source:
            view = self._views[self._index]
            take = min(len(view) - self._offset, len(source))
            view[self._offset : self._offset + take] = source[:take]
            source = source[take:]
            self._offset += take
            self.written += take
            if self._offset == len(view):
                self._index, self._offset = self._index + 1, 0


class LdcDevice(VirtioDevice):
    """A guest's LDC channels on one vhost-user socket."""

    device_type = wire.VIRTIO_ID_LDC

    def __init__(self, channels: list[ChannelSpec], *, queue_size: int = 256) -> None:
        if not 0 < len(channels) <= wire.MAX_CHANNELS:
            raise ValueError(f"an LDC device has 1..{wire.MAX_CHANNELS} channels, not {len(channels)}")
        ids = [spec.info.channel_id for spec in channels]
        if len(set(ids)) != len(ids):
            raise ValueError(f"channel ids must be unique: {ids}")
        self.num_queues = 2 * len(channels)
        self.max_queue_size = queue_size
        self._memory = GuestMemory()
        self.channels = [_Channel(spec, lambda: self._memory) for spec in channels]
        self._config = wire.encode_config([spec.info for spec in channels])

    def features(self) -> int:
        return wire.F_POOL

    def protocol_features(self) -> ProtocolFeature:
        return ProtocolFeature.CONFIG | ProtocolFeature.MQ

    def config(self) -> bytes:
        return self._config

    def memory_changed(self, memory: GuestMemory) -> None:
        self._memory = memory

    def handle_queue(self, queue: ServedQueue) -> None:
        channel = self.channels[queue.index // 2]
        if queue.index % 2:
            channel.take_records(queue)
        else:
            channel.take_buffers(queue)

    def kicks_wanted(self, index: int) -> bool:
        """Receive queues: no kick per buffer posted; the channel takes new buffers
        itself when it runs out (and asks for a kick only then)."""
        return index % 2 == 1

    def queue_stopped(self, index: int) -> None:
        # Always about the current front-end: the core finishes closing a connection
        # (every stop reported) before it resets the device for the next one.
        self.channels[index // 2].stop(f"queue {index} stopped", index)

    def reset(self) -> None:
        for channel in self.channels:
            channel.stop("device reset")
