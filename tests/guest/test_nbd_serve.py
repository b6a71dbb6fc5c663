"""The NBD server's asyncio edge with a disk in memory: replies, errors and closing with requests in flight."""

from __future__ import annotations

import asyncio
import errno
import struct

from backend.guest import nbd
from backend.guest.nbd_serve import NbdExport

from .test_nbd import info_request, option


BAD_BLOCK = 16 * 512


class SlowDisk:
    """512-byte blocks in memory; reads wait until `release` is set."""

    block_size = 512
    size_bytes = 1 << 20

    def __init__(self) -> None:
        self.data = bytearray(self.size_bytes)
        self.release = asyncio.Event()
        self.started: list[asyncio.Task] = []

    async def read(self, offset: int, length: int) -> bytes:
        await self.release.wait()
        return bytes(self.data[offset : offset + length])

    def start_read(self, offset: int, length: int, done) -> bool:
        """As VdcClient.start_read: the view lives during the call; block 16 fails (EIO)."""

        async def later() -> None:
            await self.release.wait()
            if offset == BAD_BLOCK:
                done(errno.EIO, None)
                return
            with memoryview(self.data)[offset : offset + length] as view:
                done(0, view)

        self.started.append(asyncio.get_running_loop().create_task(later()))
        return True

    async def write(self, offset: int, data: bytes) -> None:
        self.data[offset : offset + len(data)] = data

    async def flush(self) -> None:
        pass


async def _negotiated(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(path)
    await reader.readexactly(nbd.GREETING.size)
    writer.write(struct.pack(">I", 3) + option(nbd.Option.GO, info_request()))
    while True:  # option replies up to the ACK of GO
        _, _, kind, length = nbd.OPTION_REPLY.unpack(await reader.readexactly(nbd.OPTION_REPLY.size))
        await reader.readexactly(length)
        if kind == nbd.Reply.ACK:
            return reader, writer


def _request(command: int, handle: int, offset: int, length: int, data: bytes = b"") -> bytes:
    return nbd.REQUEST.pack(nbd.REQUEST_MAGIC, 0, command, handle, offset, length) + data


def test_requests_in_flight_are_answered_before_a_disconnect_closes(tmp_path) -> None:
    async def main() -> None:
        disk = SlowDisk()
        export = NbdExport(disk, str(tmp_path / "nbd.sock"))
        await export.start()
        try:
            reader, writer = await _negotiated(export.socket_path)
            writer.write(_request(nbd.Command.WRITE, 1, 4096, 512, b"\x5a" * 512))
            writer.write(_request(nbd.Command.READ, 2, 4096, 512) + _request(nbd.Command.READ, 3, 0, 128 << 10))
            writer.write(_request(nbd.Command.READ, 4, 1 << 20, 512))  # past the end
            writer.write(_request(nbd.Command.READ, 6, BAD_BLOCK, 512))  # the disk fails it
            writer.write(_request(nbd.Command.DISC, 5, 0, 0))
            await writer.drain()
            await asyncio.sleep(0.1)
            disk.release.set()
            replies = {}
            for _ in range(5):
                magic, error, handle = nbd.SIMPLE_REPLY.unpack(await asyncio.wait_for(reader.readexactly(nbd.SIMPLE_REPLY.size), 5))
                assert magic == nbd.SIMPLE_REPLY_MAGIC
                size = {2: 512, 3: 128 << 10}.get(handle, 0) if not error else 0
                replies[handle] = (error, await reader.readexactly(size))
            big = bytes(4096) + b"\x5a" * 512 + bytes((128 << 10) - 4608)  # a large read: sent from the disk's buffer
            assert replies == {1: (0, b""), 2: (0, b"\x5a" * 512), 3: (0, big), 4: (nbd.EINVAL, b""), 6: (nbd.EIO, b"")}
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed once all were answered
            writer.close()
        finally:
            export.close()

    asyncio.run(main())
