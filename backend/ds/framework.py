"""The DS framework of one domain: what illumos's ds module and vlds driver do together (sans-I/O).

Theory of operation
-------------------
A domain has DS *ports* (one `DsPort` per LDC channel to a peer domain,
named and numbered by the configuration) and *instances* (libds users, one
per control connection). Instances send control requests (`request`); the
framework answers each with a Reply and pushes Registered / Unregistered /
Data events to the instance that owns the handle (`take_output()` gives
(instance id, record) pairs). Ports are fed link events and bytes
(`link_up`, `link_down`, `port_data`); what they send comes out of
`take_port_output()`.

Registrations: one per (service id, role) in the whole domain (a second one
is EALREADY). Each has a per-port `Service` on every port, and *handles*:
- a provider has exactly one handle. It serves one connection at a time:
  the first port whose peer ACKs (or a local client, see loopback) gets it
  and the provider's Services on the other ports are *held* (not offered)
  until that connection ends; then the handle goes stale, a new one (the
  counter in the low bits bumped) replaces it, and the provider is offered
  everywhere again.
- a client has one handle per connection (one per provider domain); while
  it has none, one unconnected handle stands for the registration, so it
  can be looked up at once. A connection ending makes its handle stale.

Loopback: a provider and a client of one service in this domain are
connected directly (no wire traffic), with the version the two lists agree
on; their data goes from one instance to the other.

Handles: upper 32 bits the registration's index (never reused), bit 31
set for a client, lower 31 bits a per-registration counter. The library
maps a new handle to its registration (and callbacks) through the index.

An instance going away unregisters all its registrations (peers see UNREG);
a port's link going down ends every connection over it.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from ..outbox import Outbox
from . import control
from .control import Op
from .messages import CLIENT_HANDLE_BIT, negotiate
from .protocol import DataReceived, DsPort, PortEvent, Registered, Service, Unregistered

COUNTER_MASK = 0x7FFF_FFFF
_SEND = bytes([Op.SEND])


@dataclass(frozen=True)
class PortConfig:
    """One DS port: the peer domain's name and handle, and which side starts the DS handshake."""

    port_id: int
    peer_name: str
    peer_dhdl: int
    initiator: bool


@dataclass(frozen=True)
class DomainConfig:
    name: str
    dhdl: int
    ports: tuple[PortConfig, ...] = ()


@dataclass(eq=False)
class Link:
    """A live connection of one handle: over a port (service) or to a local partner handle."""

    version: tuple[int, int]
    dhdl: int
    port_id: int | None = None
    service: Service | None = None
    partner: Handle | None = None


@dataclass(eq=False)
class Handle:
    value: int
    registration: Registration
    link: Link | None = None


@dataclass(eq=False)
class Registration:
    index: int
    svc_id: str
    versions: tuple[tuple[int, int], ...]
    is_client: bool
    owner: int
    counter: int = 0
    handles: list[Handle] = field(default_factory=list)
    services: dict[int, Service] = field(default_factory=dict)  # port id -> the port's Service

    def new_handle(self) -> Handle:
        self.counter = (self.counter + 1) & COUNTER_MASK or 1
        handle = Handle((self.index << 32) | self.counter | (CLIENT_HANDLE_BIT if self.is_client else 0), self)
        self.handles.append(handle)
        return handle


