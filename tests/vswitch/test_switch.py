"""The switch engine and its frame codec, driven by plain calls with explicit times."""

from __future__ import annotations

import logging
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.errors import ConfigError, GuestError, ProtocolError
from backend.vswitch.frames import (
    BROADCAST,
    EthernetFrame,
    FrameError,
    RuntFrameError,
    UnsupportedFrameError,
    VlanTagError,
    build,
    format_mac,
    is_broadcast,
    is_multicast,
    parse,
    parse_mac,
    tag,
    untag,
)
from backend.vswitch.port import PortConfig
from backend.vswitch.switch import (
    EGRESS_DROPS,
    INGRESS_DROPS,
    RX,
    TX,
    NotAttachedError,
    Switch,
)

IPV4 = 0x0800
PAYLOAD = bytes(range(46))


def mac(n: int) -> bytes:
    """A locally administered unicast address ending in n."""
    return bytes([0x02, 0, 0, 0, n >> 8 & 0xFF, n & 0xFF])


GROUP = bytes.fromhex("01005e000001")
GROUP2 = bytes.fromhex("333300000001")


class Nic:
    """A port that keeps what the switch sends it."""

    def __init__(self, name: str, *, pvid: int = 1, vlans=(), tagged: bool = False, mtu: int = 1500) -> None:
        self.config = PortConfig(name, mtu=mtu, pvid=pvid, vlans=frozenset(vlans), tagged=tagged)
        self.sent: list[bytes] = []

    def transmit(self, frame: bytes) -> None:
        self.sent.append(frame)

    def take(self) -> list[bytes]:
        out, self.sent = self.sent, []
        return out


class BrokenNic(Nic):
    def __init__(self, name: str, **kw) -> None:
        super().__init__(name, **kw)
        self.attempts = 0

    def transmit(self, frame: bytes) -> None:
        self.attempts += 1
        raise OSError("peer gone")


def eth(dst: bytes, src: bytes, *, vlan: int | None = None, pcp: int = 0, payload: bytes = PAYLOAD) -> bytes:
    return build(dst, src, IPV4, payload, vlan=vlan, pcp=pcp)


def switch_with(*ports: Nic, uplinks=(), **kw) -> Switch:
    sw = Switch("vsw0", **kw)
    for p in ports:
        sw.attach(p, uplink=p in uplinks)
    return sw


# -- frames ------------------------------------------------------------------


def test_parse_untagged() -> None:
    f = parse(eth(mac(2), mac(1)))
    assert f == EthernetFrame(mac(2), mac(1), None, 0, IPV4, 14)
    assert not f.tagged


def test_parse_tagged_and_priority_tagged() -> None:
    f = parse(eth(mac(2), mac(1), vlan=100, pcp=5))
    assert (f.vlan, f.pcp, f.ethertype, f.payload_offset, f.tagged) == (100, 5, IPV4, 18, True)
    p = parse(eth(mac(2), mac(1), vlan=0, pcp=6))
    assert (p.vlan, p.pcp, p.ethertype, p.tagged) == (None, 6, IPV4, True)


def test_parse_runts() -> None:
    with pytest.raises(RuntFrameError, match="13 bytes"):
        parse(eth(mac(2), mac(1))[:13])
    with pytest.raises(RuntFrameError, match="tagged"):
        parse(eth(mac(2), mac(1), vlan=5)[:17])
    assert parse(eth(mac(2), mac(1), payload=b"")).payload_offset == 14
    assert parse(eth(mac(2), mac(1), vlan=5, payload=b"")).payload_offset == 18
    assert issubclass(RuntFrameError, FrameError) and issubclass(FrameError, ProtocolError)


def test_parse_reserved_vlan_and_stacked_tags() -> None:
    with pytest.raises(VlanTagError, match="4095"):
        parse(mac(2) + mac(1) + bytes.fromhex("8100 0fff 0800"))
    with pytest.raises(UnsupportedFrameError, match="0x88a8"):
        parse(mac(2) + mac(1) + bytes.fromhex("88a8 0064 8100 0005 0800"))
    with pytest.raises(UnsupportedFrameError, match="double"):
        parse(mac(2) + mac(1) + bytes.fromhex("8100 0064 8100 0005 0800"))
    with pytest.raises(UnsupportedFrameError):
        parse(mac(2) + mac(1) + bytes.fromhex("8100 0064 88a8 0005 0800"))


def test_parse_8023_length_field_passes() -> None:
    bpdu = bytes.fromhex("0180c2000000") + mac(1) + bytes.fromhex("0026") + bytes(38)
    assert parse(bpdu).ethertype == 0x26


