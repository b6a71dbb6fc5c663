"""The LDC device over vhost-user, driven by the guest-side link in this process against real files.

Two vDisk channels on one device: data goes vdc -> LDC -> virtqueues -> vds -> file. Bad input
on one channel (garbage records, memory outside the guest, bad cookies) resets that channel only;
a front-end that vanishes mid-transfer loses nothing the vds acknowledged.
"""

from __future__ import annotations

import asyncio
import errno
import os

import pytest

from backend.guest.link import GuestLdc
from backend.ldc.memory import TransportCookie, make_cookie
from backend.vdisk.client import VdcClient
from backend.vdisk.devid import device_id_for
from backend.vdisk.engine import DiskEngine
from backend.vdisk.protocol import SLICE_ABSOLUTE, DiskRequest, Op
from backend.vdisk.server import Export
from backend.vhost.devices import ldc_services
from backend.vhost.devices import ldc_wire as wire
from backend.vhost.devices.ldc import LdcDevice

from .helpers import serving

DISK = 8 << 20


@pytest.fixture
def device(tmp_path):
    paths = []
    engines = []
    for name in ("a", "b"):
        path = str(tmp_path / f"{name}.img")
        with open(path, "wb") as f:
            f.truncate(DISK)
        paths.append(path)
        engines.append(DiskEngine(path))
    specs = [ldc_services.vdisk(i, Export(engine, device_id_for(path))) for i, (engine, path) in enumerate(zip(engines, paths))]
    sock = str(tmp_path / "ldc.sock")
    with serving({sock: LdcDevice(specs)}):
        yield sock, paths
    for engine in engines:
        engine.close()


async def _clients(sock: str, timeout: float = 10) -> tuple[GuestLdc, list[VdcClient]]:
    ldc = await GuestLdc.connect(sock, memory_size=256 << 20)
    clients = [VdcClient(channel.endpoint) for channel in ldc.channels]  # type: ignore[arg-type]
    for client in clients:
        await client.open(timeout=timeout)
    return ldc, clients


async def _established(client: VdcClient) -> None:
    await asyncio.wait_for(client.endpoint.established.wait(), 10)


def test_config_space_lists_the_channels(device) -> None:
    sock, _ = device

    async def main() -> None:
        ldc = await GuestLdc.connect(sock, memory_size=64 << 20)
        try:
            assert [(c.info.channel_id, c.info.service) for c in ldc.channels] == [(0, wire.Service.VDISK), (1, wire.Service.VDISK)]
            assert ldc.guest.features & wire.F_POOL
        finally:
            ldc.close()

    asyncio.run(main())


def test_two_disks_through_one_device_reach_their_files(device) -> None:
    sock, paths = device
    data = [os.urandom(1 << 20), os.urandom(192 << 10)]

    async def main() -> None:
        ldc, clients = await _clients(sock)
        try:
            await asyncio.gather(clients[0].write(4096, data[0]), clients[1].write(1 << 20, data[1]))
            assert await clients[0].read(4096, len(data[0])) == data[0]
            assert await clients[1].read(1 << 20, len(data[1])) == data[1]
            await clients[0].flush()
        finally:
            ldc.close()

    asyncio.run(main())
    with open(paths[0], "rb") as f:
        f.seek(4096)
        assert f.read(len(data[0])) == data[0]
    with open(paths[1], "rb") as f:
        f.seek(1 << 20)
        assert f.read(len(data[1])) == data[1]


def test_one_buffer_each_way_still_carries_every_request(device, monkeypatch) -> None:
    """With a single receive and a single transmit buffer posted, the device runs dry of
    receive buffers (and asks for a kick) and the driver of transmit buffers (and asks
    for a call) all the time: nothing may stall or be lost."""
    from backend.guest import link

    monkeypatch.setattr(link, "RX_BUFFERS", 1)
    monkeypatch.setattr(link, "TX_BUFFERS", 1)
    sock, paths = device
    blocks = [os.urandom(4096) for _ in range(64)]

    async def main() -> None:
        ldc, clients = await _clients(sock, timeout=60)  # one buffer each way: a slow handshake on a busy machine
        try:
            await asyncio.wait_for(asyncio.gather(*(clients[0].write(n * 8192, b) for n, b in enumerate(blocks))), 60)
            back = await asyncio.wait_for(asyncio.gather(*(clients[0].read(n * 8192, 4096) for n in range(len(blocks)))), 60)
            assert back == blocks
        finally:
            ldc.close()

    asyncio.run(main())
    with open(paths[0], "rb") as f:
        for n, block in enumerate(blocks):
            f.seek(n * 8192)
            assert f.read(4096) == block


