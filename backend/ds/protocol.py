"""The DS protocol on one port (one LDC channel): handshake, registration, data (sans-I/O).

Theory of operation
-------------------
A `DsPort` is fed the channel's byte stream (`receive`) and link events
(`link_up`, `link_down`); what it sends waits in `take_output()` and what
happened in `take_events()`. Services are registered with the port as
providers or clients.

Roles: the *initiator* sends INIT_REQ when the link comes up (a guest does:
Linux's ds.c expects INIT_ACK and resets on anything else, so the service
domain must not send INIT_REQ to it); the *responder* answers INIT_REQ and
is ready once it has ACKed. An initiator is ready on INIT_ACK.

Registration: once ready, every local provider sends REG_REQ {its handle,
its highest version, service id}. The peer's client answers REG_ACK (with
the lower minor) or REG_NACK (offering another major, or 0 = unsupported,
or DUP). Both sides then use the provider's handle for DATA, UNREG and
NACK. A REG_REQ whose handle has bit 31 set is an illumos client "ping": if
we provide that service we (re)send our REG_REQ, and a ping is never ACKed.

A client pings (illumos does it too) when it is added to a ready port and
when the port becomes ready, so a provider that was refused earlier for
want of a client offers itself again.

Handles (illumos layout): upper 32 bits the service's index, lower 31 bits a
counter bumped at every unregistration so an old handle goes stale; bit 31
marks a client-side handle. A peer's handle is only ever echoed.

Link loss unregisters every service on the port (events for each), and the
handshake starts again when the link is back.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import Enum
from typing import Union

from ..outbox import Outbox
from .messages import (
    CLIENT_HANDLE_BIT,
    DATA_BODY,
    Data,
    DsError,
    Framer,
    InitAck,
    InitNack,
    HEADER,
    InitReq,
    Message,
    MsgType,
    Nack,
    RegAck,
    RegNack,
    RegReq,
    Result,
    UnregAck,
    UnregNack,
    UnregReq,
    decode,
    encode,
    encode_data,
    negotiate,
)

DS_VERSIONS = ((1, 0),)
_WIRE_HANDLE = struct.Struct(">Q")


class PortState(Enum):
    DOWN = "down"
    INIT_SENT = "init-sent"
    WAITING = "waiting"  # responder: link up, waiting for the peer's INIT_REQ
    READY = "ready"


@dataclass
class Service:
    """A local service: a provider (registers itself) or a client (waits for a provider)."""

    svc_id: str
    versions: tuple[tuple[int, int], ...]
    provider: bool
    index: int = 0
    counter: int = 1
    active: bool = False
    version: tuple[int, int] | None = None
    peer_handle: int | None = None  # clients: the provider's handle they answered
    offered: tuple[int, int] | None = None  # providers: the version of the pending REG_REQ
    tried: bool = False  # providers: REG_REQ sent on this port (and not answered for good)
    held: bool = False  # providers: busy elsewhere (the framework holds them), so not offered here
    extra: dict = field(default_factory=dict)

    @property
    def handle(self) -> int:
        """The handle on the wire: ours for a provider, the provider's for a client."""
        if not self.provider and self.peer_handle is not None:
            return self.peer_handle
        return (self.index << 32) | self.counter | (0 if self.provider else CLIENT_HANDLE_BIT)


@dataclass(frozen=True, slots=True)
class Registered:
    service: Service
    version: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Unregistered:
    service: Service
    reason: str


@dataclass(frozen=True, slots=True)
class DataReceived:
    service: Service
    payload: bytes


@dataclass(frozen=True, slots=True)
class PortEvent:
    """Handshake progress and refusals worth a log line."""

    text: str


Event = Union[Registered, Unregistered, DataReceived, PortEvent]


