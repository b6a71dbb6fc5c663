"""The back-end protocol over a real socket: unknown requests, bad messages, broken devices in isolation."""

from __future__ import annotations

import socket

import pytest

from backend.errors import ProtocolError
from backend.vhost.constants import (
    VIRTIO_F_ACCESS_PLATFORM,
    VRING_DESC_F_NEXT,
    DeviceStatus,
    ProtocolFeature,
    Request,
)
from backend.vhost.devices import blk
from backend.vhost.frontend import VirtioGuest
from backend.vhost.messages import VringState, decode_u64

from .helpers import blk_request, two_blk_disks

ALL = ((1 << 64) - 1) & ~VIRTIO_F_ACCESS_PLATFORM  # no IOMMU: guest-physical addresses


@pytest.fixture
def two_disks(tmp_path):
    with two_blk_disks(tmp_path) as (socks, _, _):
        yield socks


def ready(sock: str) -> VirtioGuest:
    guest = VirtioGuest.connect(sock)
    guest.negotiate(ALL)
    guest.start_queue(0, 16)
    return guest


def test_unknown_and_unsupported_requests_get_an_error_ack_not_a_crash(two_disks) -> None:
    guest = ready(two_disks[0])
    front = guest.frontend
    assert front.protocol_features & ProtocolFeature.REPLY_ACK
    for request in (999, Request.SET_LOG_BASE, Request.SEND_RARP):
        front.send(request, b"junk", need_reply=True)
        assert decode_u64(front.call_reply(request)) != 0
    with pytest.raises(ProtocolError):
        front.command(Request.SET_VRING_NUM, VringState(7, 16).encode())  # no such queue
    with pytest.raises(ProtocolError):
        front.command(Request.SET_VRING_NUM, VringState(0, 100).encode())  # not a power of two
    front.send(Request.SET_FEATURES, b"short", need_reply=True)
    assert decode_u64(front.call_reply(Request.SET_FEATURES)) != 0
    assert blk_request(guest, 0, blk.T_IN, 0, read=512)[0] == blk.S_OK  # still serving
    guest.close()


def test_a_looping_chain_breaks_only_that_device(two_disks) -> None:
    bad, good = ready(two_disks[0]), ready(two_disks[1])
    queue = bad.queues[0]
    buf = bad.buffer(16)
    queue.write_descriptor(0, buf.gpa, 16, VRING_DESC_F_NEXT, 1)
    queue.write_descriptor(1, buf.gpa, 16, VRING_DESC_F_NEXT, 0)
    queue.publish(0)
    bad.kick(0, force=True)
    for _ in range(100):
        if bad.status() & DeviceStatus.NEEDS_RESET:
            break
    assert bad.status() & DeviceStatus.NEEDS_RESET
    assert blk_request(good, 0, blk.T_IN, 0, read=4096)[0] == blk.S_OK
    # RESET_DEVICE clears it; the driver sets the device up again and it works.
    bad.frontend.command(Request.RESET_DEVICE)
    assert not bad.status() & DeviceStatus.NEEDS_RESET
    bad.negotiate(ALL)
    bad.start_queue(0, 16)
    assert blk_request(bad, 0, blk.T_IN, 0, read=512)[0] == blk.S_OK
    bad.close()
    good.close()


def test_garbage_bytes_drop_the_connection_and_the_server_takes_the_next(two_disks) -> None:
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(5)
    raw.connect(two_disks[0])
    raw.sendall(b"\xff" * 64)  # version bits wrong
    assert raw.recv(10) == b""  # closed by the back-end
    raw.close()
    guest = ready(two_disks[0])
    assert blk_request(guest, 0, blk.T_IN, 0, read=512)[0] == blk.S_OK
    guest.close()


def test_requests_without_a_need_reply_flag_get_no_ack(two_disks) -> None:
    guest = VirtioGuest.connect(two_disks[0])
    guest.frontend.send(Request.SET_OWNER)
    guest.frontend.send(Request.GET_QUEUE_NUM)
    reply = guest.frontend.receive()  # the first reply on the wire is GET_QUEUE_NUM's
    assert reply.request == Request.GET_QUEUE_NUM and decode_u64(reply.payload) == 1
    guest.close()


def test_a_memory_table_without_fds_or_with_a_short_file_is_refused(two_disks, tmp_path) -> None:
    from backend.vhost.messages import MemoryRegion, encode_mem_table

    guest = VirtioGuest.connect(two_disks[0])
    guest.negotiate(ALL)
    with pytest.raises(ProtocolError):
        guest.frontend.command(Request.SET_MEM_TABLE, encode_mem_table([guest.ram.region()]))
    bigger = MemoryRegion(0, guest.ram.size * 2, guest.ram.uva, 0)
    with pytest.raises(ProtocolError):
        guest.frontend.command(Request.SET_MEM_TABLE, encode_mem_table([bigger]), [guest.ram.fd])
    guest.frontend.send(Request.GET_VRING_BASE, VringState(0, 0).encode())
    assert VringState.decode(guest.frontend.call_reply(Request.GET_VRING_BASE)) == VringState(0, 0)
    assert decode_u64(guest.frontend.call(Request.GET_STATUS)) == 0
    guest.close()


def test_stopping_a_queue_with_io_in_flight_waits_for_it(two_disks) -> None:
    guest = ready(two_disks[0])
    queue = guest.queues[0]
    heads = []
    for i in range(8):
        header = guest.buffer(blk.REQUEST_HEADER.pack(blk.T_OUT, 0, i * 8))
        heads.append(queue.add([header, guest.buffer(bytes([i]) * 4096)], [guest.buffer(1)], indirect=True))
    guest.kick(0)
    assert guest.stop_queue(0) == 8
    assert sorted(h for h, _ in queue.take_used()) == sorted(heads)  # all completed before the reply
    guest.close()
