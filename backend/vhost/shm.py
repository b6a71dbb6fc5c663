"""Shared memory with the front-end: its memory regions (SET_MEM_TABLE fds) and inflight regions."""

from __future__ import annotations

import fcntl
import logging
import mmap
import os

from ..errors import BackendError, GuestError
from .memory import MappedRegion
from .messages import MemoryRegion

log = logging.getLogger(__name__)

MAX_REGION = 1 << 40


def map_region(region: MemoryRegion, fd: int) -> MappedRegion:
    """mmap one region's fd; the fd may be closed afterwards (the mapping keeps its own reference).

    Touching a shared mapping past the end of its file kills the process with
    SIGBUS, so the file must be long enough now and must not shrink later: we
    check its size and ask for F_SEAL_SHRINK (QEMU's memfd backend seals by
    default; a front-end that refuses seals is logged).
    """
    end = region.mmap_offset + region.size
    if not 0 < region.size <= MAX_REGION or region.mmap_offset < 0:
        raise GuestError(f"memory region of {region.size} bytes at offset {region.mmap_offset} is out of range")
    try:
        file_size = os.fstat(fd).st_size
    except OSError as exc:
        raise GuestError(f"memory region fd {fd}: {exc}") from None
    if file_size < end:
        raise GuestError(f"memory region needs {end} bytes of its file, which has {file_size}")
    _seal_against_shrinking(fd)
    try:
        mapping = mmap.mmap(fd, end, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError) as exc:
        raise GuestError(f"cannot map memory region at GPA 0x{region.guest_phys_addr:x}: {exc}") from None
    return MappedRegion(region, memoryview(mapping)[region.mmap_offset : end])


def _seal_against_shrinking(fd: int) -> None:
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        if not seals & fcntl.F_SEAL_SHRINK:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    except OSError as exc:
        log.warning("memory region fd cannot be sealed against shrinking (%s): a front-end that truncates it can crash us", exc.strerror)


class InflightMemory:
    """The protocol's InflightMapper: memfds for GET_INFLIGHT_FD, mappings for SET_INFLIGHT_FD."""

    def create(self, size: int) -> tuple[int, memoryview]:
        """A zeroed memfd of `size` bytes, sealed at that size (the front-end keeps it across our restarts)."""
        try:
            fd = os.memfd_create("vhost-inflight", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError as exc:
            raise BackendError(f"cannot create an inflight region: {exc}") from None
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            return fd, memoryview(mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE))
        except OSError as exc:
            os.close(fd)
            raise BackendError(f"cannot create an inflight region of {size} bytes: {exc}") from None

    def map(self, fd: int, size: int, offset: int) -> memoryview:
        if offset < 0 or offset % mmap.PAGESIZE or not 0 < size <= MAX_REGION:
            raise GuestError(f"inflight region of {size} bytes at offset {offset} is out of range")
        try:
            file_size = os.fstat(fd).st_size
        except OSError as exc:
            raise GuestError(f"inflight fd {fd}: {exc}") from None
        if file_size < offset + size:
            raise GuestError(f"inflight region needs {offset + size} bytes of its file, which has {file_size}")
        _seal_against_shrinking(fd)
        try:
            return memoryview(mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=offset))
        except (OSError, ValueError) as exc:
            raise GuestError(f"cannot map the inflight region: {exc}") from None
