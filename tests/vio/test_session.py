"""The VIO session in both roles, two in-memory peers through the real LDC layer."""

from __future__ import annotations

import pytest

from backend.errors import ProtocolError
from backend.ldc.memory import TransportCookie
from backend.vio.constants import END_OPEN, DescState, DevClass, DringOption, Env, MsgType, ProcState, SubType
from backend.vio.loopback import Stack, connect, make_pair, pump
from backend.vio.messages import DdsInfo, DringData, DringReg, DringUnreg, PktData, Rdx, Tag, VerInfo, decode
from backend.vio.session import Established, HandshakeFailed, Phase, Rejected, SessionReset
from backend.vio.xfer import Transfer, decode_xfer_mode, encode_xfer_mode

from .devices import Client, Peer, Server


def established_pair(client=None, server=None) -> tuple[Stack, Stack, Client, Server]:
    client = client or Client()
    server = server or Server()
    a, b = make_pair(client, server)
    connect(a, b)
    assert a.session.established and b.session.established
    a.session.take_events()
    b.session.take_events()
    return a, b, client, server


def sent(stack: Stack) -> list:
    """Decode what the session wants to send (and keep it from being sent)."""
    return [decode(m) for m in stack.session.take_output()]


def inject(stack: Stack, message) -> list:
    stack.session.receive(message.encode())
    return sent(stack)


def tag(stack: Stack, mtype: int, stype: int, env: int) -> Tag:
    return Tag(mtype, stype, env, stack.session.sid)


# ---- version negotiation ---------------------------------------------------------------


def test_handshake_messages_in_order_with_one_session_id() -> None:
    a, b = make_pair(Client(), Server(), sids=(0x1000, 0x2000))
    a.channel.open()
    b.channel.open()
    seen = []
    for _ in range(200):
        a.step()
        b.step()
        out_a, out_b = a.channel.take_output(), b.channel.take_output()
        if not out_a and not out_b:
            break
        from backend.ldc.loopback import deliver

        deliver(out_a, b.channel)
        deliver(out_b, a.channel)
        seen += [("a", e) for e in b.channel._events if hasattr(e, "data")]
        seen += [("b", e) for e in a.channel._events if hasattr(e, "data")]
    flow = [(who, decode(e.data)) for who, e in seen]
    names = [(who, Env(m.tag.stype_env).name, SubType(m.tag.stype).name) for who, m in flow]
    assert names == [
        ("a", "VER_INFO", "INFO"), ("b", "VER_INFO", "ACK"),
        ("a", "ATTR_INFO", "INFO"), ("b", "ATTR_INFO", "ACK"),
        ("a", "DRING_REG", "INFO"), ("b", "DRING_REG", "ACK"),
        ("a", "RDX", "INFO"), ("b", "RDX", "ACK"),
    ]
    assert {m.tag.sid for _, m in flow} == {0x1000}  # the accepted VER_INFO's id, both ways
    ver_info, ver_ack = flow[0][1], flow[1][1]
    assert (ver_ack.major, ver_ack.minor, ver_ack.dev_class) == (ver_info.major, ver_info.minor, ver_info.dev_class)
    assert flow[5][1].dring_ident == 1


def test_nack_with_next_lower_major_then_retry_with_fresh_sid() -> None:
    client = Client(versions=((3, 1), (1, 1)))
    server = Server(versions=((2, 5), (1, 0)))
    a, b = make_pair(client, server, sids=(7, 100))
    a.session.link_up()
    (offer,) = sent(a)
    assert (offer.major, offer.minor, offer.tag.sid) == (3, 1, 7)
    b.session._link_up = True
    (nack,) = inject(b, offer)
    assert (nack.tag.stype, nack.major, nack.minor) == (SubType.NACK, 2, 5)
    (retry,) = inject(a, nack)
    assert (retry.major, retry.minor, retry.tag.sid) == (1, 1, 8)  # our next lower choice, a new session id
    ack = inject(b, retry)[0]
    assert (ack.tag.stype, ack.major, ack.minor, ack.tag.sid) == (SubType.ACK, 1, 0, 8)  # minor lowered
    inject(a, ack)
    assert a.session.version == (1, 0) and a.session.sid == 8


def test_nack_zero_when_no_lower_major_fails() -> None:
    a, b = make_pair(Client(versions=((1, 1),)), Server(versions=((2, 0),)))
    connect(a, b)
    assert a.session.phase is Phase.FAILED
    assert any(isinstance(e, HandshakeFailed) and "no common" in e.reason for e in a.session.take_events())


