"""vDisk wire formats (seed section 1.1.6): attributes, descriptors, operations, status.

Big-endian, field for field what illumos vds/vdc and Linux sunvdc exchange.
One disagreement to know about: the seed says a descriptor's `size` counts
blocks, but illumos (`nbytes`) and Linux (`desc->size = len`) both put
*bytes* there; we follow the implementations (docs/vdisk.md).
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from ..ldc.memory import TRANSPORT_COOKIE, TransportCookie

VERSIONS = ((1, 1), (1, 0))


class Op(IntEnum):
    BREAD = 0x01
    BWRITE = 0x02
    FLUSH = 0x03
    GET_WCE = 0x04
    SET_WCE = 0x05
    GET_VTOC = 0x06
    SET_VTOC = 0x07
    GET_DISKGEOM = 0x08
    SET_DISKGEOM = 0x09
    SCSICMD = 0x0A
    GET_DEVID = 0x0B
    GET_EFI = 0x0C
    SET_EFI = 0x0D
    RESET = 0x0E
    GET_ACCESS = 0x0F
    SET_ACCESS = 0x10
    GET_CAPACITY = 0x11


#: Operations each protocol version defines.
OPS_1_0 = frozenset(op for op in Op if op <= Op.SET_EFI and op != Op.SCSICMD)
OPS_1_1 = frozenset(Op)


def ops_for(version: tuple[int, int]) -> frozenset[Op]:
    return OPS_1_1 if version >= (1, 1) else OPS_1_0


def ops_mask(ops: frozenset[Op]) -> int:
    return sum(1 << op for op in ops)


class DiskType(IntEnum):
    SLICE = 0x1
    DISK = 0x2


class MediaType(IntEnum):
    FIXED = 0x1
    CD = 0x2
    DVD = 0x3


SLICE_ABSOLUTE = 0xFF
SIZE_UNKNOWN = 0xFFFF_FFFF_FFFF_FFFF

# SET_ACCESS flags and GET_ACCESS answers.
ACCESS_CLEAR = 0x0
ACCESS_EXCLUSIVE = 0x1
ACCESS_PREEMPT = 0x2
ACCESS_PRESERVE = 0x4
ACCESS_DENIED = 0
ACCESS_ALLOWED = 1

ATTR = struct.Struct(">BBBxIQQQI4x8x")  # the 48 bytes after the VIO tag


@dataclass(frozen=True, slots=True)
class DiskAttrs:
    xfer_mode: int
    vdisk_type: int = 0
    vdisk_mtype: int = 0
    vdisk_block_size: int = 0
    operations: int = 0
    vdisk_size: int = 0
    max_xfer_size: int = 0
    phys_block_size: int = 0

    def encode(self) -> bytes:
        return ATTR.pack(
            self.xfer_mode, self.vdisk_type, self.vdisk_mtype, self.vdisk_block_size,
            self.operations, self.vdisk_size, self.max_xfer_size, self.phys_block_size,
        )

    @classmethod
    def decode(cls, payload: bytes) -> DiskAttrs:
        if len(payload) < ATTR.size:
            raise OSError(errno.EINVAL, f"vDisk attributes truncated: {len(payload)} of {ATTR.size} bytes")
        return cls(*ATTR.unpack_from(payload, 0))


DESC_HEAD = struct.Struct(">QBBxxIQQI4x")  # descriptor payload after the 8-byte ring header
DESC_PAYLOAD_MIN = DESC_HEAD.size  # 40 bytes before the cookies
DESC_ONE_COOKIE = struct.Struct(DESC_HEAD.format + "QQ")  # the common case, packed in one go
#: What a client needs of a finished descriptor: its req_id and status.
DESC_DONE = struct.Struct(">Q4xI")


@dataclass(slots=True)
class DiskRequest:
    """A descriptor payload: one disk request and, once done, its status."""

    req_id: int
    operation: int
    slice: int
    status: int
    offset: int
    size: int
    cookies: list[TransportCookie] = field(default_factory=list)

    def encode(self) -> bytes:
        cookies = self.cookies
        if len(cookies) == 1:
            return DESC_ONE_COOKIE.pack(self.req_id, self.operation, self.slice, self.status, self.offset, self.size, 1, *cookies[0])
        head = DESC_HEAD.pack(self.req_id, self.operation, self.slice, self.status, self.offset, self.size, len(cookies))
        return head + b"".join(TRANSPORT_COOKIE.pack(*c) for c in cookies)

    @classmethod
    def decode(cls, payload: bytes, max_cookies: int) -> DiskRequest:
        if len(payload) < DESC_HEAD.size:
            raise OSError(errno.EINVAL, f"disk descriptor truncated: {len(payload)} bytes")
        req_id, op, slice_, status, offset, size, ncookies = DESC_HEAD.unpack_from(payload, 0)
        room = (len(payload) - DESC_HEAD.size) // TRANSPORT_COOKIE.size
        if ncookies > min(room, max_cookies):
            raise OSError(errno.EINVAL, f"descriptor names {ncookies} cookies, room for {min(room, max_cookies)}")
        cookies = [TransportCookie._make(TRANSPORT_COOKIE.unpack_from(payload, DESC_HEAD.size + 16 * i)) for i in range(ncookies)]
        return cls(req_id, op, slice_, status, offset, size, cookies)

    def status_update(self) -> bytes:
        """The payload bytes the server writes back (status is all that changes)."""
        return DESC_HEAD.pack(self.req_id, self.operation, self.slice, self.status, self.offset, self.size, len(self.cookies))


def descriptor_size(max_cookies: int) -> int:
    """Ring entry size for descriptors with up to `max_cookies` cookies (header included)."""
    return 8 + DESC_HEAD.size + 16 * max_cookies


CAPACITY = struct.Struct(">I4xQ")  # vdisk_block_size u32, reserved u32, vdisk_size u64
ACCESS = struct.Struct(">Q")
WCE = struct.Struct(">I")

# Solaris errno values where they differ from Linux: the status a Solaris vdc
# expects. Everything else has the same number on both.
_SOLARIS_ERRNO = {
    errno.ENOTSUP: 48,
    errno.EOVERFLOW: 79,
    errno.ECONNRESET: 131,
    errno.ENOTCONN: 134,
    errno.ETIMEDOUT: 145,
    errno.EDQUOT: 49,
    errno.ENOSYS: 89,
}
_LINUX_ERRNO = {v: k for k, v in _SOLARIS_ERRNO.items()}


def to_wire_status(code: int) -> int:
    return _SOLARIS_ERRNO.get(code, code)


def from_wire_status(code: int) -> int:
    return _LINUX_ERRNO.get(code, code)
