"""The DS agent of one domain: `DsFramework` behind a control socket and LDC channels (asyncio edge).

libds instances connect to the control socket (SOCK_SEQPACKET, one record
per control message); each connection is one instance. DS ports take any
channel that can carry the DS byte stream (`PortChannel`): today LDC
RELIABLE channels over the Unix transport (`serve_port` / `connect_port`),
later whatever the daemon or the LDC-over-vhost-user device hands in via
`attach`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
from typing import Protocol

from ..errors import BackendError
from ..ldc.aio import LdcEndpoint, Listener, SocketServer, listen
from ..ldc.constants import Mode
from . import control
from .control import MAX_RECORD, ControlError
from .framework import DomainConfig, DsFramework

log = logging.getLogger(__name__)

ENV_SOCKET = "VIO_DS_SOCKET"  # where libds finds its agent (illumos: the vlds device path)
MAX_BACKLOG = 4096  # records queued for an instance that does not read: beyond this it is dropped
RECORDS_PER_WAKEUP = 64
RECONNECT_DELAY = 0.2


class PortChannel(Protocol):
    """What a DS port needs from its channel: link events in, DS stream bytes out."""

    def set_listener(self, listener: Listener) -> None: ...
    def send(self, data: bytes) -> None: ...
    def flush(self) -> None: ...
    def reset(self, reason: str) -> None: ...


class LdcPortChannel:
    """An `LdcEndpoint` (RELIABLE mode) as a DS port's channel."""

    def __init__(self, endpoint: LdcEndpoint) -> None:
        self.endpoint = endpoint

    def set_listener(self, listener: Listener) -> None:
        self.endpoint.set_listener(listener)

    def send(self, data: bytes) -> None:
        if self.endpoint.channel.is_up:
            self.endpoint.channel.send(data)

    def flush(self) -> None:
        self.endpoint.flush()

    def reset(self, reason: str) -> None:
        self.endpoint.channel.transport_error(reason)  # type: ignore[union-attr]


class _PortListener:
    def __init__(self, agent: DsAgent, port_id: int) -> None:
        self.agent, self.port_id = agent, port_id

    def ldc_up(self) -> None:
        self.agent.framework.link_up(self.port_id)
        self.agent.flush_soon()

    def ldc_reset(self, reason: str) -> None:
        self.agent.framework.link_down(self.port_id, reason)
        self.agent.flush_soon()

    def ldc_message(self, data: bytes) -> None:
        try:
            self.agent.framework.port_data(self.port_id, data)
        except BackendError as exc:
            log.warning("DS port %d: %s; resetting the channel", self.port_id, exc)
            self.agent.framework.link_down(self.port_id, str(exc))
            self.agent.channels[self.port_id].reset(str(exc))
        self.agent.flush_soon()  # the channel hands us a whole record's messages one by one


