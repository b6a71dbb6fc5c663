"""The control protocol between a libds instance (a process) and its domain's DS agent.

What illumos does with ioctls on the vlds device and an event channel, we do
with one Unix SOCK_SEQPACKET connection per instance: the library sends
requests (one record each, with a sequence number), the agent answers each
with a Reply {seq, errno, body} and pushes events (registered, unregistered,
data) on the same connection, in order. Records keep their boundaries, so
there is no framing. Both directions are decoded here; a record that is not
one of ours raises ControlError (the agent then drops the connection).

Batches: one record may carry several messages (BATCH, either direction):
every record sent costs a wake-up of the reader on the other side, which is
the dominant cost of a message on a busy machine, so whoever has several
messages for the same socket at once sends them together (`pack`), and every
reader takes records apart with `unpack` before decoding them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Union

from ..errors import ProtocolError

MAX_VERSIONS = 20  # VLDS_MAX_VERS
MAX_NAME = 255  # MAXNAMELEN (256) including the NUL
MAX_SEND = 65535  # VLDS_MAX_SENDBUF_LEN: largest ds_send_msg payload
MAX_RECORD = MAX_SEND + 65  # largest control record: a MAX_SEND payload, its header and some slack


class Op(IntEnum):
    REGISTER = 1
    UNREGISTER = 2
    LOOKUP = 3
    DOMAIN = 4
    READY = 5
    SEND = 6
    NAME_TO_DHDL = 7
    DHDL_TO_NAME = 8
    ACCESS = 9  # ENXIO, EACCES or 0: lets the library name the error for a handle it does not hold
    REPLY = 0x80
    REGISTERED = 0x81
    UNREGISTERED = 0x82
    DATA = 0x83
    BATCH = 0x40  # several messages, each after its u32 length; never nested


class ControlError(ProtocolError):
    """A record on the control socket that is not a well-formed control message."""


@dataclass(frozen=True, slots=True)
class Register:
    seq: int
    is_client: bool
    versions: tuple[tuple[int, int], ...]
    svc_id: str


@dataclass(frozen=True, slots=True)
class HandleRequest:
    """UNREGISTER, DOMAIN, READY, DHDL_TO_NAME and ACCESS: one 64-bit handle."""

    op: Op
    seq: int
    handle: int


@dataclass(frozen=True, slots=True)
class Lookup:
    seq: int
    is_client: bool
    maxhdls: int
    svc_id: str


@dataclass(frozen=True, slots=True)
class Send:
    seq: int
    handle: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class NameToDhdl:
    seq: int
    name: str


@dataclass(frozen=True, slots=True)
class Reply:
    seq: int
    errno: int
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Registered:
    handle: int
    version: tuple[int, int]
    dhdl: int
    is_client: bool
    svc_id: str


@dataclass(frozen=True, slots=True)
class Unregistered:
    handle: int


@dataclass(frozen=True, slots=True)
class DataEvent:
    handle: int
    payload: bytes


Request = Union[Register, HandleRequest, Lookup, Send, NameToDhdl]
AgentMessage = Union[Reply, Registered, Unregistered, DataEvent]

_SEQ = struct.Struct(">BI")
_REGISTER = struct.Struct(">BIBB")
_VERSION = struct.Struct(">HH")
_HANDLE = struct.Struct(">BIQ")
SEND_HEAD = _HANDLE  # op, seq, handle: what precedes a SEND's payload
_LOOKUP = struct.Struct(">BIBI")
_REPLY = struct.Struct(">BII")
_REGISTERED = struct.Struct(">BQHHQB")
_EVENT = struct.Struct(">BQ")
U64 = struct.Struct(">Q")
_LENGTH = struct.Struct(">I")
_BATCH = bytes([Op.BATCH])
HANDLE_OPS = frozenset({Op.UNREGISTER, Op.DOMAIN, Op.READY, Op.DHDL_TO_NAME, Op.ACCESS})


def encode(message: Request | AgentMessage) -> bytes:
    if isinstance(message, Register):
        head = _REGISTER.pack(Op.REGISTER, message.seq, int(message.is_client), len(message.versions))
        return head + b"".join(_VERSION.pack(*v) for v in message.versions) + message.svc_id.encode()
    if isinstance(message, HandleRequest):
        return _HANDLE.pack(message.op, message.seq, message.handle)
    if isinstance(message, Lookup):
        return _LOOKUP.pack(Op.LOOKUP, message.seq, int(message.is_client), message.maxhdls) + message.svc_id.encode()
    if isinstance(message, Send):
        return encode_send(message.seq, message.handle, message.payload)
    if isinstance(message, NameToDhdl):
        return _SEQ.pack(Op.NAME_TO_DHDL, message.seq) + message.name.encode()
    if isinstance(message, Reply):
        return _REPLY.pack(Op.REPLY, message.seq, message.errno) + message.body
    if isinstance(message, Registered):
        return _REGISTERED.pack(Op.REGISTERED, message.handle, *message.version, message.dhdl, int(message.is_client)) + message.svc_id.encode()
    if isinstance(message, Unregistered):
        return _EVENT.pack(Op.UNREGISTERED, message.handle)
    if isinstance(message, DataEvent):
        return encode_data(message.handle, message.payload)
    raise TypeError(f"not a control message: {message!r}")


def encode_send(seq: int, handle: int, payload: bytes) -> bytes:
    """The hot path's request, without building an object."""
    return _HANDLE.pack(Op.SEND, seq, handle) + payload