class DsFramework(Outbox[tuple[int, bytes], str]):
    """All DS state of one domain; output: (instance id, control record); events: log lines."""

    def __init__(self, config: DomainConfig) -> None:
        super().__init__()
        self.config = config
        self.ports: dict[int, DsPort] = {}
        self._peers: dict[int, PortConfig] = {}
        self._registrations: dict[tuple[str, bool], Registration] = {}
        self._handles: dict[int, Handle] = {}
        self._by_service: dict[int, Registration] = {}  # id(Service) -> its registration
        self._linked: dict[int, Handle] = {}  # id(Service) -> the handle connected through it
        self._instances: set[int] = set()
        self._next_index = 1
        self._next_instance = 1
        for port in config.ports:
            self.add_port(port)

    # ---- ports ------------------------------------------------------------------------------

    def add_port(self, port: PortConfig) -> None:
        if port.port_id in self.ports:
            raise ValueError(f"DS port {port.port_id} already exists")
        ds_port = DsPort(initiator=port.initiator)
        self.ports[port.port_id] = ds_port
        self._peers[port.port_id] = port
        for registration in self._registrations.values():
            self._add_service(registration, port.port_id)

    def link_up(self, port_id: int) -> None:
        self.ports[port_id].link_up()
        self._settle()

    def link_down(self, port_id: int, reason: str) -> None:
        self.ports[port_id].link_down(reason)
        self._settle()

    def port_data(self, port_id: int, data: bytes) -> None:
        """Bytes from the port's channel; DsError from here means: reset that channel."""
        port = self.ports[port_id]
        data_message = port.data_message(data)
        if data_message is not None:  # the data path: no port events to settle
            self._deliver(*data_message)
            return
        try:
            port.receive(data)
        finally:
            self._settle()

    def take_port_output(self) -> list[tuple[int, bytes]]:
        return [(pid, data) for pid, port in self.ports.items() for data in port.take_output()]

    # ---- instances --------------------------------------------------------------------------

    def open_instance(self) -> int:
        instance = self._next_instance
        self._next_instance += 1
        self._instances.add(instance)
        return instance

    def close_instance(self, instance: int) -> None:
        """The process went away (or called ds_fini): everything it registered goes."""
        self._instances.discard(instance)
        for registration in [r for r in self._registrations.values() if r.owner == instance]:
            self._remove(registration)
        self._settle()

    def request(self, instance: int, record: bytes) -> None:
        """One control record from an instance; ControlError means: drop that instance."""
        if record[:1] == _SEND and len(record) >= control.SEND_HEAD.size:
            self._fast_send(instance, record)
            return
        message = control.decode_request(record)
        mark = len(self._output)
        result, body = self._answer(instance, message)
        # The reply goes before the events the request caused (a loopback registration connects
        # at once): the library learns a new handle from the reply, then its events make sense.
        self._output.insert(mark, (instance, control.encode(control.Reply(message.seq, result, body))))
        self._settle()

    def _fast_send(self, instance: int, record: bytes) -> None:
        """The data path: a SEND straight from its bytes (no request object, no port events to settle)."""
        _, seq, value = control.SEND_HEAD.unpack_from(record, 0)
        result = self._send(instance, value, record[control.SEND_HEAD.size :])
        if seq:
            self._output.append((instance, control.encode(control.Reply(seq, result))))
        elif result:  # nobody waits (the library saw the handle ready): only logged
            self._events.append(f"{instance}: unanswered send on handle 0x{value:x} failed: {errno.errorcode[result]}")

    def _answer(self, instance: int, message: control.Request) -> tuple[int, bytes]:
        if isinstance(message, control.Register):
            return self._register(instance, message)
        if isinstance(message, control.Lookup):
            return self._lookup(message)
        if isinstance(message, control.NameToDhdl):
            return self._name_to_dhdl(message.name)
        if message.op is Op.DHDL_TO_NAME:
            return self._dhdl_to_name(message.handle)
        handle = self._handles.get(message.handle)
        if handle is None:
            return errno.ENXIO, b""
        if message.op is Op.DOMAIN:
            return 0, control.U64.pack(handle.link.dhdl if handle.link else self.config.dhdl)
        if message.op is Op.READY:
            return 0, bytes([handle.link is not None])
        if handle.registration.owner != instance:
            return errno.EACCES, b""
        if message.op is Op.UNREGISTER:
            return 0, bytes([self._unregister_handle(handle)])
        return 0, b""

    # ---- registration -----------------------------------------------------------------------

    def _register(self, instance: int, message: control.Register) -> tuple[int, bytes]:
        if not control.check_service_id(message.svc_id) or not control.check_versions(message.versions):
            return errno.EINVAL, b""
        key = (message.svc_id, message.is_client)
        if key in self._registrations:
            return errno.EALREADY, b""
        registration = Registration(self._next_index, message.svc_id, message.versions, message.is_client, instance)
        self._next_index += 1
        self._registrations[key] = registration
        handle = registration.new_handle()
        self._handles[handle.value] = handle
        self._events.append(f"{instance}: {'client' if message.is_client else 'provider'} of {message.svc_id!r}, handle 0x{handle.value:x}")
        self._try_loopback(message.svc_id)
        for port_id in self.ports:
            self._add_service(registration, port_id)
        return 0, control.U64.pack(handle.value)

    def _add_service(self, registration: Registration, port_id: int) -> None:
        held = not registration.is_client and registration.handles[0].link is not None
        service = self.ports[port_id].add_service(
            registration.svc_id, registration.versions, provider=not registration.is_client, index=registration.index, held=held
        )
        registration.services[port_id] = service
        self._by_service[id(service)] = registration

    def _unregister_handle(self, handle: Handle) -> bool:
        """ds_unreg_hdl: a client's extra handle ends its connection; otherwise the whole registration goes (True)."""
        registration = handle.registration
        if registration.is_client and len(registration.handles) > 1:
            self._disconnect(handle, "unregistered locally")
            return False
        self._remove(registration)
        return True

    def _remove(self, registration: Registration) -> None:
        del self._registrations[(registration.svc_id, registration.is_client)]
        for handle in list(registration.handles):
            self._disconnect(handle, "unregistered locally")
        for port_id, service in registration.services.items():
            self.ports[port_id].remove_service(service)
            del self._by_service[id(service)]
        self._settle()
        for handle in registration.handles:
            self._handles.pop(handle.value, None)
        registration.handles.clear()

    def _disconnect(self, handle: Handle, reason: str) -> None:
        """End a handle's connection, telling the peer (its UNREG comes back as an event)."""
        link = handle.link
        if link is None:
            return
        if link.service is not None:
            self.ports[link.port_id].unregister(link.service)  # type: ignore[index]
        else:
            self._unlink(handle, reason)

    # ---- connections --------------------------------------------------------------------------

    def _link(self, registration: Registration, link: Link) -> Handle:
        if registration.is_client:
            handle = next((h for h in registration.handles if h.link is None), None)
            if handle is None:  # a connection to one more provider: a handle of its own
                handle = registration.new_handle()
                self._handles[handle.value] = handle
        else:
            handle = registration.handles[0]
            for service in registration.services.values():
                service.held = True
        handle.link = link
        if link.service is not None:
            self._linked[id(link.service)] = handle
        self._notify(handle, control.Registered(handle.value, link.version, link.dhdl, registration.is_client, registration.svc_id))
        return handle

    def _unlink(self, handle: Handle, reason: str) -> None:
        """A connection ended: its handle goes stale (unreg event), the registration re-arms."""
        link, handle.link = handle.link, None
        if link is None:
            return
        registration = handle.registration
        if link.service is not None:
            self._linked.pop(id(link.service), None)
        self._handles.pop(handle.value, None)
        registration.handles.remove(handle)
        self._events.append(f"{registration.svc_id}: handle 0x{handle.value:x} unregistered ({reason})")
        self._notify(handle, control.Unregistered(handle.value))
        if not registration.handles and (registration.svc_id, registration.is_client) in self._registrations:
            fresh = registration.new_handle()
            self._handles[fresh.value] = fresh
        if link.partner is not None:
            self._unlink(link.partner, reason)
        if not registration.is_client and registration.handles:
            if not self._try_loopback(registration.svc_id):
                for port_id, service in registration.services.items():
                    self.ports[port_id].register(service)

    def _try_loopback(self, svc_id: str) -> bool:
        """Connect a local provider and client of one service, if both exist and the provider is free."""
        provider = self._registrations.get((svc_id, False))
        client = self._registrations.get((svc_id, True))
        if provider is None or client is None or provider.handles[0].link is not None:
            return False
        version = _loopback_version(provider.versions, client.versions)
        if version is None:
            self._events.append(f"{svc_id}: local provider and client share no version")
            return False
        provider_handle = self._link(provider, Link(version, self.config.dhdl))
        client_handle = self._link(client, Link(version, self.config.dhdl, partner=provider_handle))
        provider_handle.link.partner = client_handle  # type: ignore[union-attr]
        return True

    # ---- data ---------------------------------------------------------------------------------

    def _send(self, instance: int, value: int, payload: bytes) -> int:
        handle = self._handles.get(value)
        if handle is None:
            return errno.ENXIO
        if handle.registration.owner != instance:
            return errno.EACCES
        if not 0 < len(payload) <= control.MAX_SEND:
            return errno.EINVAL
        link = handle.link
        if link is None:
            return errno.ENOTCONN
        if link.partner is not None:
            self._notify(link.partner, control.DataEvent(link.partner.value, payload))
            return 0
        try:
            self.ports[link.port_id].send_data(link.service, payload)  # type: ignore[index,arg-type]
        except ConnectionResetError:
            return errno.ECONNRESET
        except ConnectionError:
            return errno.ENOTCONN
        return 0

    # ---- lookups ------------------------------------------------------------------------------

    def _lookup(self, message: control.Lookup) -> tuple[int, bytes]:
        if message.maxhdls == 0 or not control.check_service_id(message.svc_id):
            return errno.EINVAL, b""
        registration = self._registrations.get((message.svc_id, message.is_client))
        handles = registration.handles[: message.maxhdls] if registration else []
        return 0, b"".join(control.U64.pack(h.value) for h in handles)

    def _name_to_dhdl(self, name: str) -> tuple[int, bytes]:
        if name and name == self.config.name:
            return 0, control.U64.pack(self.config.dhdl)
        peer = next((p for p in self._peers.values() if p.peer_name == name), None)
        return (0, control.U64.pack(peer.peer_dhdl)) if peer and name else (errno.ENXIO, b"")

    def _dhdl_to_name(self, dhdl: int) -> tuple[int, bytes]:
        if dhdl == self.config.dhdl:
            return (0, self.config.name.encode()) if self.config.name else (errno.ENXIO, b"")
        peer = next((p for p in self._peers.values() if p.peer_dhdl == dhdl), None)
        return (0, peer.peer_name.encode()) if peer else (errno.ENXIO, b"")

    # ---- port events ----------------------------------------------------------------------------

    def _settle(self) -> None:
        """Act on what the ports reported until they have nothing more to say."""
        busy = True
        while busy:
            busy = False
            for port_id, port in self.ports.items():
                for event in port.take_events():
                    busy = True
                    self._on_port_event(port_id, event)

    def _on_port_event(self, port_id: int, event: Registered | Unregistered | DataReceived | PortEvent) -> None:
        if isinstance(event, DataReceived):
            self._deliver(event.service, event.payload)
        elif isinstance(event, Registered):
            self._on_registered(port_id, event)
        elif isinstance(event, Unregistered):
            handle = self._linked.get(id(event.service))
            if handle is not None:
                self._unlink(handle, event.reason)
        else:
            self._events.append(f"port {port_id}: {event.text}")

    def _on_registered(self, port_id: int, event: Registered) -> None:
        registration = self._by_service.get(id(event.service))
        if registration is None:
            return
        if not registration.is_client and registration.handles[0].link is not None:
            self.ports[port_id].unregister(event.service)  # busy with another connection
            event.service.held = True
            return
        self._link(registration, Link(event.version, self._peers[port_id].peer_dhdl, port_id, event.service))

    def _deliver(self, service: Service, payload: bytes) -> None:
        """DATA from a port to the instance holding the handle connected through `service`."""
        handle = self._linked.get(id(service))
        if handle is not None and handle.registration.owner in self._instances:
            self._output.append((handle.registration.owner, control.encode_data(handle.value, payload)))

    def _notify(self, handle: Handle, message: control.AgentMessage) -> None:
        owner = handle.registration.owner
        if owner in self._instances:
            if isinstance(message, control.DataEvent):
                self._output.append((owner, control.encode_data(message.handle, message.payload)))
            else:
                self._output.append((owner, control.encode(message)))


def _loopback_version(provider: tuple[tuple[int, int], ...], client: tuple[tuple[int, int], ...]) -> tuple[int, int] | None:
    """The version a local provider's REG_REQ would settle on with a local client."""
    for major, minor in provider:
        agreed, client_minor = negotiate(client, major, minor)
        if agreed:
            return major, client_minor
    return None