def test_tag_untag_round_trip() -> None:
    plain = eth(mac(2), mac(1))
    tagged = tag(plain, 42, pcp=3)
    assert tagged == plain[:12] + bytes.fromhex("8100 602a") + plain[12:]
    assert tagged == eth(mac(2), mac(1), vlan=42, pcp=3)
    assert untag(tagged) == plain
    assert untag(plain) == plain
    assert untag(eth(mac(2), mac(1), vlan=0, pcp=7)) == plain
    with pytest.raises(FrameError, match="already tagged"):
        tag(tagged, 7)
    for vid in (4095, 4096, -1):
        with pytest.raises(VlanTagError):
            tag(plain, vid)
    with pytest.raises(FrameError, match="priority"):
        tag(plain, 5, pcp=8)
    with pytest.raises(RuntFrameError):
        tag(plain[:10], 5)


def test_mac_helpers() -> None:
    assert format_mac(bytes.fromhex("0a1b2c3d4e5f")) == "0a:1b:2c:3d:4e:5f"
    assert parse_mac("0a:1b:2c:3d:4e:5f") == bytes.fromhex("0a1b2c3d4e5f")
    assert parse_mac("0A-1B-2C-3D-4E-5F") == bytes.fromhex("0a1b2c3d4e5f")
    assert parse_mac("0:14:4f:f8:0:1") == bytes.fromhex("00144ff80001")
    for bad in ("", "0a:1b:2c:3d:4e", "0a:1b:2c:3d:4e:5f:00", "0a:1b:2c:3d:4e:5g", "0a:1b:2c:3d:4e:+f", "0a::2c:3d:4e:5f"):
        with pytest.raises(ConfigError):
            parse_mac(bad)
    with pytest.raises(FrameError):
        format_mac(b"\x00" * 5)
    assert is_broadcast(BROADCAST) and is_multicast(BROADCAST)
    assert is_multicast(GROUP) and not is_broadcast(GROUP)
    assert not is_multicast(mac(1))
    with pytest.raises(FrameError):
        build(b"\x01", mac(1), IPV4)


# -- learning and flooding -----------------------------------------------------


def test_learning_then_unicast() -> None:
    a, b, c = Nic("a"), Nic("b"), Nic("c")
    sw = switch_with(a, b, c)
    first = eth(mac(2), mac(1))
    sw.receive(a, first, now=0.0)
    assert b.take() == [first] and c.take() == [first] and a.take() == []
    assert sw.stats.flooded == 1
    reply = eth(mac(1), mac(2))
    sw.receive(b, reply, now=1.0)
    assert a.take() == [reply] and c.take() == [] and b.take() == []
    assert sw.stats.flooded == 1
    again = eth(mac(2), mac(1))
    sw.receive(a, again, now=2.0)
    assert b.take() == [again] and c.take() == []
    assert {k: (e.port, e.seen) for k, e in sw.fdb.items()} == {(1, mac(1)): (a, 2.0), (1, mac(2)): (b, 1.0)}
    assert sw.lookup(mac(1), 1, now=2.0) is a
    assert sw.stats.learned == 2


def test_unknown_unicast_floods_all_but_ingress() -> None:
    ports = [Nic(f"p{i}") for i in range(5)]
    sw = switch_with(*ports)
    frame = eth(mac(99), mac(1))
    sw.receive(ports[2], frame, now=0.0)
    assert [len(p.take()) for p in ports] == [1, 1, 0, 1, 1]
    assert sw.counters(ports[2]).forwarded == 1
    assert sum(sw.counters(p).tx_frames for p in ports) == 4


def test_broadcast_to_every_port_of_the_vlan() -> None:
    a, b, c, other = Nic("a"), Nic("b"), Nic("c"), Nic("other", pvid=2)
    sw = switch_with(a, b, c, other)
    sw.receive(b, eth(mac(1), mac(3)), now=0.0)  # mac(1) unknown, mac(3) learned on b
    for p in (a, b, c, other):
        p.take()
    frame = eth(BROADCAST, mac(1))
    sw.receive(a, frame, now=1.0)
    assert b.take() == [frame] and c.take() == [frame] and other.take() == [] and a.take() == []
    assert sw.stats.flooded == 2


def test_known_unicast_behind_ingress_is_filtered() -> None:
    a, b = Nic("a"), Nic("b")
    sw = switch_with(a, b)
    sw.receive(a, eth(BROADCAST, mac(1)), now=0.0)
    sw.receive(a, eth(BROADCAST, mac(2)), now=0.0)
    b.take()
    sw.receive(a, eth(mac(2), mac(1)), now=1.0)
    assert b.take() == [] and a.take() == []
    assert sw.counters(a).drops["no_route"] == 1


def test_lone_port_has_no_route() -> None:
    a, b = Nic("a", pvid=5), Nic("b", pvid=6)
    sw = switch_with(a, b)
    sw.receive(a, eth(BROADCAST, mac(1)), now=0.0)
    assert sw.counters(a).drops["no_route"] == 1 and sw.stats.flooded == 0
    assert sw.lookup(mac(1), 5, now=0.0) is a  # learning happens even with no route


