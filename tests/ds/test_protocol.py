"""The DS protocol between a guest-side and a host-side port, over a real LDC RELIABLE channel."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from backend.ds.messages import Data, DsError, Nack, RegReq, Result, encode
from backend.ds.protocol import DataReceived, DsPort, PortState, Registered, Unregistered
from backend.ldc.channel import Channel, LinkReset, LinkUp, MessageReceived
from backend.ldc.constants import Mode
from backend.ldc.loopback import deliver


class End:
    """A DS port on one end of an LDC RELIABLE channel (the transport DS uses)."""

    def __init__(self, port: DsPort) -> None:
        self.port = port
        self.channel = Channel(Mode.RELIABLE)
        self.events: list = []

    def step(self) -> None:
        for event in self.channel.take_events():
            if isinstance(event, LinkUp):
                self.port.link_up()
            elif isinstance(event, LinkReset):
                self.port.link_down(event.reason)
            elif isinstance(event, MessageReceived):
                self.port.receive(event.data)
        for data in self.port.take_output():
            if self.channel.is_up:
                self.channel.send(data)
        self.events += self.port.take_events()


def pump(a: End, b: End) -> None:
    for _ in range(1000):
        a.step()
        b.step()
        out_a, out_b = a.channel.take_output(), b.channel.take_output()
        if not out_a and not out_b and not a.port._output and not b.port._output:
            return
        deliver(out_a, b.channel)
        deliver(out_b, a.channel)


def up(guest: DsPort, host: DsPort) -> tuple[End, End]:
    a, b = End(guest), End(host)
    a.channel.open()
    b.channel.open()
    pump(a, b)
    return a, b


def of(end: End, kind) -> list:
    return [e for e in end.events if isinstance(e, kind)]


def test_guest_provider_host_client_register_and_exchange_data() -> None:
    guest, host = DsPort(initiator=True), DsPort(initiator=False)
    shutdown = guest.add_service("domain-shutdown", ((1, 0),), provider=True)
    client = host.add_service("domain-shutdown", ((1, 2),), provider=False)
    a, b = up(guest, host)
    assert guest.state is host.state is PortState.READY
    assert [e.version for e in of(a, Registered)] == [(1, 0)] and [e.version for e in of(b, Registered)] == [(1, 0)]
    assert client.handle == shutdown.handle  # data uses the provider's handle both ways
    host.send_data(client, b"\x00" * 8 + b"\x00\x00\x00\x05")  # req_num, ms_delay
    guest.send_data(shutdown, b"reply")
    pump(a, b)
    assert [e.payload for e in of(a, DataReceived)] == [b"\x00" * 8 + b"\x00\x00\x00\x05"]
    assert [e.payload for e in of(b, DataReceived)] == [b"reply"]


def test_unsupported_service_is_nacked_and_not_registered() -> None:
    guest, host = DsPort(initiator=True), DsPort(initiator=False)
    guest.add_service("pri", ((1, 0),), provider=True)
    a, b = up(guest, host)
    assert not of(a, Registered) and any("refused" in e.text for e in a.events if hasattr(e, "text"))


def test_registration_retries_at_a_lower_major() -> None:
    guest, host = DsPort(initiator=True), DsPort(initiator=False)
    provider = guest.add_service("dr-cpu", ((3, 0), (1, 1)), provider=True)
    host.add_service("dr-cpu", ((1, 0),), provider=False)
    a, b = up(guest, host)
    assert provider.active and provider.version == (1, 0)


def test_data_on_an_unknown_handle_gets_nack_and_a_nack_unregisters() -> None:
    guest, host = DsPort(initiator=True), DsPort(initiator=False)
    provider = guest.add_service("md-update", ((1, 0),), provider=True)
    host.add_service("md-update", ((1, 0),), provider=False)
    a, b = up(guest, host)
    host.receive(encode(Data(0xDEAD, b"x")))
    (reply,) = host.take_output()
    assert reply == encode(Nack(0xDEAD, Result.INV_HDL))
    guest.receive(encode(Nack(provider.handle, Result.INV_HDL)))
    assert not provider.active
    assert any(isinstance(e, Unregistered) and "handle" in e.reason for e in guest.take_events())


def test_unregistration_makes_the_old_handle_stale_and_the_provider_retries() -> None:
    guest, host = DsPort(initiator=True), DsPort(initiator=False)
    provider = guest.add_service("var-config", ((1, 0),), provider=True)
    client = host.add_service("var-config", ((1, 0),), provider=False)
    a, b = up(guest, host)
    old = provider.handle
    host.unregister(client)  # the host is done with it: UNREG_REQ to the guest
    pump(a, b)
    # the host's client saw the handle go; the provider registers again with a new handle
    assert provider.active and provider.handle != old and client.handle == provider.handle
    host.receive(encode(Data(old, b"late")))
    assert host.take_output() == [encode(Nack(old, Result.INV_HDL))]


def test_link_loss_unregisters_everything_and_the_handshake_restarts() -> None:
    guest, host = DsPort(initiator=True), DsPort(initiator=False)
    provider = guest.add_service("domain-panic", ((1, 0),), provider=True)
    host.add_service("domain-panic", ((1, 0),), provider=False)
    a, b = up(guest, host)
    a.channel.close()
    pump(a, b)
    assert of(a, Unregistered) and of(b, Unregistered) and not provider.active
    a.channel.open()
    pump(a, b)
    assert provider.active and guest.state is PortState.READY


def test_responder_never_starts_the_handshake() -> None:
    host = DsPort(initiator=False)
    host.link_up()
    assert host.take_output() == [] and host.state is PortState.WAITING  # a Linux guest resets on INIT_REQ


def test_messages_before_the_handshake_and_client_pings() -> None:
    host = DsPort(initiator=False)
    provider = host.add_service("keystore", ((1, 0),), provider=True)
    host.link_up()
    host.receive(encode(Data(1, b"early")))
    assert host.take_output() == []
    guest = DsPort(initiator=True)
    a, b = End(guest), End(host)
    b.port.state = PortState.DOWN
    a.channel.open()
    b.channel.open()
    pump(a, b)
    ping = RegReq(0x1_8000_0001, 1, 0, "keystore")  # an illumos client looking for a provider
    host.receive(encode(ping))
    sent = host.take_output()
    assert sent and all(b"keystore" in m for m in sent) and provider.offered == (1, 0)


def test_removing_an_active_service_tells_the_peer() -> None:
    guest, host = DsPort(initiator=True), DsPort(initiator=False)
    provider = guest.add_service("pri", ((1, 0),), provider=True)
    client = host.add_service("pri", ((1, 0),), provider=False)
    a, b = up(guest, host)
    guest.remove_service(provider)
    pump(a, b)
    assert provider not in guest.services and not client.active
    assert any(isinstance(e, Unregistered) and e.service is client for e in b.events)


def _connected_pair() -> tuple[DsPort, DsPort, object]:
    guest, host = DsPort(initiator=True), DsPort(initiator=False)
    provider = guest.add_service("md-update", ((1, 0),), provider=True)
    host.add_service("md-update", ((1, 0),), provider=False)
    up(guest, host)
    return guest, host, provider


def test_the_data_path_takes_only_whole_data_for_active_services() -> None:
    guest, _, provider = _connected_pair()
    assert guest.data_message(encode(Data(provider.handle, b"payload"))) == (provider, b"payload")
    assert guest.data_message(encode(Data(0xDEAD, b"x"))) is None  # receive() NACKs it
    assert guest.data_message(encode(Data(provider.handle, b"payload"))[:-1]) is None  # a partial chunk
    assert guest.data_message(encode(Nack(provider.handle, Result.INV_HDL))) is None
    guest.receive(encode(Nack(provider.handle, Result.INV_HDL)))  # the peer drops the handle
    assert guest.data_message(encode(Data(provider.handle, b"payload"))) is None  # stale, though it was the last one


@given(st.binary(max_size=48), st.booleans())
def test_fuzz_the_data_path_agrees_with_receive(tail: bytes, use_handle: bool) -> None:
    guest, _, provider = _connected_pair()
    data = (encode(Data(provider.handle, b""))[:16] if use_handle else b"") + tail
    if len(data) >= 8 and use_handle:  # often a whole DATA: the header's length said what follows
        data = data[:4] + (len(data) - 8).to_bytes(4, "big") + data[8:]
    fast = guest.data_message(data)
    guest.take_events()
    try:
        guest.receive(data)
    except DsError:
        assert fast is None
        return
    received = [(e.service, e.payload) for e in guest.take_events() if isinstance(e, DataReceived)]
    if fast is not None:
        assert received == [fast]
