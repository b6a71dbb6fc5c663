"""Hypothesis: the vNet decoders on random bytes, and a vnet client and switch port fed junk.

The decoders may refuse input only with OSError; what they accept re-encodes to
the bytes it came from (up to reserved bytes) and decodes again to the same value.
The session fuzz drives a VnetDevice pair over the in-process loopback with what
a buggy or hostile vnet could put on its TX ring (random sizes, cookie counts and
cookies, some of them valid frames in its real buffers), random MCAST_INFO device
messages and random DDS messages, in both directions: nothing may raise, the
session must stay the same established session, every descriptor must be counted
as a frame or an error, and good frames must still get through afterwards.
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from backend.ldc.memory import TRANSPORT_COOKIE, TransportCookie
from backend.vio.constants import Env, MsgType, SubType
from backend.vio.loopback import pump
from backend.vio.messages import DdsInfo, DeviceMessage, Tag
from backend.vswitch.vnet import (
    ATTR,
    DESC,
    MCAST,
    MCAST_INFO,
    PACKET_SKIP,
    McastInfo,
    NetAttrs,
)

from ..vdisk.test_fuzz import _decoded, _round_trip, _with_small_fields
from .test_vnet import CLIENT_MAC, SWITCH_MAC, frame, pair

u8, u32, u64 = (st.integers(0, 2**n - 1) for n in (8, 32, 64))
REPLIES = (SubType.INFO, SubType.ACK, SubType.NACK)

# MCAST_INFO payloads: any bytes, or a set flag and count near the valid ones (uniform
# bytes almost never decode), 42..50 bytes after them (short, exact and long messages).
_mcast_payloads = st.one_of(
    st.binary(max_size=60),
    st.builds(lambda flag, count, rest: bytes((flag, count)) + rest, st.integers(0, 2), st.integers(0, 8),
              st.binary(min_size=40, max_size=50)),
)


# --- decoders --------------------------------------------------------------------------


@settings(max_examples=300)
@given(_with_small_fields(ATTR.size))
def test_net_attrs(data: bytes) -> None:
    _round_trip(NetAttrs.decode, data, (6, 8), (28, 48))  # offsets after the tag


@settings(max_examples=400)
@given(_mcast_payloads)
def test_mcast_info(data: bytes) -> None:
    info = _decoded(McastInfo.decode, data)
    if info is None:
        return
    assert isinstance(info, McastInfo) and 1 <= len(info.addrs) <= 7
    encoded = info.encode()
    used = 2 + 6 * len(info.addrs)  # set, count, the addresses; the rest goes out zero
    assert McastInfo.decode(encoded) == info
    assert len(encoded) == MCAST.size and encoded[:used] == data[:used] and encoded[used:] == bytes(MCAST.size - used)


# --- a client and a switch port fed junk ------------------------------------------------------

# One operation: ("desc", payload, kind) on the client's TX ring, where kind is "valid"
# (must arrive), "bad" (size or ncookies out of range: must be an error) or "any";
# ("mcast", to_switch, stype, payload); ("dds", to_switch, stype, class, subclass, req_id, body).


def _round8(n: int) -> int:
    return -(-n // 8) * 8


@st.composite
def _descriptor(draw) -> tuple[str, bytes, str]:
    kind = draw(st.sampled_from(["valid", "valid", "bad", "any", "raw"]))
    if kind == "raw":
        return ("desc", draw(st.binary(max_size=56)), "any")
    if kind == "valid":
        size = draw(st.integers(14, 1514))
        slot = draw(st.integers(0, 255))  # the client's own exported buffers: a frame is whatever they hold
        need = _round8(size + PACKET_SKIP)
        if draw(st.booleans()) and need > 8:
            split = draw(st.integers(1, need // 8 - 1)) * 8
            cookies = [(slot, 0, split), (slot, split, need - split)]
        else:
            cookies = [(slot, 0, draw(st.sampled_from([need, _round8(1514 + PACKET_SKIP)])))]
        return ("desc", (DESC.pack(size, len(cookies)), cookies), "valid")
    size = draw(st.sampled_from([0, 13, 1515, 9000, 2**32 - 1, draw(u32), draw(st.integers(14, 1514))]))
    ncookies = draw(st.sampled_from([0, 1, 2, 3, 7, 2**32 - 1, draw(u32)]))
    if kind == "bad" and 14 <= size <= 1514 and 1 <= ncookies <= 2:
        size = 0
    cookies = b"".join(
        TRANSPORT_COOKIE.pack(draw(st.sampled_from([0, 1 << 13, draw(u64)])), draw(st.sampled_from([0, 72, 1520, draw(u64)])))
        for _ in range(draw(st.integers(0, 3)))
    )
    return ("desc", DESC.pack(size, ncookies) + cookies, kind)


_mcast = st.tuples(
    st.just("mcast"),
    st.booleans(),
    st.sampled_from(REPLIES),
    _mcast_payloads,
)
_dds = st.tuples(
    st.just("dds"), st.booleans(), st.sampled_from(REPLIES), st.sampled_from([0x10, 0x10, 0x00, 0x20]) | u8,
    st.integers(0, 6) | u8, u32, st.binary(max_size=40),
)


def _cookies_of(client, wanted: list[tuple[int, int, int]]) -> bytes:
    out = b""
    for slot, offset, size in wanted:
        out += TransportCookie(client._slot_cookies[slot] + offset, size).encode()
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.one_of(_descriptor(), _mcast, _dds), min_size=1, max_size=40))
def test_vnet_pair_survives_junk(ops) -> None:
    a, b, client, switch, got_client, got_switch = pair()
    sids = a.session.sid, b.session.sid
    ring = a.session.own_rings[0]
    queued = valid = bad = 0
    for op in ops:
        if op[0] == "desc":
            _, payload, kind = op
            if kind == "valid":
                head, wanted = payload
                payload = head + _cookies_of(client, wanted)
            a.session.submit(ring, payload)
            queued += 1
            valid += kind == "valid"
            bad += kind == "bad"
        elif op[0] == "mcast":
            _, to_switch, stype, body = op
            target = b if to_switch else a
            target.session.receive(DeviceMessage(Tag(MsgType.CTRL, stype, MCAST_INFO, target.session.sid), body).encode())
        else:
            _, to_switch, stype, dds_class, subclass, req_id, body = op
            target = b if to_switch else a
            tag = Tag(MsgType.CTRL, stype, Env.DDS_INFO, target.session.sid)
            target.session.receive(DdsInfo(tag, dds_class, subclass, req_id, body).encode())
        pump(a, b)
    assert a.session.established and b.session.established
    assert (a.session.sid, b.session.sid) == sids  # never reset and renegotiated
    counted = switch.counters["rx_frames"] + switch.counters["rx_errors"] + switch.counters["rx_dropped"]
    assert counted == queued and switch.counters["rx_frames"] >= valid and switch.counters["rx_errors"] >= bad
    assert len(got_switch) == switch.counters["rx_frames"]
    event(f"descriptors: {min(valid, 1)} valid, {min(switch.counters['rx_errors'], 1)} errors (0/1)")
    event(f"multicast groups joined: {min(len(switch.multicast), 1)} (0/1)")
    assert all(mac[0] & 1 for mac in switch.multicast)
    # Good frames still pass, both ways.
    up, down = frame(SWITCH_MAC, CLIENT_MAC, size=100), frame(CLIENT_MAC, SWITCH_MAC, size=1514)
    assert client.send_frame(up) and switch.send_frame(down)
    pump(a, b)
    assert got_switch[-1] == up and got_client[-1] == down