def test_bad_sources_are_dropped_and_not_learned() -> None:
    a, b = Nic("a"), Nic("b")
    sw = switch_with(a, b)
    for src in (GROUP, BROADCAST, bytes(6)):
        sw.receive(a, eth(mac(2), src), now=0.0)
    assert b.take() == []
    assert sw.counters(a).drops["bad_source"] == 3
    assert sw.fdb == {}


def test_mac_move() -> None:
    a, b, c = Nic("a"), Nic("b"), Nic("c")
    sw = switch_with(a, b, c)
    sw.receive(a, eth(BROADCAST, mac(7)), now=0.0)
    sw.receive(b, eth(BROADCAST, mac(7)), now=1.0)  # the guest migrated
    assert sw.lookup(mac(7), 1, now=1.0) is b
    assert sw.stats.moves == 1
    for p in (a, b, c):
        p.take()
    frame = eth(mac(7), mac(8))
    sw.receive(c, frame, now=2.0)
    assert b.take() == [frame] and a.take() == []
    sw.receive(b, eth(BROADCAST, mac(7)), now=3.0)  # same port: a refresh, not a move
    assert sw.stats.moves == 1 and len(sw.fdb) == 2


def test_same_mac_in_two_vlans_is_two_entries() -> None:
    trunk = Nic("trunk", pvid=1, vlans={10, 20}, tagged=True)
    v10, v20 = Nic("v10", pvid=10), Nic("v20", pvid=20)
    sw = switch_with(trunk, v10, v20)
    sw.receive(v10, eth(BROADCAST, mac(5)), now=0.0)
    assert sw.lookup(mac(5), 10, now=0.0) is v10 and sw.lookup(mac(5), 20, now=0.0) is None
    trunk.take()
    # A frame for mac(5) on VLAN 20 does not go to v10: it is flooded within VLAN 20.
    sw.receive(trunk, eth(mac(5), mac(6), vlan=20), now=1.0)
    assert v10.take() == [] and v20.take() == [eth(mac(5), mac(6))]
    sw.receive(trunk, eth(mac(5), mac(6), vlan=10), now=1.0)
    assert v10.take() == [eth(mac(5), mac(6))] and v20.take() == []


# -- ageing and the FDB bound --------------------------------------------------


def test_ageing_with_explicit_times() -> None:
    a, b, c = Nic("a"), Nic("b"), Nic("c")
    sw = switch_with(a, b, c, ageing=300.0)
    sw.receive(a, eth(BROADCAST, mac(1)), now=1000.0)
    b.take(), c.take()
    sw.receive(b, eth(mac(1), mac(2)), now=1299.9)
    assert a.take() and not c.take()  # still known
    assert sw.age(1299.9) == 0
    sw.receive(c, eth(mac(1), mac(3)), now=1300.0)  # 300 s since mac(1) was seen: gone
    assert a.take() and b.take()
    assert sw.lookup(mac(1), 1, now=1300.0) is None
    assert sw.age(1300.0) == 1 and (1, mac(1)) not in sw.fdb
    assert sw.age(1599.0) == 0  # mac(2) was seen at 1299.9, mac(3) at 1300
    assert sw.age(1600.0) == 2 and sw.fdb == {}
    assert sw.stats.aged == 3


def test_refresh_keeps_an_entry_alive() -> None:
    a, b = Nic("a"), Nic("b")
    sw = switch_with(a, b, ageing=10.0)
    for t in range(0, 100, 5):
        sw.receive(a, eth(mac(2), mac(1)), now=float(t))
    assert sw.lookup(mac(1), 1, now=104.0) is a
    assert sw.age(104.0) == 0 and sw.age(105.0) == 1


def test_ageing_zero_makes_a_hub() -> None:
    a, b, c = Nic("a"), Nic("b"), Nic("c")
    sw = switch_with(a, b, c, ageing=0.0)
    sw.receive(a, eth(mac(2), mac(1)), now=0.0)
    sw.receive(b, eth(mac(1), mac(2)), now=0.0)
    assert len(c.take()) == 2 and sw.stats.flooded == 2


def test_fdb_bound_under_random_source_flood() -> None:
    a, b, attacker = Nic("a"), Nic("b"), Nic("attacker")
    sw = switch_with(a, b, attacker, max_fdb=64, ageing=60.0)
    # a and b know each other before the flood.
    sw.receive(a, eth(BROADCAST, mac(1)), now=0.0)
    sw.receive(b, eth(mac(1), mac(2)), now=0.0)
    rng = random.Random(7)
    for i in range(5000):
        src = bytes([rng.randrange(256) & 0xFE]) + rng.randbytes(5)
        sw.receive(attacker, eth(BROADCAST, src), now=1.0 + i / 1000)
        if i % 500 == 0:
            sw.receive(a, eth(mac(2), mac(1)), now=1.0 + i / 1000)
            sw.receive(b, eth(mac(1), mac(2)), now=1.0 + i / 1000)
    assert len(sw.fdb) == 64
    assert sw.stats.fdb_full > 4000
    assert sw.lookup(mac(1), 1, now=6.0) is a and sw.lookup(mac(2), 1, now=6.0) is b
    for p in (a, b, attacker):
        p.take()
    # Known stations keep talking unicast: the attacker sees none of it.
    sw.receive(a, eth(mac(2), mac(1), payload=b"hello"), now=6.0)
    assert b.take() == [eth(mac(2), mac(1), payload=b"hello")] and attacker.take() == []
    # A station that arrives while the table is full is not learned, but its
    # frames still arrive (flooded), and replies reach it.
    c = Nic("c")
    sw.attach(c)
    sw.receive(c, eth(mac(1), mac(3)), now=6.0)
    assert a.take() == [eth(mac(1), mac(3))]
    assert sw.lookup(mac(3), 1, now=6.0) is None
    sw.receive(a, eth(mac(3), mac(1)), now=6.0)
    assert c.take() == [eth(mac(3), mac(1))]
    # Once the flood's entries expire, new stations are learned again without an age() call.
    sw.receive(c, eth(mac(1), mac(3)), now=200.0)
    assert sw.lookup(mac(3), 1, now=200.0) is c
    assert len(sw.fdb) <= 64