def test_peer_offering_only_older_versions() -> None:
    a, b, client, server = established_pair(Client(versions=((1, 0),)), Server(versions=((1, 1), (1, 0))))
    assert a.session.version == b.session.version == (1, 0)


def test_unknown_device_class_is_nacked_unchanged() -> None:
    a, b = make_pair(Client(), Server())
    b.session._link_up = True
    offer = VerInfo(Tag(MsgType.CTRL, SubType.INFO, Env.VER_INFO, 0xABC), 1, 1, DevClass.NETWORK)
    (nack,) = inject(b, offer)
    assert nack == VerInfo(offer.tag.reply(SubType.NACK), 1, 1, DevClass.NETWORK)
    assert any(isinstance(e, HandshakeFailed) for e in b.session.take_events())


def test_message_with_another_session_id_is_rejected() -> None:
    a, b, client, server = established_pair()
    bogus = DringData(Tag(MsgType.DATA, SubType.INFO, Env.DRING_DATA, b.session.sid ^ 1), 1, 1, 0, 0)
    assert inject(b, bogus) == []
    assert any(isinstance(e, Rejected) and "session id" in e.reason for e in b.session.take_events())
    assert server.seen == []


def test_ver_info_any_time_resets_and_restarts_mid_transfer() -> None:
    a, b, client, server = established_pair(server=Server(complete_now=False))
    ring = a.session.own_rings[0]
    a.session.submit(ring, b"pending")
    pump(a, b)
    assert len(server.seen) == 1 and client.done == []
    a.session.restart()  # the client renegotiates while a descriptor is in progress
    pump(a, b)
    assert a.session.established and b.session.established
    assert any(isinstance(e, SessionReset) for e in b.session.take_events())
    b.session.complete(1, 0, b"late")  # completion of the old session's work is dropped
    pump(a, b)
    assert client.done == []
    ring = a.session.own_rings[0]
    a.session.submit(ring, b"fresh")
    pump(a, b)
    assert server.seen[-1][2].startswith(b"fresh")


# ---- attributes --------------------------------------------------------------------------


def test_attribute_ack_carries_the_servers_values() -> None:
    a, b, client, server = established_pair()
    assert client.attr_ack_payloads == [b"server-attrs".ljust(48, b"\0")]


def test_attribute_nack_resets_and_gives_up_after_bounded_restarts() -> None:
    a, b = make_pair(Client(), Server(accept_attrs=False))
    connect(a, b)
    assert a.session.phase is Phase.FAILED
    events = a.session.take_events()
    assert sum(isinstance(e, SessionReset) for e in events) >= 3
    assert isinstance(events[-1], HandshakeFailed)


@pytest.mark.parametrize(
    "version, modes, value",
    [((1, 0), Transfer.DRING, 3), ((1, 1), Transfer.PKT, 1), ((1, 1), Transfer.DESC, 2),
     ((1, 2), Transfer.DRING, 4), ((1, 6), Transfer.PKT | Transfer.DRING, 5), ((1, 2), Transfer.DESC, 2)],
)
def test_xfer_mode_enumeration_then_bitmask(version, modes, value) -> None:
    assert encode_xfer_mode(version, modes) == value
    assert decode_xfer_mode(version, value) == modes


def test_xfer_mode_rejects_what_the_version_cannot_say() -> None:
    with pytest.raises(ValueError):
        encode_xfer_mode((1, 1), Transfer.PKT | Transfer.DRING)
    for version, value in (((1, 1), 5), ((1, 1), 0), ((1, 2), 8), ((1, 2), 0)):
        with pytest.raises(ProtocolError):
            decode_xfer_mode(version, value)


# ---- rings: registration -------------------------------------------------------------------


def test_registration_gives_ident_and_maps_the_clients_memory() -> None:
    a, b, client, server = established_pair()
    ring = a.session.own_rings[0]
    assert ring.ident == 1
    imported = b.session.peer_ring(1)
    assert imported is not None and imported.count == 16 and imported.size == 64
    ring.memory.write(0, b"\x01\x00")  # same bytes seen through the server's mapping
    ring.set_payload(0, b"shared!")
    assert imported.payload(0).startswith(b"shared!")


