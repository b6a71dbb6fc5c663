"""The DS framework of a domain (sans-I/O): registrations, handles, loopback, errno results, link loss.

Domains are joined by real LDC RELIABLE channels driven in this process.
"""

from __future__ import annotations

import errno
from dataclasses import replace

import pytest

from backend.ds import control
from backend.ds.control import Op
from backend.ds.framework import DomainConfig, DsFramework, PortConfig
from backend.ds.messages import Data, Nack, Result, encode
from backend.ldc.channel import Channel, LinkReset, LinkUp, MessageReceived
from backend.ldc.constants import Mode
from backend.ldc.loopback import deliver


class Domain:
    """A framework plus what its instances received."""

    def __init__(self, name: str, dhdl: int, *ports: PortConfig) -> None:
        self.fw = DsFramework(DomainConfig(name, dhdl, ports))
        self.channels: dict[int, Channel] = {}
        self.inbox: dict[int, list[control.AgentMessage]] = {}
        self._seq = 0

    def instance(self) -> int:
        instance = self.fw.open_instance()
        self.inbox[instance] = []
        return instance

    def ask(self, instance: int, request: control.Request) -> control.Reply:
        self._seq += 1
        self.fw.request(instance, control.encode(replace(request, seq=self._seq)))
        self.collect()
        replies = [m for m in self.inbox[instance] if isinstance(m, control.Reply) and m.seq == self._seq]
        return replies[-1]

    def register(self, instance: int, svc_id: str, client: bool, versions=((1, 0),)) -> tuple[int, int]:
        reply = self.ask(instance, control.Register(0, client, versions, svc_id))
        return reply.errno, (control.U64.unpack(reply.body)[0] if not reply.errno else 0)

    def handle_op(self, instance: int, op: Op, handle: int) -> control.Reply:
        return self.ask(instance, control.HandleRequest(op, 0, handle))

    def send(self, instance: int, handle: int, payload: bytes) -> int:
        return self.ask(instance, control.Send(0, handle, payload)).errno

    def events(self, instance: int, kind: type) -> list:
        return [m for m in self.inbox[instance] if isinstance(m, kind)]

    def collect(self) -> None:
        for instance, record in self.fw.take_output():
            self.inbox[instance].append(control.decode_agent_message(record))

    def step(self) -> None:
        for port_id, channel in self.channels.items():
            for event in channel.take_events():
                if isinstance(event, LinkUp):
                    self.fw.link_up(port_id)
                elif isinstance(event, LinkReset):
                    self.fw.link_down(port_id, event.reason)
                elif isinstance(event, MessageReceived):
                    self.fw.port_data(port_id, event.data)
        for port_id, data in self.fw.take_port_output():
            if self.channels[port_id].is_up:
                self.channels[port_id].send(data)
        self.collect()


def join(a: Domain, a_port: int, b: Domain, b_port: int) -> None:
    a.channels[a_port], b.channels[b_port] = Channel(Mode.RELIABLE), Channel(Mode.RELIABLE)
    a.channels[a_port].open()
    b.channels[b_port].open()


def pump(*domains: Domain, links: list[tuple[Domain, int, Domain, int]]) -> None:
    for _ in range(1000):
        for domain in domains:
            domain.step()
        moved = False
        for a, ap, b, bp in links:
            out_a, out_b = a.channels[ap].take_output(), b.channels[bp].take_output()
            moved |= bool(out_a or out_b)
            deliver(out_a, b.channels[bp])
            deliver(out_b, a.channels[ap])
        if not moved:
            return


@pytest.fixture
def pair():
    primary = Domain("primary", 0, PortConfig(1, "ldg1", 5, initiator=False))
    guest = Domain("ldg1", 5, PortConfig(1, "primary", 0, initiator=True))
    join(primary, 1, guest, 1)
    links = [(primary, 1, guest, 1)]
    pump(primary, guest, links=links)
    return primary, guest, lambda: pump(primary, guest, links=links)


