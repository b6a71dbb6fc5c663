"""Domain Services messages (FWARC/2006/055): header, every type, and the byte-stream framing.

Big-endian. Sizes follow illumos where illumos checks them exactly (it drops
a message of the wrong size), and decoding accepts what Linux sends (longer
INIT_ACK/NACK, a REG_NACK without its result field). See
../shared/spec/ds-protocol.md and docs/ds.md.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Union

from ..errors import ProtocolError

HEADER = struct.Struct(">II")
MAX_MESSAGE = 1 << 20  # a DS message bigger than this is a broken or hostile peer


class MsgType(IntEnum):
    INIT_REQ = 0x00
    INIT_ACK = 0x01
    INIT_NACK = 0x02
    REG_REQ = 0x03
    REG_ACK = 0x04
    REG_NACK = 0x05
    UNREG_REQ = 0x06
    UNREG_ACK = 0x07
    UNREG_NACK = 0x08
    DATA = 0x09
    NACK = 0x0A


class Result(IntEnum):
    OK = 0x0
    REG_VER_NACK = 0x1
    REG_DUP = 0x2
    INV_HDL = 0x3
    TYPE_UNKNOWN = 0x4


CLIENT_HANDLE_BIT = 0x8000_0000  # illumos: the handle belongs to a client-side entry


class DsError(ProtocolError):
    """Bytes that are not a well-formed DS message."""


@dataclass(frozen=True, slots=True)
class InitReq:
    major: int
    minor: int


@dataclass(frozen=True, slots=True)
class InitAck:
    minor: int


@dataclass(frozen=True, slots=True)
class InitNack:
    major: int


@dataclass(frozen=True, slots=True)
class RegReq:
    handle: int
    major: int
    minor: int
    svc_id: str


@dataclass(frozen=True, slots=True)
class RegAck:
    handle: int
    minor: int


@dataclass(frozen=True, slots=True)
class RegNack:
    handle: int
    result: int
    major: int


@dataclass(frozen=True, slots=True)
class UnregReq:
    handle: int


@dataclass(frozen=True, slots=True)
class UnregAck:
    handle: int


@dataclass(frozen=True, slots=True)
class UnregNack:
    handle: int


@dataclass(frozen=True, slots=True)
class Data:
    handle: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Nack:
    handle: int
    result: int


Message = Union[InitReq, InitAck, InitNack, RegReq, RegAck, RegNack, UnregReq, UnregAck, UnregNack, Data, Nack]

_U16 = struct.Struct(">H")
_INIT_REQ = struct.Struct(">HH")
_HANDLE = struct.Struct(">Q")
DATA_BODY = HEADER.size + _HANDLE.size  # where a DATA message's payload starts
_REG_REQ_HEAD = struct.Struct(">QHH")
_REG_ACK = struct.Struct(">QH6x")
_REG_NACK = struct.Struct(">QQH6x")
_NACK = struct.Struct(">QQ")


def encode(message: Message) -> bytes:
    """The bytes on the wire: 8-byte header, then the payload."""
    kind, payload = _payload(message)
    return HEADER.pack(kind, len(payload)) + payload


_DATA_HEAD = struct.Struct(">IIQ")


def encode_data(handle: int, payload: bytes) -> bytes:
    """DATA without building a message object (the data path's encoder)."""
    return _DATA_HEAD.pack(MsgType.DATA, 8 + len(payload), handle) + payload


def _payload(message: Message) -> tuple[int, bytes]:
    if isinstance(message, InitReq):
        return MsgType.INIT_REQ, _INIT_REQ.pack(message.major, message.minor)
    if isinstance(message, InitAck):
        return MsgType.INIT_ACK, _U16.pack(message.minor)  # 10 bytes: illumos wants exactly that
    if isinstance(message, InitNack):
        return MsgType.INIT_NACK, _U16.pack(message.major)
    if isinstance(message, RegReq):
        name = message.svc_id.encode("ascii")
        if b"\0" in name or not name:
            raise ValueError(f"service id {message.svc_id!r} must be non-empty ASCII without NUL")
        # {u64, u16, u16, char[1]} padded to 16, the id from @20 (its NUL inside the padding).
        return MsgType.REG_REQ, (_REG_REQ_HEAD.pack(message.handle, message.major, message.minor) + name).ljust(16 + len(name), b"\0")
    if isinstance(message, RegAck):
        return MsgType.REG_ACK, _REG_ACK.pack(message.handle, message.minor)
    if isinstance(message, RegNack):
        return MsgType.REG_NACK, _REG_NACK.pack(message.handle, message.result, message.major)
    if isinstance(message, (UnregReq, UnregAck, UnregNack)):
        kind = {UnregReq: MsgType.UNREG_REQ, UnregAck: MsgType.UNREG_ACK, UnregNack: MsgType.UNREG_NACK}[type(message)]
        return kind, _HANDLE.pack(message.handle)
    if isinstance(message, Data):
        return MsgType.DATA, _HANDLE.pack(message.handle) + message.payload
    if isinstance(message, Nack):
        return MsgType.NACK, _NACK.pack(message.handle, message.result)
    raise TypeError(f"not a DS message: {message!r}")


def decode(kind: int, payload: bytes) -> Message:
    """One message from its type and payload; DsError when it cannot be one.

    Minimum sizes only: a peer may pad (Linux sends 12-byte INIT_ACKs), and a
    Linux REG_NACK has no result field.
    """
    parser = _PARSERS.get(kind)
    if parser is None:
        raise DsError(f"unknown DS message type 0x{kind:x}")
    try:
        return parser(payload)
    except struct.error:
        raise DsError(f"{MsgType(kind).name} truncated: {len(payload)} payload bytes") from None


def _reg_req(payload: bytes) -> RegReq:
    handle, major, minor = _REG_REQ_HEAD.unpack_from(payload, 0)
    raw = payload[_REG_REQ_HEAD.size :]
    name = raw.split(b"\0", 1)[0]
    if not name:
        raise DsError("REG_REQ without a service id")
    try:
        return RegReq(handle, major, minor, name.decode("ascii"))
    except UnicodeDecodeError:
        raise DsError("REG_REQ service id is not ASCII") from None


def _reg_nack(payload: bytes) -> RegNack:
    if len(payload) < _REG_NACK.size - 6:  # Linux's struct: {handle, major} only
        handle, major = struct.unpack_from(">QH", payload, 0)
        return RegNack(handle, Result.REG_VER_NACK, major)
    handle, result, major = struct.unpack_from(">QQH", payload, 0)
    return RegNack(handle, result, major)


_PARSERS: dict[int, Callable[[bytes], Message]] = {
    MsgType.INIT_REQ: lambda p: InitReq(*_INIT_REQ.unpack_from(p, 0)),
    MsgType.INIT_ACK: lambda p: InitAck(*_U16.unpack_from(p, 0)),
    MsgType.INIT_NACK: lambda p: InitNack(*_U16.unpack_from(p, 0)),
    MsgType.REG_REQ: _reg_req,
    MsgType.REG_ACK: lambda p: RegAck(*struct.unpack_from(">QH", p, 0)),
    MsgType.REG_NACK: _reg_nack,
    MsgType.UNREG_REQ: lambda p: UnregReq(*_HANDLE.unpack_from(p, 0)),
    MsgType.UNREG_ACK: lambda p: UnregAck(*_HANDLE.unpack_from(p, 0)),
    MsgType.UNREG_NACK: lambda p: UnregNack(*_HANDLE.unpack_from(p, 0)),
    MsgType.DATA: lambda p: Data(_HANDLE.unpack_from(p, 0)[0], bytes(p[_HANDLE.size :])),
    MsgType.NACK: lambda p: Nack(*_NACK.unpack_from(p, 0)),
}


class Framer:
    """Splits the DS byte stream (an LDC STREAM channel) into messages.

    `feed` takes whatever bytes arrived; complete messages come out of
    `messages()`. A header announcing more than MAX_MESSAGE bytes is a
    broken stream: DsError, and the caller resets the channel.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def single(self, data: bytes) -> int | None:
        """The kind of message `data` is when it is exactly one whole message and nothing is buffered.

        The usual case (the peer sends each message in one chunk); the caller
        may then take the body at HEADER.size without feeding the framer.
        """
        if not self._buffer and len(data) >= HEADER.size:
            kind, length = HEADER.unpack_from(data, 0)
            if len(data) == HEADER.size + length and length <= MAX_MESSAGE:
                return kind
        return None

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        kind = self.single(data)
        if kind is not None:
            return [(kind, data[HEADER.size :])]
        self._buffer += data
        out: list[tuple[int, bytes]] = []
        while len(self._buffer) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buffer, 0)
            if length > MAX_MESSAGE:
                self._buffer.clear()
                raise DsError(f"DS message of {length} bytes announced (limit {MAX_MESSAGE})")
            if len(self._buffer) < HEADER.size + length:
                break
            out.append((kind, bytes(self._buffer[HEADER.size : HEADER.size + length])))
            del self._buffer[: HEADER.size + length]
        return out

    def reset(self) -> None:
        self._buffer.clear()


def negotiate(ours: tuple[tuple[int, int], ...], major: int, minor: int) -> tuple[bool, int]:
    """Answer a version request: (True, minor to ACK) or (False, major to offer; 0 = none).

    `ours` is sorted highest first. The NACK offer follows illumos: our lowest
    major if all ours are above the request, our highest if all are below,
    otherwise our highest major below the request.
    """
    for our_major, our_minor in ours:
        if our_major == major:
            return True, min(our_minor, minor)
    if not ours:
        return False, 0
    majors = [m for m, _ in ours]
    if all(m > major for m in majors):
        return False, min(majors)
    if all(m < major for m in majors):
        return False, max(majors)
    return False, max(m for m in majors if m < major)
