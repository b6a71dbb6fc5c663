"""vnet Large Segment Offload: LSO frames between vnet devices, through a switch to vnets with and
without LSO, and the conversion between LSO frames and GSO frames with a virtio_net_hdr."""

from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.vio.loopback import connect, make_pair, pump
from backend.vswitch import offload
from backend.vswitch.lso import gso_from_lso, lso_frames
from backend.vswitch.offload import OffloadError
from backend.vswitch.switch import Switch
from backend.vswitch.vnet import LSO_CLIENT_BUFFERS, MAX_TSO, VnetDevice
from backend.vswitch.vnet_hdr import VIRTIO_NET_HDR_F_NEEDS_CSUM, VirtioNetHdr
from backend.vswitch.vnet_port import SwitchServer, VnetClient
from tests.vhost.net_packets import gso_header, parse_tcp, tcp_frame

A, B, C = (bytes.fromhex(f"0200000000{n:02x}") for n in (1, 2, 3))
SWITCH_MAC = bytes.fromhex("0200000000ff")
MSS = 1448


def big_tcp(src: bytes, dst: bytes, size: int, *, partial: bool = False, seed: int = 0) -> bytes:
    """One large TCP/IPv4 frame as a sender's stack builds it (complete checksums unless `partial`)."""
    payload = bytes((seed + i * 7) & 0xFF for i in range(size))
    return tcp_frame(src, dst, "10.0.0.1", "10.0.0.2", 40000, 5201, 1000, 1, 0x18, payload, partial=partial)


def test_an_lso_frame_becomes_a_gso_frame_and_back() -> None:
    frame = big_tcp(A, B, 30000)
    gso, hdr = gso_from_lso(frame, MSS)
    assert (hdr.flags, hdr.gso_type, hdr.gso_size, hdr.csum_start, hdr.csum_offset) == (VIRTIO_NET_HDR_F_NEEDS_CSUM, offload.GSO_TCPV4, MSS, 34, 16)
    assert gso == big_tcp(A, B, 30000, partial=True)  # the checksum field holds the pseudo-header sum
    assert lso_frames(gso, hdr, MAX_TSO) == [(frame, MSS)]  # complete again for the ring
    pieces = lso_frames(gso, hdr, 16384)  # too large for the peer's maxlen: segmented in software
    assert [mss for _, mss in pieces] == [0] * 21 and all(parse_tcp(p)["ok"] for p, _ in pieces)
    assert b"".join(parse_tcp(p)["payload"] for p, _ in pieces) == parse_tcp(frame)["payload"]


def test_a_broken_ip_header_checksum_is_filled_in() -> None:
    frame = bytearray(big_tcp(A, B, 4000))
    frame[24:26] = b"\xde\xad"  # HCK_IPV4_HDRCKSUM: the sender left it to the receiver
    gso, hdr = gso_from_lso(bytes(frame), MSS)
    assert all(parse_tcp(p)["ok"] for p in offload.finish(gso, hdr))


@pytest.mark.parametrize("frame", [
    bytes(60),  # not IP
    tcp_frame(A, B, "fd00::1", "fd00::2", 1, 2, 0, 0, 0x10, bytes(3000)),  # IPv6 in an IPv4 LSO frame
    big_tcp(A, B, 3000)[:-10],  # IPv4 length longer than the frame
])
def test_frames_that_are_no_lso_frames_are_refused(frame) -> None:
    with pytest.raises(OffloadError):
        gso_from_lso(frame, MSS)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=200), st.integers(0, 0xFFFF))
def test_gso_from_lso_refuses_garbage_cleanly(tail, mss) -> None:
    frame = big_tcp(A, B, 100)[: len(tail) % 80] + tail
    try:
        gso, hdr = gso_from_lso(frame, mss)
    except OffloadError:
        return
    assert len(gso) == len(frame) and hdr.gso_size == mss


def lso_pair(client_lso: int, switch_lso: int):
    got = []
    client = VnetDevice(A, switch_side=False, lso_maxlen=client_lso, tx_buffers=LSO_CLIENT_BUFFERS)
    switch = VnetDevice(B, switch_side=True, lso_maxlen=switch_lso,
                        on_frames=lambda batch: got.extend((batch.frame(i), batch.mss[i]) for i in range(batch.count) if batch.lengths[i] >= 0))
    a, b = make_pair(client, switch)
    connect(a, b)
    return a, b, client, switch, got


def test_lso_frames_cross_the_ring_with_their_mss() -> None:
    a, b, client, switch, got = lso_pair(MAX_TSO, MAX_TSO)
    frames = [big_tcp(A, B, n, seed=n) for n in (100, 20000, 65535 - 54)]
    for frame in frames:
        assert client.send_frame(frame, MSS)
    assert client.send_frame(frames[0])  # a plain frame beside them
    pump(a, b)
    assert got == [(f, MSS) for f in frames] + [(frames[0], 0)]