class DsPort(Outbox[bytes, Event]):
    """One DS port in either role."""

    def __init__(self, *, initiator: bool, versions: tuple[tuple[int, int], ...] = DS_VERSIONS) -> None:
        self.initiator = initiator
        self.versions = versions
        self.state = PortState.DOWN
        self.version: tuple[int, int] | None = None
        self.services: list[Service] = []
        self._framer = Framer()
        super().__init__()
        self._offered: tuple[int, int] | None = None
        self._last_data: Service | None = None  # the service the last DATA was for (usually the next one's)

    # ---- services ---------------------------------------------------------------------

    def add_service(
        self, svc_id: str, versions: tuple[tuple[int, int], ...], *, provider: bool, index: int | None = None, held: bool = False
    ) -> Service:
        """Register a local service; a provider registers with the peer as soon as it can (unless held).

        `index` gives the handle's upper half (a framework spanning several
        ports numbers its registrations itself); by default the position here.
        """
        if provider and any(s.provider and s.svc_id == svc_id for s in self.services):
            raise ValueError(f"service {svc_id!r} already has a provider on this port")
        service = Service(svc_id, tuple(sorted(versions, reverse=True)), provider, index=index or len(self.services) + 1, held=held)
        self.services.append(service)
        if self.state is PortState.READY and not held:
            self._register(service)
        return service

    def register(self, service: Service) -> None:
        """Release a held provider and offer it unless it is busy or pending; a client pings again."""
        service.held = False
        if self.state is PortState.READY and not service.active and not (service.provider and service.offered):
            self._register(service)

    def unregister(self, service: Service) -> None:
        """Tell the peer we are done with this registration (a provider will register again)."""
        if service.active:
            self._send(UnregReq(service.handle))
            self._unregister(service, "unregistered locally")

    def remove_service(self, service: Service) -> None:
        self.unregister(service)
        self.services.remove(service)

    def send_data(self, service: Service, payload: bytes) -> None:
        """DATA on an active service; ConnectionError when it is not."""
        if self.state is not PortState.READY:
            raise ConnectionResetError("DS port is not up")
        if not service.active:
            raise ConnectionError(f"service {service.svc_id!r} is not registered")
        self._output.append(encode_data(service.handle, payload))

    # ---- link events ---------------------------------------------------------------------

    def link_up(self) -> None:
        self._framer.reset()
        if self.initiator:
            self._offer(self.versions[0])
        else:
            self.state = PortState.WAITING

    def link_down(self, reason: str = "link down") -> None:
        for service in self.services:
            if service.active:
                self._unregister(service, reason)
            service.tried = False
            service.offered = None
        self._framer.reset()
        self.state = PortState.DOWN
        self.version = None

    # ---- input ---------------------------------------------------------------------------

    def data_message(self, data: bytes) -> tuple[Service, bytes] | None:
        """The data path: (service, payload) when `data` is exactly one DATA for an active service.

        No message object and no event; anything else (None) goes to receive().
        """
        if self.state is not PortState.READY or self._framer.single(data) != MsgType.DATA or len(data) < DATA_BODY:
            return None
        (handle,) = _WIRE_HANDLE.unpack_from(data, HEADER.size)
        service = self._last_data
        if service is None or not service.active or service.handle != handle:
            service = self._active_by_wire_handle(handle)
            if service is None:
                return None  # receive() NACKs it
            self._last_data = service
        return service, data[DATA_BODY:]

    def receive(self, data: bytes) -> None:
        """Bytes from the channel (any chunking); DsError means: reset the channel."""
        for kind, payload in self._framer.feed(data):
            try:
                message = decode(kind, payload)
            except DsError as exc:
                self._events.append(PortEvent(f"dropped: {exc}"))
                continue
            self._handle(message)

    def _handle(self, message: Message) -> None:
        if isinstance(message, Data) and self.state is PortState.READY:
            self._on_data(message)  # the data path first
        elif isinstance(message, InitReq):
            self._on_init_req(message)
        elif isinstance(message, (InitAck, InitNack)):
            self._on_init_reply(message)
        elif self.state is not PortState.READY:
            self._events.append(PortEvent(f"{type(message).__name__} before the DS handshake: dropped"))
        elif isinstance(message, RegReq):
            self._on_reg_req(message)
        elif isinstance(message, RegAck):
            self._on_reg_ack(message)
        elif isinstance(message, RegNack):
            self._on_reg_nack(message)
        elif isinstance(message, UnregReq):
            self._on_unreg_req(message)
        elif isinstance(message, (UnregAck, UnregNack)):
            pass  # informational only
        elif isinstance(message, Data):
            self._on_data(message)
        elif isinstance(message, Nack):
            self._on_nack(message)

    # ---- handshake ------------------------------------------------------------------------

    def _offer(self, version: tuple[int, int]) -> None:
        self._offered = version
        self._send(InitReq(*version))
        self.state = PortState.INIT_SENT

    def _on_init_req(self, message: InitReq) -> None:
        ok, value = negotiate(self.versions, message.major, message.minor)
        if not ok:
            self._send(InitNack(value))
            return
        if self.state is PortState.READY:
            self.link_down("peer restarted the DS handshake")
        self._send(InitAck(value))
        if not self.initiator:
            self._ready((message.major, value))

    def _on_init_reply(self, message: InitAck | InitNack) -> None:
        if self.state is not PortState.INIT_SENT or self._offered is None:
            self._events.append(PortEvent("INIT reply we did not ask for: ignored"))
            return
        if isinstance(message, InitAck):
            self._ready((self._offered[0], min(self._offered[1], message.minor)))
            return
        lower = next((v for v in self.versions if v[0] <= message.major), None) if message.major else None
        if lower is None or lower >= self._offered:
            self.state = PortState.DOWN
            self._events.append(PortEvent(f"no common DS version (peer offered major {message.major})"))
            return
        self._offer(lower)

    def _ready(self, version: tuple[int, int]) -> None:
        self.state = PortState.READY
        self.version = version
        self._events.append(PortEvent(f"DS {version[0]}.{version[1]} ready"))
        for service in self.services:
            if not service.active and not service.held:
                self._register(service)

    # ---- registration ---------------------------------------------------------------------

    def _register(self, service: Service) -> None:
        """A provider's REG_REQ, or a client's ping (its handle has bit 31 set; never ACKed)."""
        if service.provider:
            service.offered = service.versions[0]
            service.tried = True
        self._send(RegReq(service.handle, *service.versions[0], service.svc_id))

    def _on_reg_req(self, message: RegReq) -> None:
        if message.handle & CLIENT_HANDLE_BIT:
            provider = self._provider(message.svc_id)
            if provider is not None and not provider.active and provider.offered is None and not provider.held:
                self._register(provider)  # an illumos client ping: offer ourselves (unless pending)
            return
        clients = [s for s in self.services if not s.provider and s.svc_id == message.svc_id]
        client = next((s for s in clients if not s.active), clients[0] if clients else None)
        if client is None:
            self._send(RegNack(message.handle, Result.REG_VER_NACK, 0))  # "not supported here"
            return
        if client.active:
            self._unregister(client, "the provider registered again")  # as illumos does on the same port
        ok, value = negotiate(client.versions, message.major, message.minor)
        if not ok:
            self._send(RegNack(message.handle, Result.REG_VER_NACK, value))
            return
        client.peer_handle = message.handle
        client.active = True
        client.version = (message.major, value)
        self._send(RegAck(message.handle, value))
        self._events.append(Registered(client, client.version))

    def _on_reg_ack(self, message: RegAck) -> None:
        service = self._by_own_handle(message.handle)
        if service is None or not service.provider or service.active or service.offered is None:
            self._events.append(PortEvent(f"REG_ACK for handle 0x{message.handle:x} we did not register: ignored"))
            return
        service.active = True
        service.version = (service.offered[0], min(service.offered[1], message.minor))
        self._events.append(Registered(service, service.version))

    def _on_reg_nack(self, message: RegNack) -> None:
        if message.handle & CLIENT_HANDLE_BIT:
            return  # the answer to a ping
        service = self._by_own_handle(message.handle)
        if service is None or service.active or service.offered is None:
            return
        if message.result == Result.REG_DUP or message.major == 0:
            service.offered = None  # the peer has no (free) client for it: nothing more to try here
            self._events.append(PortEvent(f"{service.svc_id}: peer refused registration (result {message.result})"))
            return
        lower = next((v for v in service.versions if v[0] <= message.major), None)
        if lower is None or lower >= service.offered:
            service.offered = None
            self._events.append(PortEvent(f"{service.svc_id}: no common version"))
            return
        service.offered = lower
        self._send(RegReq(service.handle, *lower, service.svc_id))

    def _on_unreg_req(self, message: UnregReq) -> None:
        service = self._active_by_wire_handle(message.handle)
        if service is None:
            self._send(UnregNack(message.handle))
            return
        self._unregister(service, "peer unregistered")
        self._send(UnregAck(message.handle))
        if service.provider and not service.held:
            self._register(service)  # a provider tries again

    def _on_data(self, message: Data) -> None:
        service = self._active_by_wire_handle(message.handle)
        if service is None:
            self._send(Nack(message.handle, Result.INV_HDL))
            return
        self._events.append(DataReceived(service, message.payload))

    def _on_nack(self, message: Nack) -> None:
        if message.result != Result.INV_HDL:
            return
        service = self._active_by_wire_handle(message.handle)
        if service is not None:
            self._unregister(service, "peer does not know our handle")

    def _unregister(self, service: Service, reason: str) -> None:
        service.active = False
        service.version = None
        service.peer_handle = None
        service.offered = None
        service.counter = (service.counter + 1) & 0x7FFF_FFFF or 1  # the old handle goes stale
        self._events.append(Unregistered(service, reason))

    # ---- lookups and output ------------------------------------------------------------------

    def _provider(self, svc_id: str) -> Service | None:
        return next((s for s in self.services if s.provider and s.svc_id == svc_id), None)

    def _by_own_handle(self, handle: int) -> Service | None:
        return next((s for s in self.services if s.provider and s.handle == handle), None)

    def _active_by_wire_handle(self, handle: int) -> Service | None:
        return next((s for s in self.services if s.active and s.handle == handle), None)

    def _send(self, message: Message) -> None:
        self._output.append(encode(message))