class _Instance:
    """One libds connection: records in, records out (queued while the socket is full)."""

    def __init__(self, agent: DsAgent, sock: socket.socket) -> None:
        self.agent = agent
        self.sock = sock
        self.id = agent.framework.open_instance()
        self.backlog: collections.deque[bytes] = collections.deque()
        sock.setblocking(False)
        agent.loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        for _ in range(RECORDS_PER_WAKEUP):
            try:
                record = self.sock.recv(MAX_RECORD)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.close(f"socket error: {exc}")
                break
            if not record:
                self.close("closed by the process")
                break
            try:
                for message in control.unpack(record):
                    self.agent.framework.request(self.id, message)
            except ControlError as exc:
                self.close(f"bad control record: {exc}")
                break
        self.agent.flush()

    def send(self, messages: list[bytes]) -> None:
        """Send messages for this instance, several to a record (each record wakes its reader)."""
        for record in control.pack(messages):
            if self.id not in self.agent.instances:
                return
            if self.backlog:
                self._queue(record)
                continue
            try:
                self.sock.send(record)
            except (BlockingIOError, InterruptedError):
                self._queue(record)
                self.agent.loop.add_writer(self.sock.fileno(), self._on_writable)
            except OSError as exc:
                self.close(f"socket error: {exc}")

    def _queue(self, record: bytes) -> None:
        if len(self.backlog) >= MAX_BACKLOG:
            self.close("not reading its events")
            return
        self.backlog.append(record)

    def _on_writable(self) -> None:
        while self.backlog:
            try:
                self.sock.send(self.backlog[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.close(f"socket error: {exc}")
                return
            self.backlog.popleft()
        self.agent.loop.remove_writer(self.sock.fileno())

    def close(self, reason: str) -> None:
        if self.id not in self.agent.instances:
            return
        log.info("libds instance %d gone: %s", self.id, reason)
        del self.agent.instances[self.id]
        self.agent.loop.remove_reader(self.sock.fileno())
        self.agent.loop.remove_writer(self.sock.fileno())
        self.sock.close()
        self.agent.framework.close_instance(self.id)


class DsAgent:
    """One domain's DS framework with its control socket and port channels."""

    def __init__(self, config: DomainConfig, control_path: str) -> None:
        self.framework = DsFramework(config)
        self.control_path = control_path
        self.loop = asyncio.get_running_loop()
        self.instances: dict[int, _Instance] = {}
        self.channels: dict[int, PortChannel] = {}
        self._server = SocketServer(control_path, self._on_connection)
        self._tasks: list[asyncio.Task] = []
        self._flush_handle: asyncio.Handle | None = None

    async def start(self) -> None:
        await self._server.start()

    def _on_connection(self, sock: socket.socket) -> None:
        instance = _Instance(self, sock)
        self.instances[instance.id] = instance

    def attach(self, port_id: int, channel: PortChannel) -> None:
        """Give a port its channel (replacing an old one); link events then drive the port."""
        if port_id not in self.framework.ports:
            raise KeyError(f"no DS port {port_id} in this domain's configuration")
        self.channels[port_id] = channel
        channel.set_listener(_PortListener(self, port_id))

    def flush_soon(self) -> None:
        """Flush once the current loop callback is done (it may bring more messages: one record for all)."""
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Move the framework's output to the instances and the channels."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        by_instance: dict[int, list[bytes]] = {}
        for instance_id, record in self.framework.take_output():
            by_instance.setdefault(instance_id, []).append(record)
        for instance_id, records in by_instance.items():
            instance = self.instances.get(instance_id)
            if instance is not None:
                instance.send(records)
        touched = set()
        for port_id, data in self.framework.take_port_output():
            channel = self.channels.get(port_id)
            if channel is not None:
                channel.send(data)
                touched.add(port_id)
        for port_id in touched:
            self.channels[port_id].flush()
        for line in self.framework.take_events():
            log.info("%s", line)

    # ---- LDC over the Unix transport ------------------------------------------------------

    def serve_port(self, port_id: int, path: str) -> None:
        """Accept the peer's LDC connections for this port at `path` (each new one replaces the last)."""
        self._tasks.append(self.loop.create_task(self._serve(port_id, path)))

    def connect_port(self, port_id: int, path: str) -> None:
        """Connect this port's LDC channel to `path`, again whenever it is lost."""
        self._tasks.append(self.loop.create_task(self._connect(port_id, path)))

    async def _serve(self, port_id: int, path: str) -> None:
        listener = listen(path)
        try:
            while True:
                endpoint = await LdcEndpoint.accept(listener, Mode.RELIABLE)
                old = self.channels.get(port_id)
                if isinstance(old, LdcPortChannel):
                    old.endpoint.close()
                self._open(port_id, endpoint)
        finally:
            listener.close()

    async def _connect(self, port_id: int, path: str) -> None:
        while True:
            try:
                endpoint = await LdcEndpoint.connect(path, Mode.RELIABLE)
            except OSError:
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            self._open(port_id, endpoint)
            await endpoint.closed_event.wait()
            await asyncio.sleep(RECONNECT_DELAY)

    def _open(self, port_id: int, endpoint: LdcEndpoint) -> None:
        self.attach(port_id, LdcPortChannel(endpoint))
        endpoint.channel.open()
        endpoint.flush()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._server.close()
        for instance in list(self.instances.values()):
            instance.close("agent stopping")
        for channel in self.channels.values():
            if isinstance(channel, LdcPortChannel):
                channel.endpoint.close()
        with contextlib.suppress(OSError):
            os.unlink(self.control_path)
