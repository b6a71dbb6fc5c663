"""VIO benchmark: descriptors through a registered ring between two processes.

The requester keeps its ring full; the processor completes every descriptor
at once. Case 1: empty descriptors (protocol cost only). Case 2: each
descriptor names an 8 KiB buffer the requester exported, which the
processor copies in through shared memory (LDC cookie resolution and a
copy, as a disk server does for a write). The reference, measured in the
same run, is a plain in-process loop doing the same descriptor-state and
copy work with no protocol, no second process and no messages.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time

from backend.ldc import PERM_RW, Mode
from backend.ldc.aio import LdcEndpoint, listen
from backend.ldc.memory import TRANSPORT_COOKIE as COOKIE
from backend.ldc.memory import TransportCookie
from backend.vio.aio import VioEndpoint
from backend.vio.constants import DevClass, DringOption
from backend.vio.device import AttrReply, Device, RingSpec

RING = 1024
PAYLOAD = 8192
ACK_EVERY = 128  # ask for an ACK now and then, so the requester can refill while the walk goes on


class Requester(Device):
    dev_class = DevClass.DISK
    peer_classes = frozenset({DevClass.DISK_SERVER})
    initiator = True

    def __init__(self, total: int) -> None:
        self.total = total
        self.submitted = 0
        self.finished = 0
        self.done = asyncio.Event()
        self.endpoint: VioEndpoint | None = None
        self.cookies: list[bytes] = []

    def attr_payload(self, version):
        return bytes(48)

    def rings(self, version):
        return [RingSpec(RING, 64, DringOption.TX, ack_each=False, open_ended=True)]

    def fill(self) -> None:
        assert self.endpoint is not None
        session = self.endpoint.session
        ring = session.own_rings[0]
        while self.submitted < self.total and ring.free_entries():
            cookie = self.cookies[ring.prod] if self.cookies else b""
            self.submitted += 1
            session.submit(ring, cookie, ack=self.submitted % ACK_EVERY == 0)
        self.endpoint.pump()

    def on_descriptor_done(self, ring, index, payload):
        self.finished += 1
        if self.finished == self.total:
            self.done.set()


class Processor(Device):
    dev_class = DevClass.DISK_SERVER
    peer_classes = frozenset({DevClass.DISK})
    sends_rdx = False
    expects_rdx = True
    expects_peer_ring = True

    def __init__(self, copy: bool) -> None:
        self.copy = copy
        self.buffer = bytearray(PAYLOAD)
        self.count = 0
        self.peer = None

    def expects_attr(self, version):
        return True

    def on_attr_info(self, payload, version):
        return AttrReply(True, payload)

    def accepts_ring(self, reg, version):
        return True

    def on_descriptors(self, session, ring, batch):
        if not self.copy:
            session.complete_many(ring, [index for index, _ in batch])
            return
        if self.peer is None:
            self.peer = session.memory.peer_memory
        copy_in, buffer, make, unpack = self.peer.copy_in, self.buffer, TransportCookie._make, COOKIE.unpack_from
        for _, payload in batch:
            copy_in((make(unpack(payload)),), 0, buffer)
        self.count += len(batch)
        session.complete_many(ring, [index for index, _ in batch])

    def on_descriptor(self, session, ring, index, payload):
        if self.copy:
            cookie = TransportCookie._make(COOKIE.unpack_from(payload))
            if self.peer is None:
                self.peer = session.memory.peer_memory
            self.peer.copy_in((cookie,), 0, self.buffer)
        self.count += 1
        session.complete(ring, index, None)


async def processor(path: str, copy: bool) -> None:
    listener = listen(path)
    print("ready", flush=True)
    ldc = await LdcEndpoint.accept(listener, Mode.UNRELIABLE)
    endpoint = VioEndpoint(ldc, Processor(copy))
    await endpoint.open(timeout=None)
    while not ldc.closed:
        await asyncio.sleep(0.05)


async def requester(path: str, total: int, copy: bool) -> float:
    ldc = await LdcEndpoint.connect(path, Mode.UNRELIABLE)
    device = Requester(total)
    endpoint = VioEndpoint(ldc, device)
    device.endpoint = endpoint
    await endpoint.open()
    if copy:
        data = ldc.allocate_segment(RING * PAYLOAD)
        data.view[:] = os.urandom(len(data.view))
        export = ldc.export(data, 0, RING * PAYLOAD, PERM_RW)
        base = export.cookies[0].addr
        device.cookies = [TransportCookie(base + i * PAYLOAD, PAYLOAD).encode() for i in range(RING)]
    original = device.on_descriptor_done

    def refill(ring, index, payload):
        original(ring, index, payload)

    device.on_descriptor_done = refill  # type: ignore[method-assign]
    start = time.perf_counter()
    while not device.done.is_set():
        device.fill()
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - start
    ldc.close()
    return elapsed


def run(total: int, copy: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vio.sock")
        args = [sys.executable, __file__, "--processor", path] + (["--copy"] if copy else [])
        child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        try:
            return asyncio.run(requester(path, total, copy))
        finally:
            child.wait(timeout=120)


def reference(total: int, copy: bool) -> float:
    """The same per-descriptor state changes and copy, in one process, no protocol."""
    ring = bytearray(RING * 64)
    data = bytearray(os.urandom(RING * PAYLOAD))
    buffer = bytearray(PAYLOAD)
    view = memoryview(data)
    start = time.perf_counter()
    for n in range(total):
        index = n % RING
        ring[index * 64] = 2  # READY
        ring[index * 64] = 3  # ACCEPTED
        if copy:
            buffer[:] = view[index * PAYLOAD : (index + 1) * PAYLOAD]
        ring[index * 64] = 4  # DONE
        ring[index * 64] = 1  # FREE
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--processor")
    parser.add_argument("--copy", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.processor:
        asyncio.run(processor(args.processor, args.copy))
        return
    total = 20_000 if args.quick else 200_000
    print(f"VIO benchmark, two processes, ring of {RING} descriptors ({os.cpu_count()} CPUs)")
    print(f"{'case':42} {'VIO':>16} {'reference':>22}")
    elapsed = run(total, copy=False)
    print(f"{'empty descriptors/s':42} {total / elapsed:>16,.0f} {total / reference(total, False):>14,.0f}/s (no protocol)")
    elapsed = run(total, copy=True)
    mb = total * PAYLOAD / 1e6
    print(f"{'8 KiB descriptors/s':42} {total / elapsed:>16,.0f}")
    print(f"{'8 KiB payload copied in, MB/s':42} {mb / elapsed:>16,.0f} {mb / reference(total, True):>14,.0f} MB/s (memcpy loop)")


if __name__ == "__main__":
    main()