@pytest.mark.parametrize(
    "change, why",
    [
        (dict(num_descr=0), "descriptors"),
        (dict(num_descr=1 << 20), "descriptors"),
        (dict(descr_size=60), "descriptor size"),
        (dict(descr_size=4), "descriptor size"),
        (dict(cookies=()), "no cookies"),
        (dict(cookies=(TransportCookie(0, 64),)), "cover less"),
        (dict(cookies=(TransportCookie(0xDEAD << 13, 16 * 64),)), "not usable"),
        (dict(options=DringOption.RX), "device class"),
    ],
)
def test_bad_ring_registrations_are_nacked(change, why) -> None:
    a, b, client, server = established_pair()
    fields = dict(num_descr=16, descr_size=64, options=DringOption.TX, cookies=a.session._own_exports[0][0].cookies)
    fields.update(change)
    message = DringReg(
        tag(b, MsgType.CTRL, SubType.INFO, Env.DRING_REG), 0,
        fields["num_descr"], fields["descr_size"], fields["options"], tuple(fields["cookies"]),
    )
    (reply,) = inject(b, message)
    assert reply.tag.stype == SubType.NACK
    assert any(isinstance(e, Rejected) and why in e.reason for e in b.session.take_events())


def test_registration_nack_is_fatal_for_the_client() -> None:
    class Picky(Server):
        def accepts_ring(self, reg, version):
            return False

    a, b = make_pair(Client(), Picky())
    connect(a, b)
    events = a.session.take_events()
    assert any(isinstance(e, SessionReset) and "NACKed our descriptor ring" in e.reason for e in events)
    assert a.session.phase is Phase.FAILED


def test_unregistration_ack_nack_and_data_for_unregistered_ring() -> None:
    a, b, client, server = established_pair()
    ring = a.session.own_rings[0]
    (nack,) = inject(b, DringUnreg(tag(b, MsgType.CTRL, SubType.INFO, Env.DRING_UNREG), 99))
    assert nack.tag.stype == SubType.NACK
    a.session.unregister_ring(ring)
    pump(a, b)
    assert a.session.own_rings == [] and b.session.peer_ring(1) is None
    (reply,) = inject(b, DringData(tag(b, MsgType.DATA, SubType.INFO, Env.DRING_DATA), 1, 1, 0, 0))
    assert reply.tag.stype == SubType.NACK
    assert any("unregistered ring" in e.reason for e in b.session.take_events() if isinstance(e, Rejected))


def test_unregistration_while_data_is_pending() -> None:
    a, b, client, server = established_pair(server=Server(complete_now=False))
    ring = a.session.own_rings[0]
    a.session.submit(ring, b"one")
    a.session.submit(ring, b"two")
    pump(a, b)
    assert len(server.seen) == 2
    a.session.unregister_ring(ring)
    pump(a, b)
    b.session.complete(1, 0, b"too late")  # the server finishes work for a ring that is gone
    pump(a, b)
    assert client.done == [] and b.session.established and a.session.established


# ---- rings: descriptors and DRING_DATA ------------------------------------------------------


def test_descriptor_states_on_the_shared_memory() -> None:
    a, b, client, server = established_pair(server=Server(complete_now=False))
    ring = a.session.own_rings[0]
    assert ring.state(0) == DescState.FREE
    index = a.session.submit(ring, b"read block 7")
    assert ring.state(index) == DescState.READY and ring.wants_ack(index)
    pump(a, b)
    assert ring.state(index) == DescState.ACCEPTED  # the server took it: we see it in our memory
    b.session.complete(1, index, b"status 0")
    assert ring.state(index) == DescState.DONE
    pump(a, b)
    assert ring.state(index) == DescState.FREE
    assert client.done == [(1, index, b"status 0".ljust(56, b"\0")[:8] + ring.payload(index)[8:])]


def test_requester_tampering_with_an_accepted_descriptor_resets() -> None:
    a, b, client, server = established_pair(server=Server(complete_now=False))
    ring = a.session.own_rings[0]
    index = a.session.submit(ring, b"x")
    pump(a, b)
    ring.set_state(index, DescState.FREE)  # a buggy or hostile requester
    b.session.complete(1, index, None)
    assert any(isinstance(e, SessionReset) and "changed to state" in e.reason for e in b.session.take_events())


def test_ack_for_a_descriptor_not_done_resets_the_requester() -> None:
    a, b, client, server = established_pair(server=Server(complete_now=False))
    ring = a.session.own_rings[0]
    index = a.session.submit(ring, b"x")
    pump(a, b)
    lie = DringData(tag(a, MsgType.DATA, SubType.ACK, Env.DRING_DATA), 1, ring.ident, index, index, ProcState.ACTIVE)
    inject(a, lie)
    assert any(isinstance(e, SessionReset) and "acknowledged entry" in e.reason for e in a.session.take_events())


