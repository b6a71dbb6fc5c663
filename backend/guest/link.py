"""The guest's side of the LDC device: a vhost-user front-end whose memory holds the guest's LDC state.

`GuestLdc` does what a sun4v guest's LDC driver would do over this device:
negotiate, read the channel table, run two queues per channel (receive
buffers posted, transmit buffers filled with records), and give each channel
a `QueueEndpoint` the unchanged vdc / vnet / DS code runs on. The guest's
map table and exported segments are ordinary guest memory named by GPA; the
device exports out of a pool the guest lends each channel (POOL record).
Kicks go out through eventfds; calls come back as readers on the loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket

from ..errors import GuestError
from ..ldc.channel import Channel
from ..vhost.constants import (
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    DeviceStatus,
)
from ..vhost.devices import ldc_wire as wire
from ..vhost.devices.ldc_endpoint import SEGMENT_ALIGN, ChannelMemory, QueueEndpoint
from ..vhost.driver import Buffer, DriverQueue
from ..vhost.frontend import VirtioGuest

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
RX_BUFFERS = 64  # receive buffers posted per channel, BUFFER_SIZE each
TX_BUFFERS = 64
TABLE_ENTRIES = 16384  # the guest's map table per channel: vdc exports up to 64 x 1 MiB


class GuestChannel:
    """One channel's two driver queues (a RecordLink) and its endpoint."""

    def __init__(self, ldc: GuestLdc, index: int, info: wire.ChannelInfo) -> None:
        self.ldc, self.index, self.info = ldc, index, info
        ram = ldc.guest.ram
        self.rx: DriverQueue = ldc.guest.start_queue(2 * index, QUEUE_SIZE)
        self.tx: DriverQueue = ldc.guest.start_queue(2 * index + 1, QUEUE_SIZE)
        self._rx_buffers: dict[int, Buffer] = {}
        self._tx_free = collections.deque(ram.alloc(wire.BUFFER_SIZE, 64) for _ in range(TX_BUFFERS))
        self._tx_busy: dict[int, Buffer] = {}
        self._pending: collections.deque[bytes] = collections.deque()
        self._pending_bytes = 0
        self.pool = ram.alloc(info.pool_size, SEGMENT_ALIGN) if info.pool_size else None
        memory = ChannelMemory(self._device_memory)
        self.endpoint = QueueEndpoint(Channel(info.mode), memory, self)
        records = [wire.encode_pool(self.pool.gpa, self.pool.length)] if self.pool else []
        records.append(memory.lend(TABLE_ENTRIES, self._carve))
        for _ in range(RX_BUFFERS):
            self._post_rx(ram.alloc(wire.BUFFER_SIZE, 64))
        ldc.guest.kick(self.rx.index)
        self.transmit(records)

    # ---- memory ---------------------------------------------------------------------------

    def _carve(self, size: int) -> tuple[int, memoryview]:
        buffer = self.ldc.guest.ram.alloc(size, SEGMENT_ALIGN)
        return buffer.gpa, self.ldc.guest.ram.view(buffer.gpa, size)

    def _device_memory(self, gpa: int, size: int) -> memoryview:
        """What the device names must lie in the pool we lent this channel."""
        pool = self.pool
        if pool is None or gpa < pool.gpa or gpa + size > pool.gpa + pool.length or size <= 0:
            raise GuestError(f"GPA 0x{gpa:x}+{size} is outside the pool lent to channel {self.info.channel_id}")
        return self.ldc.guest.ram.view(gpa, size)

    # ---- RecordLink ---------------------------------------------------------------------------

    def transmit(self, records: list[bytes]) -> None:
        self._pending.extend(records)
        self._pending_bytes += sum(len(r) for r in records)
        self._send()

    @property
    def backlog(self) -> int:
        return self._pending_bytes

    def _send(self) -> None:
        ram, sent = self.ldc.guest.ram, False
        while self._pending and (self._tx_free or self._reclaim_tx()):
            buffer = self._tx_free.popleft()
            view = ram.view(buffer.gpa, buffer.length)
            used = 0
            while self._pending and used + len(self._pending[0]) <= buffer.length:
                record = self._pending.popleft()
                view[used : used + len(record)] = record
                used += len(record)
                self._pending_bytes -= len(record)
            head = self.tx.add([Buffer(buffer.gpa, used)])
            self._tx_busy[head] = buffer
            sent = True
        if sent:
            self.ldc.guest.kick(self.tx.index)

    def _post_rx(self, buffer: Buffer) -> None:
        head = self.rx.add([], [buffer])
        self._rx_buffers[head] = buffer

    # ---- calls --------------------------------------------------------------------------------

    def on_rx_call(self) -> None:
        ram, posted = self.ldc.guest.ram, False
        while True:
            for head, written in self.rx.take_used():
                buffer = self._rx_buffers.pop(head)
                if written:
                    self.endpoint.receive_buffer(bytes(ram.view(buffer.gpa, min(written, buffer.length))))
                self._post_rx(buffer)
                posted = True
            if not self.rx.pending_used():
                break
        if posted:
            self.ldc.guest.kick(self.rx.index)

    def _reclaim_tx(self) -> bool:
        """Every transmit buffer is out: take back those the device finished. Only
        when none is back yet do we ask for a call (no call per buffer otherwise)."""
        rearm = False
        while True:
            for head, _ in self.tx.take_used(rearm=rearm):
                self._tx_free.append(self._tx_busy.pop(head))
            if self._tx_free or (rearm and not self.tx.pending_used()):  # else: finished as we asked
                return bool(self._tx_free)
            rearm = True

    def on_tx_call(self) -> None:
        """The device finished transmit buffers while we were out of them."""
        self._send()
        self.endpoint.drained()


