"""asyncio edge of the vhost-user back-end: the socket (with SCM_RIGHTS), kick and call eventfds, I/O threads.

The protocol machine (protocol.py) decides; this module only moves bytes and
fds, watches kick eventfds, writes call eventfds, and runs each device's
blocking work in that device's own thread pool, so a slow disk never stalls
the loop or another device. Each queue is served in turns of at most
`TURN_BUDGET` requests; a queue with more work goes to the back of the loop's
ready list, so no queue starves another.
"""

from __future__ import annotations

import array
import asyncio
import concurrent.futures
import logging
import os
import socket
from collections.abc import Callable
from typing import TypeVar

from ..errors import ProtocolError
from .constants import MAX_FDS
from .device import VirtioDevice
from .messages import Message, MessageDecoder
from .protocol import BackendProtocol, CallChanged, DeviceBroken, DrainRequested, QueueStarted, QueueStopped
from .shm import map_region
from .virtqueue import DescriptorChain, QueueBroken, SplitQueue

log = logging.getLogger(__name__)

T = TypeVar("T")
TURN_BUDGET = 64
RECV_SIZE = 65536
SIGNAL = (1).to_bytes(8, "little")


class QueueRunner:
    """One running queue: kicks in, requests to the device, completions and calls out (a ServedQueue)."""

    def __init__(self, connection: Connection, index: int, queue: SplitQueue, kick_fd: int | None, call_fd: int | None) -> None:
        self.index = index
        self.queue = queue
        self.call_fd = call_fd
        self._connection = connection
        self._loop = connection.loop
        self._kick_fd = kick_fd
        self._budget = 0
        self._exhausted = False
        self._scheduled = False
        self._notify_scheduled = False
        self.stopped = False
        self.in_flight = 0
        self._drained: asyncio.Event | None = None
        if kick_fd is not None:
            os.set_blocking(kick_fd, False)
            self._loop.add_reader(kick_fd, self._on_kick)
        self._schedule()  # chains may be waiting already (restart, reconnect)

    # ---- ServedQueue ----------------------------------------------------------------

    def pop(self) -> DescriptorChain | None:
        if self.stopped:
            return None
        if self._budget <= 0:
            self._exhausted = True
            return None
        try:
            chain = self.queue.pop()
        except QueueBroken as exc:
            self.fail(str(exc))
            return None
        if chain is not None:
            self._budget -= 1
        return chain

    def complete(self, chain: DescriptorChain, written: int) -> None:
        if self._connection.closed:
            return
        self.queue.push(chain.head, written)
        if not self._notify_scheduled:
            self._notify_scheduled = True
            self._loop.call_soon(self._notify)

    def run_blocking(self, work: Callable[[], T], done: Callable[[T | BaseException], None]) -> None:
        self.in_flight += 1
        future = self._loop.run_in_executor(self._connection.executor, work)

        def finished(f: asyncio.Future[T]) -> None:
            self.in_flight -= 1
            try:
                done(f.exception() or f.result())
            finally:
                if self.in_flight == 0 and self._drained is not None:
                    self._drained.set()

        future.add_done_callback(finished)

    def fail(self, reason: str) -> None:
        self._connection.device_broken(f"queue {self.index}: {reason}")

    # ---- the loop's side ------------------------------------------------------------

    def _on_kick(self) -> None:
        try:
            os.read(self._kick_fd, 8)  # type: ignore[arg-type]
        except BlockingIOError:
            pass
        except OSError as exc:
            log.warning("queue %d kick fd: %s", self.index, exc)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and not self.stopped:
            self._scheduled = True
            self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        self._scheduled = False
        if self.stopped:
            return
        self._budget, self._exhausted = TURN_BUDGET, False
        try:
            self._connection.device.handle_queue(self)
        except QueueBroken as exc:
            self.fail(str(exc))
            return
        if self.stopped:
            return
        try:
            more = self._exhausted or self.queue.enable_kicks()
        except QueueBroken as exc:
            self.fail(str(exc))
            return
        if more:
            self._schedule()

    def _notify(self) -> None:
        self._notify_scheduled = False
        if self.call_fd is not None and not self._connection.closed and self.queue.needs_notification():
            try:
                os.write(self.call_fd, SIGNAL)
            except BlockingIOError:
                pass  # the counter is saturated: the driver will look anyway
            except OSError as exc:
                log.warning("queue %d call fd: %s", self.index, exc)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            if self._kick_fd is not None:
                self._loop.remove_reader(self._kick_fd)

    async def drain(self) -> None:
        """Wait for every request handed to the I/O threads, then signal what they completed."""
        if self.in_flight:
            self._drained = asyncio.Event()
            await self._drained.wait()
        self._notify()