def test_open_ended_walk_stops_then_requester_rekicks() -> None:
    x, y = Peer(initiator=True, open_ended=True), Peer(initiator=False)
    a, b = make_pair(x, y)
    connect(a, b)
    ring = a.session.own_rings[0]
    for n in range(3):
        a.session.submit(ring, b"frame%d" % n)
    kicks = [m for m in a.session.take_output()]
    assert len(kicks) == 1  # one DRING_DATA for three descriptors
    kick = decode(kicks[0])
    assert (kick.start_idx, kick.end_idx) == (0, END_OPEN)
    b.session.receive(kicks[0])
    replies = sent(b)
    assert [(r.tag.stype, r.end_idx, r.state) for r in replies] == [(SubType.ACK, 2, ProcState.STOPPED)]
    for reply in replies:
        a.session.receive(reply.encode())
    assert [d[1] for d in x.done] == [0, 1, 2]
    assert not ring.processor_active
    a.session.submit(ring, b"frame3")  # the processor said STOPPED: a new kick goes out
    (rekick,) = sent(a)
    assert (rekick.start_idx, rekick.end_idx, rekick.seq) == (3, END_OPEN, 2)


def test_stopped_ack_with_ready_entries_triggers_rekick() -> None:
    x, y = Peer(initiator=True), Peer(initiator=False)
    a, b = make_pair(x, y)
    connect(a, b)
    ring = a.session.own_rings[0]
    a.session.submit(ring, b"first")
    (kick,) = a.session.take_output()
    b.session.receive(kick)
    (stopped,) = b.session.take_output()
    a.session.submit(ring, b"second")  # queued while the processor was stopping: no kick yet
    assert a.session.take_output() == []
    a.session.receive(stopped)
    (rekick,) = sent(a)
    assert (rekick.start_idx, rekick.end_idx) == (1, END_OPEN)


def test_explicit_acks_per_descriptor() -> None:
    x, y = Peer(initiator=True, open_ended=True, ack_each=True), Peer(initiator=False)
    a, b = make_pair(x, y)
    connect(a, b)
    ring = a.session.own_rings[0]
    a.session.submit(ring, b"a")
    a.session.submit(ring, b"b")
    (kick,) = a.session.take_output()
    b.session.receive(kick)
    replies = sent(b)
    assert [(r.end_idx, r.state) for r in replies] == [(0, ProcState.ACTIVE), (1, ProcState.ACTIVE), (1, ProcState.STOPPED)]


def test_overlapping_range_and_not_ready_are_nacked() -> None:
    a, b, client, server = established_pair(server=Server(complete_now=False))
    ring = a.session.own_rings[0]
    a.session.submit(ring, b"busy")
    pump(a, b)
    seq = ring.seq
    (nack,) = inject(b, DringData(tag(b, MsgType.DATA, SubType.INFO, Env.DRING_DATA), seq + 1, 1, 0, 0))
    assert nack.tag.stype == SubType.NACK
    assert any("overlaps" in e.reason for e in b.session.take_events() if isinstance(e, Rejected))
    (nack,) = inject(b, DringData(tag(b, MsgType.DATA, SubType.INFO, Env.DRING_DATA), seq + 2, 1, 5, 5))
    assert nack.tag.stype == SubType.NACK
    assert any("not READY" in e.reason for e in b.session.take_events() if isinstance(e, Rejected))
    (nack,) = inject(b, DringData(tag(b, MsgType.DATA, SubType.INFO, Env.DRING_DATA), seq + 3, 1, 16, 16))
    assert any("outside" in e.reason for e in b.session.take_events() if isinstance(e, Rejected))


def test_sequence_gap_nacks_and_stops_the_ring() -> None:
    a, b, client, server = established_pair()
    ring = a.session.own_rings[0]
    a.session.submit(ring, b"one")
    pump(a, b)
    index = ring.queue(b"two", ack=True)
    (nack,) = inject(b, DringData(tag(b, MsgType.DATA, SubType.INFO, Env.DRING_DATA), ring.seq + 2, 1, index, index))
    assert nack.tag.stype == SubType.NACK
    (nack,) = inject(b, DringData(tag(b, MsgType.DATA, SubType.INFO, Env.DRING_DATA), ring.seq + 1, 1, index, index))
    assert nack.tag.stype == SubType.NACK  # stopped: even the right seq is refused now
    assert any("stopped" in e.reason for e in b.session.take_events() if isinstance(e, Rejected))
    a.session.receive(nack.encode())  # the requester, NACKed, resets and renegotiates
    pump(a, b)
    assert a.session.established and b.session.established


def test_nack_of_our_dring_data_resets_the_requester() -> None:
    a, b, client, server = established_pair()
    nack = DringData(tag(a, MsgType.DATA, SubType.NACK, Env.DRING_DATA), 1, 1, 0, 0)
    inject(a, nack)
    assert any(isinstance(e, SessionReset) for e in a.session.take_events())


