"""A virtio-net driver on our vhost-user front-end, and an event loop in a thread for the back-end side.

`NetGuest` does what a guest's virtio-net driver does with the rings: posts
receive buffers, sends header+frame chains, reads frames back (joining
mergeable buffers by num_buffers). `LoopThread` runs the switch, the
devices and vnet clients in one asyncio loop, like the back-end process.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from backend.vhost.aio import VhostUserServer
from backend.vhost.devices.net import HDR_V1, NUM_BUFFERS
from backend.vhost.driver import Buffer
from backend.vhost.frontend import VirtioGuest
from backend.vswitch.vnet_hdr import VirtioNetHdr

T = TypeVar("T")
RX, TX = 0, 1


class LoopThread:
    """An asyncio loop in a daemon thread; the test thread calls into it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        async def wrapper() -> T:
            return fn()

        return self.run(wrapper())

    def serve(self, path: str, device: Any) -> VhostUserServer:
        server = VhostUserServer(path, device)
        self.run(server.start())
        return server

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class NetGuest:
    """The driver side of one virtio-net device (queue pair 0)."""

    def __init__(self, path: str, features: int, *, rx_buffers: int = 64, buffer_size: int = 2048, queue_size: int = 256) -> None:
        self.guest = VirtioGuest.connect(path, memory_size=64 << 20)
        self.features = self.guest.negotiate(features)
        self.buffer_size = buffer_size
        self.rx = self.guest.start_queue(RX, queue_size)
        self.tx = self.guest.start_queue(TX, queue_size)
        self._posted: dict[int, Buffer] = {}
        self._used: list[tuple[int, int]] = []
        self.post(rx_buffers)

    def post(self, count: int, size: int | None = None) -> None:
        for _ in range(count):
            buffer = self.guest.buffer(size or self.buffer_size)
            self._posted[self.rx.add([], [buffer])] = buffer
        self.guest.kick(RX)

    def send(self, frame: bytes, hdr: VirtioNetHdr | None = None, *, header_size: int = HDR_V1) -> None:
        data = self.guest.buffer((hdr or VirtioNetHdr()).pack(header_size) + frame)
        self.tx.add([data])
        self.guest.kick(TX)
        self.guest.wait_used(TX)
        self.guest.ram.free(data)

    def receive(self, timeout: float = 5.0, refill: bool = True) -> tuple[VirtioNetHdr, bytes]:
        """The next frame and its header; the buffers it used are posted again."""
        deadline = time.monotonic() + timeout
        if not self._used:
            self._used += self.guest.wait_used(RX, timeout)
        head, written = self._used.pop(0)
        first = self._take(head, written)
        count = NUM_BUFFERS.unpack_from(first, 10)[0] if len(first) >= HDR_V1 else 1
        parts = [first]
        while len(parts) < count:
            if not self._used:
                self._used += self.guest.wait_used(RX, max(0.1, deadline - time.monotonic()))
            parts.append(self._take(*self._used.pop(0)))
        if refill:
            self.post(count)
        data = b"".join(parts)
        return VirtioNetHdr.unpack(data, HDR_V1), data[HDR_V1:]

    def receive_matching(self, predicate: Callable[[bytes], bool], timeout: float = 5.0) -> tuple[VirtioNetHdr, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            hdr, frame = self.receive(max(0.1, deadline - time.monotonic()))
            if predicate(frame):
                return hdr, frame

    def nothing_received(self, wait: float = 0.3) -> bool:
        time.sleep(wait)
        return not self._used and not self.rx.pending_used()

    def _take(self, head: int, written: int) -> bytes:
        buffer = self._posted.pop(head)
        data = bytes(self.guest.ram.view(buffer.gpa, written))
        self.guest.ram.free(buffer)
        return data

    def close(self) -> None:
        self.guest.close()