@pytest.mark.parametrize("garbage", [
    bytes([0x77, 0, 0, 0, 0, 0, 0, 0]),  # unknown record kind
    wire.encode_packets(bytes([0xFF] * 64))[0],  # a packet of an unknown LDC type
    wire.encode_segment(9, 8192, 1 << 40),  # a segment outside guest memory
    wire.encode_map_table(16, 1 << 40),  # a second map table, outside guest memory too
])
def test_bad_records_reset_that_channel_only(device, garbage: bytes) -> None:
    sock, _ = device

    async def main() -> None:
        ldc, clients = await _clients(sock)
        try:
            await clients[0].write(0, b"\x11" * 4096)
            ldc.channels[0].transmit([garbage])
            # channel 1 keeps serving while channel 0 resets and comes back
            for _ in range(20):
                await clients[1].write(8192, b"\x22" * 4096)
            for _ in range(100):
                if ldc.channels[0].endpoint.last_reset:
                    break
                await asyncio.sleep(0.02)
            assert ldc.channels[0].endpoint.last_reset, "channel 0 was not reset"
            assert ldc.channels[1].endpoint.last_reset is None
            await _established(clients[0])
            assert await clients[0].read(0, 4096) == b"\x11" * 4096
            assert await clients[1].read(8192, 4096) == b"\x22" * 4096
        finally:
            ldc.close()

    asyncio.run(main())


def test_a_cookie_naming_unexported_memory_fails_that_request(device) -> None:
    sock, _ = device

    async def main() -> None:
        ldc, clients = await _clients(sock)
        try:
            client = clients[0]
            bogus = DiskRequest(0, Op.BREAD, SLICE_ABSOLUTE, 0, 0, 4096, [TransportCookie(make_cookie(0, 9000, 0), 4096)])
            done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            client.device.request(client.endpoint.session, bogus, lambda code, _: done.done() or done.set_result(code))
            client.endpoint.pump()
            code = await asyncio.wait_for(done, 10)
            assert code != 0
            await _established(client)
            await client.write(0, b"\x33" * 512)
            assert await client.read(0, 512) == b"\x33" * 512
        finally:
            ldc.close()

    asyncio.run(main())


def test_a_front_end_that_vanishes_mid_transfer_loses_nothing_acknowledged(device) -> None:
    sock, paths = device
    acknowledged: dict[int, bytes] = {}

    async def writer(client: VdcClient, index: int) -> None:
        data = bytes([index % 251 + 1]) * 65536
        await client.write(index * 65536, data)
        acknowledged[index] = data

    async def first() -> None:
        ldc, clients = await _clients(sock)
        tasks = [asyncio.ensure_future(writer(clients[0], i)) for i in range(100)]
        for _ in range(10000):
            if len(acknowledged) >= 10:
                break
            await asyncio.sleep(0.001)
        ldc.close("vanished")  # the socket closes mid-transfer: no GET_VRING_BASE, no goodbye
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)

    async def second() -> None:
        ldc, clients = await _clients(sock)  # the same socket serves a new front-end
        try:
            for index, data in acknowledged.items():
                assert await clients[0].read(index * 65536, 65536) == data, f"acknowledged write {index} lost"
            await clients[1].write(0, b"\x44" * 512)
            assert await clients[1].read(0, 512) == b"\x44" * 512
        finally:
            ldc.close()

    asyncio.run(first())
    assert 10 <= len(acknowledged) < 100
    asyncio.run(second())
    with open(paths[0], "rb") as f:
        for index, data in acknowledged.items():
            f.seek(index * 65536)
            assert f.read(65536) == data


def test_a_guest_whose_ring_breaks_the_device_is_told_and_stops(device) -> None:
    """An impossible avail index breaks the device (every channel stops): the guest side hears
    it as a config interrupt with NEEDS_RESET and closes, instead of waiting forever."""
    sock, _ = device

    async def main() -> None:
        ldc, clients = await _clients(sock)
        try:
            await clients[0].write(0, b"\x66" * 512)
            transmit = ldc.channels[1].tx
            transmit.set_avail_idx(transmit.avail_idx + transmit.size + 1)  # more chains than the queue holds
            ldc.guest.kick(transmit.index, force=True)
            await asyncio.wait_for(ldc.closed.wait(), 10)
            assert ldc.reason == "the device needs a reset"
            with pytest.raises(OSError):
                await asyncio.wait_for(clients[0].read(0, 512), 10)
        finally:
            ldc.close()

    asyncio.run(main())


def test_a_device_needs_a_pool_before_it_can_export(device) -> None:
    """Exports on the device side come out of the guest-lent pool; a pool outside memory resets the channel."""
    sock, _ = device

    async def main() -> None:
        ldc, clients = await _clients(sock)
        try:
            ldc.channels[0].transmit([wire.encode_pool(1 << 40, 1 << 16)])  # a second pool, and outside memory
            for _ in range(100):
                if ldc.channels[0].endpoint.last_reset:
                    break
                await asyncio.sleep(0.02)
            assert ldc.channels[0].endpoint.last_reset
            await _established(clients[0])
            await clients[0].write(0, b"\x55" * 512)
        finally:
            ldc.close()

    asyncio.run(main())


def test_vdc_errors_are_errno(device) -> None:
    sock, _ = device

    async def main() -> None:
        ldc, clients = await _clients(sock)
        try:
            with pytest.raises(OSError) as caught:
                await clients[0].read(DISK, 512)
            assert caught.value.errno in (errno.EINVAL, errno.EIO, errno.ENXIO, errno.ENOSPC)
        finally:
            ldc.close()

    asyncio.run(main())
