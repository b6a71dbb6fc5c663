"""The LDC channel state machine, driven by plain function calls."""

from __future__ import annotations

import os

import pytest

from backend.errors import LinkDownError
from backend.ldc import (
    RESET,
    Channel,
    Control,
    LinkReset,
    LinkUp,
    Mode,
    PacketType,
    ProtocolViolation,
    State,
    SubType,
)
from backend.ldc.loopback import deliver, pump
from backend.ldc.packet import Packet, control, decode, encode, version_payload

from .helpers import messages, split, up_pair

MODES = [Mode.UNRELIABLE, Mode.RELIABLE]


def packets(channel: Channel) -> list[Packet]:
    out = split(channel.take_output())
    assert RESET not in out
    return [decode(p, channel.mode) for p in out]


@pytest.mark.parametrize("mode", MODES)
def test_handshake_one_side_opens_exact_packets(mode: Mode) -> None:
    a, b = Channel(mode), Channel(mode)
    a.open()
    (vers,) = packets(a)
    assert (vers.type, vers.stype, vers.control, vers.version()) == (PacketType.CTRL, SubType.INFO, Control.VERS, (1, 0))
    b.receive(encode(vers, mode))
    (ack,) = packets(b)
    assert (ack.stype, ack.control, ack.version()) == (SubType.ACK, Control.VERS, (1, 0))
    assert b.state is State.GOT_VERS
    a.receive(encode(ack, mode))
    (rts,) = packets(a)
    assert (rts.control, rts.env, rts.seqid) == (Control.RTS, mode, 0)
    b.receive(encode(rts, mode))
    (rtr,) = packets(b)
    assert (rtr.control, rtr.env, rtr.seqid) == (Control.RTR, mode, 0)
    a.receive(encode(rtr, mode))
    (rdx,) = packets(a)
    assert (rdx.control, rdx.seqid) == (Control.RDX, 1)
    assert a.is_up and not b.is_up
    b.receive(encode(rdx, mode))
    assert b.is_up
    assert a.take_events() == [LinkUp((1, 0), mode)]
    assert b.take_events() == [LinkUp((1, 0), mode)]


@pytest.mark.parametrize("mode", MODES)
def test_simultaneous_open_comes_up(mode: Mode) -> None:
    a, b = up_pair(mode)
    a.send(b"ping")
    b.send(b"pong")
    pump(a, b)
    assert messages(b) == [b"ping"] and messages(a) == [b"pong"]


def test_version_negotiation_nack_to_lower_major() -> None:
    a = Channel(versions=((2, 3), (1, 0)))
    b = Channel()  # speaks 1.0 only
    a.open()
    b.receive(b"".join(a.take_output()))
    (nack,) = packets(b)
    assert (nack.stype, nack.version()) == (SubType.NACK, (1, 0))
    a.receive(encode(nack, Mode.UNRELIABLE))
    (retry,) = packets(a)
    assert (retry.stype, retry.version()) == (SubType.INFO, (1, 0))
    b.receive(encode(retry, Mode.UNRELIABLE))
    pump(a, b)
    assert a.is_up and b.is_up and a.version == (1, 0)


def test_version_ack_lowers_minor() -> None:
    a = Channel(versions=((1, 5),))
    b = Channel(versions=((1, 2),))
    a.open()
    pump(a, b)
    assert a.version == b.version == (1, 2)


def test_no_common_version_leaves_link_down() -> None:
    a = Channel(versions=((1, 0),))
    b = Channel(versions=((2, 0),))
    a.open()
    pump(a, b)
    assert a.state is State.DOWN and b.state is State.DOWN
    assert any(isinstance(e, LinkReset) and "no common" in e.reason for e in a.take_events())


def test_mode_mismatch_resets() -> None:
    a, b = Channel(Mode.UNRELIABLE), Channel(Mode.RELIABLE)
    a.open()
    deliver(a.take_output(), b)  # VERS
    deliver(b.take_output(), a)  # ACK -> a sends RTS(unreliable)
    raw_rts = a.take_output()
    # Re-encode the RTS as the reliable end would read it (same header bytes).
    b.receive(b"".join(raw_rts))
    assert any(isinstance(e, ProtocolViolation) and "mode" in e.reason for e in b.take_events())
    assert b.take_output()[0] is RESET


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [0, 1, 47, 48, 55, 56, 57, 4095, 65536, 256 * 1024, 1 << 20])
def test_fragmentation_and_reassembly(mode: Mode, size: int) -> None:
    a, b = up_pair(mode)
    message = os.urandom(size)
    a.send(message)
    pump(a, b)
    assert messages(b) == [message]
    assert a.pending_send == 0


