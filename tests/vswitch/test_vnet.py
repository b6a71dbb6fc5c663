"""vNet over VIO between a client and a switch-side port, through the real LDC layer."""

from __future__ import annotations

import pytest

from backend.ldc.memory import TransportCookie
from backend.vio.constants import MsgType, SubType
from backend.vio.loopback import connect, make_pair, pump
from backend.vio.messages import DeviceMessage, Tag, decode
from backend.vswitch.vnet import (
    DDS_FAIL, DDS_STATUS, DDS_VNET_NIU, DESC, FRAME_LEN, LSO_IPV4_CAPAB, MCAST_INFO, McastInfo, NetAttrs, VnetDevice,
    negotiated_mtu, negotiated_tsolen,
)

CLIENT_MAC = bytes.fromhex("020000000001")
SWITCH_MAC = bytes.fromhex("0200000000ff")
GROUP = bytes.fromhex("01005e000001")


def frame(dst: bytes, src: bytes, size: int = 60, tag: int | None = None) -> bytes:
    head = dst + src + ((b"\x81\x00" + tag.to_bytes(2, "big")) if tag is not None else b"")
    return (head + b"\x08\x00").ljust(size, b"\xab")


def pair(client_versions=None, switch_versions=None, client_mtu=FRAME_LEN, switch_mtu=FRAME_LEN, client_lso=0, switch_lso=0):
    got_client, got_switch = [], []
    client = VnetDevice(CLIENT_MAC, switch_side=False, mtu=client_mtu, on_frame=got_client.append, lso_maxlen=client_lso)
    switch = VnetDevice(SWITCH_MAC, switch_side=True, mtu=switch_mtu, on_frame=got_switch.append, lso_maxlen=switch_lso)
    if client_versions:
        client.versions = client_versions
    if switch_versions:
        switch.versions = switch_versions
    a, b = make_pair(client, switch)
    connect(a, b)
    return a, b, client, switch, got_client, got_switch


def test_handshake_learns_macs_and_both_rings() -> None:
    a, b, client, switch, *_ = pair()
    assert a.session.established and b.session.established and a.session.version == (1, 8)
    assert switch.peer_mac == CLIENT_MAC and client.peer_mac == SWITCH_MAC
    assert len(a.session.own_rings) == 1 and len(b.session.own_rings) == 1  # each side its TX ring


@pytest.mark.parametrize(
    "version, ours, theirs, expected",
    [((1, 0), 1514, 1514, 1514), ((1, 2), 1514, 1500, None), ((1, 3), 1518, 1518, 1518), ((1, 3), 1518, 1514, None),
     ((1, 4), 9000, 1514, 1514), ((1, 6), 1514, 9000, 1514), ((1, 8), 9000, 9000, 9000)],
)
def test_mtu_rules(version, ours, theirs, expected) -> None:
    assert negotiated_mtu(version, ours, theirs) == expected


def test_mtu_negotiated_down_from_1_4() -> None:
    a, b, client, switch, *_ = pair(client_mtu=9000, switch_mtu=1514)
    assert client.mtu == switch.mtu == 1514
    big = frame(SWITCH_MAC, CLIENT_MAC, size=4000)
    assert not client.send_frame(big) and client.counters["tx_dropped"] == 1


def test_old_versions_use_fixed_mtus() -> None:
    a, b, client, switch, *_ = pair(client_versions=((1, 0),), client_mtu=9000, switch_mtu=9000)
    assert a.session.version == (1, 0) and client.mtu == switch.mtu == FRAME_LEN


@pytest.mark.parametrize(
    "version, ours, cflags, theirs, expected",
    [((1, 6), 65535, LSO_IPV4_CAPAB, 65535, 0), ((1, 7), 65535, LSO_IPV4_CAPAB, 65535, 65535),
     ((1, 8), 65535, LSO_IPV4_CAPAB, 16384, 16384), ((1, 8), 8192, LSO_IPV4_CAPAB, 65535, 8192),
     ((1, 8), 65535, 0, 65535, 0), ((1, 8), 0, LSO_IPV4_CAPAB, 65535, 0), ((1, 8), 65535, LSO_IPV4_CAPAB, 2047, 0),
     ((1, 8), 65535, LSO_IPV4_CAPAB, 2048, 2048)],
)
def test_lso_rules(version, ours, cflags, theirs, expected) -> None:
    assert negotiated_tsolen(version, ours, cflags, theirs) == expected


