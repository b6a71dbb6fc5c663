"""A vhost-user front-end: the part QEMU plays, so devices are tested (and driven) without QEMU.

The control path is synchronous, as in QEMU: one request, then its reply.
`Frontend` speaks the messages; `VirtioGuest` adds what a guest driver does
on top (feature negotiation, guest memory, queues with kick and call eventfds,
config reads), which is the API other code builds on:

    guest = VirtioGuest.connect(path, memory_size=64 << 20)
    guest.negotiate(wanted_features)
    queue = guest.start_queue(0, size=128)
    head = queue.add([guest_buffer], [status_buffer]); guest.kick(0)
    completed = guest.wait_used(0)

With an `Iommu` the guest negotiates VIRTIO_F_ACCESS_PLATFORM, hands the
back-end a back-end channel (SET_BACKEND_REQ_FD), gives the device IOVAs only,
and answers the back-end's IOTLB misses the way QEMU does: an UPDATE on the
main channel (acked), then the miss's own ack. Unmapped buffers are
invalidated (INVALIDATE) unless `invalidate_on_unmap` is off, as on sun4u.
"""

from __future__ import annotations

import array
import os
import select
import socket
import time
from collections.abc import Sequence

from ..errors import ProtocolError
from .constants import (
    F_PROTOCOL_FEATURES,
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    IOTLB_INVALIDATE,
    IOTLB_MISS,
    IOTLB_RO,
    MAX_FDS,
    VERSION,
    VIRTIO_F_ACCESS_PLATFORM,
    VIRTIO_RING_F_EVENT_IDX,
    BackendRequest,
    ProtocolFeature,
    Request,
)
from .driver import Buffer, DriverQueue, GuestRam
from .iommu import Iommu
from .messages import (
    ConfigSpace,
    InflightInfo,
    IotlbMessage,
    Message,
    MessageDecoder,
    VringState,
    decode_u64,
    encode_mem_table,
    encode_u64,
)