def test_many_descriptors_wrap_around_the_ring() -> None:
    a, b, client, server = established_pair()
    ring = a.session.own_rings[0]
    for n in range(100):
        a.session.submit(ring, b"n%d" % n)
        pump(a, b)
    assert len(client.done) == 100 and [d[1] for d in client.done[:20]] == list(range(16)) + [0, 1, 2, 3]


# ---- in-band, packets, RDX, DDS ------------------------------------------------------------


def test_inband_descriptors() -> None:
    a, b, client, server = established_pair()
    first = a.session.send_inband(b"inband one")
    second = a.session.send_inband(b"inband two")
    pump(a, b)
    assert server.inband_seen == [(first, b"inband one"), (second, b"inband two")]
    assert client.inband_done == [(first, b"INBAND ONE", True), (second, b"INBAND TWO", True)]


def test_packet_mode_data_and_its_sequence_check() -> None:
    x, y = Peer(initiator=True), Peer(initiator=False)
    a, b = make_pair(x, y)
    connect(a, b)
    a.session.send_packet(b"high priority frame" * 10)
    pump(a, b)
    assert y.packets == [b"high priority frame" * 10]
    (nack,) = inject(b, PktData(tag(b, MsgType.DATA, SubType.INFO, Env.PKT_DATA), 5, b"gap"))
    assert nack.tag.stype == SubType.NACK and y.packets == [b"high priority frame" * 10]


def test_simplex_rdx_for_disks_duplex_for_networks() -> None:
    a, b, client, server = established_pair()
    assert a.session._rdx_sent and not b.session._rdx_sent  # the disk server never sends RDX
    x, y = Peer(True), Peer(False)
    c, d = make_pair(x, y)
    connect(c, d)
    assert c.session._rdx_sent and d.session._rdx_sent and c.session._rdx_received and d.session._rdx_received


def test_rdx_before_rings_resets() -> None:
    a, b = make_pair(Client(), Server())
    a.session.link_up()
    b.session._link_up = True
    for message in sent(a)[:1]:  # only the VER_INFO
        inject(b, message)
    inject(b, Rdx(tag(b, MsgType.CTRL, SubType.INFO, Env.RDX)))
    assert any(isinstance(e, SessionReset) and "RDX" in e.reason for e in b.session.take_events())


def test_dds_request_response_correlation() -> None:
    a, b, client, server = established_pair()
    first = a.session.send_dds(0x10, 1, b"share")
    second = a.session.send_dds(0x10, 3)
    pump(a, b)
    replies = {req.dds_req_id: reply for req, reply in client.dds_replies}
    assert replies[first].tag.stype == SubType.ACK and replies[first].body.startswith(b"status")
    assert replies[second].tag.stype == SubType.NACK and replies[second].dds_req_id == second
    unknown = DdsInfo(tag(a, MsgType.CTRL, SubType.ACK, Env.DDS_INFO), 0x10, 1, 999)
    assert inject(a, unknown) == []
    assert any("unknown request" in e.reason for e in a.session.take_events() if isinstance(e, Rejected))


def test_malformed_message_resets() -> None:
    a, b, client, server = established_pair()
    b.session.receive(b"\x01\x01\x00\x03" + b.session.sid.to_bytes(4, "big") + b"\0" * 8)  # DRING_REG, truncated
    assert any(isinstance(e, SessionReset) and "malformed" in e.reason for e in b.session.take_events())


def test_established_event_and_device_callback() -> None:
    a, b = make_pair(Client(), Server())
    connect(a, b)
    assert Established((1, 1)) in a.session.take_events()
    assert ("established", (1, 1)) in b.session.device.log


def test_late_ack_with_a_full_ring_is_not_taken_for_everything() -> None:
    """An ACK for an entry already reaped must not reap the whole ring when it is full."""
    x, y = Peer(initiator=True, open_ended=True, ack_each=True), Peer(initiator=False)
    a, b = make_pair(x, y)
    connect(a, b)
    ring = a.session.own_rings[0]
    for n in range(4):
        a.session.submit(ring, b"f%d" % n)
    pump(a, b)
    late = DringData(tag(a, MsgType.DATA, SubType.ACK, Env.DRING_DATA), 1, ring.ident, 3, 3, ProcState.STOPPED)
    while ring.free_entries():
        ring.queue(b"more", ack=False)  # fill it as far as it goes
    assert ring.pending == ring.count - 1
    a.session.receive(late.encode())  # entry 3 was reaped long ago
    assert not any(isinstance(e, SessionReset) for e in a.session.take_events())
    assert ring.pending == ring.count - 1
