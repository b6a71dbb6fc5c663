"""Reads the page cache holds are served on the event loop; the rest, and the order, stay with the I/O runner.

Also the vdc's zero-copy `read_view` against a vds in another process.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable

import pytest

from backend.ldc.memory import PERM_RW
from backend.vdisk.client import VdcClient, VdcDevice
from backend.vdisk.protocol import SLICE_ABSOLUTE, DiskRequest, Op
from backend.vio.loopback import pump

from ..page_cache import drop_from_page_cache
from .test_two_process import MiB, server  # noqa: F401  (a vds process serving d0 and d1)
from .test_vds import Harness, export  # noqa: F401  (an 8 MiB disk)


class DeferredRunner:
    """An IoRunner that keeps jobs until told to run them, in order."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[[], list[int]], Callable[[list[int]], None]]] = []
        self.handed = 0

    def __call__(self, work: Callable[[], list[int]], done: Callable[[list[int]], None]) -> None:
        self.jobs.append((work, done))
        self.handed += 1

    def run_all(self) -> None:
        while self.jobs:
            work, done = self.jobs.pop(0)
            done(work())


@pytest.fixture
def harness(export) -> tuple[Harness, DeferredRunner]:  # noqa: F811
    h = Harness(export)
    runner = DeferredRunner()
    h.server.runner = runner
    return h, runner


def _send(h: Harness, op: int, block: int, length: int, offset_in_segment: int, codes: list[int]) -> None:
    """One request through the harness's client, its buffer at `offset_in_segment` of the client's segment."""
    export = h.a.memory.export(h.segment, offset_in_segment, length, PERM_RW)
    request = DiskRequest(0, op, SLICE_ABSOLUTE, 0, block, length, list(export.cookies))
    h.client.request(h.a.session, request, lambda code, done: codes.append(code))
    pump(h.a, h.b)


def test_cached_read_skips_the_runner_and_uncached_read_uses_it(harness, export) -> None:  # noqa: F811
    h, runner = harness
    data = random.Random(3).randbytes(64 * 1024)
    h.segment.view[: len(data)] = data
    codes: list[int] = []
    _send(h, Op.BWRITE, 8, len(data), 0, codes)
    assert codes == [] and runner.handed == 1  # writes always go to the runner
    runner.run_all()
    pump(h.a, h.b)
    assert codes == [0]

    fd = os.open(export.engine.path, os.O_RDONLY)
    try:
        os.fsync(fd)  # clean pages: RWF_NOWAIT may refuse pages still under writeback
    finally:
        os.close(fd)
    _send(h, Op.BREAD, 8, len(data), MiB, codes)  # in the page cache now
    assert codes == [0, 0] and runner.handed == 1
    assert bytes(h.segment.view[MiB : MiB + len(data)]) == data

    # Out of the page cache, RWF_NOWAIT says EAGAIN and the runner reads it. The kernel
    # may bring pages back between our eviction and the read (the read's own readahead
    # can finish before the page is looked up, likelier on a busy machine): then the
    # read is served at once, still correctly, and we evict and try again.
    for _ in range(40):
        drop_from_page_cache(export.engine.path)
        h.segment.view[MiB : MiB + len(data)] = bytes(len(data))
        handed, done = runner.handed, len(codes)
        _send(h, Op.BREAD, 8, len(data), MiB, codes)
        runner.run_all()
        pump(h.a, h.b)
        assert codes[done:] == [0]
        assert bytes(h.segment.view[MiB : MiB + len(data)]) == data
        if runner.handed == handed + 1:
            break
    else:
        raise AssertionError("no read of evicted pages ever went to the runner")


def test_cached_read_does_not_overtake_a_queued_write(export) -> None:  # noqa: F811
    # In-band descriptors: each is served as it arrives, so the read reaches the
    # server while the write still waits in the runner.
    h = Harness(export, VdcDevice(inband=True))
    runner = DeferredRunner()
    h.server.runner = runner
    h.segment.view[:4096] = b"n" * 4096
    codes: list[int] = []
    _send(h, Op.BWRITE, 0, 4096, 0, codes)
    _send(h, Op.BREAD, 0, 4096, MiB, codes)  # block 0 of a fresh file: cached zeros
    assert codes == [] and len(runner.jobs) == 2  # queued behind the write, not answered from the cache
    runner.run_all()
    pump(h.a, h.b)
    assert codes == [0, 0]
    assert bytes(h.segment.view[MiB : MiB + 4096]) == b"n" * 4096


def test_read_view_lends_the_buffer_without_a_copy(server) -> None:  # noqa: F811
    data = random.Random(7).randbytes(MiB)

    async def main() -> None:
        client = await VdcClient.connect(server.socket("d0"))
        try:
            await client.write(MiB, data)
            kept = None
            for _ in range(client.device.ring_size + 8):  # more reads than slots: each slot comes back
                async with client.read_view(MiB, MiB) as view:
                    assert view == data
                    kept = view
            with pytest.raises(ValueError):
                kept[0]  # released with its block
            assert await client.read(MiB, 4096) == data[:4096]
        finally:
            client.close()

    asyncio.run(asyncio.wait_for(main(), 60))
