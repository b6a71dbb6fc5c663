"""The back-end request channel: a device raising a config interrupt (CONFIG_CHANGE_MSG), and what
happens without the channel or without CONFIG negotiated."""

from __future__ import annotations

import asyncio
import select
import time

import pytest

from backend.vdisk.devid import DeviceId
from backend.vdisk.engine import DiskEngine
from backend.vhost.constants import DeviceStatus, ProtocolFeature
from backend.vhost.devices import blk
from backend.vhost.frontend import VirtioGuest

from .helpers import serving

ALL = (1 << 64) - 1


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "d.img"
    path.write_bytes(bytes(1 << 20))
    sock = str(tmp_path / "d.sock")
    device = blk.BlockDevice(DiskEngine(str(path)), DeviceId(3, b"x" * 16))
    with serving({sock: device}) as servers:
        yield sock, device, servers[sock]


def notify(server, device) -> bool:
    """Call the device's notifier on the back-end's loop, as the device itself would."""
    loop = server.connection.loop

    async def call() -> bool:
        return device.notify_config_change()

    return asyncio.run_coroutine_threadsafe(call(), loop).result(5)


def test_a_device_raises_a_config_interrupt_over_the_back_end_channel(disk) -> None:
    sock, device, server = disk
    guest = VirtioGuest.connect(sock)
    guest.negotiate(ALL)
    assert guest.frontend.protocol_features & ProtocolFeature.CONFIG and guest.backend is not None
    guest.start_queue(0, 16)
    assert notify(server, device) is True
    assert select.select([guest.backend], [], [], 5)[0]
    guest.serve_backend()
    assert guest.config_changes == 1
    guest.close()


def test_a_broken_device_raises_a_config_interrupt_and_reports_needs_reset(disk) -> None:
    sock, _, _ = disk
    guest = VirtioGuest.connect(sock)
    guest.negotiate(ALL)
    queue = guest.start_queue(0, 16)
    guest.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK)
    queue.set_avail_idx(100)  # 100 chains in a queue of 16: impossible
    guest.kick(0, force=True)
    assert select.select([guest.backend], [], [], 5)[0], "no config interrupt"
    guest.serve_backend()
    assert guest.config_changes == 1
    assert guest.status() & DeviceStatus.NEEDS_RESET
    guest.close()


def test_no_config_interrupt_without_config_or_channel(disk) -> None:
    sock, device, server = disk
    guest = VirtioGuest.connect(sock)
    guest.negotiate(ALL, ProtocolFeature.REPLY_ACK | ProtocolFeature.BACKEND_REQ)  # no CONFIG
    assert notify(server, device) is False
    assert not select.select([guest.backend], [], [], 0.3)[0]
    guest.close()
    deadline = time.monotonic() + 5
    while not server.connection.closed:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert device.notify_config_change() is False  # no front-end at all
