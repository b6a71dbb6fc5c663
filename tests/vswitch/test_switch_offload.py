"""The engine's offload seam: an unfinished frame is switched once, then sent whole or finished per port."""

from __future__ import annotations

import pytest

from backend.vswitch import offload
from backend.vswitch.frames import parse, tag
from backend.vswitch.port import Offloads, PortConfig
from backend.vswitch.switch import TX_OVERSIZE, Switch
from backend.vswitch.vnet_hdr import VIRTIO_NET_HDR_F_NEEDS_CSUM, VirtioNetHdr
from tests.vhost.net_packets import gso_header, parse_tcp, tcp_frame

A, B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
PAYLOAD = bytes(i % 251 for i in range(10000))


class Nic:
    """A port that keeps what the switch sends it, with the header when it gets one."""

    def __init__(self, name: str, *, offloads: Offloads = Offloads.NONE, tagged: bool = False, mtu: int = 1500) -> None:
        self.config = PortConfig(name, mtu=mtu, tagged=tagged, offloads=offloads)
        self.sent: list[tuple[bytes, VirtioNetHdr | None]] = []

    def transmit(self, frame: bytes, hdr: VirtioNetHdr | None = None) -> None:
        self.sent.append((frame, hdr))


@pytest.fixture
def ports():
    switch = Switch("sw")
    guest, whole, plain, trunk = Nic("guest"), Nic("whole", offloads=offload.ALL), Nic("plain"), Nic("trunk", offloads=offload.ALL, tagged=True)
    trunk.config.pvid, trunk.config.vlans = 9, frozenset({1})  # VLAN 1 leaves the trunk tagged
    for port in (guest, whole, plain, trunk):
        switch.attach(port)
    return switch, guest, whole, plain, trunk


def test_a_flooded_tso_frame_goes_whole_to_offload_ports_and_in_segments_to_the_others(ports) -> None:
    switch, guest, whole, plain, trunk = ports
    frame = tcp_frame(A, B, "10.0.0.1", "10.0.0.2", 1, 2, 100, 1, 0x10, PAYLOAD, partial=True)
    hdr = gso_header(frame, 1460)
    switch.receive(guest, frame, 0.0, hdr)

    assert whole.sent == [(frame, hdr)]
    segments = [f for f, h in plain.sent]
    assert len(segments) == 7 and all(h is None for _, h in plain.sent)
    assert all(parse_tcp(s)["ok"] for s in segments) and b"".join(parse_tcp(s)["payload"] for s in segments) == PAYLOAD
    (tagged, moved), = trunk.sent
    assert tagged == tag(frame, 1, 0) and (moved.csum_start, moved.hdr_len) == (hdr.csum_start + 4, hdr.hdr_len + 4)
    assert [parse_tcp(s)["payload"] for s in offload.finish(tagged, moved)] == [parse_tcp(s)["payload"] for s in segments]

    first = offload.first_segment(frame, hdr)
    rx = switch.counters(guest)
    assert (rx.rx_frames, rx.rx_bytes, rx.forwarded) == (1, len(first), 1)  # judged once, by its first segment
    assert switch.counters(whole).tx_frames == 1 and switch.counters(whole).tx_bytes == len(first)
    assert switch.counters(plain).tx_frames == 7 and switch.counters(plain).tx_bytes == sum(map(len, segments))


def test_a_tagged_unfinished_frame_moves_its_header_offsets_with_the_tag() -> None:
    switch = Switch("sw")
    trunk_in = Nic("in", tagged=True)
    trunk_in.config.vlans = frozenset({5})
    access = Nic("access", offloads=offload.ALL)
    access.config.pvid = 5
    switch.attach(trunk_in)
    switch.attach(access)
    frame = tcp_frame(A, B, "10.0.0.1", "10.0.0.2", 1, 2, 100, 1, 0x10, PAYLOAD[:3000], partial=True)
    hdr = gso_header(frame, 1000)
    tagged_hdr = VirtioNetHdr(hdr.flags, hdr.gso_type, hdr.hdr_len + 4, hdr.gso_size, hdr.csum_start + 4, hdr.csum_offset)
    switch.receive(trunk_in, tag(frame, 5, 0), 0.0, tagged_hdr)
    (out, moved), = access.sent
    assert parse(out).vlan is None and (out, moved) == (frame, hdr)
    assert all(parse_tcp(s)["ok"] for s in offload.finish(out, moved))


def test_the_mtu_rule_judges_the_segment_size(ports) -> None:
    switch, guest, whole, _plain, _trunk = ports
    guest.config.mtu = whole.config.mtu = 1000
    frame = tcp_frame(A, B, "10.0.0.1", "10.0.0.2", 1, 2, 100, 1, 0x10, PAYLOAD, partial=True)
    switch.receive(guest, frame, 0.0, gso_header(frame, 900))  # 954-byte segments fit; 1500-byte ones would not
    assert len(whole.sent) == 1 and switch.counters(guest).forwarded == 1
    switch.receive(guest, frame, 0.0, gso_header(frame, 1460))
    assert switch.counters(guest).drops["oversize"] == 1 and len(whole.sent) == 1
    assert switch.counters(whole).drops[TX_OVERSIZE] == 0


def test_a_header_that_does_not_fit_is_refused_before_anything_is_counted(ports) -> None:
    switch, guest, whole, plain, _ = ports
    frame = tcp_frame(A, B, "10.0.0.1", "10.0.0.2", 1, 2, 100, 1, 0x10, PAYLOAD[:100], partial=True)
    with pytest.raises(offload.OffloadError):
        switch.receive(guest, frame, 0.0, VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start=len(frame), csum_offset=16))
    assert switch.counters(guest).rx_frames == 0 and not whole.sent and not plain.sent