def encode_data(handle: int, payload: bytes) -> bytes:
    """The hot path's event, without building an object."""
    return _EVENT.pack(Op.DATA, handle) + payload


def pack(records: list[bytes]) -> list[bytes]:
    """The records to send for `records` (in order): batches of at most MAX_RECORD bytes, lone ones bare."""
    out: list[bytes] = []
    group: list[bytes] = []
    size = len(_BATCH)
    for record in records:
        if group and size + _LENGTH.size + len(record) > MAX_RECORD:
            out.append(_batch(group))
            group, size = [], len(_BATCH)
        group.append(record)
        size += _LENGTH.size + len(record)
    if group:
        out.append(_batch(group))
    return out


def _batch(group: list[bytes]) -> bytes:
    if len(group) == 1:
        return group[0]
    return _BATCH + b"".join(_LENGTH.pack(len(record)) + record for record in group)


def unpack(record: bytes) -> list[bytes]:
    """The messages in one received record (one, unless it is a BATCH); ControlError when a length lies."""
    if record[:1] != _BATCH:
        return [record]
    messages = []
    offset = len(_BATCH)
    while offset < len(record):
        if offset + _LENGTH.size > len(record):
            raise ControlError(f"BATCH truncated in a length at byte {offset}")
        (length,) = _LENGTH.unpack_from(record, offset)
        offset += _LENGTH.size
        if length == 0 or offset + length > len(record):
            raise ControlError(f"BATCH message of {length} bytes at byte {offset} of {len(record)}")
        if record[offset] == Op.BATCH:
            raise ControlError("nested BATCH")
        messages.append(record[offset : offset + length])
        offset += length
    if not messages:
        raise ControlError("empty BATCH")
    return messages


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ControlError(f"{what} is not UTF-8") from None


def _register(record: bytes) -> Register:
    _, seq, is_client, count = _REGISTER.unpack_from(record, 0)
    end = _REGISTER.size + count * _VERSION.size
    if len(record) < end:
        raise ControlError(f"REGISTER announces {count} versions in {len(record)} bytes")
    versions = tuple(_VERSION.unpack_from(record, _REGISTER.size + i * _VERSION.size) for i in range(count))
    return Register(seq, bool(is_client), versions, _text(record[end:], "service id"))


def _handle_request(record: bytes) -> HandleRequest:
    op, seq, handle = _HANDLE.unpack_from(record, 0)
    return HandleRequest(Op(op), seq, handle)


def _lookup(record: bytes) -> Lookup:
    _, seq, is_client, maxhdls = _LOOKUP.unpack_from(record, 0)
    return Lookup(seq, bool(is_client), maxhdls, _text(record[_LOOKUP.size :], "service id"))


def _send(record: bytes) -> Send:
    _, seq, handle = _HANDLE.unpack_from(record, 0)
    return Send(seq, handle, record[_HANDLE.size :])


def _name(record: bytes) -> NameToDhdl:
    _, seq = _SEQ.unpack_from(record, 0)
    return NameToDhdl(seq, _text(record[_SEQ.size :], "domain name"))


def _reply(record: bytes) -> Reply:
    _, seq, errno = _REPLY.unpack_from(record, 0)
    return Reply(seq, errno, record[_REPLY.size :])


def _registered(record: bytes) -> Registered:
    _, handle, major, minor, dhdl, is_client = _REGISTERED.unpack_from(record, 0)
    return Registered(handle, (major, minor), dhdl, bool(is_client), _text(record[_REGISTERED.size :], "service id"))


_REQUESTS: dict[int, Callable[[bytes], Request]] = {
    Op.REGISTER: _register,
    Op.LOOKUP: _lookup,
    Op.SEND: _send,
    Op.NAME_TO_DHDL: _name,
    **{op: _handle_request for op in HANDLE_OPS},
}
_AGENT_MESSAGES: dict[int, Callable[[bytes], AgentMessage]] = {
    Op.REPLY: _reply,
    Op.REGISTERED: _registered,
    Op.UNREGISTERED: lambda r: Unregistered(_EVENT.unpack_from(r, 0)[1]),
    Op.DATA: lambda r: DataEvent(_EVENT.unpack_from(r, 0)[1], r[_EVENT.size :]),
}


def decode_request(record: bytes) -> Request:
    """What a library sent the agent."""
    return _decode(_REQUESTS, record)


def decode_agent_message(record: bytes) -> AgentMessage:
    """What the agent sent a library."""
    return _decode(_AGENT_MESSAGES, record)


def _decode(table: dict, record: bytes):  # type: ignore[no-untyped-def]
    if not record:
        raise ControlError("empty control record")
    parser = table.get(record[0])
    if parser is None:
        raise ControlError(f"unknown control message 0x{record[0]:02x}")
    try:
        return parser(record)
    except struct.error:
        raise ControlError(f"control message 0x{record[0]:02x} truncated ({len(record)} bytes)") from None


def check_service_id(svc_id: str) -> bool:
    """Whether a service id may be registered: 1..255 ASCII bytes, no NUL (vlds/MAXNAMELEN rules)."""
    return 0 < len(svc_id) <= MAX_NAME and svc_id.isascii() and "\0" not in svc_id


def check_versions(versions: tuple[tuple[int, int], ...]) -> bool:
    """1..20 versions, highest first (majors, and minors within a major, must not increase)."""
    if not 0 < len(versions) <= MAX_VERSIONS:
        return False
    if any(not (0 <= part <= 0xFFFF) for v in versions for part in v):
        return False
    return all(later <= earlier for earlier, later in zip(versions, versions[1:]))