def test_lso_frames_we_send_fit_our_tx_buffers() -> None:
    """The switch side's buffers (1.5 MiB for 256 entries) bound what it sends, not what it takes."""
    a, b, client, switch, got = lso_pair(MAX_TSO, MAX_TSO)
    assert client.tx_lso_max == MAX_TSO and switch.tx_lso_max == 6144 - 6
    assert switch.send_frame(big_tcp(B, A, 6000), MSS) and not switch.send_frame(big_tcp(B, A, 7000), MSS)


def test_without_lso_large_frames_are_refused_and_the_mss_is_not_sent() -> None:
    a, b, client, switch, got = lso_pair(MAX_TSO, 0)
    assert client.tsolen == switch.tsolen == 0
    assert not client.send_frame(big_tcp(A, B, 20000), MSS)
    assert client.send_frame(big_tcp(A, B, 1000), MSS)  # fits the MTU: goes, as a plain frame
    pump(a, b)
    assert got == [(big_tcp(A, B, 1000), 0)]


def test_a_lower_maxlen_bounds_the_frames() -> None:
    a, b, client, switch, got = lso_pair(MAX_TSO, 16384)
    assert client.tsolen == 16384
    assert not client.send_frame(big_tcp(A, B, 20000), MSS)
    assert client.send_frame(big_tcp(A, B, 16000), MSS)
    pump(a, b)
    assert got == [(big_tcp(A, B, 16000), MSS)]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_through_the_switch_lso_vnets_get_one_frame_and_plain_vnets_segments(tmp_path) -> None:
    """A GSO frame from an LSO vnet goes whole (one descriptor) to another LSO vnet and in
    finished segments to a vnet without LSO; a plain vnet's frames reach the LSO vnet as they are."""

    async def main() -> None:
        switch = Switch("sw0")
        path = str(tmp_path / "vsw.sock")
        server = SwitchServer(switch, path, SWITCH_MAC)
        await server.start()
        got_b: list[tuple[bytes, VirtioNetHdr | None]] = []
        arrived = asyncio.Event()

        def on_b(frame: bytes, hdr: VirtioNetHdr | None = None) -> None:
            got_b.append((frame, hdr))
            arrived.set()

        a = await VnetClient.connect(path, A, lso_maxlen=MAX_TSO)
        b = await VnetClient.connect(path, B, lso_maxlen=MAX_TSO, on_frame=on_b)
        c = await VnetClient.connect(path, C)  # no LSO
        for client in (a, b, c):
            while not client.device.is_up:
                await asyncio.sleep(0.01)
        assert a.device.tsolen == b.device.tsolen == MAX_TSO and c.device.tsolen == 0
        for client in (a, b, c):  # each announces itself so the switch learns where it is
            client.send(big_tcp(client.mac, bytes.fromhex("ffffffffffff"), 10))
            await asyncio.sleep(0.1)
        a.frames.clear()
        c.frames.clear()
        got_b.clear()
        arrived.clear()

        partial = big_tcp(A, B, 6000, partial=True, seed=3)
        assert a.send(partial, hdr=gso_header(partial, MSS))
        await asyncio.wait_for(arrived.wait(), 5)
        assert len(got_b) == 1
        frame, hdr = got_b[0]
        assert hdr is not None and hdr.gso_size == MSS and hdr.gso_type == offload.GSO_TCPV4
        assert offload.finish(frame, hdr) == offload.segment(partial, gso_header(partial, MSS))

        to_c = big_tcp(A, C, 6000, partial=True, seed=5)
        assert a.send(to_c, hdr=gso_header(to_c, MSS))
        segments = []
        while len(segments) < 5:
            segments += await c.receive_many()
        assert segments == offload.segment(to_c, gso_header(to_c, MSS))
        assert all(parse_tcp(s)["ok"] and len(s) <= 1514 for s in segments)
        assert a.device.counters["tx_frames"] == 3  # its announcement, then one descriptor per GSO frame

        small = big_tcp(C, B, 500, seed=9)
        arrived.clear()
        c.send(small)
        await asyncio.wait_for(arrived.wait(), 5)
        assert got_b[-1] == (small, None)
        for client in (a, b, c):
            client.close()
        server.close()

    run(main())


def test_lso_frame_with_a_bad_header_is_counted_not_switched(tmp_path) -> None:
    async def main() -> None:
        switch = Switch("sw0")
        path = str(tmp_path / "vsw.sock")
        server = SwitchServer(switch, path, SWITCH_MAC)
        await server.start()
        a = await VnetClient.connect(path, A, lso_maxlen=MAX_TSO)
        while not a.device.is_up:
            await asyncio.sleep(0.01)
        assert a.device.send_frame(os.urandom(6000), MSS)  # not a TCP/IPv4 frame
        a.endpoint.pump_soon()
        port = server.ports[0]
        for _ in range(200):
            if port.device.counters["rx_errors"]:
                break
            await asyncio.sleep(0.01)
        assert port.device.counters["rx_errors"] == 1 and switch.counters(port).rx_frames == 0
        a.close()
        server.close()

    run(main())
