"""Exclusive access to a disk (VD_OP_SET_ACCESS / GET_ACCESS), across clients and processes.

A reservation is an open-file-description (OFD) write lock on one byte far
beyond the end of the backing store itself (offset 2**62): every process that
opens the same file or device node shares that lock space, the kernel drops
the lock when its holder closes or dies (a lost connection clears the
reservation, as the seed wants), and the lock does not affect I/O. Each
client gets its own open file description, so two clients of one server
conflict exactly like two servers do.

PREEMPT takes a reservation away from another client of this process at
once. A holder in another process cannot be forced by an advisory lock; such
a PREEMPT fails with EBUSY and says so (documented in docs/vdisk.md).
A backing store this process may not open for writing cannot be reserved
(ENOTSUP). PRESERVE is accepted and remembered: our reservations are not broken by
random events while the client is connected, so there is nothing to restore.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading

from .protocol import ACCESS_EXCLUSIVE, ACCESS_PREEMPT, ACCESS_PRESERVE

LOCK_OFFSET = 1 << 62
FLOCK = struct.Struct("hhqqi4x")  # l_type, l_whence, l_start, l_len, l_pid (+ padding)


class DiskReservations:
    """The reservation state of one backing store, shared by its clients in this process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._holder: Client | None = None

    def client(self) -> Client:
        return Client(self)


class Client:
    """One vDisk client's view: its own open file description for the lock."""

    def __init__(self, disk: DiskReservations) -> None:
        self.disk = disk
        try:  # a write lock needs a writable open file description
            self.fd = os.open(disk.path, os.O_RDWR | os.O_CLOEXEC)
            self.can_reserve = True
        except OSError:
            self.fd = os.open(disk.path, os.O_RDONLY | os.O_CLOEXEC)
            self.can_reserve = False
        self.exclusive = False
        self.preserve = False

    def set_access(self, flags: int) -> None:
        """Apply SET_ACCESS flags; raises OSError(EBUSY/EINVAL) on refusal."""
        if flags & ~(ACCESS_EXCLUSIVE | ACCESS_PREEMPT | ACCESS_PRESERVE):
            raise OSError(errno.EINVAL, f"unknown access flags 0x{flags:x}")
        if not flags & ACCESS_EXCLUSIVE:
            if flags:
                raise OSError(errno.EINVAL, "PREEMPT and PRESERVE need EXCLUSIVE")
            self.clear()
            return
        if not self.can_reserve:
            raise OSError(errno.ENOTSUP, f"{self.disk.path} is not writable here: no reservations on it")
        with self.disk._lock:
            if not self._try_lock():
                holder = self.disk._holder
                if not flags & ACCESS_PREEMPT:
                    raise OSError(errno.EBUSY, "another client holds exclusive access")
                if holder is None or holder is self:
                    raise OSError(errno.EBUSY, "exclusive access is held by another process; it cannot be preempted from here")
                holder._unlock()
                if not self._try_lock():
                    raise OSError(errno.EBUSY, "exclusive access was taken again while preempting")
            self.disk._holder = self
            self.exclusive = True
            self.preserve = bool(flags & ACCESS_PRESERVE)

    def clear(self) -> None:
        """CLEAR, RESET and connection loss: give up what we hold."""
        with self.disk._lock:
            if self.exclusive:
                self._unlock()

    def allowed(self) -> bool:
        """GET_ACCESS: may this client use the disk (nobody else holds it)?"""
        if self.exclusive:
            return True
        request = FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, LOCK_OFFSET, 1, 0)
        answer = fcntl.fcntl(self.fd, fcntl.F_OFD_GETLK, request)
        return FLOCK.unpack(answer)[0] == fcntl.F_UNLCK

    def close(self) -> None:
        self.clear()
        os.close(self.fd)

    def _try_lock(self) -> bool:
        request = FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, LOCK_OFFSET, 1, 0)
        try:
            fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, request)
            return True
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise

    def _unlock(self) -> None:
        fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, LOCK_OFFSET, 1, 0))
        self.exclusive = False
        self.preserve = False
        if self.disk._holder is self:
            self.disk._holder = None