def test_provider_and_client_in_two_domains_connect_and_exchange_data(pair) -> None:
    primary, guest, settle = pair
    p, c = guest.instance(), primary.instance()
    assert guest.register(p, "echo", client=False)[0] == 0
    result, client_handle = primary.register(c, "echo", client=True)
    assert result == 0 and client_handle & 0x8000_0000
    settle()
    (reg,) = primary.events(c, control.Registered)
    assert reg.handle == client_handle and reg.dhdl == 5 and reg.version == (1, 0) and reg.is_client
    (preg,) = guest.events(p, control.Registered)
    assert preg.dhdl == 0 and not preg.is_client
    assert primary.handle_op(c, Op.READY, client_handle).body == b"\x01"
    assert primary.handle_op(c, Op.DOMAIN, client_handle).body == control.U64.pack(5)
    assert primary.send(c, client_handle, b"ping") == 0
    settle()
    assert [e.payload for e in guest.events(p, control.DataEvent)] == [b"ping"]
    assert guest.send(p, preg.handle, b"pong") == 0
    settle()
    assert [e.payload for e in primary.events(c, control.DataEvent)] == [b"pong"]


def test_version_fallback_gives_the_common_version(pair) -> None:
    primary, guest, settle = pair
    p, c = guest.instance(), primary.instance()
    guest.register(p, "dr-cpu", client=False, versions=((3, 1), (2, 4), (1, 1)))
    primary.register(c, "dr-cpu", client=True, versions=((2, 1), (1, 0)))
    settle()
    assert primary.events(c, control.Registered)[0].version == (2, 1)
    assert guest.events(p, control.Registered)[0].version == (2, 1)


def test_one_provider_and_one_client_registration_per_domain(pair) -> None:
    primary, guest, settle = pair
    a, b = guest.instance(), guest.instance()
    assert guest.register(a, "pri", client=False)[0] == 0
    assert guest.register(b, "pri", client=False)[0] == errno.EALREADY
    assert guest.register(b, "pri", client=True)[0] == 0  # the other role is free
    assert guest.register(a, "pri", client=True)[0] == errno.EALREADY


@pytest.mark.parametrize("svc_id, versions", [("", ((1, 0),)), ("x" * 256, ((1, 0),)), ("ok", ()), ("ok", ((1, 0), (2, 0))), ("ok", ((1, 0),) * 21), ("é", ((1, 0),))])
def test_bad_registrations_are_einval(pair, svc_id, versions) -> None:
    primary, _, _ = pair
    assert primary.register(primary.instance(), svc_id, client=False, versions=versions)[0] == errno.EINVAL


def test_handles_of_another_instance_are_eacces_and_unknown_ones_enxio(pair) -> None:
    primary, guest, settle = pair
    owner, other = primary.instance(), primary.instance()
    _, handle = primary.register(owner, "keystore", client=False)
    assert primary.send(other, handle, b"x") == errno.EACCES
    assert primary.handle_op(other, Op.UNREGISTER, handle).errno == errno.EACCES
    assert primary.handle_op(other, Op.ACCESS, handle).errno == errno.EACCES
    assert primary.send(other, 0x77_0000_0001, b"x") == errno.ENXIO
    assert primary.send(owner, handle, b"x") == errno.ENOTCONN  # no client anywhere yet
    assert primary.send(owner, handle, b"") == errno.EINVAL
    assert primary.send(owner, handle, b"x" * 65536) == errno.EINVAL
    assert primary.ask(owner, control.Lookup(0, False, 0, "keystore")).errno == errno.EINVAL


def test_loopback_connects_a_local_provider_and_client(pair) -> None:
    primary, _, settle = pair
    p, c = primary.instance(), primary.instance()
    _, provider = primary.register(p, "agent-system", client=False, versions=((1, 2),))
    _, client = primary.register(c, "agent-system", client=True, versions=((1, 0),))
    (creg,) = primary.events(c, control.Registered)
    assert creg.dhdl == 0 and creg.version == (1, 0) and primary.events(p, control.Registered)[0].handle == provider
    kinds = [type(m) for m in primary.inbox[c]]
    assert kinds.index(control.Reply) < kinds.index(control.Registered)  # the library learns the handle first
    assert primary.send(c, client, b"to provider") == 0 and primary.send(p, provider, b"to client") == 0
    assert [e.payload for e in primary.events(p, control.DataEvent)] == [b"to provider"]
    assert [e.payload for e in primary.events(c, control.DataEvent)] == [b"to client"]
    primary.fw.close_instance(c)  # the client's process goes away
    primary.collect()
    assert [e.handle for e in primary.events(p, control.Unregistered)] == [provider]
    assert primary.handle_op(p, Op.READY, provider).errno == errno.ENXIO  # stale
    (fresh,) = control.U64.unpack(primary.ask(p, control.Lookup(0, False, 4, "agent-system")).body)
    assert fresh != provider and fresh >> 32 == provider >> 32