@pytest.mark.parametrize(
    "client_lso, switch_lso, versions, expected",
    [(65535, 65535, None, 65535), (65535, 16384, None, 16384), (0, 65535, None, 0), (65535, 0, None, 0),
     (65535, 65535, ((1, 6),), 0), (65535, 65535, ((1, 7),), 65535)],
)
def test_lso_negotiated_in_the_handshake(client_lso, switch_lso, versions, expected) -> None:
    a, b, client, switch, *_ = pair(client_versions=versions, client_lso=client_lso, switch_lso=switch_lso)
    assert a.session.established and b.session.established
    assert client.tsolen == switch.tsolen == expected


def test_lso_attribute_fields_on_the_wire() -> None:
    """Our INFO offers LSO from 1.7 only; the ACK of a peer's offer clears the flag when we
    do not offer LSO, and lowers maxlen to ours when we do."""
    offering = VnetDevice(SWITCH_MAC, switch_side=True, lso_maxlen=16384)
    plain = VnetDevice(SWITCH_MAC, switch_side=True)
    info = NetAttrs.decode(offering.attr_payload((1, 8)))
    assert (info.cflags, info.ipv4_lso_maxlen) == (LSO_IPV4_CAPAB, 16384)
    old = NetAttrs.decode(offering.attr_payload((1, 6)))
    assert (old.cflags, old.ipv4_lso_maxlen) == (0, 0)
    peer = NetAttrs(0x4, 1, 0, 0, 1, int.from_bytes(CLIENT_MAC, "big"), 1514, LSO_IPV4_CAPAB, 65535).encode()
    ack = offering.on_attr_info(peer, (1, 8))
    assert ack.ack and (NetAttrs.decode(ack.payload).cflags, NetAttrs.decode(ack.payload).ipv4_lso_maxlen) == (1, 16384)
    ack = plain.on_attr_info(peer, (1, 8))
    assert ack.ack and (NetAttrs.decode(ack.payload).cflags, NetAttrs.decode(ack.payload).ipv4_lso_maxlen) == (0, 0)


def test_lso_maxlen_out_of_range_is_refused() -> None:
    for bad in (1, 2047, 65536):
        with pytest.raises(ValueError):
            VnetDevice(SWITCH_MAC, switch_side=True, lso_maxlen=bad)


def test_frames_both_ways_over_the_rings() -> None:
    a, b, client, switch, got_client, got_switch = pair()
    frames = [frame(SWITCH_MAC, CLIENT_MAC, size=n) for n in (60, 64, 1000, 1514)]
    for f in frames:
        assert client.send_frame(f)
    pump(a, b)
    assert got_switch == frames
    for n in range(600):  # more than the ring holds: entries are reaped and reused
        switch.send_frame(frame(CLIENT_MAC, SWITCH_MAC, size=60 + n % 1400))
        pump(a, b)
    assert len(got_client) == 600 and got_client[-1] == frame(CLIENT_MAC, SWITCH_MAC, size=60 + 599 % 1400)


def test_priority_frames_in_packet_mode_beside_the_ring() -> None:
    a, b, client, switch, got_client, got_switch = pair()
    urgent = frame(SWITCH_MAC, CLIENT_MAC, size=80)
    client.send_frame(frame(SWITCH_MAC, CLIENT_MAC))
    assert client.send_priority(urgent)
    pump(a, b)
    assert urgent in got_switch and len(got_switch) == 2


def test_no_packet_mode_before_1_2() -> None:
    a, b, client, switch, *_ = pair(client_versions=((1, 1),))
    assert not client.send_priority(frame(SWITCH_MAC, CLIENT_MAC))


def test_vlan_tags_only_from_1_3() -> None:
    tagged = frame(SWITCH_MAC, CLIENT_MAC, size=64, tag=10)
    a, b, client, switch, *_ = pair(client_versions=((1, 2),))
    assert not client.send_frame(tagged)
    a, b, client, switch, got_client, got_switch = pair()
    assert client.send_frame(tagged)
    pump(a, b)
    assert got_switch == [tagged]


