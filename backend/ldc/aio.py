"""asyncio adapter: an LDC channel over a Unix SOCK_SEQPACKET connection.

The thin edge around `Channel`: it reads records, feeds the state machine,
writes what the machine emits, and turns events into awaitables. Shared
memory travels as memfds (SCM_RIGHTS) beside the packets.
"""

from __future__ import annotations

import array
import asyncio
import collections
import logging
import os
import socket
from collections.abc import Callable

from ..errors import BackendError, LinkDownError
from . import records
from .channel import Channel
from .constants import Mode
from .endpoint import HIGH_WATER, ChannelEndpoint, Listener
from .memory import Export, PeerMemory, Segment
from .raw import RawChannel
from .shm import SharedMemory

log = logging.getLogger(__name__)

MAX_FDS_PER_RECORD = 1
_TRUNCATED = int(socket.MSG_TRUNC | socket.MSG_CTRUNC)  # a plain int: enum flags cost a call per use
RECORDS_PER_WAKEUP = 64

__all__ = ["HIGH_WATER", "LdcEndpoint", "Listener", "SocketServer", "listen"]


class LdcEndpoint(ChannelEndpoint):
    """One end of an LDC channel over a connected SOCK_SEQPACKET socket."""

    def __init__(self, sock: socket.socket, channel: Channel | RawChannel, *, table_entries: int = 4096) -> None:
        self.sock = sock
        self.memory = SharedMemory(table_entries)
        super().__init__(channel)
        self._loop = asyncio.get_running_loop()
        self._queue: collections.deque[tuple[bytes, list[int]]] = collections.deque()
        self._queued_bytes = 0
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self._send_record(records.encode_map_table(table_entries), [self.memory.table_fd])

    # ---- the user's side ---------------------------------------------------------

    @classmethod
    async def connect(cls, path: str, mode: Mode = Mode.UNRELIABLE, **channel_args: object) -> LdcEndpoint:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, path)
        return cls(sock, _make_channel(mode, channel_args))

    @classmethod
    async def accept(cls, listener: socket.socket, mode: Mode = Mode.UNRELIABLE, **channel_args: object) -> LdcEndpoint:
        listener.setblocking(False)
        sock, _ = await asyncio.get_running_loop().sock_accept(listener)
        return cls(sock, _make_channel(mode, channel_args))

    def allocate_segment(self, size: int) -> Segment:
        """Memory we can export to the peer (shared with it now)."""
        segment, fd = self.memory.allocate(size)
        self._send_record(records.encode_segment(segment.id, segment.size), [fd])
        return segment

    def export(self, segment: Segment, offset: int, length: int, perms: int, page_code: int = 0) -> Export:
        return self.memory.table.export(segment, offset, length, perms, page_code)

    def unmap(self, export: Export) -> None:
        self.memory.table.unmap(export)

    @property
    def peer_memory(self) -> PeerMemory:
        if self.memory.peer is None:
            raise LinkDownError("the peer has not shared its map table")
        return self.memory.peer

    # ---- ChannelEndpoint -------------------------------------------------------------

    @property
    def backlog(self) -> int:
        return self._queued_bytes

    def _encode_packets(self, packets: list[bytes]) -> list[bytes]:
        return records.encode_packets(packets)

    def _encode_reset(self) -> bytes:
        return records.encode_reset()

    def _transmit(self, encoded: list[bytes]) -> None:
        for record in encoded:
            self._queue.append((record, []))
            self._queued_bytes += len(record)
        self._write()

    def _revoke_exports(self) -> None:
        self.memory.table.revoke_all()

    def _release(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self._loop.remove_writer(self.sock.fileno())
        self.sock.close()
        self.memory.close()

    # ---- the socket's side ---------------------------------------------------------

    def _on_readable(self) -> None:
        for _ in range(RECORDS_PER_WAKEUP):
            try:
                data, ancdata, flags, _ = self.sock.recvmsg(records.MAX_RECORD + 1, socket.CMSG_SPACE(4 * MAX_FDS_PER_RECORD))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._peer_gone(f"socket error: {exc}")
                return
            fds = _fds_from(ancdata)
            if not data and not fds:
                self._peer_gone("peer closed the connection")
                return
            try:
                if flags & _TRUNCATED:
                    raise records.RecordError("record or its descriptors truncated (too large)")
                self._handle(records.decode(data, fds))
            except BackendError as exc:
                log.warning("LDC transport: %s; resetting the channel", str(exc))
                self.channel.transport_error(str(exc))
            finally:
                for fd in fds:  # mappings keep what they need; the descriptors can go
                    os.close(fd)
        self._dispatch_events()
        self.flush()

    def _handle(self, record: records.Record) -> None:
        if isinstance(record, records.Packets):
            self.channel.receive(record.data)
        elif isinstance(record, records.Reset):
            self.channel.peer_reset()
        elif isinstance(record, records.MapTableShared):
            self.memory.peer_table(record.entries, record.fd)
        else:
            self.memory.peer_segment(record.segment_id, record.size, record.fd)

    def _send_record(self, record: bytes, fds: list[int]) -> None:
        self._queue.append((record, fds))
        self._queued_bytes += len(record)
        self._write()

    def _write(self) -> None:
        while self._queue and not self.closed:
            record, fds = self._queue[0]
            try:
                if fds:
                    self.sock.sendmsg([record], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                else:
                    self.sock.send(record)
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self.sock.fileno(), self._on_writable)
                return
            except OSError as exc:
                self._peer_gone(f"socket error: {exc}")
                return
            self._queue.popleft()
            self._queued_bytes -= len(record)
        if self._queued_bytes <= HIGH_WATER:
            self._writable.set()

    def _on_writable(self) -> None:
        self._loop.remove_writer(self.sock.fileno())
        self._write()

    def _peer_gone(self, reason: str) -> None:
        self.channel.peer_reset(reason)
        self._dispatch_events()
        self.shut_down(reason)


def _make_channel(mode: Mode, channel_args: dict) -> Channel | RawChannel:
    if mode is Mode.RAW:
        return RawChannel()
    return Channel(mode, **channel_args)  # type: ignore[arg-type]


def _fds_from(ancdata: list) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(array.array("i", payload[:usable]))
    return fds


class SocketServer:
    """Accepts connections on a Unix socket (SOCK_SEQPACKET unless `kind` says); each goes to `on_connection`."""

    def __init__(self, path: str, on_connection: Callable[[socket.socket], None], *,
                 kind: socket.SocketKind = socket.SOCK_SEQPACKET, backlog: int = 8) -> None:
        self.path = path
        self._on_connection = on_connection
        self._kind = kind
        self._backlog = backlog
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._listener = listen(self.path, kind=self._kind, backlog=self._backlog)
        self._listener.setblocking(False)
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(self._listener)
            except OSError:
                return  # the listener was closed
            self._on_connection(sock)

    def close(self) -> None:
        """Stop accepting and close the listener.

        The pending accept is cancelled first: closing the socket under it would leave
        its descriptor number registered in the event loop, and the next socket that
        reuses the number would never see a connection.
        """
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None


def listen(path: str, *, kind: socket.SocketKind = socket.SOCK_SEQPACKET, backlog: int = 8) -> socket.socket:
    """A Unix listener at `path` (replacing a stale socket file)."""
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, kind)
    sock.bind(path)
    sock.listen(backlog)
    return sock
