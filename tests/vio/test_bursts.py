"""A burst of descriptors: one kick, an ACK asked for on every Nth entry and the last, each such entry ACKed."""

from __future__ import annotations

import pytest

from backend.vio.constants import ACK_ENABLE, END_OPEN, DescState, DringOption, ProcState, SubType
from backend.vio.device import RingSpec
from backend.vio.dring import RingError
from backend.vio.loopback import connect, make_pair
from backend.vio.messages import decode

from .devices import Peer


def _pair(ring_size: int = 32):
    x, y = Peer(initiator=True, open_ended=True), Peer(initiator=False)
    x.spec = RingSpec(ring_size, 64, DringOption.TX, ack_each=False, open_ended=True)
    a, b = make_pair(x, y)
    connect(a, b)
    return a, b, x


def test_one_kick_and_acks_on_every_nth_and_the_last() -> None:
    a, b, x = _pair()
    ring = a.session.own_rings[0]
    indices = a.session.submit_many(ring, [b"req%d" % n for n in range(19)], ack_every=8)
    assert indices == list(range(19))
    assert [ring.wants_ack(i) for i in indices] == [i in (7, 15, 18) for i in indices]
    assert ring.states(0, 19) == bytes((DescState.READY,)) * 19
    (kick,) = a.session.take_output()
    assert (decode(kick).start_idx, decode(kick).end_idx) == (0, END_OPEN)
    b.session.receive(kick)
    replies = [decode(m) for m in b.session.take_output()]
    assert [(r.tag.stype, r.end_idx, r.state) for r in replies] == [
        (SubType.ACK, 7, ProcState.ACTIVE), (SubType.ACK, 15, ProcState.ACTIVE),
        (SubType.ACK, 18, ProcState.ACTIVE), (SubType.ACK, 18, ProcState.STOPPED),
    ]
    for reply in replies:
        a.session.receive(reply.encode())
    assert [d[1] for d in x.done] == list(range(19)) and ring.pending == 0


def test_a_burst_wraps_around_the_ring() -> None:
    a, b, x = _pair(ring_size=8)
    ring = a.session.own_rings[0]
    for _ in range(2):
        a.session.submit_many(ring, [b"x"] * 5, ack_every=8)
        b.session.receive(a.session.take_output()[0])
        for reply in b.session.take_output():
            a.session.receive(reply)
    assert [d[1] for d in x.done] == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]
    assert ring.memory.byte(4 * ring.size + 1) & ACK_ENABLE  # the last of the first burst asked


def test_a_burst_larger_than_the_free_entries_is_refused_whole() -> None:
    a, _, _ = _pair(ring_size=8)
    ring = a.session.own_rings[0]
    with pytest.raises(RingError):
        a.session.submit_many(ring, [b"x"] * 8, ack_every=8)  # one entry always stays free
    assert ring.pending == 0 and a.session.take_output() == []
    assert a.session.submit_many(ring, [], ack_every=8) == []