def test_attribute_refusals() -> None:
    switch = VnetDevice(SWITCH_MAC, switch_side=True)
    good = NetAttrs(0x5, 1, 0, 0, 1, int.from_bytes(CLIENT_MAC, "big"), 1514)
    assert switch.on_attr_info(good.encode(), (1, 6)).ack
    for bad in (
        NetAttrs(0x1, 1, 0, 0, 1, good.addr, 1514),  # packet mode only: no ring
        NetAttrs(0x5, 2, 0, 0, 1, good.addr, 1514),  # not an Ethernet address
        NetAttrs(0x5, 1, 0, 0, 1, int.from_bytes(GROUP, "big"), 1514),  # a multicast "MAC"
        NetAttrs(0x5, 1, 0, 0, 1, good.addr, 10),  # absurd MTU
    ):
        assert not switch.on_attr_info(bad.encode(), (1, 6)).ack
    assert not switch.on_attr_info(NetAttrs(0x5, 1, 0, 0, 1, good.addr, 1514).encode(), (1, 1)).ack  # 0x5 is not an enum value
    assert switch.on_attr_info(NetAttrs(0x3, 1, 0, 0, 1, good.addr, 1514).encode(), (1, 1)).ack
    assert not switch.on_attr_info(b"short", (1, 6)).ack


def test_multicast_set_and_unset_rules() -> None:
    a, b, client, switch, *_ = pair()
    joined = []
    switch.on_multicast = lambda on, group: joined.append((on, group)) or True
    groups = [bytes.fromhex(f"01005e0000{n:02x}") for n in range(1, 10)]
    client.set_multicast(groups)  # 9 groups: two messages (7 + 2)
    pump(a, b)
    assert [ok for _, ok in client.mcast_replies] == [True, True] and switch.multicast == set(groups)
    client.set_multicast(groups[:1])  # already set: NACK
    client.set_multicast([bytes.fromhex("01005e0000ee")], join=False)  # never set: NACK
    client.set_multicast(groups[:2], join=False)
    pump(a, b)
    assert [ok for _, ok in client.mcast_replies[2:]] == [False, False, True]
    assert switch.multicast == set(groups[2:]) and (False, groups[0]) in joined


def test_malformed_mcast_info_is_nacked() -> None:
    a, b, client, switch, *_ = pair()
    tag = Tag(MsgType.CTRL, SubType.INFO, MCAST_INFO, b.session.sid)
    bogus = DeviceMessage(tag, bytes([1, 9]) + bytes(46))  # count 9 > 7
    b.session.receive(bogus.encode())
    (reply,) = [decode(m) for m in b.session.take_output()]
    assert reply.tag.stype == SubType.NACK and switch.multicast == set()
    with pytest.raises(ValueError):
        McastInfo(True, tuple([GROUP] * 8)).encode()
    with pytest.raises(ValueError):
        McastInfo(True, (bytes.fromhex("01005e01"),)).encode()


def test_multicast_refusals_apply_nothing() -> None:
    a, b, client, switch, *_ = pair()
    refused = bytes.fromhex("01005e0000aa")
    switch.on_multicast = lambda on, group: group != refused  # the switch refuses this one group
    client.set_multicast([GROUP, GROUP])  # twice in one message
    client.set_multicast([b"\xff" * 6])  # broadcast is not a group
    client.set_multicast([GROUP, refused])  # all or nothing
    pump(a, b)
    assert [ok for _, ok in client.mcast_replies] == [False, False, False] and switch.multicast == set()


def test_dds_niu_share_request_fails_with_status() -> None:
    a, b, client, switch, *_ = pair()
    replies = []
    client.on_dds_reply = lambda request, reply: replies.append(reply)
    req_id = a.session.send_dds(DDS_VNET_NIU, 0x1, bytes(16))  # ADD_SHARE
    pump(a, b)
    (reply,) = replies
    assert reply.tag.stype == SubType.NACK and reply.dds_req_id == req_id and reply.dds_subclass == 0x1
    assert DDS_STATUS.unpack_from(reply.body)[0] == DDS_FAIL


def test_bad_descriptors_are_counted_and_skipped() -> None:
    a, b, client, switch, got_client, got_switch = pair()
    ring = a.session.own_rings[0]
    too_big = DESC.pack(20000, 1) + TransportCookie(0, 64).encode()
    no_cookies = DESC.pack(60, 0)
    forged = DESC.pack(60, 1) + TransportCookie(0xBAD << 13, 72).encode()
    for payload in (too_big, no_cookies, forged):
        a.session.submit(ring, payload)
    client.send_frame(frame(SWITCH_MAC, CLIENT_MAC))
    pump(a, b)
    assert switch.counters["rx_errors"] == 3 and len(got_switch) == 1 and b.session.established