@pytest.mark.parametrize("mode", MODES)
def test_fragments_have_start_stop_and_consecutive_seqids(mode: Mode) -> None:
    a, b = up_pair(mode)
    a.send(bytes(range(200)))
    sent = packets(a)
    room = 56 if mode is Mode.UNRELIABLE else 48
    assert [p.data_length for p in sent] == [room] * (200 // room) + [200 % room]
    assert sent[0].env & 0x40 and not sent[0].env & 0x80
    assert sent[-1].env & 0x80 and not sent[-1].env & 0x40
    assert all(not p.env & 0xC0 for p in sent[1:-1])
    assert [p.seqid for p in sent] == list(range(sent[0].seqid, sent[0].seqid + len(sent)))


def test_empty_message_is_one_packet_with_start_and_stop() -> None:
    a, b = up_pair()
    a.send(b"")
    (p,) = packets(a)
    assert p.env == 0xC0


def test_reliable_window_holds_back_and_acks_release() -> None:
    a, b = up_pair(Mode.RELIABLE, window=8, ack_interval=4)
    message = os.urandom(48 * 100)
    a.send(message)
    first = split(a.take_output())
    assert len(first) == 8 and a.pending_send == 48 * 92
    deliver(first, b)
    acks = [decode(p, Mode.RELIABLE) for p in b.take_output()]
    assert all(p.type == PacketType.DATA and p.stype == SubType.ACK for p in acks)
    assert acks[-1].ackid == decode(first[-1], Mode.RELIABLE).seqid
    deliver([encode(p, Mode.RELIABLE) for p in acks], a)
    assert len(split(a.take_output())) == 8
    a2, b2 = up_pair(Mode.RELIABLE, window=8, ack_interval=4)
    a2.send(message)
    pump(a2, b2)
    assert messages(b2) == [message]


def test_reliable_ack_for_unsent_data_is_a_violation() -> None:
    a, b = up_pair(Mode.RELIABLE)
    bogus = Packet(PacketType.DATA, SubType.ACK, 0, 0, a._rcv_nxt + 1, 999)
    a.receive(encode(bogus, Mode.RELIABLE))
    assert any(isinstance(e, ProtocolViolation) and "outstanding" in e.reason for e in a.take_events())


@pytest.mark.parametrize("mode", MODES)
def test_sequence_gap_nacks_drops_partial_and_resets(mode: Mode) -> None:
    a, b = up_pair(mode)
    a.send(os.urandom(300))
    sent = split(a.take_output())
    b.receive(sent[0])
    b.receive(sent[2])  # sent[1] lost
    out = b.take_output()
    assert out[-1] is RESET  # after the NACK; b then waits for a's new VERS
    nack = decode(out[-2], mode)
    assert (nack.type, nack.stype) == (PacketType.DATA, SubType.NACK)
    ackid = nack.ackid if mode is Mode.RELIABLE else int.from_bytes(nack.payload[4:8], "big")
    assert ackid == decode(sent[0], mode).seqid
    events = b.take_events()
    assert isinstance(events[0], ProtocolViolation) and "sequence gap" in events[0].reason
    assert isinstance(events[1], LinkReset) and not events[1].by_peer
    assert messages(b) == []
    # The peer takes the reset and both come back up by themselves.
    deliver(out, a)
    pump(a, b)
    assert a.is_up and b.is_up
    a.send(b"after")
    pump(a, b)
    assert messages(b) == [b"after"]


@pytest.mark.parametrize(
    "env, reason",
    [(0x80 | 5, "without a START"), (0x00 | 5, "without a START")],
)
def test_fragment_without_start(env: int, reason: str) -> None:
    a, b = up_pair()
    b.receive(encode(Packet(PacketType.DATA, SubType.INFO, 0, env, 2, 0, b"hello"), Mode.UNRELIABLE))
    assert any(isinstance(e, ProtocolViolation) and reason in e.reason for e in b.take_events())


def test_start_while_message_open() -> None:
    a, b = up_pair()
    b.receive(encode(Packet(PacketType.DATA, SubType.INFO, 0, 0x40 | 4, 2, 0, b"half"), Mode.UNRELIABLE))
    b.receive(encode(Packet(PacketType.DATA, SubType.INFO, 0, 0xC0 | 4, 3, 0, b"next"), Mode.UNRELIABLE))
    events = b.take_events()
    assert any(isinstance(e, ProtocolViolation) and "still open" in e.reason for e in events)
    assert not [e for e in events if hasattr(e, "data")]


def test_oversized_message_is_refused_both_ways() -> None:
    a, b = up_pair(max_message=1000)
    with pytest.raises(ValueError):
        a.send(bytes(1001))
    big = Channel(max_message=10_000)
    small = Channel(max_message=1000)
    big.open()
    small.open()
    pump(big, small)
    big.send(bytes(5000))
    deliver(big.take_output(), small)
    assert any(isinstance(e, ProtocolViolation) and "max_message" in e.reason for e in small.take_events())


def test_peer_reset_mid_message_drops_partial_and_reconnects() -> None:
    a, b = up_pair()
    a.send(os.urandom(500))
    out = split(a.take_output())
    b.receive(b"".join(out[:3]))
    b.peer_reset("peer vanished")
    assert b.take_events() == [LinkReset("peer vanished", by_peer=True)]
    assert b.state is State.VERS_SENT  # it was opened: it offers a version again
    a.peer_reset()
    pump(a, b)
    assert a.is_up and b.is_up and messages(b) == []


def test_vers_at_any_time_restarts_handshake() -> None:
    a, b = up_pair()
    b.receive(encode(control(SubType.INFO, Control.VERS, payload=version_payload(1, 0)), Mode.UNRELIABLE))
    assert any(isinstance(e, LinkReset) and "restarted" in e.reason for e in b.take_events())
    assert b.state is State.GOT_VERS


def test_send_while_down_raises() -> None:
    with pytest.raises(LinkDownError):
        Channel().send(b"x")


@pytest.mark.parametrize(
    "packet",
    [
        control(SubType.INFO, Control.RTR, env=Mode.UNRELIABLE),  # RTR before RTS
        control(SubType.INFO, Control.RDX, seqid=1),  # RDX before RTR
        control(SubType.ACK, Control.RTS),
    ],
)
def test_out_of_state_handshake_packets_are_dropped_not_fatal(packet: Packet) -> None:
    a, b = Channel(), Channel()
    b.open()
    a.receive(b"".join(b.take_output()))  # b's VERS is on its way
    b.receive(encode(packet, Mode.UNRELIABLE))
    assert b.dropped_packets == 1 and b.take_events() == [] and b.take_output() == []
    pump(a, b)
    assert a.is_up and b.is_up


def test_err_packet_in_handshake_resets() -> None:
    b = Channel()
    b.open()
    b.take_output()
    b.receive(encode(Packet(PacketType.ERR, SubType.INFO), Mode.UNRELIABLE))
    assert any(isinstance(e, ProtocolViolation) and "ERR" in e.reason for e in b.take_events())
    assert b.take_output() == [RESET] and b.state is State.DOWN


def test_unexpected_control_on_up_link_resets() -> None:
    a, b = up_pair()
    b.receive(encode(control(SubType.INFO, Control.RTS, env=1, seqid=b._rcv_nxt + 1), Mode.UNRELIABLE))
    assert any(isinstance(e, ProtocolViolation) and "up link" in e.reason for e in b.take_events())
    assert b.take_output() == [RESET]


def test_stale_data_while_down_is_dropped_and_counted() -> None:
    b = Channel()
    b.receive(encode(Packet(PacketType.DATA, SubType.INFO, 0, 0xC1, 5, 0, b"x"), Mode.UNRELIABLE))
    assert b.dropped_packets == 1 and b.take_output() == [] and b.take_events() == []


def test_partial_packet_bytes_are_a_violation() -> None:
    a, b = up_pair()
    b.receive(bytes(65))
    assert any(isinstance(e, ProtocolViolation) and "whole number" in e.reason for e in b.take_events())


def test_close_tells_the_peer() -> None:
    a, b = up_pair()
    a.close()
    out = a.take_output()
    assert out == [RESET]
    deliver(out, b)
    assert b.take_events() == [LinkReset("peer reset the channel", by_peer=True)]
    assert not a.is_up
