"""Exclusive access: between clients of one server and between processes."""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap

import pytest

from backend.vdisk.access import DiskReservations
from backend.vdisk.engine import create_sparse_file
from backend.vdisk.protocol import ACCESS_EXCLUSIVE, ACCESS_PREEMPT, ACCESS_PRESERVE


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    create_sparse_file(str(path), 1 << 20)
    return DiskReservations(str(path))


def test_exclusive_between_two_clients(disk) -> None:
    a, b = disk.client(), disk.client()
    assert a.allowed() and b.allowed()
    a.set_access(ACCESS_EXCLUSIVE)
    assert a.allowed() and not b.allowed()
    with pytest.raises(OSError) as info:
        b.set_access(ACCESS_EXCLUSIVE)
    assert info.value.errno == errno.EBUSY
    a.set_access(0)  # CLEAR
    assert b.allowed()
    b.set_access(ACCESS_EXCLUSIVE | ACCESS_PRESERVE)
    assert b.preserve and not a.allowed()


def test_preempt_within_the_process(disk) -> None:
    a, b = disk.client(), disk.client()
    a.set_access(ACCESS_EXCLUSIVE)
    b.set_access(ACCESS_EXCLUSIVE | ACCESS_PREEMPT)
    assert b.exclusive and not a.exclusive and not a.allowed()


def test_flag_rules(disk) -> None:
    a = disk.client()
    for flags in (ACCESS_PREEMPT, ACCESS_PRESERVE, 0x8):
        with pytest.raises(OSError) as info:
            a.set_access(flags)
        assert info.value.errno == errno.EINVAL


def test_connection_loss_clears(disk) -> None:
    a, b = disk.client(), disk.client()
    a.set_access(ACCESS_EXCLUSIVE)
    a.close()  # what the server does when a client's connection goes
    assert b.allowed()


HOLDER = textwrap.dedent("""
    import sys, time
    from backend.vdisk.access import DiskReservations
    client = DiskReservations(sys.argv[1]).client()
    client.set_access(1)
    print("held", flush=True)
    sys.stdin.readline()
""")


def test_exclusive_across_processes_and_release_on_death(disk) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, disk.path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        local = disk.client()
        assert not local.allowed()
        with pytest.raises(OSError) as info:
            local.set_access(ACCESS_EXCLUSIVE | ACCESS_PREEMPT)
        assert info.value.errno == errno.EBUSY and "another process" in info.value.strerror
        holder.kill()  # kill -9: the kernel drops its lock
        holder.wait(10)
        assert local.allowed()
        local.set_access(ACCESS_EXCLUSIVE)
    finally:
        if holder.poll() is None:
            holder.kill()
