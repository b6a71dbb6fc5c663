"""VIO messages: the 8-byte tag and every generic message, big-endian.

Each message is a frozen dataclass with `encode()`; `decode(data)` picks
the class from the tag's `stype_env` and checks lengths and counts. Device
payloads (ATTR_INFO, descriptor payloads, DDS bodies) stay bytes here: the
device class that owns them parses them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import ClassVar, Union

from ..errors import ProtocolError
from ..ldc.memory import TRANSPORT_COOKIE, TransportCookie
from .constants import CTRL_MSG_SIZE, MAX_RING_COOKIES, Env, MsgType, SubType

TAG = struct.Struct(">BBHI")


class MessageError(ProtocolError):
    """Bytes that are not a well-formed VIO message."""


@dataclass(frozen=True, slots=True)
class Tag:
    type: int
    stype: int
    stype_env: int
    sid: int

    def encode(self) -> bytes:
        return TAG.pack(self.type, self.stype, self.stype_env, self.sid)

    def reply(self, stype: int, sid: int | None = None) -> Tag:
        """The same tag with another subtype (and optionally session id)."""
        return Tag(self.type, stype, self.stype_env, self.sid if sid is None else sid)


def _pad(body: bytes, size: int = CTRL_MSG_SIZE) -> bytes:
    return body.ljust(size, b"\0")


@dataclass(frozen=True, slots=True)
class VerInfo:
    tag: Tag
    major: int
    minor: int
    dev_class: int
    LAYOUT: ClassVar = struct.Struct(">HHB")

    def encode(self) -> bytes:
        return _pad(self.tag.encode() + self.LAYOUT.pack(self.major, self.minor, self.dev_class))

    @classmethod
    def parse(cls, tag: Tag, body: memoryview) -> VerInfo:
        return cls(tag, *_unpack(cls.LAYOUT, body, "VER_INFO"))


@dataclass(frozen=True, slots=True)
class AttrInfo:
    """ATTR_INFO: the device class owns the 48 bytes after the tag."""

    tag: Tag
    payload: bytes

    def encode(self) -> bytes:
        return _pad(self.tag.encode() + self.payload)

    @classmethod
    def parse(cls, tag: Tag, body: memoryview) -> AttrInfo:
        return cls(tag, _fixed(body, CTRL_MSG_SIZE - TAG.size, "ATTR_INFO"))


@dataclass(frozen=True, slots=True)
class DringReg:
    tag: Tag
    dring_ident: int
    num_descr: int
    descr_size: int
    options: int
    cookies: tuple[TransportCookie, ...] = ()
    LAYOUT: ClassVar = struct.Struct(">QIIH2xI")

    def encode(self) -> bytes:
        head = self.LAYOUT.pack(self.dring_ident, self.num_descr, self.descr_size, self.options, len(self.cookies))
        return self.tag.encode() + head + b"".join(c.encode() for c in self.cookies)

    @classmethod
    def parse(cls, tag: Tag, body: memoryview) -> DringReg:
        ident, num, size, options, ncookies = _unpack(cls.LAYOUT, body, "DRING_REG")
        if ncookies > MAX_RING_COOKIES:
            raise MessageError(f"DRING_REG with {ncookies} cookies (at most {MAX_RING_COOKIES})")
        start = cls.LAYOUT.size
        if len(body) < start + ncookies * TRANSPORT_COOKIE.size:
            raise MessageError(f"DRING_REG says {ncookies} cookies but carries {len(body) - start} bytes of them")
        cookies = tuple(TransportCookie.decode(body, start + i * TRANSPORT_COOKIE.size) for i in range(ncookies))
        return cls(tag, ident, num, size, options, cookies)


@dataclass(frozen=True, slots=True)
class DringUnreg:
    tag: Tag
    dring_ident: int
    LAYOUT: ClassVar = struct.Struct(">Q")

    def encode(self) -> bytes:
        return _pad(self.tag.encode() + self.LAYOUT.pack(self.dring_ident))

    @classmethod
    def parse(cls, tag: Tag, body: memoryview) -> DringUnreg:
        return cls(tag, *_unpack(cls.LAYOUT, body, "DRING_UNREG"))


@dataclass(frozen=True, slots=True)
class Rdx:
    tag: Tag

    def encode(self) -> bytes:
        return _pad(self.tag.encode())

    @classmethod
    def parse(cls, tag: Tag, body: memoryview) -> Rdx:
        return cls(tag)


@dataclass(frozen=True, slots=True)
class DringData:
    tag: Tag
    seq: int
    dring_ident: int
    start_idx: int
    end_idx: int
    state: int = 0
    LAYOUT: ClassVar = struct.Struct(">QQIIB")

    def encode(self) -> bytes:
        return _pad(self.tag.encode() + self.LAYOUT.pack(self.seq, self.dring_ident, self.start_idx, self.end_idx, self.state))

    @classmethod
    def parse(cls, tag: Tag, body: memoryview) -> DringData:
        return cls(tag, *_unpack(cls.LAYOUT, body, "DRING_DATA"))


@dataclass(frozen=True, slots=True)
class DescData:
    """An in-band descriptor: the device payload without the ring header."""

    tag: Tag
    seq: int
    desc_handle: int
    payload: bytes
    LAYOUT: ClassVar = struct.Struct(">QQ")

    def encode(self) -> bytes:
        return self.tag.encode() + self.LAYOUT.pack(self.seq, self.desc_handle) + self.payload

    @classmethod
    def parse(cls, tag: Tag, body: memoryview) -> DescData:
        seq, handle = _unpack(cls.LAYOUT, body, "DESC_DATA")
        return cls(tag, seq, handle, bytes(body[cls.LAYOUT.size :]))


@dataclass(frozen=True, slots=True)
class DdsInfo:
    tag: Tag
    dds_class: int
    dds_subclass: int
    dds_req_id: int
    body: bytes = field(default=b"")
    LAYOUT: ClassVar = struct.Struct(">BB2xI")
    BODY_SIZE: ClassVar = CTRL_MSG_SIZE - TAG.size - 8

    def encode(self) -> bytes:
        if len(self.body) > self.BODY_SIZE:
            raise MessageError(f"DDS body of {len(self.body)} bytes exceeds {self.BODY_SIZE}")
        return _pad(self.tag.encode() + self.LAYOUT.pack(self.dds_class, self.dds_subclass, self.dds_req_id) + self.body)

    @classmethod
    def parse(cls, tag: Tag, body: memoryview) -> DdsInfo:
        dds_class, subclass, req_id = _unpack(cls.LAYOUT, body, "DDS_INFO")
        return cls(tag, dds_class, subclass, req_id, _fixed(body[cls.LAYOUT.size :], cls.BODY_SIZE, "DDS_INFO body"))


@dataclass(frozen=True, slots=True)
class PktData:
    """Packet-mode data: a sequence number and the data itself."""

    tag: Tag
    seq: int
    data: bytes
    LAYOUT: ClassVar = struct.Struct(">Q")

    def encode(self) -> bytes:
        return self.tag.encode() + self.LAYOUT.pack(self.seq) + self.data

    @classmethod
    def parse(cls, tag: Tag, body: memoryview) -> PktData:
        (seq,) = _unpack(cls.LAYOUT, body, "PKT_DATA")
        return cls(tag, seq, bytes(body[cls.LAYOUT.size :]))


@dataclass(frozen=True, slots=True)
class DeviceMessage:
    """A device-class message (stype_env 0x0100 and up, e.g. VNET_MCAST_INFO)."""

    tag: Tag
    payload: bytes

    def encode(self) -> bytes:
        return self.tag.encode() + self.payload

    @classmethod
    def parse(cls, tag: Tag, body: memoryview) -> DeviceMessage:
        return cls(tag, bytes(body))


Message = Union[VerInfo, AttrInfo, DringReg, DringUnreg, Rdx, DringData, DescData, DdsInfo, PktData, DeviceMessage]

_PARSERS: dict[tuple[int, int], Callable[[Tag, memoryview], Message]] = {
    (MsgType.CTRL, Env.VER_INFO): VerInfo.parse,
    (MsgType.CTRL, Env.ATTR_INFO): AttrInfo.parse,
    (MsgType.CTRL, Env.DRING_REG): DringReg.parse,
    (MsgType.CTRL, Env.DRING_UNREG): DringUnreg.parse,
    (MsgType.CTRL, Env.RDX): Rdx.parse,
    (MsgType.CTRL, Env.DDS_INFO): DdsInfo.parse,
    (MsgType.DATA, Env.PKT_DATA): PktData.parse,
    (MsgType.DATA, Env.DESC_DATA): DescData.parse,
    (MsgType.DATA, Env.DRING_DATA): DringData.parse,
}
_SUBTYPES = frozenset(int(s) for s in SubType)
DEVICE_ENV_FIRST = 0x0100


def decode_tag(data: bytes | bytearray | memoryview) -> Tag:
    if len(data) < TAG.size:
        raise MessageError(f"VIO message of {len(data)} bytes is shorter than its 8-byte tag")
    return Tag(*TAG.unpack_from(data, 0))


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Parse one VIO message; raises MessageError with the reason."""
    view = memoryview(data).cast("B")
    tag = decode_tag(view)
    if tag.stype not in _SUBTYPES:
        raise MessageError(f"unknown VIO subtype 0x{tag.stype:02x}")
    parser = _PARSERS.get((tag.type, tag.stype_env))
    if parser is None:
        if tag.stype_env >= DEVICE_ENV_FIRST and tag.type in (MsgType.CTRL, MsgType.DATA):
            return DeviceMessage.parse(tag, view[TAG.size :])
        raise MessageError(f"unknown VIO message type 0x{tag.type:02x} envelope 0x{tag.stype_env:04x}")
    return parser(tag, view[TAG.size :])


def _unpack(layout: struct.Struct, body: memoryview, what: str) -> tuple:
    if len(body) < layout.size:
        raise MessageError(f"{what} truncated: {len(body) + TAG.size} bytes, needs {layout.size + TAG.size}")
    return layout.unpack_from(body, 0)


def _fixed(body: memoryview, size: int, what: str) -> bytes:
    if len(body) < size:
        raise MessageError(f"{what} truncated: {len(body)} of {size} bytes")
    return bytes(body[:size])