def test_detach_forgets_the_port() -> None:
    a, b, c = Nic("a"), Nic("b"), Nic("c")
    sw = switch_with(a, b, c)
    sw.receive(a, eth(BROADCAST, mac(1)), now=0.0)
    sw.join(a, GROUP, 1)
    sw.detach(a)
    assert sw.fdb == {} and sw.ports == [b, c]
    b.take(), c.take()
    sw.receive(b, eth(mac(1), mac(2)), now=1.0)  # mac(1) is unknown again: flooded, not to a
    assert c.take() == [eth(mac(1), mac(2))] and a.sent == []
    with pytest.raises(NotAttachedError):
        sw.receive(a, eth(mac(2), mac(1)), now=1.0)
    with pytest.raises(NotAttachedError):
        sw.counters(a)
    sw.attach(a)  # and may come back
    assert sw.groups(a) == frozenset()


def test_flush() -> None:
    a, b = Nic("a"), Nic("b")
    sw = switch_with(a, b)
    sw.receive(a, eth(BROADCAST, mac(1)), now=0.0)
    sw.receive(b, eth(BROADCAST, mac(2)), now=0.0)
    sw.flush(a)
    assert list(sw.fdb) == [(1, mac(2))]
    sw.flush()
    assert sw.fdb == {}


# -- multicast -----------------------------------------------------------------


def test_multicast_join_leave_and_uplink() -> None:
    a, b, c, up = Nic("a"), Nic("b"), Nic("c"), Nic("up")
    sw = switch_with(a, b, c)
    frame = eth(GROUP, mac(1))
    sw.receive(a, frame, now=0.0)
    assert sw.counters(a).drops["no_route"] == 1 and not b.sent and not c.sent
    sw.join(b, GROUP, 1)
    sw.join(b, GROUP, 1)  # idempotent
    sw.receive(a, frame, now=1.0)
    assert b.take() == [frame] and c.take() == []
    sw.attach(up, uplink=True)
    assert sw.is_uplink(up) and not sw.is_uplink(a)
    sw.receive(a, frame, now=2.0)
    assert b.take() == [frame] and up.take() == [frame] and c.take() == []
    sw.receive(a, eth(GROUP2, mac(1)), now=2.0)  # nobody joined GROUP2: the uplink still gets it
    assert up.take() == [eth(GROUP2, mac(1))] and b.take() == []
    sw.leave(b, GROUP, 1)
    sw.leave(b, GROUP, 1)  # leaving twice is fine
    sw.receive(a, frame, now=3.0)
    assert b.take() == [] and up.take() == [frame]
    # A member that sends to its own group does not get it back.
    sw.join(a, GROUP, 1)
    sw.receive(a, frame, now=4.0)
    assert a.take() == [] and up.take() == [frame]
    assert sw.stats.flooded == 0


def test_multicast_membership_is_per_vlan() -> None:
    trunk = Nic("trunk", vlans={10, 20}, tagged=True)
    v10, v20 = Nic("v10", pvid=10), Nic("v20", pvid=20)
    sw = switch_with(trunk, v10, v20)
    sw.join(v10, GROUP, 10)
    sw.join(trunk, GROUP, 20)
    sw.receive(trunk, eth(GROUP, mac(1), vlan=10), now=0.0)
    assert v10.take() == [eth(GROUP, mac(1))] and v20.take() == []
    sw.receive(v20, eth(GROUP, mac(2)), now=0.0)
    assert trunk.take() == [eth(GROUP, mac(2), vlan=20)] and v10.take() == []
    assert sw.groups(trunk) == {(GROUP, 20)}


