"""asyncio edge of the NBD server: a Unix socket, one `NbdServer` per client, requests onto a disk.

The disk is anything with the vdc client's shape (`VdcClient`): requests run
concurrently (NBD pipelines them; the vdc ring takes up to its size at once)
and each is answered when its disk operation completes, so a reply means
the data reached the vds.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import socket
from collections.abc import Callable
from typing import Protocol

from . import nbd

log = logging.getLogger(__name__)


class Disk(Protocol):
    @property
    def size_bytes(self) -> int: ...
    @property
    def block_size(self) -> int: ...

    async def read(self, offset: int, length: int) -> bytes: ...
    def start_read(self, offset: int, length: int, done: Callable[[int, memoryview | None], None]) -> bool: ...
    async def write(self, offset: int, data: bytes) -> None: ...
    async def flush(self) -> None: ...


#: Reads larger than this are sent straight from the buffer the vds filled, at once;
#: smaller replies are copied and leave together, one send per loop iteration.
LARGE_READ = 64 << 10
REPLY_BUFFER = 4 << 20
SO_SNDBUFFORCE = 32  # Linux's <asm-generic/socket.h>; Python's socket module does not name it

_NBD_ERRORS = {errno.EPERM: nbd.EPERM, errno.EROFS: nbd.EPERM, errno.EACCES: nbd.EPERM, errno.ENOSPC: nbd.ENOSPC,
               errno.EINVAL: nbd.EINVAL, errno.ENOMEM: nbd.ENOMEM, errno.ENOTSUP: nbd.ENOTSUP}


def _room_for_a_large_reply(sock: socket.socket | None) -> None:
    """A socket buffer that takes a whole max_block reply in one send: with the
    default (~200 KiB) a 1 MiB reply leaves in pieces, each a wake-up and a
    move of the rest of asyncio's buffer. Beyond wmem_max only root may go."""
    if sock is None:
        return
    for option in (SO_SNDBUFFORCE, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, REPLY_BUFFER)
            return
        except OSError:
            continue


class _Connection(asyncio.Protocol):
    def __init__(self, server: NbdExport) -> None:
        self.server = server
        self.protocol = nbd.NbdServer(server.export)
        self.transport: asyncio.Transport | None = None
        self._tasks: dict[int, asyncio.Task] = {}  # requests being served, by a number of ours
        self._reads = 0  # reads started without a task (Disk.start_read), not answered yet
        self._numbers = itertools.count()
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()  # once: each lookup is a getpid() call

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _room_for_a_large_reply(transport.get_extra_info("socket"))
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.protocol.receive(data)
        for event in self.protocol.take_events():
            if isinstance(event, nbd.Request) and event.command == nbd.Command.READ and self._start_read(event):
                continue
            if isinstance(event, nbd.Request):
                number = next(self._numbers)
                self._tasks[number] = self._loop.create_task(self._serve(event, number))
            elif isinstance(event, nbd.Closed):
                log.info("NBD client gone: %s", event.reason)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for task in list(self._tasks.values()):
            task.cancel()

    def _flush_soon(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        output = self.protocol.take_output()
        if output and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(output))
        if self.protocol.closed and self.transport is not None and not self._tasks and not self._reads:
            self.transport.close()

    def _start_read(self, request: nbd.Request) -> bool:
        """The common READ, without a task: answered from the disk's callback. False
        when it must take the task path (an error to report, too large, no free slot)."""
        if request.length > self.server.max_block:
            return False
        try:
            self.server.check(request)
        except OSError:
            return False

        def done(code: int, view: memoryview | None) -> None:
            self._reads -= 1
            if view is None:
                self._reply_error(request, OSError(code, os.strerror(code)))
                self._flush_soon()
            elif len(view) > LARGE_READ:
                self.protocol.reply(request.handle, 0, view)
                self._flush()  # straight from the vdc's buffer, before it is reused
            else:
                self.protocol.reply(request.handle, 0, bytes(view))
                self._flush_soon()

        started = self.server.disk.start_read(request.offset, request.length, done)
        self._reads += started
        return started

    def _reply_error(self, request: nbd.Request, exc: OSError) -> None:
        self.protocol.reply(request.handle, _NBD_ERRORS.get(exc.errno or 0, nbd.EIO))
        log.info("NBD command %d at %d+%d failed: %s", request.command, request.offset, request.length, exc)

    async def _serve(self, request: nbd.Request, number: int) -> None:
        """Answer one request; it leaves `_tasks` before the flush that may close the
        connection (a done-callback would run after it, and cost a loop turn)."""
        try:
            self.protocol.reply(request.handle, 0, await self.server.execute(request))
        except OSError as exc:
            self._reply_error(request, exc)
        finally:
            del self._tasks[number]
        self._flush_soon()


class NbdExport:
    """Serves `disk` as one NBD export on a Unix socket."""

    def __init__(self, disk: Disk, socket_path: str, *, name: str = "", max_block: int = 1 << 20, read_only: bool = False) -> None:
        self.disk = disk
        self.socket_path = socket_path
        self.max_block = max_block
        self.export = nbd.Export(name, disk.size_bytes, disk.block_size, max_block, read_only)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        self._server = await asyncio.get_running_loop().create_unix_server(lambda: _Connection(self), self.socket_path)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def check(self, request: nbd.Request) -> None:
        """OSError with the errno to report when the request cannot be carried out."""
        command, offset, length = request.command, request.offset, request.length
        if command not in (nbd.Command.READ, nbd.Command.WRITE, nbd.Command.TRIM, nbd.Command.WRITE_ZEROES):
            raise OSError(errno.EINVAL, f"command {command} is not supported")
        block, size = self.export.block_size, self.export.size  # the disk's, as the export was made
        if offset % block or length % block or offset + length > size:
            raise OSError(errno.EINVAL, f"{offset}+{length} is unaligned or past the {size}-byte disk")
        if command != nbd.Command.READ and self.export.read_only:
            raise OSError(errno.EPERM, "read-only export")
        if command == nbd.Command.READ and length > nbd.MAX_PAYLOAD:
            raise OSError(errno.EINVAL, f"READ of {length} bytes is too large")

    async def execute(self, request: nbd.Request) -> bytes:
        """Carry out one request on the disk; OSError with the errno to report."""
        command, offset, length = request.command, request.offset, request.length
        if command == nbd.Command.FLUSH:
            await self.disk.flush()
            return b""
        self.check(request)
        step = self.max_block
        if command == nbd.Command.READ:
            if length <= step:  # the common case: no task per piece
                return await self.disk.read(offset, length)
            parts = await asyncio.gather(*(self.disk.read(at, min(step, offset + length - at)) for at in range(offset, offset + length, step)))
            return b"".join(parts)
        if command == nbd.Command.WRITE:
            if length <= step:
                await self.disk.write(offset, request.data)
            else:
                view = memoryview(request.data)
                await asyncio.gather(*(self.disk.write(at, bytes(view[at - offset : at - offset + step])) for at in range(offset, offset + length, step)))
        elif command == nbd.Command.WRITE_ZEROES:
            zeroes = bytes(min(step, length))
            for at in range(offset, offset + length, step):
                await self.disk.write(at, zeroes[: min(step, offset + length - at)])
        # TRIM is advisory: the vDisk protocol has no discard, so the blocks simply keep their data.
        if request.flags & nbd.CMD_FLAG_FUA:
            await self.disk.flush()
        return b""
