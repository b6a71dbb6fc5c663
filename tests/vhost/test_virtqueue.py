"""The split-virtqueue walker against well-formed and hostile rings (no sockets: plain memory)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.errors import GuestError
from backend.vhost.constants import VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE
from backend.vhost.driver import DriverQueue, GuestRam
from backend.vhost.memory import GuestMemory, MappedRegion
from backend.vhost.virtqueue import DESC, QueueBroken, RingViews, SplitQueue

RAM = 1 << 20
SIZE = 16


@pytest.fixture(scope="module")
def ram():
    ram = GuestRam(RAM, gpa_base=0x10000)
    yield ram
    ram.close()


def pair(ram: GuestRam, *, event_idx: bool = False) -> tuple[DriverQueue, SplitQueue, GuestMemory]:
    memory = GuestMemory([MappedRegion(ram.region(), ram.data)])
    driver = DriverQueue(ram, 0, SIZE, event_idx=event_idx)
    addr = driver.addresses()
    device = SplitQueue(RingViews.resolve(memory.uva, SIZE, addr.desc, addr.avail, addr.used), SIZE, memory.gpa, event_idx=event_idx)
    return driver, device, memory


def release(ram: GuestRam, driver: DriverQueue) -> None:
    for buffer in (driver.desc_buf, driver.avail_buf, driver.used_buf):
        ram.free(buffer)


def test_direct_and_indirect_chains_give_the_driver_buffers(ram: GuestRam) -> None:
    driver, device, _ = pair(ram)
    out, back = ram.alloc(100), ram.alloc(50)
    ram.view(out.gpa, 100)[:] = b"x" * 100
    for indirect in (False, True):
        head = driver.add([out], [back], indirect=indirect)
        chain = device.pop()
        assert chain is not None and chain.head == head
        assert b"".join(chain.readable) == b"x" * 100 and chain.writable_len == 50
        chain.writable[0][:3] = b"abc"
        device.push(chain.head, 3)
        assert driver.take_used() == [(head, 3)] and bytes(ram.view(back.gpa, 3)) == b"abc"
    assert device.pop() is None
    release(ram, driver)


def test_event_index_suppresses_and_requests_notifications(ram: GuestRam) -> None:
    driver, device, _ = pair(ram, event_idx=True)
    buf = ram.alloc(8)
    driver.add([buf])
    device.push(device.pop().head, 0)
    assert device.needs_notification()  # first completion always signalled
    driver.take_used()  # used_event = 1: signal me when entry 1 is used
    driver.add([buf])
    device.push(device.pop().head, 0)
    assert device.needs_notification()
    assert not device.needs_notification()  # nothing new
    device.enable_kicks()
    driver.add([buf])
    assert driver.kick_needed()
    release(ram, driver)


def _seen_while_another_process_writes(write: Callable[[int], None], read: Callable[[], int], values: tuple[int, int]) -> set[int]:
    """What `read` returns while a child process flips a ring word between two values with `write`."""
    write(values[0])
    child = os.fork()
    if child == 0:
        try:
            for n in range(400_000):
                write(values[n & 1])
        finally:
            os._exit(0)
    seen: set[int] = set()
    while os.waitpid(child, os.WNOHANG) == (0, 0):
        for _ in range(1000):
            seen.add(read())
    return seen


def test_ring_indices_are_never_seen_half_written(ram: GuestRam) -> None:
    """Driver and device run at once: an index moving from 0x00ff to 0x0100 must read as one
    or the other, never 0 (struct.pack_into clears a field first) or 0x01ff / 0x0000 (bytes
    of two different writes)."""
    driver, device, _ = pair(ram, event_idx=True)
    device.last_avail = 0x00F8
    values = (0x00FF, 0x0100)
    assert _seen_while_another_process_writes(driver.set_avail_idx, device.avail_idx, values) <= set(values)

    def push_used(value: int) -> None:
        device.used_idx = value - 1
        device.push(0, 0)

    assert _seen_while_another_process_writes(push_used, driver.used_index, values) <= set(values)
    release(ram, driver)


def hostile(ram: GuestRam, descriptors: list[tuple[int, int, int, int]], heads: list[int], avail_idx: int | None = None) -> None:
    driver, device, _ = pair(ram)
    for index, desc in enumerate(descriptors):
        driver.write_descriptor(index, *desc)
    for head in heads:
        driver.publish(head)
    if avail_idx is not None:
        driver.set_avail_idx(avail_idx)
    try:
        with pytest.raises(QueueBroken):
            while device.pop() is not None:
                pass
    finally:
        release(ram, driver)


def test_a_loop_is_broken_not_followed_forever(ram: GuestRam) -> None:
    hostile(ram, [(0x10000, 8, VRING_DESC_F_NEXT, 1), (0x10000, 8, VRING_DESC_F_NEXT, 0)], [0])


def test_addresses_outside_guest_memory_break_the_queue(ram: GuestRam) -> None:
    hostile(ram, [(0x10000 + RAM - 4, 8, 0, 0)], [0])  # runs past the end
    hostile(ram, [(0, 8, 0, 0)], [0])  # below the region
    hostile(ram, [(1 << 63, 8, VRING_DESC_F_INDIRECT, 0)], [0])


def test_impossible_indices_and_orders_break_the_queue(ram: GuestRam) -> None:
    hostile(ram, [], [SIZE])  # head outside the table
    hostile(ram, [(0x10000, 8, VRING_DESC_F_NEXT, SIZE)], [0])  # next outside the table
    hostile(ram, [], [], avail_idx=SIZE + 1)  # more available than the ring holds
    hostile(ram, [(0x10000, 8, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1), (0x10000, 8, 0, 0)], [0])  # read after write
    hostile(ram, [(0x10000, 24, VRING_DESC_F_INDIRECT, 0)], [0])  # indirect length not a multiple of 16


def test_nested_and_looping_indirect_tables_break_the_queue(ram: GuestRam) -> None:
    table = ram.alloc(32)
    view = ram.view(table.gpa, 32)
    DESC.pack_into(view, 0, table.gpa, 32, VRING_DESC_F_INDIRECT, 0)
    hostile(ram, [(table.gpa, 32, VRING_DESC_F_INDIRECT, 0)], [0])
    DESC.pack_into(view, 0, 0x10000, 8, VRING_DESC_F_NEXT, 1)
    DESC.pack_into(view, 16, 0x10000, 8, VRING_DESC_F_NEXT, 0)
    hostile(ram, [(table.gpa, 32, VRING_DESC_F_INDIRECT, 0)], [0])
    ram.free(table)


def test_misaligned_or_outside_rings_are_refused(ram: GuestRam) -> None:
    memory = GuestMemory([MappedRegion(ram.region(), ram.data)])
    with pytest.raises(QueueBroken):
        RingViews.resolve(memory.uva, SIZE, ram.uva + 8, ram.uva + 4096, ram.uva + 8192)
    with pytest.raises(GuestError):
        RingViews.resolve(memory.uva, SIZE, ram.uva + RAM - 16, ram.uva, ram.uva + 4096)
    with pytest.raises(QueueBroken):
        RingViews.resolve(memory.uva, 3, ram.uva, ram.uva + 4096, ram.uva + 8192)


descriptor = st.tuples(
    st.one_of(st.integers(0, 1 << 64 - 1), st.integers(0x10000, 0x10000 + RAM)),
    st.one_of(st.integers(0, 1 << 32 - 1), st.integers(0, 4096)),
    st.integers(0, 7),
    st.one_of(st.integers(0, 0xFFFF), st.integers(0, SIZE)),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(descriptor, min_size=SIZE, max_size=SIZE), st.lists(st.integers(0, SIZE + 2), max_size=8),
       st.binary(min_size=64, max_size=64), st.integers(0, 0xFFFF))
def test_walker_survives_any_ring(ram: GuestRam, descriptors, heads, indirect_bytes, avail_idx) -> None:
    driver, device, _ = pair(ram)
    try:
        scratch = ram.view(0x10000, 64)  # first 64 bytes of RAM: an indirect table target full of garbage
        scratch[:] = indirect_bytes
        for index, desc in enumerate(descriptors):
            driver.write_descriptor(index, *desc)
        for head in heads:
            driver.publish(head)
        if avail_idx % 3 == 0:
            driver.set_avail_idx(avail_idx)
        popped = 0
        try:
            while (chain := device.pop()) is not None:
                popped += 1
                assert popped <= SIZE
                for view in chain.readable + chain.writable:
                    assert view.obj is ram.data.obj  # only ever guest memory
        except QueueBroken:
            pass
    finally:
        release(ram, driver)


def test_buffers_may_span_adjacent_regions() -> None:
    first, second = GuestRam(8192, gpa_base=0), GuestRam(8192, gpa_base=8192)
    memory = GuestMemory([MappedRegion(first.region(), first.data), MappedRegion(second.region(), second.data)])
    views = memory.gpa.views(4096, 8192)
    assert [len(v) for v in views] == [4096, 4096]
    with pytest.raises(GuestError):
        memory.gpa.view(4096, 8192)  # rings must sit in one region
    with pytest.raises(GuestError):
        memory.gpa.views(12288, 8192)
    assert memory.uva_to_gpa(second.uva + 5) == 8197
    first.close()
    second.close()