def test_join_refuses_what_a_guest_may_not_ask() -> None:
    a = Nic("a", pvid=3)
    sw = switch_with(a, max_groups=2)
    with pytest.raises(GuestError, match="not a multicast"):
        sw.join(a, mac(1), 3)
    with pytest.raises(GuestError, match="not a multicast"):
        sw.join(a, BROADCAST, 3)
    with pytest.raises(GuestError, match="VLAN 4"):
        sw.join(a, GROUP, 4)
    sw.join(a, GROUP, 3)
    sw.join(a, GROUP2, 3)
    with pytest.raises(GuestError, match="already in 2"):
        sw.join(a, bytes.fromhex("01005e000002"), 3)
    with pytest.raises(NotAttachedError):
        sw.join(Nic("x"), GROUP, 1)


# -- VLANs -------------------------------------------------------------------


@pytest.fixture
def vlan_net():
    ports = {
        "acc10": Nic("acc10", pvid=10),
        "acc10b": Nic("acc10b", pvid=10),
        "acc20": Nic("acc20", pvid=20),
        "trunk": Nic("trunk", pvid=1, vlans={10, 20}, tagged=True),
        "hybrid": Nic("hybrid", pvid=10, vlans={20}, tagged=True),
        "t30": Nic("t30", pvid=1, vlans={30}, tagged=True),
        "untagged_with_vlans": Nic("untagged_with_vlans", pvid=1, vlans={10, 20}, tagged=False),
    }
    sw = switch_with(*ports.values())
    return sw, ports


P = PAYLOAD
U = "untagged"


@pytest.mark.parametrize(
    ("ingress", "tag_vid", "expected", "drop"),
    [
        # untagged on an access port: its PVID, tagged towards trunks carrying it
        ("acc10", None, {"acc10b": U, "trunk": 10, "hybrid": U}, None),
        ("acc20", None, {"trunk": 20, "hybrid": 20}, None),
        # tagged from a trunk: stripped at access ports of that VLAN
        ("trunk", 20, {"acc20": U, "hybrid": 20}, None),
        ("trunk", 10, {"acc10": U, "acc10b": U, "hybrid": U}, None),
        # untagged from a trunk: its PVID 1, which only PVID-1 ports share
        ("trunk", None, {"t30": U, "untagged_with_vlans": U}, None),
        # a tag naming the trunk's PVID is accepted and leaves untagged where it is the PVID
        ("trunk", 1, {"t30": U, "untagged_with_vlans": U}, None),
        # the hybrid port's PVID tagged, and its tagged VLAN
        ("hybrid", 10, {"acc10": U, "acc10b": U, "trunk": 10}, None),
        ("hybrid", 20, {"acc20": U, "trunk": 20}, None),
        ("hybrid", None, {"acc10": U, "acc10b": U, "trunk": 10}, None),
        # VLAN 30 exists only on t30: nobody else may hear it
        ("t30", 30, {}, "no_route"),
        # tags the port does not carry
        ("trunk", 30, {}, "bad_vlan"),
        ("hybrid", 30, {}, "bad_vlan"),
        # any VLAN tag on an untagged port, even its own PVID
        ("acc10", 10, {}, "bad_vlan"),
        ("acc10", 20, {}, "bad_vlan"),
        ("untagged_with_vlans", 10, {}, "bad_vlan"),
        # priority tags are untagged frames with a priority
        ("acc10", 0, {"acc10b": U, "trunk": 10, "hybrid": U}, None),
        ("trunk", 0, {"t30": U, "untagged_with_vlans": U}, None),
    ],
)
def test_vlan_matrix(vlan_net, ingress, tag_vid, expected, drop) -> None:
    sw, ports = vlan_net
    frame = eth(BROADCAST, mac(1), vlan=tag_vid, pcp=5 if tag_vid is not None else 0)
    sw.receive(ports[ingress], frame, now=0.0)
    got = {name: p.take() for name, p in ports.items()}
    assert {name: len(f) for name, f in got.items() if f} == {name: 1 for name in expected}
    plain = eth(BROADCAST, mac(1))
    for name, how in expected.items():
        (out,) = got[name]
        if how == U:
            assert out == plain
        else:
            # The tag carries the ingress priority (0 when the frame came in untagged).
            assert out == eth(BROADCAST, mac(1), vlan=how, pcp=5 if tag_vid is not None else 0)
    counters = sw.counters(ports[ingress])
    if drop:
        assert counters.drops[drop] == 1 and counters.forwarded == 0
    else:
        assert counters.forwarded == 1 and counters.rx_dropped == 0


def test_reserved_vlan_and_qinq_are_dropped(vlan_net) -> None:
    sw, ports = vlan_net
    sw.receive(ports["trunk"], mac(2) + mac(1) + bytes.fromhex("8100 0fff 0800") + P, now=0.0)
    sw.receive(ports["trunk"], mac(2) + mac(1) + bytes.fromhex("88a8 000a 8100 0014 0800") + P, now=0.0)
    sw.receive(ports["trunk"], mac(2) + mac(1) + bytes.fromhex("8100 000a 8100 0014 0800") + P, now=0.0)
    drops = sw.counters(ports["trunk"]).drops
    assert drops["bad_vlan"] == 1 and drops["unsupported"] == 2
    assert all(not p.sent for p in ports.values())


