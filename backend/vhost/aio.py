"""asyncio edge of the vhost-user back-end: the socket (with SCM_RIGHTS), kick and call eventfds, I/O threads.

The protocol machine (protocol.py) decides; this module only moves bytes and
fds, watches kick eventfds, writes call eventfds, and runs each device's
blocking work in that device's own thread pool, so a slow disk never stalls
the loop or another device. Each queue is served in turns of at most
`TURN_BUDGET` requests; a queue with more work goes to the back of the loop's
ready list, so no queue starves another.

A queue whose next request (or whose rings) waits for an IOTLB translation is
*parked*: the machine sends the miss on the back-end channel, and the update
that answers it wakes every parked queue of the connection. The back-end
channel's replies go through the same inbox as the main channel's messages,
so an update is always applied before the ack of the miss it answered.
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
from ..ldc.aio import SocketServer
from .constants import MAX_FDS
from .device import VirtioDevice
from .iotlb import IotlbMiss
from .messages import Message, MessageDecoder
from .protocol import (
    BackendChannel,
    BackendProtocol,
    BackendSend,
    CallChanged,
    DeviceBroken,
    DrainRequested,
    QueueStarted,
    QueueStopped,
    TranslationsChanged,
)
from .shm import InflightMemory, map_region
from .virtqueue import DescriptorChain, QueueBroken, RingsUnmapped, SplitQueue

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
        self._in_turn = False
        self._exhausted = False
        self._parked = False
        self._scheduled = False
        self._notify_scheduled = False
        self.stopped = False
        self.in_flight = 0
        self.bytes_taken = 0  # buffer bytes of the requests taken (statistics)
        self._drained: asyncio.Event | None = None
        if kick_fd is not None:
            os.set_blocking(kick_fd, False)
            self._loop.add_reader(kick_fd, self._on_kick)
        self._schedule()  # chains may be waiting already (restart, reconnect)

    # ---- ServedQueue ----------------------------------------------------------------

    def pop(self) -> DescriptorChain | None:
        if self.stopped:
            return None
        if self._in_turn and self._budget <= 0:
            self._exhausted = True
            return None
        try:
            chain = self.queue.pop()
        except QueueBroken as exc:
            self.fail(str(exc))
            return None
        except IotlbMiss as miss:
            self._parked = True
            self._connection.translation_missing(miss)
            return None
        except RingsUnmapped:
            self._parked = True
            return None
        if chain is not None:
            self._budget -= 1
            self.bytes_taken += chain.readable_len + chain.writable_len
        return chain

    def rewind(self, count: int) -> None:
        self.queue.rewind(count)

    def wake(self) -> None:
        """A turn soon (device work, or the IOTLB answered); completions deferred meanwhile get signalled."""
        self._schedule()
        self._schedule_notify()

    def complete(self, chain: DescriptorChain, written: int) -> None:
        if self._connection.closed:
            return
        self.queue.push(chain.head, written)
        self._schedule_notify()

    def _schedule_notify(self) -> None:
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

    def want_kicks(self) -> bool:
        """Kicks on (event index); True if chains came meanwhile. A broken ring fails the device."""
        if self.stopped:
            return False
        try:
            return self.queue.enable_kicks()
        except QueueBroken as exc:
            self.fail(str(exc))
        except RingsUnmapped:
            pass
        return False

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
        self._budget, self._exhausted, self._parked, self._in_turn = TURN_BUDGET, False, False, True
        try:
            self._connection.device.handle_queue(self)
        except QueueBroken as exc:
            self.fail(str(exc))
            return
        finally:
            self._in_turn = False
        if self.stopped or self._parked:
            return  # parked: the IOTLB update wakes us
        if self._exhausted or (self._connection.device.kicks_wanted(self.index) and self.want_kicks()):
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

    def __init__(self, sock: socket.socket, device: VirtioDevice, executor: concurrent.futures.Executor, *, iommu: bool = False) -> None:
        self.sock = sock
        self.device = device
        self.executor = executor
        self.loop = asyncio.get_running_loop()
        self.protocol = BackendProtocol(device, map_region, iommu=iommu, inflight_mapper=InflightMemory())
        self.closed = False
        self.done = asyncio.Event()
        self._decoder = MessageDecoder()
        self._inbox: asyncio.Queue[Message | BackendReply | None] = asyncio.Queue()
        self._runners: dict[int, QueueRunner] = {}
        self._stopping: dict[int, QueueRunner] = {}
        self._backend: BackendChannelSocket | None = None
        self.bytes_taken = 0  # of runners already stopped
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._on_readable)
        device.set_config_notifier(self._config_changed)
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
                if isinstance(message, BackendReply):
                    self.protocol.backend_reply(message.message)
                else:
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
                elif isinstance(event, BackendChannel):
                    self._open_backend_channel(event.fd)
                elif isinstance(event, BackendSend):
                    await self._send_backend(event.message)
                elif isinstance(event, TranslationsChanged):
                    for runner in list(self._runners.values()):
                        runner.wake()
            for reply in self.protocol.take_output():
                await self._send(reply)
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
            self.bytes_taken += runner.bytes_taken
            self._stopping[index] = runner  # GET_VRING_BASE drains it; otherwise dropped

    async def _send(self, reply: Message) -> None:
        if not reply.fds:
            await self.loop.sock_sendall(self.sock, reply.encode())
            return
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", reply.fds).tobytes())]
        while True:  # one small message: the socket buffer takes it, or soon will
            try:
                self.sock.sendmsg([reply.encode()], rights)
                return
            except BlockingIOError:
                await asyncio.sleep(0.001)

    def _open_backend_channel(self, fd: int) -> None:
        if self._backend is not None:
            self._backend.close()
        try:
            self._backend = BackendChannelSocket(self, fd)
        except OSError as exc:
            log.error("vhost-user back-end channel unusable: %s", exc)
            self._backend = None

    async def _send_backend(self, message: Message) -> None:
        if self._backend is None:
            log.warning("no back-end channel for %s", message.name)
            return
        try:
            await self.loop.sock_sendall(self._backend.sock, message.encode())
        except OSError as exc:
            log.warning("vhost-user back-end channel: %s", exc)

    def translation_missing(self, miss: IotlbMiss) -> None:
        self.protocol.request_translation(miss.iova, miss.write)
        self.loop.create_task(self._apply())

    def _config_changed(self) -> bool:
        sent = self.protocol.config_changed()
        if sent:
            self.loop.create_task(self._apply())
        return sent

    def device_broken(self, reason: str) -> None:
        self.protocol.mark_broken(reason)
        self.loop.create_task(self._apply())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.device.set_config_notifier(None)
        for index in list(self._runners):
            self._stop_runner(index)
        log.info("front-end gone: %d request bytes, %d IOTLB misses", self.bytes_taken, self.protocol.iotlb.misses)
        if self._backend is not None:
            self._backend.close()
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


class BackendReply:
    """A message read from the back-end channel (the front-end's replies to our requests)."""

    __slots__ = ("message",)

    def __init__(self, message: Message) -> None:
        self.message = message


class BackendChannelSocket:
    """Our duplicate of the back-end channel's fd: we write misses and read the front-end's acks."""

    def __init__(self, connection: Connection, fd: int) -> None:
        self.sock = socket.socket(fileno=os.dup(fd))
        self.sock.setblocking(False)
        self._connection = connection
        self._decoder = MessageDecoder()
        connection.loop.add_reader(self.sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        try:
            for message in self._decoder.feed(data):
                self._connection._inbox.put_nowait(BackendReply(message))
        except ProtocolError as exc:
            log.error("vhost-user back-end channel sent garbage, closing it: %s", exc)
            self.close()

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self._connection.loop.remove_reader(self.sock.fileno())
            self.sock.close()


class VhostUserServer:
    """Serves one device on one Unix socket; one front-end at a time, and again after it leaves.

    `iommu`: offer VIRTIO_F_ACCESS_PLATFORM (the device IOTLB); front-ends without an
    IOMMU for the device (QEMU without iommu_platform=on) do not take it, so it is on by default.
    """

    def __init__(self, path: str, device: VirtioDevice, *, io_threads: int = 4, iommu: bool = True) -> None:
        self.path = path
        self.device = device
        self.iommu = iommu
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix=f"vhost-io-{os.path.basename(path)}")
        self.connection: Connection | None = None
        self._server = SocketServer(path, self._accept, kind=socket.SOCK_STREAM, backlog=1)

    async def start(self) -> None:
        await self._server.start()

    def _accept(self, sock: socket.socket) -> None:
        if self.connection is not None and not self.connection.closed:
            log.warning("%s: a second front-end tried to connect; refused", self.path)
            sock.close()
            return
        log.info("%s: front-end connected", self.path)
        # The previous connection is closed: close() ran to its end synchronously, so every
        # queue stop it had to report reached the device before this reset, never after.
        self.device.reset()
        self.connection = Connection(sock, self.device, self.executor, iommu=self.iommu)

    def close(self) -> None:
        self._server.close()
        if self.connection is not None:
            self.connection.close()
        self.executor.shutdown(wait=True)


def _close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
