"""vdc in this process, vds in another, over the LDC Unix transport."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import signal
import socket
import subprocess
import sys

import pytest

from backend.vdisk.client import VdcClient
from backend.vdisk.protocol import ACCESS_EXCLUSIVE

MiB = 1 << 20


class Server:
    def __init__(self, socket_dir, *disks: str) -> None:
        args = [sys.executable, "-m", "backend", "vds", "--socket-dir", str(socket_dir)]
        for disk in disks:
            args += ["--disk", disk]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in disks:
            line = self.process.stdout.readline()
            assert "serving" in line, line + self.process.stderr.read()
        self.dir = socket_dir

    def socket(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.sock")

    def stop(self, sig=signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        return self.process.wait(20)


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path, f"d0={tmp_path}/d0.img,size={16 * MiB}", f"d1={tmp_path}/d1.img,size={4 * MiB}")
    yield s
    if s.process.poll() is None:
        assert s.stop() == 0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def exercise(client: VdcClient, size: int, seed: int, rounds: int) -> bytearray:
    """Random reads and writes, checked against a model of the disk."""
    rng = random.Random(seed)
    model = bytearray(size)
    for offset in range(0, size, MiB):
        model[offset : offset + MiB] = await client.read(offset, MiB)
    pending, taken = [], set()
    for _ in range(rounds):
        block = rng.randrange(0, size // 512 - 256)
        count = rng.randrange(1, 256)
        blocks = set(range(block, block + count))
        if blocks & taken:
            continue  # writes in flight together must not overlap: their order is not defined
        taken |= blocks
        data = os.urandom(count * 512)
        model[block * 512 : block * 512 + len(data)] = data
        pending.append(client.write(block * 512, data))
    await asyncio.gather(*pending)  # many requests in flight at once
    for offset in range(0, size, MiB):
        assert await client.read(offset, MiB) == model[offset : offset + MiB]
    return model


def test_several_disks_and_clients_at_once(server) -> None:
    async def main() -> None:
        clients = [
            await VdcClient.connect(server.socket("d0")),
            await VdcClient.connect(server.socket("d0"), inband=True),
            await VdcClient.connect(server.socket("d1")),
        ]
        assert [c.size_bytes for c in clients] == [16 * MiB, 16 * MiB, 4 * MiB]
        await asyncio.gather(exercise(clients[0], 16 * MiB, 1, 40), exercise(clients[2], 4 * MiB, 2, 40))
        # the in-band client sees what the ring client wrote
        assert await clients[1].read(0, MiB) == await clients[0].read(0, MiB)
        for c in clients:
            c.close()

    run(main())


def test_exclusive_access_between_two_clients(server) -> None:
    async def main() -> None:
        a = await VdcClient.connect(server.socket("d1"))
        b = await VdcClient.connect(server.socket("d1"))
        await a.set_access(ACCESS_EXCLUSIVE)
        assert await a.get_access() and not await b.get_access()
        with pytest.raises(OSError) as info:
            await b.read(0, 512)
        assert info.value.errno == errno.EACCES
        a.close()  # connection loss clears the reservation
        for _ in range(50):
            if await b.get_access():
                break
            await asyncio.sleep(0.05)
        assert len(await b.read(0, 512)) == 512
        b.close()

    run(main())


def test_client_vanishing_mid_request_leaves_others_served(server) -> None:
    async def main() -> None:
        survivor = await VdcClient.connect(server.socket("d0"))
        doomed = await VdcClient.connect(server.socket("d0"))
        writes = [asyncio.ensure_future(doomed.write(i * MiB, os.urandom(MiB))) for i in range(8)]
        await asyncio.sleep(0)
        doomed.ldc.sock.shutdown(socket.SHUT_RDWR)  # gone without a goodbye, requests in flight
        await asyncio.gather(*writes, return_exceptions=True)
        await exercise(survivor, 16 * MiB, 3, 10)
        survivor.close()

    run(main())
    assert server.process.poll() is None


def test_write_acknowledged_with_cache_off_survives_kill_9(tmp_path) -> None:
    server = Server(tmp_path, f"d0={tmp_path}/d0.img,size={4 * MiB}")
    payload = os.urandom(64 * 1024)

    async def write() -> None:
        client = await VdcClient.connect(server.socket("d0"))
        await client.set_wce(False)
        assert not await client.get_wce()
        await client.write(MiB, payload)

    run(write())
    server.stop(signal.SIGKILL)
    with open(tmp_path / "d0.img", "rb") as f:
        f.seek(MiB)
        assert f.read(len(payload)) == payload
    # reset and reconnect: a new server on the same disk serves the same data
    again = Server(tmp_path, f"d0={tmp_path}/d0.img")

    async def read() -> bytes:
        client = await VdcClient.connect(again.socket("d0"))
        data = await client.read(MiB, len(payload))
        client.close()
        return data

    try:
        assert run(read()) == payload
    finally:
        assert again.stop() == 0


def test_full_backing_filesystem_gives_enospc_and_loses_nothing(tmp_path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        server = Server(tmp_path, f"d0={mount}/d0.img,size={8 * MiB}")
        first = os.urandom(256 * 1024)

        async def main() -> None:
            client = await VdcClient.connect(server.socket("d0"))
            await client.write(0, first)
            with pytest.raises(OSError) as info:
                for offset in range(MiB, 8 * MiB, MiB):
                    await client.write(offset, os.urandom(MiB))
            assert info.value.errno == errno.ENOSPC
            assert await client.read(0, len(first)) == first  # what was acknowledged is intact
            client.close()

        run(main())
        assert server.stop() == 0
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_start_read_answers_through_its_callback(server) -> None:
    """The callback read (what the NBD export uses): data as read() gives it, the
    server's error as an errno with no view, False once every slot is taken."""

    async def main() -> None:
        client = await VdcClient.connect(server.socket("d1"))
        data = os.urandom(64 << 10)
        await client.write(8192, data)
        answers: list[tuple[int, bytes | None]] = []
        finished = asyncio.Event()

        def done(code: int, view: memoryview | None) -> None:
            answers.append((code, None if view is None else bytes(view)))
            if len(answers) == 2:
                finished.set()

        assert client.start_read(8192, len(data), done)
        assert client.start_read(4 * MiB - 512, 1024, done)  # past the end of the 4 MiB disk
        await asyncio.wait_for(finished.wait(), 10)
        assert answers == [(0, data), (errno.EINVAL, None)]
        started = 0
        while client.start_read(0, 512, lambda code, view: None):
            started += 1
        assert started == client.device.ring_size - 1  # one request per buffer slot, then False
        assert await client.read(8192, 512) == data[:512]  # waits for a slot the callbacks give back
        client.close()

    run(main())