class Frontend:
    """The message layer: send a request (with fds), read its reply."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.protocol_features = ProtocolFeature(0)
        self._decoder = MessageDecoder()
        self._pending: list[Message] = []

    @classmethod
    def connect(cls, path: str, timeout: float = 10.0) -> Frontend:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(path)
        return cls(sock)

    def send(self, request: int, payload: bytes = b"", fds: Sequence[int] = (), *, need_reply: bool = False) -> None:
        flags = VERSION | (FLAG_NEED_REPLY if need_reply else 0)
        data = Message(request, flags, payload).encode()
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        self.sock.sendmsg([data], ancillary)

    def receive(self) -> Message:
        while not self._pending:
            fds = array.array("i")
            data, ancillary, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            if not data:
                raise ConnectionError("the back-end closed the connection")
            self._pending += self._decoder.feed(data, list(fds))
        return self._pending.pop(0)

    def call(self, request: int, payload: bytes = b"") -> bytes:
        """A request with a reply of its own (GET_*)."""
        self.send(request, payload)
        reply = self.receive()
        if reply.request != request or not reply.is_reply:
            raise ProtocolError(f"asked {Request(request).name}, got reply {reply.name} (flags 0x{reply.flags:x})")
        return reply.payload

    def command(self, request: int, payload: bytes = b"", fds: Sequence[int] = ()) -> None:
        """A request without a reply of its own; with REPLY_ACK we ask for an ack and check it."""
        ack = bool(self.protocol_features & ProtocolFeature.REPLY_ACK)
        self.send(request, payload, fds, need_reply=ack)
        if ack:
            status = decode_u64(self.call_reply(request))
            if status:
                raise ProtocolError(f"back-end refused {Request(request).name} (status {status})")

    def call_reply(self, request: int) -> bytes:
        reply = self.receive()
        if reply.request != request:
            raise ProtocolError(f"expected the reply to {Request(request).name}, got {reply.name}")
        return reply.payload

    def close(self) -> None:
        self.sock.close()


class VirtioGuest:
    """A guest driver's view of one vhost-user device: memory, negotiation, queues, notifications."""

    def __init__(self, frontend: Frontend, ram: GuestRam, iommu: Iommu | None = None) -> None:
        self.frontend = frontend
        self.ram = ram
        self.iommu = iommu
        self.invalidate_on_unmap = True
        self.features = 0
        self.queues: dict[int, DriverQueue] = {}
        self.kick_fds: dict[int, int] = {}
        self.call_fds: dict[int, int] = {}
        self.backend: socket.socket | None = None  # our end of the back-end channel
        self.config_changes = 0
        self._backend_decoder = MessageDecoder()

    @classmethod
    def connect(cls, path: str, *, memory_size: int = 64 << 20, timeout: float = 10.0, iommu: Iommu | None = None) -> VirtioGuest:
        return cls(Frontend.connect(path, timeout), GuestRam(memory_size), iommu)

    # ---- setup, in the order QEMU uses -------------------------------------------------

    def negotiate(self, wanted: int, protocol: ProtocolFeature | None = None) -> int:
        """GET_FEATURES, SET_OWNER, protocol features, SET_FEATURES; then SET_MEM_TABLE. Returns the features."""
        offered = decode_u64(self.frontend.call(Request.GET_FEATURES))
        if offered & F_PROTOCOL_FEATURES:
            backend = ProtocolFeature(decode_u64(self.frontend.call(Request.GET_PROTOCOL_FEATURES)))
            chosen = backend & (protocol if protocol is not None else backend)
            self.frontend.send(Request.SET_PROTOCOL_FEATURES, encode_u64(chosen))
            self.frontend.protocol_features = chosen
            if chosen & ProtocolFeature.BACKEND_REQ:
                self.open_backend_channel()
        self.frontend.command(Request.SET_OWNER)
        if self.iommu is not None and not offered & VIRTIO_F_ACCESS_PLATFORM:
            raise ProtocolError("the back-end does not offer VIRTIO_F_ACCESS_PLATFORM (needed behind an IOMMU)")
        if self.iommu is None:
            wanted &= ~VIRTIO_F_ACCESS_PLATFORM  # no IOMMU in front of this device: addresses are guest-physical
        self.features = offered & (wanted | F_PROTOCOL_FEATURES)
        self.frontend.command(Request.SET_FEATURES, encode_u64(self.features))
        self.frontend.command(Request.SET_MEM_TABLE, encode_mem_table([self.ram.region()]), [self.ram.fd])
        return self.features

    def queue_count(self) -> int:
        return decode_u64(self.frontend.call(Request.GET_QUEUE_NUM))

    def read_config(self, offset: int, size: int) -> bytes:
        reply = self.frontend.call(Request.GET_CONFIG, ConfigSpace(offset, size, 0, bytes(size)).encode())
        if not reply:
            raise ProtocolError(f"back-end refused to read config {offset}+{size}")
        return ConfigSpace.decode(reply).data

    def write_config(self, offset: int, data: bytes) -> None:
        self.frontend.command(Request.SET_CONFIG, ConfigSpace(offset, len(data), 0, data).encode())

    def start_queue(self, index: int, size: int = 128) -> DriverQueue:
        """NUM, BASE, ADDR, KICK, CALL, then ENABLE: the ring runs after this."""
        queue = DriverQueue(self.ram, index, size, event_idx=bool(self.features & VIRTIO_RING_F_EVENT_IDX), iommu=self.iommu)
        self.queues[index] = queue
        self.resume_queue(index, 0)
        return queue

    def resume_queue(self, index: int, base: int) -> None:
        """Hand an existing ring (again) to the back-end, starting at avail index `base`."""
        queue = self.queues[index]
        for fds in (self.kick_fds, self.call_fds):
            if index in fds:
                os.close(fds.pop(index))
        kick, call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC), os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.kick_fds[index], self.call_fds[index] = kick, call
        self.frontend.command(Request.SET_VRING_NUM, VringState(index, queue.size).encode())
        self.frontend.command(Request.SET_VRING_BASE, VringState(index, base).encode())
        self.frontend.command(Request.SET_VRING_ADDR, queue.addresses().encode())
        self.frontend.command(Request.SET_VRING_KICK, encode_u64(index), [kick])
        self.frontend.command(Request.SET_VRING_CALL, encode_u64(index), [call])
        if self.features & F_PROTOCOL_FEATURES:
            self.frontend.command(Request.SET_VRING_ENABLE, VringState(index, 1).encode())

    def get_inflight(self, num_queues: int, queue_size: int) -> tuple[int, InflightInfo]:
        """GET_INFLIGHT_FD: the back-end's inflight region (fd, description), which we keep."""
        self.frontend.send(Request.GET_INFLIGHT_FD, InflightInfo(0, 0, num_queues, queue_size).encode())
        reply = self.frontend.receive()
        if reply.request != Request.GET_INFLIGHT_FD or len(reply.fds) != 1 or not reply.payload:
            raise ProtocolError(f"GET_INFLIGHT_FD answered with {reply.name}, {len(reply.fds)} fds")
        return reply.fds[0], InflightInfo.decode(reply.payload)

    def set_inflight(self, fd: int, info: InflightInfo) -> None:
        self.frontend.command(Request.SET_INFLIGHT_FD, info.encode(), [fd])

    def reconnect(self, path: str, wanted: int, *, inflight: tuple[int, InflightInfo] | None = None, timeout: float = 10.0) -> None:
        """What QEMU does after its back-end died and a new one listens: negotiate again, hand over
        memory, the inflight region and every ring, each resuming at the used index (the dead
        back-end cannot say where it stopped)."""
        self.frontend.close()
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        self.frontend = Frontend.connect(path, timeout)
        self.negotiate(wanted)
        if inflight is not None:
            self.set_inflight(*inflight)
        for index, queue in self.queues.items():
            self.resume_queue(index, queue.used_index())

    def stop_queue(self, index: int) -> int:
        """GET_VRING_BASE: the back-end stops the ring and says where it stopped."""
        state = VringState.decode(self.frontend.call(Request.GET_VRING_BASE, VringState(index, 0).encode()))
        return state.num

    def set_status(self, status: int) -> None:
        self.frontend.command(Request.SET_STATUS, encode_u64(status))

    def status(self) -> int:
        return decode_u64(self.frontend.call(Request.GET_STATUS))

    # ---- data path ----------------------------------------------------------------------

    def kick(self, index: int, *, force: bool = False) -> None:
        """Notify the back-end, if the ring says it wants to be notified."""
        if self.queues[index].kick_needed() or force:
            os.write(self.kick_fds[index], (1).to_bytes(8, "little"))

    def wait_used(self, index: int, timeout: float = 10.0, count: int = 1) -> list[tuple[int, int]]:
        """Completions (head, written) on queue `index`: at least `count`, waiting on its call fd."""
        queue, call = self.queues[index], self.call_fds[index]
        deadline = time.monotonic() + timeout
        done: list[tuple[int, int]] = []
        while True:
            done += queue.take_used()
            self._invalidate_unmapped(queue)
            if len(done) >= count:
                return done
            if queue.pending_used():
                # the device completed more between our read of the used index and our
                # publishing used_event, and may have decided not to call: look again
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"queue {index}: {len(done)} of {count} completions after {timeout} s")
            ready = select.select([call] + ([self.backend] if self.backend else []), [], [], left)[0]
            if call in ready:
                try:
                    os.read(call, 8)
                except BlockingIOError:
                    pass
            if self.backend is not None and self.backend in ready:
                self.serve_backend()

    # ---- the back-end channel and the IOMMU ---------------------------------------------

    def open_backend_channel(self) -> None:
        """SET_BACKEND_REQ_FD: a socket pair; the back-end gets one end."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.frontend.command(Request.SET_BACKEND_REQ_FD, b"", [theirs.fileno()])
        finally:
            theirs.close()
        self.backend = ours

    def serve_backend(self) -> None:
        """Handle what the back-end sent on its channel (misses, config changes); the back-end
        closing it is not an error here (the main channel tells)."""
        assert self.backend is not None
        data = self.backend.recv(65536)
        for message in self._backend_decoder.feed(data):
            ok = True
            if message.request == BackendRequest.IOTLB_MSG:
                ok = self._answer_miss(IotlbMessage.decode(message.payload))
            elif message.request == BackendRequest.CONFIG_CHANGE_MSG:
                self.config_changes += 1
            else:
                ok = False
            if message.need_reply:
                reply = Message(message.request, VERSION | FLAG_REPLY, encode_u64(0 if ok else 1))
                self.backend.sendall(reply.encode())

    def _answer_miss(self, miss: IotlbMessage) -> bool:
        if self.iommu is None or miss.type != IOTLB_MISS:
            return False
        update = self.iommu.answer(miss.iova, miss.perm != IOTLB_RO, self.ram.uva_of)
        if update is None:
            return False
        return self.send_iotlb(update) == 0

    def send_iotlb(self, message: IotlbMessage) -> int:
        """An IOTLB UPDATE/INVALIDATE (always acked); returns the back-end's status."""
        self.frontend.send(Request.IOTLB_MSG, message.encode(), need_reply=True)
        return decode_u64(self.frontend.call_reply(Request.IOTLB_MSG))

    def _invalidate_unmapped(self, queue: DriverQueue) -> None:
        ranges, queue.unmapped = queue.unmapped, []
        if self.invalidate_on_unmap:
            for iova, size in ranges:
                self.send_iotlb(IotlbMessage(iova, size, 0, 0, IOTLB_INVALIDATE))

    def buffer(self, data: bytes | int) -> Buffer:
        """Guest memory holding `data` (or that many zero bytes)."""
        length = data if isinstance(data, int) else len(data)
        buffer = self.ram.alloc(length)
        if not isinstance(data, int):
            self.ram.view(buffer.gpa, length)[:] = data
        return buffer

    def close(self) -> None:
        self.frontend.close()
        if self.backend is not None:
            self.backend.close()
        for fd in list(self.kick_fds.values()) + list(self.call_fds.values()):
            os.close(fd)
        self.kick_fds.clear()
        self.call_fds.clear()
        self.ram.close()