def test_unicast_never_crosses_vlans(vlan_net) -> None:
    sw, ports = vlan_net
    sw.receive(ports["acc20"], eth(BROADCAST, mac(20)), now=0.0)  # mac(20) learned on VLAN 20
    for p in ports.values():
        p.take()
    sw.receive(ports["acc10"], eth(mac(20), mac(10)), now=1.0)  # same MAC, VLAN 10: unknown there
    got = {name for name, p in ports.items() if p.take()}
    assert got == {"acc10b", "trunk", "hybrid"}


def test_priority_tagged_gets_retagged_with_its_priority(vlan_net) -> None:
    sw, ports = vlan_net
    sw.receive(ports["acc10"], eth(BROADCAST, mac(1), vlan=0, pcp=6), now=0.0)
    assert ports["trunk"].take() == [eth(BROADCAST, mac(1), vlan=10, pcp=6)]
    assert ports["acc10b"].take() == [eth(BROADCAST, mac(1))]


# -- sizes -------------------------------------------------------------------


def test_mtu_at_ingress() -> None:
    access, trunk, sink = Nic("access", mtu=1500), Nic("trunk", vlans={7}, tagged=True), Nic("sink", pvid=7, mtu=9000)
    sw = switch_with(access, trunk, sink)
    sw.receive(access, eth(BROADCAST, mac(1), payload=bytes(1500)), now=0.0)  # 1514 bytes
    sw.receive(access, eth(BROADCAST, mac(1), payload=bytes(1501)), now=0.0)  # 1515
    assert sw.counters(access).drops["oversize"] == 1 and sw.counters(access).forwarded == 1
    sw.receive(trunk, eth(BROADCAST, mac(2), vlan=7, payload=bytes(1500)), now=0.0)  # 1518 tagged
    sw.receive(trunk, eth(BROADCAST, mac(2), vlan=7, payload=bytes(1501)), now=0.0)  # 1519
    sw.receive(trunk, eth(BROADCAST, mac(2), vlan=0, payload=bytes(1500)), now=0.0)  # priority tag counts too
    assert sw.counters(trunk).drops["oversize"] == 1 and sw.counters(trunk).forwarded == 2
    assert sw.counters(access).rx_bytes == 1514 + 1515


def test_mtu_at_egress() -> None:
    jumbo = Nic("jumbo", mtu=9000)
    small, trunk = Nic("small", mtu=1500), Nic("trunk", vlans={5}, tagged=True, mtu=1500)
    jumbo5 = Nic("jumbo5", pvid=5, mtu=9000)
    sw = switch_with(jumbo, small, trunk, jumbo5)
    sw.receive(jumbo, eth(BROADCAST, mac(1), payload=bytes(4000)), now=0.0)
    assert sw.counters(small).drops["tx_oversize"] == 1 and not small.sent
    assert sw.counters(trunk).drops["tx_oversize"] == 1 and not trunk.sent  # VLAN 1 untagged, MTU 1500
    assert not jumbo5.sent  # not on VLAN 1
    # A full-size untagged frame may grow by its tag on the way out.
    sw.receive(jumbo5, eth(BROADCAST, mac(5), payload=bytes(1500)), now=0.0)
    (out,) = trunk.take()
    assert len(out) == 1518 and parse(out).vlan == 5
    sw.receive(jumbo5, eth(BROADCAST, mac(5), payload=bytes(1501)), now=0.0)
    assert sw.counters(trunk).drops["tx_oversize"] == 2 and trunk.sent == []


def test_runts() -> None:
    a, b = Nic("a"), Nic("b", vlans={3}, tagged=True)
    sw = switch_with(a, b)
    for size in range(14):
        sw.receive(a, eth(mac(2), mac(1))[:size], now=0.0)
    sw.receive(b, eth(mac(2), mac(1), vlan=3)[:17], now=0.0)
    assert sw.counters(a).drops["runt"] == 14 and sw.counters(b).drops["runt"] == 1
    assert not a.sent and not b.sent and sw.fdb == {}
    sw.receive(a, eth(mac(2), mac(1), payload=b""), now=0.0)  # a bare header is a frame
    assert b.take() == [eth(mac(2), mac(1), payload=b"")]


# -- robustness --------------------------------------------------------------


