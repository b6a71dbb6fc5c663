"""Software offload completion (backend/vswitch/offload.py): examples and hypothesis fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.vswitch import offload
from backend.vswitch.offload import GSO_ECN, OffloadError, Offloads
from backend.vswitch.vnet_hdr import VIRTIO_NET_HDR_F_NEEDS_CSUM, VirtioNetHdr

from .net_packets import TCP_ACK, TCP_FIN, TCP_PSH, gso_header, parse_tcp, tcp_frame

A, B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
TCP_CWR = 0x80


def test_checksum_completion_matches_a_finished_frame() -> None:
    payload = bytes(range(256)) * 3 + b"x"  # odd length
    finished = tcp_frame(A, B, "10.0.0.1", "10.0.0.2", 1000, 80, 5, 6, TCP_ACK, payload)
    partial = tcp_frame(A, B, "10.0.0.1", "10.0.0.2", 1000, 80, 5, 6, TCP_ACK, payload, partial=True)
    assert partial != finished
    hdr = VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start=34, csum_offset=16)
    assert offload.complete_checksum(partial, hdr) == finished
    assert offload.finish(partial, hdr) == [finished]


def test_a_64k_tso_frame_becomes_mss_sized_segments_with_their_own_headers() -> None:
    payload = bytes(i % 251 for i in range(65000))
    frame = tcp_frame(A, B, "10.0.0.1", "10.0.0.2", 1000, 80, 0xFFFFF000, 9, TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR, payload, partial=True, ip_id=0xFFFE)
    segments = offload.finish(frame, gso_header(frame, 1460))
    assert len(segments) == 45
    parsed = [parse_tcp(s) for s in segments]
    assert all(p["ok"] for p in parsed)
    assert b"".join(p["payload"] for p in parsed) == payload
    assert [p["seq"] for p in parsed[:3]] == [0xFFFFF000, (0xFFFFF000 + 1460) & 0xFFFFFFFF, (0xFFFFF000 + 2920) & 0xFFFFFFFF]
    assert [p["ip_id"] for p in parsed[:3]] == [0xFFFE, 0xFFFF, 0]
    assert parsed[0]["flags"] == TCP_ACK | TCP_CWR  # CWR first only, FIN/PSH last only
    assert parsed[1]["flags"] == TCP_ACK
    assert parsed[-1]["flags"] == TCP_ACK | TCP_PSH | TCP_FIN
    assert max(len(s) for s in segments) == 14 + 20 + 20 + 1460


def test_ipv6_and_vlan_tagged_frames_segment_too() -> None:
    payload = bytes(5000)
    frame = tcp_frame(A, B, "fd00::1", "fd00::2", 1, 2, 100, 0, TCP_ACK, payload, partial=True, vlan=5)
    parsed = [parse_tcp(s) for s in offload.segment(frame, gso_header(frame, 1000))]
    assert len(parsed) == 5 and all(p["ok"] for p in parsed) and b"".join(p["payload"] for p in parsed) == payload


@pytest.mark.parametrize("bad", [
    VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start=34, csum_offset=1),  # odd offset
    VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start=60, csum_offset=16),  # past the end
    VirtioNetHdr(0, offload.GSO_TCPV6, gso_size=100),  # v6 GSO on a v4 frame
    VirtioNetHdr(0, offload.GSO_TCPV4, gso_size=0),
    VirtioNetHdr(0, offload.GSO_UDP, gso_size=100),
    VirtioNetHdr(0, offload.GSO_TCPV4, gso_size=1),  # too many segments
])
def test_headers_that_do_not_fit_the_frame_are_refused(bad: VirtioNetHdr) -> None:
    frame = tcp_frame(A, B, "10.0.0.1", "10.0.0.2", 1, 2, 0, 0, TCP_ACK, bytes(2000), partial=True)
    with pytest.raises(OffloadError):
        offload.check(frame[:70] if bad.csum_start == 60 else frame, bad)
        offload.finish(frame[:70] if bad.csum_start == 60 else frame, bad)


def test_needed_offloads() -> None:
    assert offload.needed(VirtioNetHdr()) == Offloads.NONE
    assert offload.needed(VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM)) == Offloads.CSUM
    assert offload.needed(VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, offload.GSO_TCPV6 | GSO_ECN)) == Offloads.CSUM | Offloads.TSO6 | Offloads.ECN


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    v6=st.booleans(),
    vlan=st.one_of(st.none(), st.integers(1, 4094)),
    payload=st.binary(min_size=1, max_size=9000),
    mss=st.integers(64, 3000),
    seq=st.integers(0, 2**32 - 1),
    flags=st.sampled_from([TCP_ACK, TCP_ACK | TCP_PSH, TCP_ACK | TCP_FIN | TCP_PSH | TCP_CWR]),
    options=st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8)]),
)
def test_segments_reassemble_to_the_payload_and_verify(v6, vlan, payload, mss, seq, flags, options) -> None:
    src, dst = ("fd00::1", "fd00::2") if v6 else ("192.0.2.1", "192.0.2.2")
    frame = tcp_frame(A, B, src, dst, 4000, 5000, seq, 1, flags, payload, options=options, vlan=vlan, partial=True)
    segments = offload.finish(frame, gso_header(frame, mss))
    parsed = [parse_tcp(s) for s in segments]
    assert len(segments) == -(-len(payload) // mss)
    assert all(p["ok"] and len(p["payload"]) <= mss and p["options"] == options for p in parsed)
    assert b"".join(p["payload"] for p in parsed) == payload
    assert all(p["seq"] == (seq + i * mss) & 0xFFFFFFFF for i, p in enumerate(parsed))
    assert parsed[-1]["flags"] & (TCP_FIN | TCP_PSH) == flags & (TCP_FIN | TCP_PSH)
    assert offload.first_segment(frame, gso_header(frame, mss)) == segments[0]


@settings(max_examples=400, deadline=None)
@given(
    frame=st.binary(max_size=200),
    flags=st.integers(0, 255), gso_type=st.integers(0, 255), hdr_len=st.integers(0, 0xFFFF),
    gso_size=st.integers(0, 0xFFFF), csum_start=st.integers(0, 0xFFFF), csum_offset=st.integers(0, 0xFFFF),
)
def test_garbage_is_refused_with_offload_error_only(frame, flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) -> None:
    hdr = VirtioNetHdr(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)
    try:
        offload.check(frame, hdr)
        out = offload.finish(frame, hdr)
    except OffloadError:
        return
    assert all(isinstance(piece, bytes) for piece in out)


@settings(max_examples=200, deadline=None)
@given(prefix=st.binary(min_size=54, max_size=54), tail=st.binary(max_size=3000), gso_size=st.integers(0, 2000),
       gso_type=st.sampled_from([offload.GSO_TCPV4, offload.GSO_TCPV6, offload.GSO_TCPV4 | GSO_ECN]))
def test_mangled_tcp_headers_never_crash_the_segmenter(prefix, tail, gso_size, gso_type) -> None:
    base = tcp_frame(A, B, "10.0.0.1", "10.0.0.2", 1, 2, 0, 0, TCP_ACK, tail, partial=True)
    frame = bytes(a ^ b for a, b in zip(base[:54], prefix)) + base[54:]
    try:
        pieces = offload.segment(frame, VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, 54, gso_size, 34, 16))
    except OffloadError:
        return
    assert sum(len(p) for p in pieces) >= len(frame) - 54
