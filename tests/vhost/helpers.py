"""A back-end served from a thread with its own event loop, for front-end tests in the test's thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backend.vdisk.devid import DeviceId
from backend.vdisk.engine import DiskEngine
from backend.vhost.aio import VhostUserServer
from backend.vhost.device import VirtioDevice
from backend.vhost.devices import blk
from backend.vhost.devices.blk import REQUEST_HEADER
from backend.vhost.frontend import VirtioGuest


@contextmanager
def serving(devices: dict[str, VirtioDevice]) -> Iterator[dict[str, VhostUserServer]]:
    """Serve each device on its socket path in one loop (one process, like the daemon)."""
    loop = asyncio.new_event_loop()
    servers = {path: VhostUserServer(path, device) for path, device in devices.items()}
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        for server in servers.values():
            loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield servers
    finally:
        async def stop() -> None:
            for server in servers.values():
                server.close()
            await asyncio.sleep(0)  # let the cancelled connection tasks finish

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def blk_request(guest: VirtioGuest, queue: int, kind: int, sector: int, *, data: bytes = b"", read: int = 0,
                indirect: bool = False) -> tuple[int, bytes, int]:
    """One virtio-blk request: returns (status, bytes read, used length)."""
    header = guest.buffer(REQUEST_HEADER.pack(kind, 0, sector))
    readable = [header] + ([guest.buffer(data)] if data else [])
    payload = guest.buffer(read) if read else None
    status = guest.buffer(b"\xff")
    head = guest.queues[queue].add(readable, ([payload] if payload else []) + [status], indirect=indirect)
    guest.kick(queue)
    ((done, written),) = guest.wait_used(queue)
    assert done == head
    result = bytes(guest.ram.view(payload.gpa, payload.length)) if payload else b""
    code = guest.ram.view(status.gpa, 1)[0]
    for buffer in readable + ([payload] if payload else []) + [status]:
        guest.ram.free(buffer)
    return code, result, written


__all__ = ["blk_request", "serving"]


@contextmanager
def two_blk_disks(folder: Path) -> Iterator[tuple[list[str], list[str], dict[str, VhostUserServer]]]:
    """Two 1 MiB virtio-blk disks served in one loop: (sockets, image paths, servers)."""
    paths = []
    for name in ("a", "b"):
        path = folder / f"{name}.img"
        path.write_bytes(bytes(1 << 20))
        paths.append(str(path))
    socks = [str(folder / "a.sock"), str(folder / "b.sock")]
    devices = {sock: blk.BlockDevice(DiskEngine(path), DeviceId(3, b"x" * 16)) for sock, path in zip(socks, paths)}
    with serving(devices) as servers:
        yield socks, paths, servers