def test_transmit_exception_does_not_stop_others(caplog) -> None:
    a, broken, c = Nic("a"), BrokenNic("broken"), Nic("c")
    sw = switch_with(a, broken, c)
    with caplog.at_level(logging.WARNING, logger="backend.vswitch.switch"):
        for i in range(3):
            sw.receive(a, eth(BROADCAST, mac(1)), now=float(i))
    assert len(c.take()) == 3 and broken.attempts == 3
    assert sw.counters(broken).drops["tx_error"] == 3 and sw.counters(broken).tx_frames == 0
    assert sw.counters(a).forwarded == 3
    logged = [r for r in caplog.records if "broken" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # logged once, not per frame
    # Unicast to a station behind the broken port: counted, nothing raised.
    sw.receive(broken, eth(mac(1), mac(9)), now=4.0)
    sw.receive(a, eth(mac(9), mac(1)), now=5.0)
    assert sw.counters(broken).drops["tx_error"] == 4 and c.take() == []


def test_tap_exception_is_contained() -> None:
    a, b = Nic("a"), Nic("b")
    sw = switch_with(a, b)

    def bad_tap(direction: str, frame: bytes, now: float) -> None:
        raise RuntimeError("disk full")

    seen = []
    sw.add_tap(b, bad_tap)
    sw.add_tap(b, lambda d, f, t: seen.append((d, f, t)))
    sw.receive(a, eth(BROADCAST, mac(1)), now=3.5)
    assert b.take() == [eth(BROADCAST, mac(1))]
    assert sw.stats.tap_errors == 1 and seen == [(TX, eth(BROADCAST, mac(1)), 3.5)]
    sw.receive(b, b"short", now=4.0)
    assert seen[-1] == (RX, b"short", 4.0)
    sw.remove_tap(b, bad_tap)
    sw.receive(a, eth(BROADCAST, mac(1)), now=5.0)
    assert sw.stats.tap_errors == 2  # one more from the RX above, none after removal


def test_flood_rate_limit() -> None:
    a, b = Nic("a"), Nic("b")
    sw = switch_with(a, b, flood_rate=1.0, flood_burst=2)
    for _ in range(3):
        sw.receive(a, eth(BROADCAST, mac(1)), now=10.0)
    assert len(b.take()) == 2 and sw.counters(a).drops["flood_limit"] == 1
    sw.receive(a, eth(BROADCAST, mac(1)), now=11.0)
    sw.receive(a, eth(BROADCAST, mac(1)), now=11.0)
    assert len(b.take()) == 1 and sw.counters(a).drops["flood_limit"] == 2
    # Known unicast is not flooding and is not limited.
    sw.receive(b, eth(mac(1), mac(2)), now=11.0)
    for _ in range(5):
        sw.receive(a, eth(mac(2), mac(1)), now=11.0)
    assert len(b.take()) == 5
    assert sw.stats.flooded == 3  # b's frame to a was not flooded: mac(1) was learned


def test_attach_checks_config() -> None:
    sw = Switch("vsw0")
    a = Nic("a")
    sw.attach(a)
    with pytest.raises(ConfigError, match="already attached"):
        sw.attach(a)
    with pytest.raises(ConfigError, match="already named"):
        sw.attach(Nic("a"))
    with pytest.raises(ConfigError, match="PVID"):
        sw.attach(Nic("b", pvid=4095))
    with pytest.raises(ConfigError, match="VLAN ids"):
        sw.attach(Nic("c", vlans={0, 5}, tagged=True))
    with pytest.raises(ConfigError, match="MTU"):
        sw.attach(Nic("d", mtu=0))
    with pytest.raises(ConfigError):
        Switch("x", ageing=-1)
    with pytest.raises(ConfigError):
        Switch("x", max_fdb=-1)
    with pytest.raises(NotAttachedError, match="ghost"):
        sw.receive(Nic("ghost"), eth(BROADCAST, mac(1)), now=0.0)


def test_accepts_bytearray_and_memoryview() -> None:
    a, b = Nic("a"), Nic("b")
    sw = switch_with(a, b)
    frame = eth(BROADCAST, mac(1))
    sw.receive(a, bytearray(frame), now=0.0)
    sw.receive(a, memoryview(frame), now=0.0)
    assert b.take() == [frame, frame] and all(type(f) is bytes for f in [frame])


def test_transmit_may_feed_the_switch_again() -> None:
    """A loopback-style port that answers from inside transmit must not confuse forwarding."""
    sw = Switch("vsw0")
    a = Nic("a")

    class Echo(Nic):
        def transmit(self, frame: bytes) -> None:
            super().transmit(frame)
            info = parse(frame)
            if info.dst == BROADCAST:
                sw.receive(self, eth(info.src, mac(50)), now=0.0)

    echo = Echo("echo")
    sw.attach(a)
    sw.attach(echo)
    sw.receive(a, eth(BROADCAST, mac(1)), now=0.0)
    assert a.take() == [eth(mac(1), mac(50))]
    assert sw.lookup(mac(50), 1, now=0.0) is echo


# -- properties ----------------------------------------------------------------

VIDS = [1, 2, 3]
MACS = [mac(i) for i in range(1, 6)] + [bytes(6), GROUP]


@st.composite
def port_configs(draw):
    n = draw(st.integers(2, 5))
    configs = []
    for i in range(n):
        tagged = draw(st.booleans())
        configs.append(
            {
                "name": f"p{i}",
                "pvid": draw(st.sampled_from(VIDS)),
                "vlans": draw(st.frozensets(st.sampled_from(VIDS))) if tagged else frozenset(),
                "tagged": tagged,
                "mtu": draw(st.sampled_from([40, 1500])),
                "uplink": draw(st.booleans()),
                "broken": draw(st.integers(0, 9)) == 0,
            }
        )
    return configs


@st.composite
def traffic(draw, nports: int):
    events = []
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["frame", "frame", "frame", "frame", "join", "leave", "age"]))
        port = draw(st.integers(0, nports - 1))
        if kind == "frame":
            dst = draw(st.sampled_from(MACS + [BROADCAST, GROUP2]))
            src = draw(st.sampled_from(MACS))
            vid = draw(st.sampled_from([None, None, 0, 1, 2, 3, 4, 4095]))
            payload = draw(st.binary(max_size=60))
            frame = eth(dst, src, payload=payload) if vid in (None, 4095) else eth(dst, src, vlan=vid, payload=payload)
            if vid == 4095:
                frame = frame[:12] + bytes.fromhex("8100 0fff") + frame[12:]
            cut = draw(st.one_of(st.none(), st.integers(0, 20)))
            if cut is not None:
                frame = frame[:cut]
            events.append(("frame", port, frame))
        elif kind in ("join", "leave"):
            events.append((kind, port, draw(st.sampled_from([GROUP, GROUP2])), draw(st.sampled_from(VIDS))))
        else:
            events.append(("age",))
    return events


