"""asyncio edge of the vDisk server: sockets in, one VdsDevice per client, I/O in threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
from collections.abc import Callable

from ..ldc.aio import LdcEndpoint, SocketServer
from ..ldc.channel import Channel
from ..ldc.constants import Mode
from ..vio.aio import VioEndpoint
from .server import Export, VdsDevice

log = logging.getLogger(__name__)


class DiskServer:
    """Serves one export on one Unix socket to any number of clients."""

    def __init__(self, export: Export, socket_path: str) -> None:
        self.export = export
        self.socket_path = socket_path
        self.clients: list[VioEndpoint] = []
        self._server = SocketServer(socket_path, self._serve)

    async def start(self) -> None:
        await self._server.start()

    def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        ldc = LdcEndpoint(sock, Channel(Mode.UNRELIABLE))
        holder: list[VioEndpoint] = []
        # One I/O thread per client: its requests run in order (FLUSH is a barrier),
        # clients do not wait for each other, and the event loop never blocks on the disk.
        thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vds-io")

        def runner(work: Callable[[], list[int]], done: Callable[[list[int]], None]) -> None:
            future = loop.run_in_executor(thread, work)

            def back(f: asyncio.Future[list[int]]) -> None:
                done(f.result())
                if holder:
                    holder[0].pump()

            future.add_done_callback(back)

        device = VdsDevice(self.export, runner)
        endpoint = VioEndpoint(ldc, device)
        holder.append(endpoint)
        self.clients.append(endpoint)
        ldc.channel.open()
        ldc.flush()
        loop.create_task(self._reap(endpoint, device, thread))

    async def _reap(self, endpoint: VioEndpoint, device: VdsDevice, thread: concurrent.futures.Executor) -> None:
        await endpoint.ldc.closed_event.wait()
        thread.shutdown(wait=False)
        device.access.close()  # connection loss clears reservations (seed 1.1.6.17)
        self.clients.remove(endpoint)

    def close(self) -> None:
        self._server.close()
        for endpoint in list(self.clients):
            endpoint.ldc.close()
