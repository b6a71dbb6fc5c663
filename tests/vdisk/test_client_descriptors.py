"""The vdc's per-request descriptor path (`queue_transfer`) puts on the ring
exactly what `DiskRequest.encode` defines, and hands completions to the right
callback with the server's status."""

from __future__ import annotations

import errno

from hypothesis import given, settings
from hypothesis import strategies as st

from backend.ldc.memory import TransportCookie
from backend.vdisk.client import VdcDevice
from backend.vdisk.protocol import DESC_HEAD, DiskRequest

u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, (1 << 64) - 1)


@settings(max_examples=300)
@given(op=u8, slice_=u8, offset=u64, size=u64, addr=u64, length=u32)
def test_queue_transfer_encodes_like_a_disk_request(op, slice_, offset, size, addr, length) -> None:
    device = VdcDevice()
    device.queue_transfer(op, slice_, offset, size, addr, length, lambda code, request: None)
    cookies = [TransportCookie(addr, length)] if length else []
    (payload,) = device._queued_payloads
    (req_id, _, request), = device._queued
    assert request is None
    assert payload == DiskRequest(req_id, op, slice_, 0, offset, size, cookies).encode()


@settings(max_examples=200)
@given(statuses=st.lists(st.sampled_from([0, errno.EIO, errno.EINVAL, 131, 48]), min_size=1, max_size=8),
       wrong=st.sets(st.integers(0, 7)))
def test_completions_reach_their_callbacks_with_status_and_req_id_checked(statuses, wrong) -> None:
    """What the server wrote back (req_id, status) decides each callback's errno;
    a req_id that is not the request's is EIO, whatever the status."""
    device = VdcDevice()
    seen: list[tuple[int, int]] = []
    for n in range(len(statuses)):
        device.queue_transfer(1, 0xFF, n, 512, 0x1000 * n, 512, lambda code, request, n=n: seen.append((n, code)))
    device._pending.update(enumerate(device._queued))
    for n, status in enumerate(statuses):
        req_id = device._pending[n][0] + (1 if n in wrong else 0)
        device.on_descriptor_done(0, n, DESC_HEAD.pack(req_id, 1, 0xFF, status, n, 512, 1))
    expected = [(n, errno.EIO if n in wrong else {131: errno.ECONNRESET, 48: errno.ENOTSUP}.get(s, s))
                for n, s in enumerate(statuses)]
    assert seen == expected
    assert not device._pending


def test_generic_requests_get_their_status_set() -> None:
    device = VdcDevice()
    done: list[tuple[int, DiskRequest | None]] = []
    request = DiskRequest(0, 0x11, 0xFF, 0, 0, 16)
    device.queue(request, lambda code, r: done.append((code, r)))
    device._pending[5] = device._queued[0]
    device.on_descriptor_done(0, 5, DESC_HEAD.pack(request.req_id, 0x11, 0xFF, 0, 0, 16, 0))
    assert done == [(0, request)] and request.status == 0
    device.on_descriptor_done(0, 5, b"")  # already done: ignored
    assert len(done) == 1