def test_a_client_gets_one_handle_per_provider_domain() -> None:
    primary = Domain("primary", 0, PortConfig(1, "ldg1", 5, False), PortConfig(2, "ldg2", 6, False))
    ldg1 = Domain("ldg1", 5, PortConfig(1, "primary", 0, True))
    ldg2 = Domain("ldg2", 6, PortConfig(1, "primary", 0, True))
    join(primary, 1, ldg1, 1)
    join(primary, 2, ldg2, 1)
    links = [(primary, 1, ldg1, 1), (primary, 2, ldg2, 1)]
    c = primary.instance()
    primary.register(c, "domain-shutdown", client=True)
    ldg1.register(ldg1.instance(), "domain-shutdown", client=False)
    ldg2.register(ldg2.instance(), "domain-shutdown", client=False)
    pump(primary, ldg1, ldg2, links=links)
    regs = primary.events(c, control.Registered)
    assert sorted(r.dhdl for r in regs) == [5, 6] and len({r.handle for r in regs}) == 2
    handles = control.U64.unpack_from
    body = primary.ask(c, control.Lookup(0, True, 8, "domain-shutdown")).body
    assert sorted(handles(body, i)[0] for i in range(0, len(body), 8)) == sorted(r.handle for r in regs)
    # losing ldg2's channel makes only its handle stale
    primary.channels[2].close()
    pump(primary, ldg1, ldg2, links=links)
    gone = [e.handle for e in primary.events(c, control.Unregistered)]
    by_domain = {r.dhdl: r.handle for r in regs}
    assert gone == [by_domain[6]]
    assert primary.handle_op(c, Op.READY, by_domain[6]).errno == errno.ENXIO
    assert primary.handle_op(c, Op.READY, by_domain[5]).body == b"\x01"


def test_channel_loss_unregisters_and_reconnection_brings_new_handles(pair) -> None:
    primary, guest, settle = pair
    p, c = guest.instance(), primary.instance()
    _, old_provider = guest.register(p, "md-update", client=False)
    primary.register(c, "md-update", client=True)
    settle()
    (old,) = primary.events(c, control.Registered)
    guest.channels[1].close()
    settle()
    assert [e.handle for e in primary.events(c, control.Unregistered)] == [old.handle]
    assert [e.handle for e in guest.events(p, control.Unregistered)] == [old_provider]
    assert primary.send(c, old.handle, b"late") == errno.ENXIO
    guest.channels[1].open()
    settle()
    new = primary.events(c, control.Registered)[-1]
    new_provider = guest.events(p, control.Registered)[-1].handle
    assert new_provider != old_provider and new.handle != old.handle
    assert primary.send(c, new.handle, b"again") == 0


def test_closing_an_instance_unregisters_with_the_peer(pair) -> None:
    primary, guest, settle = pair
    p, c = guest.instance(), primary.instance()
    guest.register(p, "var-config", client=False)
    primary.register(c, "var-config", client=True)
    settle()
    guest.fw.close_instance(p)
    settle()
    assert len(primary.events(c, control.Unregistered)) == 1
    assert guest.register(guest.instance(), "var-config", client=False)[0] == 0  # free again
    settle()
    assert len(primary.events(c, control.Registered)) == 2


def test_data_for_unknown_or_stale_handles_gets_a_nack(pair) -> None:
    primary, guest, settle = pair
    primary.fw.port_data(1, encode(Data(0x1234_0000_0001, b"who?")))
    assert primary.fw.take_port_output() == [(1, encode(Nack(0x1234_0000_0001, Result.INV_HDL)))]


def test_unknown_message_types_and_truncated_messages_are_dropped(pair) -> None:
    primary, guest, settle = pair
    primary.fw.port_data(1, bytes.fromhex("0000002a00000000"))  # type 0x2a
    primary.fw.port_data(1, bytes.fromhex("0000000400000002" "0000"))  # REG_ACK too short
    assert primary.fw.take_port_output() == []
    assert any("dropped" in line for line in primary.fw.take_events())


def test_dom_name_and_handle_lookups(pair) -> None:
    primary, _, _ = pair
    i = primary.instance()
    assert primary.ask(i, control.NameToDhdl(0, "ldg1")).body == control.U64.pack(5)
    assert primary.ask(i, control.NameToDhdl(0, "primary")).body == control.U64.pack(0)
    assert primary.ask(i, control.NameToDhdl(0, "nobody")).errno == errno.ENXIO
    assert primary.handle_op(i, Op.DHDL_TO_NAME, 5).body == b"ldg1"
    assert primary.handle_op(i, Op.DHDL_TO_NAME, 99).errno == errno.ENXIO
