"""Hypothesis against the decoder, the state machine and the transport records."""

from __future__ import annotations

import gc
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.errors import BackendError
from backend.ldc import Channel, MessageReceived, Mode, PacketError, ProtocolViolation, decode, encode, records
from backend.ldc.loopback import deliver, pump
from backend.ldc.memory import CookieError, MapTable, PeerMemory, Segment, TransportCookie

from .helpers import messages, split, up_pair

modes = st.sampled_from([Mode.RAW, Mode.UNRELIABLE, Mode.RELIABLE])
packet_bytes = st.binary(min_size=64, max_size=64)


@given(st.binary(max_size=200), modes)
def test_decoder_never_raises_anything_but_packet_error(data: bytes, mode: Mode) -> None:
    try:
        packet = decode(data, mode)
    except PacketError:
        return
    assert len(data) == 64
    # What decodes re-encodes to the same bytes, except the reliable pad word.
    again = encode(packet, mode)
    if not (mode is Mode.RELIABLE and packet.type == 2):
        assert again == data
    else:
        assert again[:8] == data[:8] and again[12:] == data[12:]


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200)
@given(st.lists(packet_bytes, max_size=30), st.sampled_from([Mode.UNRELIABLE, Mode.RELIABLE]), st.booleans())
def test_state_machine_survives_any_packets(packets: list[bytes], mode: Mode, start_up: bool) -> None:
    if start_up:
        a, b = up_pair(mode)
    else:
        a, b = Channel(mode), Channel(mode)
        b.open()
    for packet in packets:
        b.receive(packet)  # must never raise
        b.take_events()
        b.take_output()
    # However the garbage left it, the two ends can always get back up and talk.
    b.peer_reset()
    a.peer_reset()
    a.open()
    b.open()
    pump(a, b)
    assert a.is_up and b.is_up
    a.send(b"after the storm")
    pump(a, b)
    assert messages(b)[-1:] == [b"after the storm"]


@settings(max_examples=150)
@given(
    st.lists(
        st.tuples(st.sampled_from(["send", "drop", "reset_a", "reset_b", "dup", "vers_b"]), st.integers(0, 3000)),
        max_size=12,
    ),
    st.sampled_from([Mode.UNRELIABLE, Mode.RELIABLE]),
)
def test_adversarial_link_always_converges(actions: list[tuple[str, int]], mode: Mode) -> None:
    """Lost and duplicated packets, resets and restarts: the link comes back, data flows."""
    a, b = up_pair(mode, window=64, ack_interval=16)
    for action, size in actions:
        if action == "send" and a.is_up:
            a.send(os.urandom(size))
        elif action == "reset_a":
            a.close()
            a.open()
        elif action == "reset_b":
            b.peer_reset()
        elif action == "vers_b":
            b.open()
        out = split(a.take_output())
        if action == "drop" and out:
            out = out[: len(out) // 2] + out[len(out) // 2 + 1 :]
        if action == "dup" and out:
            out = out + out[-1:]
        deliver(out, b)
        deliver(b.take_output(), a)
    pump(a, b)
    if not (a.is_up and b.is_up):
        # A lost handshake packet stalls the link: a fresh reset always recovers it.
        a.close()
        a.open()
        pump(a, b)
    assert a.is_up and b.is_up
    b.take_events()
    a.send(b"final")
    pump(a, b)
    events = b.take_events()
    received = [e.data for e in events if isinstance(e, MessageReceived)]
    if received != [b"final"]:
        # A dropped handshake packet is only noticed when data flows: the loss
        # must be detected (never silent) and the link must recover.
        assert received == [] and any(isinstance(e, ProtocolViolation) for e in events)
        pump(a, b)
        a.send(b"final")
        pump(a, b)
        assert messages(b) == [b"final"]


@given(st.binary(max_size=100), st.integers(0, 2))
def test_record_decoder_only_raises_record_errors(data: bytes, nfds: int) -> None:
    try:
        records.decode(data, list(range(100, 100 + nfds)))
    except records.RecordError:
        pass


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)), max_size=4), st.integers(0, 2**20), st.integers(0, 20000))
def test_cookie_resolution_never_escapes(cookies: list[tuple[int, int]], offset: int, length: int) -> None:
    table_buffer = bytearray(64 * 8)
    table = MapTable(table_buffer)
    segment = Segment(1, bytearray(16 * 8192))
    table.add_segment(segment)
    table.export(segment, 8192, 3 * 8192, 0x7F0)
    peer = PeerMemory(table_buffer, {1: segment.view})
    try:
        views = peer.resolve([TransportCookie(a, s) for a, s in cookies], offset, length, 0x200)
    except (CookieError, BackendError):
        return
    assert sum(len(v) for v in views) == length
    for view in views:  # every byte reached lies in the exported pages
        assert view.obj is segment.view.obj


record_kinds = st.sampled_from([1, 2, 3, 4, 0, 9, 255])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(record_kinds, st.integers(0, 2**32 - 1), st.binary(max_size=300), st.sampled_from(["none", "memfd", "pipe", "two"])),
        min_size=1,
        max_size=8,
    ),
    st.integers(0, 1 << 16),
)
def test_endpoint_survives_hostile_records(hostile: list, memfd_size: int) -> None:
    """Whatever records a hostile peer sends, nothing escapes to the event loop and no fd leaks."""
    import array
    import asyncio
    import socket

    from backend.ldc.aio import LdcEndpoint

    async def main() -> list:
        loop = asyncio.get_running_loop()
        escaped: list = []
        loop.set_exception_handler(lambda _loop, context: escaped.append(context))
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        endpoint = LdcEndpoint(right, Channel(Mode.UNRELIABLE))
        endpoint.channel.open()
        for kind, value, body, fds_kind in hostile:
            fds: list[int] = []
            if fds_kind in ("memfd", "two"):
                fd = os.memfd_create("hostile")
                os.ftruncate(fd, memfd_size)
                fds.append(fd)
            if fds_kind in ("pipe", "two"):
                fds.extend(os.pipe())
            record = records.RECORD_HEADER.pack(kind, value) + body
            try:
                left.sendmsg([record], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else [])
            finally:
                for fd in fds:
                    os.close(fd)
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        endpoint.close()
        left.close()
        return escaped

    gc.collect()
    before = sorted(os.listdir("/proc/self/fd"))
    assert asyncio.run(main()) == []
    gc.collect()  # an mmap holds a duplicate of its fd until the mapping itself goes
    after = sorted(os.listdir("/proc/self/fd"))
    assert after == before, {fd: _describe(fd) for fd in set(after) - set(before)}


def _describe(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"
