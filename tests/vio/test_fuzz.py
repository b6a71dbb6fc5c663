"""Hypothesis: random VIO messages against both roles, and the message decoder."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.ldc.memory import TransportCookie
from backend.vio.constants import Env, MsgType, SubType
from backend.vio.loopback import connect, make_pair, pump
from backend.vio.messages import (
    AttrInfo, DdsInfo, DescData, DringData, DringReg, DringUnreg, MessageError, PktData, Rdx, Tag, VerInfo, decode,
)

from .devices import Client, Peer, Server

u8, u16, u32, u64 = (st.integers(0, 2**n - 1) for n in (8, 16, 32, 64))
small = st.integers(0, 20)


@st.composite
def messages(draw, sid: int):
    use_sid = draw(st.sampled_from([sid, sid, sid, draw(u32)]))
    stype = draw(st.sampled_from([SubType.INFO, SubType.ACK, SubType.NACK, draw(u8)]))
    kind = draw(st.sampled_from(["ver", "attr", "reg", "unreg", "rdx", "data", "desc", "dds", "pkt", "raw"]))
    if kind == "raw":
        return draw(st.binary(max_size=120))
    env = {"ver": Env.VER_INFO, "attr": Env.ATTR_INFO, "reg": Env.DRING_REG, "unreg": Env.DRING_UNREG, "rdx": Env.RDX,
           "data": Env.DRING_DATA, "desc": Env.DESC_DATA, "dds": Env.DDS_INFO, "pkt": Env.PKT_DATA}[kind]
    mtype = MsgType.DATA if kind in ("data", "desc", "pkt") else MsgType.CTRL
    tag = Tag(mtype, stype, env, use_sid)
    if kind == "ver":
        return VerInfo(tag, draw(small), draw(small), draw(st.integers(0, 6))).encode()
    if kind == "attr":
        return AttrInfo(tag, draw(st.binary(min_size=48, max_size=48))).encode()
    if kind == "reg":
        cookies = tuple(TransportCookie(draw(u64), draw(st.integers(0, 1 << 20))) for _ in range(draw(st.integers(0, 3))))
        return DringReg(tag, draw(u64), draw(st.integers(0, 70000)), draw(st.integers(0, 200)), draw(u16), cookies).encode()
    if kind == "unreg":
        return DringUnreg(tag, draw(small)).encode()
    if kind == "rdx":
        return Rdx(tag).encode()
    if kind == "data":
        end = draw(st.sampled_from([0xFFFFFFFF, draw(small)]))
        return DringData(tag, draw(small), draw(small), draw(small), end, draw(u8)).encode()
    if kind == "desc":
        return DescData(tag, draw(small), draw(small), draw(st.binary(max_size=64))).encode()
    if kind == "dds":
        return DdsInfo(tag, draw(u8), draw(u8), draw(small), draw(st.binary(max_size=40))).encode()
    return PktData(tag, draw(small), draw(st.binary(max_size=100))).encode()


@given(st.binary(max_size=200))
def test_decoder_raises_only_message_errors(data: bytes) -> None:
    try:
        message = decode(data)
    except MessageError:
        return
    assert message.tag.stype in (1, 2, 4)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.data(), st.sampled_from(["client", "server", "net-initiator", "net-responder"]), st.booleans())
def test_random_messages_never_break_a_session(data, role: str, established: bool) -> None:
    devices = {
        "client": (Client, Server), "server": (Client, Server),
        "net-initiator": (lambda: Peer(True), lambda: Peer(False)), "net-responder": (lambda: Peer(True), lambda: Peer(False)),
    }[role]
    a, b = make_pair(devices[0](), devices[1]())
    target = a if role in ("client", "net-initiator") else b
    if established:
        connect(a, b)
        if target.session.own_rings and target.session.own_rings[0].ident is not None:
            target.session.submit(target.session.own_rings[0], b"in flight")
    else:
        target.session.link_up()
    target.session.take_output()
    sid = target.session.sid or 0
    for raw in data.draw(st.lists(messages(sid), max_size=25)):
        target.session.receive(raw)  # must never raise
        target.session.take_output()
        target.session.take_events()
    # Whatever state the storm left, a fresh start always comes up again.
    a.session.link_down()
    b.session.link_down()
    a.channel.close()
    b.channel.close()
    a.channel.take_output(), b.channel.take_output()
    a.channel.take_events(), b.channel.take_events()
    connect(a, b)
    pump(a, b)
    assert a.session.established and b.session.established
