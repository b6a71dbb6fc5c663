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
    VERSION,
    VIRTIO_RING_F_EVENT_IDX,
    ProtocolFeature,
    Request,
)
from .driver import Buffer, DriverQueue, GuestRam
from .messages import (
    ConfigSpace,
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
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the back-end closed the connection")
            self._pending += self._decoder.feed(data)
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

    def __init__(self, frontend: Frontend, ram: GuestRam) -> None:
        self.frontend = frontend
        self.ram = ram
        self.features = 0
        self.queues: dict[int, DriverQueue] = {}
        self.kick_fds: dict[int, int] = {}
        self.call_fds: dict[int, int] = {}

    @classmethod
    def connect(cls, path: str, *, memory_size: int = 64 << 20, timeout: float = 10.0) -> VirtioGuest:
        return cls(Frontend.connect(path, timeout), GuestRam(memory_size))

    # ---- setup, in the order QEMU uses -------------------------------------------------

    def negotiate(self, wanted: int, protocol: ProtocolFeature | None = None) -> int:
        """GET_FEATURES, SET_OWNER, protocol features, SET_FEATURES; then SET_MEM_TABLE. Returns the features."""
        offered = decode_u64(self.frontend.call(Request.GET_FEATURES))
        if offered & F_PROTOCOL_FEATURES:
            backend = ProtocolFeature(decode_u64(self.frontend.call(Request.GET_PROTOCOL_FEATURES)))
            chosen = backend & (protocol if protocol is not None else backend)
            self.frontend.send(Request.SET_PROTOCOL_FEATURES, encode_u64(chosen))
            self.frontend.protocol_features = chosen
        self.frontend.command(Request.SET_OWNER)
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
        queue = DriverQueue(self.ram, index, size, event_idx=bool(self.features & VIRTIO_RING_F_EVENT_IDX))
        kick, call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC), os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.frontend.command(Request.SET_VRING_NUM, VringState(index, size).encode())
        self.frontend.command(Request.SET_VRING_BASE, VringState(index, 0).encode())
        self.frontend.command(Request.SET_VRING_ADDR, queue.addresses().encode())
        self.frontend.command(Request.SET_VRING_KICK, encode_u64(index), [kick])
        self.frontend.command(Request.SET_VRING_CALL, encode_u64(index), [call])
        if self.features & F_PROTOCOL_FEATURES:
            self.frontend.command(Request.SET_VRING_ENABLE, VringState(index, 1).encode())
        self.queues[index], self.kick_fds[index], self.call_fds[index] = queue, kick, call
        return queue

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
            if len(done) >= count:
                return done
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"queue {index}: {len(done)} of {count} completions after {timeout} s")
            if select.select([call], [], [], left)[0]:
                try:
                    os.read(call, 8)
                except BlockingIOError:
                    pass

    def buffer(self, data: bytes | int) -> Buffer:
        """Guest memory holding `data` (or that many zero bytes)."""
        length = data if isinstance(data, int) else len(data)
        buffer = self.ram.alloc(length)
        if not isinstance(data, int):
            self.ram.view(buffer.gpa, length)[:] = data
        return buffer

    def close(self) -> None:
        self.frontend.close()
        for fd in list(self.kick_fds.values()) + list(self.call_fds.values()):
            os.close(fd)
        self.kick_fds.clear()
        self.call_fds.clear()
        self.ram.close()
