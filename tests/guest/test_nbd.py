"""The NBD server state machine: handshake, options, requests, garbage (fed bytes, read bytes)."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from backend.guest import nbd

EXPORT = nbd.Export("vdisk0", 1 << 20, 512, 1 << 20)


def option(code: int, data: bytes = b"") -> bytes:
    return nbd.OPTION.pack(nbd.IHAVEOPT, code, len(data)) + data


def info_request(name: bytes = b"", infos: tuple[int, ...] = (3,)) -> bytes:
    return struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos)


def replies(data: bytes) -> list[tuple[int, int, bytes]]:
    out, offset = [], 0
    while offset < len(data):
        magic, opt, kind, length = nbd.OPTION_REPLY.unpack_from(data, offset)
        assert magic == nbd.REPLY_MAGIC
        out.append((opt, kind, data[offset + 20 : offset + 20 + length]))
        offset += 20 + length
    return out


def negotiated() -> nbd.NbdServer:
    server = nbd.NbdServer(EXPORT)
    server.take_output()
    server.receive(struct.pack(">I", 3) + option(nbd.Option.GO, info_request()))
    server.take_output()
    assert isinstance(server.take_events()[0], nbd.Ready)
    return server


def test_greeting_is_fixed_newstyle() -> None:
    server = nbd.NbdServer(EXPORT)
    assert server.take_output() == [nbd.GREETING.pack(nbd.NBDMAGIC, nbd.IHAVEOPT, 3)]


def test_go_reports_size_flags_and_block_sizes_then_transmits() -> None:
    server = nbd.NbdServer(EXPORT)
    server.take_output()
    server.receive(struct.pack(">I", 1))
    server.receive(option(nbd.Option.GO, info_request(b"vdisk0")))
    answer = replies(b"".join(server.take_output()))
    assert answer[0][1] == nbd.Reply.INFO and struct.unpack(">HQH", answer[0][2]) == (0, 1 << 20, EXPORT.flags)
    assert answer[1][1] == nbd.Reply.INFO and struct.unpack(">HIII", answer[1][2]) == (3, 512, 512, 1 << 20)
    assert answer[2][1] == nbd.Reply.ACK
    assert server.take_events() == [nbd.Ready()]


def test_unknown_options_and_exports_are_refused_and_negotiation_goes_on() -> None:
    server = nbd.NbdServer(EXPORT)
    server.take_output()
    server.receive(struct.pack(">I", 1) + option(8) + option(nbd.Option.INFO, info_request(b"other")) + option(nbd.Option.LIST))
    answer = replies(b"".join(server.take_output()))
    assert [kind for _, kind, _ in answer] == [nbd.Reply.ERR_UNSUP, nbd.Reply.ERR_UNKNOWN, nbd.Reply.SERVER, nbd.Reply.ACK]
    assert answer[2][2] == struct.pack(">I", 6) + b"vdisk0"
    assert not server.closed


def test_export_name_enters_transmission_with_the_old_reply() -> None:
    server = nbd.NbdServer(EXPORT)
    server.take_output()
    server.receive(struct.pack(">I", 1) + option(nbd.Option.EXPORT_NAME, b"vdisk0"))
    assert b"".join(server.take_output()) == struct.pack(">QH", 1 << 20, EXPORT.flags) + bytes(124)


def test_requests_arrive_in_pieces_and_replies_carry_handles() -> None:
    server = negotiated()
    write = nbd.REQUEST.pack(nbd.REQUEST_MAGIC, 1, nbd.Command.WRITE, 7, 4096, 512) + b"\xab" * 512
    for i in range(0, len(write), 100):
        server.receive(write[i : i + 100])
    read = nbd.REQUEST.pack(nbd.REQUEST_MAGIC, 0, nbd.Command.READ, 8, 0, 512)
    server.receive(read)
    events = server.take_events()
    assert events == [nbd.Request(7, nbd.Command.WRITE, 1, 4096, 512, b"\xab" * 512), nbd.Request(8, nbd.Command.READ, 0, 0, 512)]
    server.reply(8, 0, b"\1" * 512)
    server.reply(7, nbd.EIO, b"ignored")
    assert b"".join(server.take_output()) == (nbd.SIMPLE_REPLY.pack(nbd.SIMPLE_REPLY_MAGIC, 0, 8) + b"\1" * 512
                                              + nbd.SIMPLE_REPLY.pack(nbd.SIMPLE_REPLY_MAGIC, nbd.EIO, 7))


def test_disc_and_garbage_end_the_session() -> None:
    server = negotiated()
    server.receive(nbd.REQUEST.pack(nbd.REQUEST_MAGIC, 0, nbd.Command.DISC, 1, 0, 0))
    assert server.closed
    server = negotiated()
    server.receive(b"\0" * 28)
    assert server.closed and "magic" in server.take_events()[-1].reason
    server = nbd.NbdServer(EXPORT)
    server.receive(struct.pack(">I", 0))  # not fixed newstyle
    assert server.closed
    server = nbd.NbdServer(EXPORT)
    server.receive(struct.pack(">I", 1) + nbd.OPTION.pack(nbd.IHAVEOPT, 7, 1 << 30))  # absurd option length
    assert server.closed


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_fuzz_handshake_never_raises(chunks: list[bytes]) -> None:
    server = nbd.NbdServer(EXPORT)
    for chunk in [struct.pack(">I", 1)] + chunks:
        server.receive(chunk)
    server.take_output()
    server.take_events()


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 0xFFFF), st.integers(0, 1 << 64 - 1), st.integers(0, 4096)), max_size=5),
       st.binary(max_size=64))
def test_fuzz_transmission_never_raises(requests, tail: bytes) -> None:
    server = negotiated()
    for command, flags, offset, length in requests:
        data = nbd.REQUEST.pack(nbd.REQUEST_MAGIC, flags, command, 1, offset, length)
        server.receive(data + (bytes(length) if command == nbd.Command.WRITE else b""))
    server.receive(tail)
    for event in server.take_events():
        assert isinstance(event, (nbd.Request, nbd.Closed))


@given(st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=4), st.data())
@settings(max_examples=60)
def test_any_split_of_the_stream_gives_the_same_requests(payloads: list[bytes], data) -> None:
    stream = b"".join(nbd.REQUEST.pack(nbd.REQUEST_MAGIC, 0, nbd.Command.WRITE, n, 512 * n, len(p)) + p
                      for n, p in enumerate(payloads))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    server = negotiated()
    for start, end in zip([0, *cuts], [*cuts, len(stream)]):
        server.receive(stream[start:end])
    assert server.take_events() == [nbd.Request(n, nbd.Command.WRITE, 0, 512 * n, len(p), p) for n, p in enumerate(payloads)]