class Connection:
    """One front-end on one socket, for one device."""

    def __init__(self, sock: socket.socket, device: VirtioDevice, executor: concurrent.futures.Executor) -> None:
        self.sock = sock
        self.device = device
        self.executor = executor
        self.loop = asyncio.get_running_loop()
        self.protocol = BackendProtocol(device, map_region)
        self.closed = False
        self.done = asyncio.Event()
        self._decoder = MessageDecoder()
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._runners: dict[int, QueueRunner] = {}
        self._stopping: dict[int, QueueRunner] = {}
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._on_readable)
        self._task = self.loop.create_task(self._process())

    def _on_readable(self) -> None:
        fds = array.array("i")
        try:
            data, ancdata, _, _ = self.sock.recvmsg(RECV_SIZE, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
        except BlockingIOError:
            return
        except OSError as exc:
            log.info("vhost-user connection lost: %s", exc)
            data, ancdata = b"", []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        if not data:
            _close_all(fds)
            self._inbox.put_nowait(None)
            self.loop.remove_reader(self.sock.fileno())
            return
        try:
            for message in self._decoder.feed(data, list(fds)):
                self._inbox.put_nowait(message)
        except ProtocolError as exc:
            log.error("vhost-user front-end sent garbage, dropping the connection: %s", exc)
            _close_all(fds)
            self._inbox.put_nowait(None)
            self.loop.remove_reader(self.sock.fileno())

    async def _process(self) -> None:
        try:
            while (message := await self._inbox.get()) is not None:
                log.debug("vhost-user <- %s flags 0x%x %d bytes %d fds", message.name, message.flags, len(message.payload), len(message.fds))
                self.protocol.receive(message)
                await self._apply()
        finally:
            self.close()

    async def _apply(self) -> None:
        """Carry out what the machine decided: start/stop runners, drain, send replies."""
        while True:
            drains = []
            for event in self.protocol.take_events():
                if isinstance(event, QueueStarted):
                    self._stop_runner(event.index)
                    self._runners[event.index] = QueueRunner(self, event.index, event.queue, event.kick_fd, event.call_fd)
                elif isinstance(event, QueueStopped):
                    self._stop_runner(event.index)
                elif isinstance(event, CallChanged) and event.index in self._runners:
                    self._runners[event.index].call_fd = event.call_fd
                elif isinstance(event, DrainRequested):
                    drains.append(event.index)
                elif isinstance(event, DeviceBroken):
                    log.error("device on %s needs a reset: %s", self.sock.getsockname(), event.reason)
            for reply in self.protocol.take_output():
                await self.loop.sock_sendall(self.sock, reply.encode())
            if not drains:
                return
            for index in drains:
                runner = self._stopping.pop(index, None)
                if runner is not None:
                    await runner.drain()
                self.protocol.queue_drained(index)

    def _stop_runner(self, index: int) -> None:
        runner = self._runners.pop(index, None)
        if runner is not None:
            runner.stop()
            self._stopping[index] = runner  # GET_VRING_BASE drains it; otherwise dropped

    def device_broken(self, reason: str) -> None:
        self.protocol.mark_broken(reason)
        self.loop.create_task(self._apply())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for index in list(self._runners):
            self._stop_runner(index)
        self.protocol.close()
        self.protocol.take_events()
        _close_all(self._decoder.pending_fds())
        try:
            self.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass
        self.sock.close()
        self.done.set()
        if self._task is not asyncio.current_task():
            self._task.cancel()


class VhostUserServer:
    """Serves one device on one Unix socket; one front-end at a time, and again after it leaves."""

    def __init__(self, path: str, device: VirtioDevice, *, io_threads: int = 4) -> None:
        self.path = path
        self.device = device
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix=f"vhost-io-{os.path.basename(path)}")
        self.connection: Connection | None = None
        self._listener: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(1)
        self._listener.setblocking(False)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(self._listener)
            except OSError:
                return
            if self.connection is not None and not self.connection.closed:
                log.warning("%s: a second front-end tried to connect; refused", self.path)
                sock.close()
                continue
            log.info("%s: front-end connected", self.path)
            self.device.reset()
            self.connection = Connection(sock, self.device, self.executor)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self.connection is not None:
            self.connection.close()
        self.executor.shutdown(wait=True)


def _close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
