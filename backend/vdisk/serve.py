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
from ..ldc.endpoint import ChannelEndpoint
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
        endpoint, stop = serve_export(self.export, LdcEndpoint(sock, Channel(Mode.UNRELIABLE)))
        self.clients.append(endpoint)
        asyncio.get_running_loop().create_task(self._reap(endpoint, stop))

    async def _reap(self, endpoint: VioEndpoint, stop: Callable[[], None]) -> None:
        await endpoint.ldc.closed_event.wait()
        stop()
        self.clients.remove(endpoint)

    def close(self) -> None:
        self._server.close()
        for endpoint in list(self.clients):
            endpoint.ldc.close()


def serve_export(export: Export, ldc: ChannelEndpoint, *, thread_name: str = "vds-io") -> tuple[VioEndpoint, Callable[[], None]]:
    """Serve `export` to the vdc at the other end of `ldc` (any transport) and open the channel.

    Returns the client's VIO endpoint and what to call once its link is gone. One I/O
    thread per client: its requests run in order (FLUSH is a barrier), clients do not
    wait for each other, and the event loop never blocks on the disk.
    """
    loop = asyncio.get_running_loop()
    thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
    holder: list[VioEndpoint] = []

    def runner(work: Callable[[], list[int]], done: Callable[[list[int]], None]) -> None:
        def back(future: asyncio.Future[list[int]]) -> None:
            done(future.result())
            holder[0].pump()

        loop.run_in_executor(thread, work).add_done_callback(back)

    device = VdsDevice(export, runner)
    holder.append(VioEndpoint(ldc, device))  # type: ignore[arg-type]
    ldc.channel.open()
    ldc.flush()

    def stop() -> None:
        thread.shutdown(wait=False)
        device.access.close()  # connection loss clears reservations (seed 1.1.6.17)

    return holder[0], stop