class GuestLdc:
    """A vhost-user LDC device as the guest sees it: channels by index, each with an endpoint."""

    def __init__(self, guest: VirtioGuest) -> None:
        self.guest = guest
        self.channels: list[GuestChannel] = []
        self.closed = asyncio.Event()
        self.reason = ""  # why the device stopped, once closed
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, path: str, *, memory_size: int = 512 << 20) -> GuestLdc:
        """Connect, negotiate, read the channel table and start every channel's queues."""
        guest = VirtioGuest.connect(path, memory_size=memory_size)
        try:
            wanted = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX | wire.F_POOL
            features = guest.negotiate(wanted)
            if not features & wire.F_POOL:
                raise GuestError("the device does not offer VIRTIO_LDC_F_POOL")
            header = guest.read_config(0, wire.CONFIG_HEADER.size)
            count = wire.CONFIG_HEADER.unpack(header)[0]
            infos, _ = wire.decode_config(guest.read_config(0, wire.config_size(min(count, wire.MAX_CHANNELS))))
            if guest.queue_count() < 2 * len(infos):
                raise GuestError(f"the device has {guest.queue_count()} queues for {len(infos)} channels")
            ldc = cls(guest)
            for index, info in enumerate(infos):
                ldc.channels.append(GuestChannel(ldc, index, info))
            guest.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK)
        except BaseException:
            guest.close()
            raise
        for channel in ldc.channels:
            ldc._watch(2 * channel.index, channel.on_rx_call)
            ldc._watch(2 * channel.index + 1, channel.on_tx_call)
        ldc._loop.add_reader(guest.frontend.sock.fileno(), ldc._on_control)
        if guest.backend is not None:
            ldc._loop.add_reader(guest.backend.fileno(), ldc._on_backend_request)
        return ldc

    def _watch(self, queue: int, handler) -> None:
        fd = self.guest.call_fds[queue]

        def ready() -> None:
            try:
                os.read(fd, 8)
            except BlockingIOError:
                pass
            handler()

        self._loop.add_reader(fd, ready)

    def _on_control(self) -> None:
        """The back-end never speaks unasked: readable means it went away."""
        try:
            data = self.guest.frontend.sock.recv(1, 0x40)  # MSG_DONTWAIT
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            log.warning("the LDC device's back-end closed the connection")
            self.close("back-end gone")

    def _on_backend_request(self) -> None:
        """A config interrupt: the one a device raises about itself is NEEDS_RESET (it found
        our rings impossible and stopped every channel); a guest driver then gives up on it."""
        channel = self.guest.backend
        try:
            if channel is None or not channel.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                if channel is not None:  # closed by the back-end: the main socket tells the rest
                    self._loop.remove_reader(channel.fileno())
                return
            self.guest.serve_backend()
            status = self.guest.status()
        except BlockingIOError:
            return
        except OSError as exc:
            self.close(f"back-end channel failed: {exc}")
            return
        if status & DeviceStatus.NEEDS_RESET:
            log.error("the LDC device needs a reset (it found our rings impossible); its back-end logged why")
            self.close("the device needs a reset")

    def channel(self, service: wire.Service, nth: int = 0) -> GuestChannel:
        matching = [c for c in self.channels if c.info.service == service]
        if nth >= len(matching):
            raise LookupError(f"the device has {len(matching)} {service.name} channel(s)")
        return matching[nth]

    def close(self, reason: str = "closed") -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.reason = reason
        self._loop.remove_reader(self.guest.frontend.sock.fileno())
        if self.guest.backend is not None:
            self._loop.remove_reader(self.guest.backend.fileno())
        for fd in self.guest.call_fds.values():
            self._loop.remove_reader(fd)
        for channel in self.channels:
            channel.endpoint.link_lost(reason)
        self.guest.close()
