"""vhost-user message codec: header, payload layouts, and a stream decoder with fds beside the bytes.

Sans-I/O: `MessageDecoder.feed()` takes what one recvmsg() returned (bytes and the
fds that came with them) and hands back whole messages. Every length and count is
checked before it is used, so garbage raises ProtocolError and nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import ProtocolError
from .constants import (
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    FLAG_VERSION_MASK,
    HEADER_SIZE,
    MAX_CONFIG_SIZE,
    MAX_FDS,
    MAX_MEM_REGIONS,
    MAX_PAYLOAD,
    VERSION,
    Request,
)

HEADER = struct.Struct("<III")
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")
VRING_ADDR = struct.Struct("<IIQQQQ")
MEM_TABLE_HEAD = struct.Struct("<II")
MEM_REGION = struct.Struct("<QQQQ")
CONFIG_HEAD = struct.Struct("<III")
INFLIGHT = struct.Struct("<QQHH4x")  # padded to 8 like the C struct
IOTLB = struct.Struct("<QQQBB6x")


@dataclass(frozen=True, slots=True)
class Message:
    """One vhost-user message; `request` stays an int so unknown codes survive decoding."""

    request: int
    flags: int = VERSION
    payload: bytes = b""
    fds: tuple[int, ...] = field(default=(), compare=False)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & FLAG_REPLY)

    @property
    def name(self) -> str:
        try:
            return Request(self.request).name
        except ValueError:
            return f"request {self.request}"

    def encode(self) -> bytes:
        return HEADER.pack(self.request, self.flags, len(self.payload)) + self.payload

    def reply(self, payload: bytes) -> Message:
        """The answer to this message (same request code, REPLY set)."""
        return Message(self.request, VERSION | FLAG_REPLY, payload)


class MessageDecoder:
    """Byte stream (plus SCM_RIGHTS fds) in, whole messages out.

    The kernel ends a read at a segment that carries fds, so fds belong to the
    message holding the last byte of the chunk they arrived with.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._consumed = 0  # stream offset of _buffer[0]
        self._fds: list[tuple[int, list[int]]] = []  # (stream offset of the chunk's last byte, fds)

    def feed(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> list[Message]:
        self._buffer += data
        if fds:
            if not data:
                raise ProtocolError(f"{len(fds)} fds arrived without any bytes")
            self._fds.append((self._consumed + len(self._buffer) - 1, list(fds)))
        messages = []
        while len(self._buffer) >= HEADER_SIZE:
            request, flags, size = HEADER.unpack_from(self._buffer, 0)
            if flags & FLAG_VERSION_MASK != VERSION:
                raise ProtocolError(f"message {request} has version {flags & FLAG_VERSION_MASK}, expected {VERSION}")
            if size > MAX_PAYLOAD:
                raise ProtocolError(f"message {request} claims a {size}-byte payload (limit {MAX_PAYLOAD})")
            end = HEADER_SIZE + size
            if len(self._buffer) < end:
                break
            payload = bytes(self._buffer[HEADER_SIZE:end])
            del self._buffer[:end]
            self._consumed += end
            messages.append(Message(request, flags, payload, tuple(self._take_fds(self._consumed))))
        return messages

    def _take_fds(self, end: int) -> list[int]:
        taken: list[int] = []
        while self._fds and self._fds[0][0] < end:
            taken += self._fds.pop(0)[1]
        if len(taken) > MAX_FDS:
            raise ProtocolError(f"{len(taken)} fds with one message (limit {MAX_FDS})")
        return taken

    def pending_fds(self) -> list[int]:
        """Fds received but not yet handed out (the edge closes them on teardown)."""
        return [fd for _, fds in self._fds for fd in fds]


# ---- payloads ------------------------------------------------------------------------------


def _exact(payload: bytes, layout: struct.Struct, what: str) -> tuple:
    if len(payload) != layout.size:
        raise ProtocolError(f"{what} payload is {len(payload)} bytes, expected {layout.size}")
    return layout.unpack(payload)


def encode_u64(value: int) -> bytes:
    return U64.pack(value)


def decode_u64(payload: bytes) -> int:
    return _exact(payload, U64, "u64")[0]


@dataclass(frozen=True, slots=True)
class VringState:
    index: int
    num: int

    def encode(self) -> bytes:
        return VRING_STATE.pack(self.index, self.num)

    @classmethod
    def decode(cls, payload: bytes) -> VringState:
        return cls(*_exact(payload, VRING_STATE, "vring state"))


@dataclass(frozen=True, slots=True)
class VringAddr:
    """Ring addresses in the front-end's virtual address space (or IOVAs with an IOTLB)."""

    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int = 0

    def encode(self) -> bytes:
        return VRING_ADDR.pack(self.index, self.flags, self.desc, self.used, self.avail, self.log)

    @classmethod
    def decode(cls, payload: bytes) -> VringAddr:
        return cls(*_exact(payload, VRING_ADDR, "vring address"))


@dataclass(frozen=True, slots=True)
class MemoryRegion:
    guest_phys_addr: int
    size: int
    user_addr: int
    mmap_offset: int

    def encode(self) -> bytes:
        return MEM_REGION.pack(self.guest_phys_addr, self.size, self.user_addr, self.mmap_offset)


def encode_mem_table(regions: list[MemoryRegion]) -> bytes:
    return MEM_TABLE_HEAD.pack(len(regions), 0) + b"".join(region.encode() for region in regions)


def decode_mem_table(payload: bytes) -> list[MemoryRegion]:
    if len(payload) < MEM_TABLE_HEAD.size:
        raise ProtocolError(f"memory table payload is {len(payload)} bytes, too short for its header")
    count, _ = MEM_TABLE_HEAD.unpack_from(payload, 0)
    if not 0 < count <= MAX_MEM_REGIONS:
        raise ProtocolError(f"memory table has {count} regions (1..{MAX_MEM_REGIONS} allowed)")
    need = MEM_TABLE_HEAD.size + count * MEM_REGION.size
    if len(payload) < need:
        raise ProtocolError(f"memory table of {count} regions needs {need} bytes, has {len(payload)}")
    return [MemoryRegion(*MEM_REGION.unpack_from(payload, MEM_TABLE_HEAD.size + i * MEM_REGION.size)) for i in range(count)]


def encode_single_region(region: MemoryRegion) -> bytes:
    """ADD_MEM_REG / REM_MEM_REG: 8 bytes of padding, then one region."""
    return bytes(8) + region.encode()


def decode_single_region(payload: bytes) -> MemoryRegion:
    if len(payload) != 8 + MEM_REGION.size:
        raise ProtocolError(f"memory region payload is {len(payload)} bytes, expected {8 + MEM_REGION.size}")
    return MemoryRegion(*MEM_REGION.unpack_from(payload, 8))


@dataclass(frozen=True, slots=True)
class ConfigSpace:
    """GET/SET_CONFIG: a window of the device's config space."""

    offset: int
    size: int
    flags: int
    data: bytes

    def encode(self) -> bytes:
        return CONFIG_HEAD.pack(self.offset, self.size, self.flags) + self.data

    @classmethod
    def decode(cls, payload: bytes) -> ConfigSpace:
        if len(payload) < CONFIG_HEAD.size:
            raise ProtocolError(f"config payload is {len(payload)} bytes, too short for its header")
        offset, size, flags = CONFIG_HEAD.unpack_from(payload, 0)
        data = payload[CONFIG_HEAD.size :]
        if size > MAX_CONFIG_SIZE or offset > MAX_CONFIG_SIZE or offset + size > MAX_CONFIG_SIZE:
            raise ProtocolError(f"config window {offset}+{size} exceeds {MAX_CONFIG_SIZE} bytes")
        if len(data) != size:
            raise ProtocolError(f"config says {size} bytes, carries {len(data)}")
        return cls(offset, size, flags, bytes(data))


@dataclass(frozen=True, slots=True)
class InflightInfo:
    mmap_size: int
    mmap_offset: int
    num_queues: int
    queue_size: int

    def encode(self) -> bytes:
        return INFLIGHT.pack(self.mmap_size, self.mmap_offset, self.num_queues, self.queue_size)

    @classmethod
    def decode(cls, payload: bytes) -> InflightInfo:
        return cls(*_exact(payload, INFLIGHT, "inflight description"))


@dataclass(frozen=True, slots=True)
class IotlbMessage:
    """struct vhost_iotlb_msg: the device IOTLB's miss/update/invalidate (issue 8 uses it)."""

    iova: int
    size: int
    user_addr: int
    perm: int
    type: int

    def encode(self) -> bytes:
        return IOTLB.pack(self.iova, self.size, self.user_addr, self.perm, self.type)

    @classmethod
    def decode(cls, payload: bytes) -> IotlbMessage:
        return cls(*_exact(payload, IOTLB, "IOTLB message"))