class Recorder(Nic):
    def __init__(self, name: str, broken: bool, log: list, **kw) -> None:
        super().__init__(name, **kw)
        self.broken = broken
        self.log = log
        self.attempts = 0

    def transmit(self, frame: bytes) -> None:
        self.attempts += 1
        if self.broken:
            raise ConnectionResetError("gone")
        self.log.append((self, frame))


def expected_vlan(config: PortConfig, frame: bytes) -> int | None:
    """Independent statement of the ingress rule; None: the frame must go nowhere."""
    try:
        info = parse(frame)
    except FrameError:
        return None
    if info.vlan is None:
        return config.pvid
    if config.tagged and (info.vlan == config.pvid or info.vlan in config.vlans):
        return info.vlan
    return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_traffic_keeps_invariants(data) -> None:
    configs = data.draw(port_configs())
    events = data.draw(traffic(len(configs)))
    sw = Switch("prop", ageing=5.0, max_fdb=4)
    sent: list = []
    ports = []
    for c in configs:
        p = Recorder(c["name"], c["broken"], sent, pvid=c["pvid"], vlans=c["vlans"], tagged=c["tagged"], mtu=c["mtu"])
        sw.attach(p, uplink=c["uplink"])
        ports.append(p)
    fed = {p.config.name: [0, 0] for p in ports}
    total_sent = total_bytes = 0
    now = 0.0
    for ev in events:
        now += 1.0
        if ev[0] == "age":
            sw.age(now)
            continue
        port = ports[ev[1]]
        if ev[0] in ("join", "leave"):
            try:
                getattr(sw, ev[0])(port, ev[2], ev[3])
            except GuestError:
                assert port.config.pvid != ev[3] and not (port.config.tagged and ev[3] in port.config.vlans)
            continue
        frame = ev[2]
        sent.clear()
        sw.receive(port, frame, now)
        total_sent += len(sent)
        total_bytes += sum(len(f) for _, f in sent)
        fed[port.config.name][0] += 1
        fed[port.config.name][1] += len(frame)
        vlan = expected_vlan(port.config, frame)
        if vlan is None:
            assert sent == []
            continue
        inner = untag(frame)
        dst = inner[:6]
        for out, out_frame in sent:
            assert out is not port, "sent back out of the ingress port"
            info = parse(out_frame)
            cfg = out.config
            if info.tagged:
                assert cfg.tagged and info.vlan in cfg.vlans and info.vlan != cfg.pvid
                assert info.vlan == vlan, "crossed VLANs"
            else:
                assert cfg.pvid == vlan, "crossed VLANs"
            assert untag(out_frame) == inner
            assert len(out_frame) <= cfg.mtu + 14 + (4 if info.tagged else 0)
            if is_multicast(dst) and not is_broadcast(dst):
                assert (dst, vlan) in sw.groups(out) or sw.is_uplink(out)
        if not is_multicast(dst) and len(sent) == 1:
            # Unicast that was not flooded went where the FDB says.
            assert sw.lookup(dst, vlan, now) in (sent[0][0], None)
        assert len(sw.fdb) <= 4

    for p in ports:
        c = sw.counters(p)
        assert [c.rx_frames, c.rx_bytes] == fed[p.config.name]
        assert c.rx_frames == c.forwarded + c.rx_dropped
        assert p.attempts == c.tx_frames + c.drops["tx_error"]
        assert set(c.drops) <= set(INGRESS_DROPS) | set(EGRESS_DROPS)
        if p.broken:
            assert c.tx_frames == 0 and c.tx_bytes == 0
    assert total_sent == sum(sw.counters(p).tx_frames for p in ports)
    assert total_bytes == sum(sw.counters(p).tx_bytes for p in ports)
