"""var-config (and var-config-backup): a domain sets or deletes firmware (OBP) variables kept by the control side.

Every message starts with type u32. SET_REQ carries "name\\0value\\0",
DELETE_REQ "name\\0"; responses carry result u32. Requests are padded to a
multiple of 4 bytes and a whole DS message may not exceed 512 bytes
(Linux's limits), so a request payload is at most 496 bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Union

from . import ServiceError

SVC_ID = "var-config"
BACKUP_SVC_ID = "var-config-backup"
MAX_PAYLOAD = 512 - 16
_TYPE = struct.Struct(">I")
_RESPONSE = struct.Struct(">II")


class Type(IntEnum):
    SET_REQ = 0x0
    DELETE_REQ = 0x1
    SET_RESP = 0x2
    DELETE_RESP = 0x3


class Result(IntEnum):
    SUCCESS = 0x0
    NO_SPACE = 0x1
    INVALID_VAR = 0x2
    INVALID_VAL = 0x3
    NOT_PRESENT = 0x4


@dataclass(frozen=True)
class SetRequest:
    name: str
    value: str


@dataclass(frozen=True)
class DeleteRequest:
    name: str


@dataclass(frozen=True)
class Response:
    type: Type
    result: int


Message = Union[SetRequest, DeleteRequest, Response]


def encode(message: Message) -> bytes:
    if isinstance(message, Response):
        return _RESPONSE.pack(message.type, message.result)
    if isinstance(message, SetRequest):
        body = _TYPE.pack(Type.SET_REQ) + _text(message.name) + _text(message.value)
    else:
        body = _TYPE.pack(Type.DELETE_REQ) + _text(message.name)
    body = body.ljust(-(-len(body) // 4) * 4, b"\0")
    if len(body) > MAX_PAYLOAD:
        raise ValueError(f"var-config request of {len(body)} bytes (limit {MAX_PAYLOAD})")
    return body


def _text(text: str) -> bytes:
    raw = text.encode()
    if b"\0" in raw:
        raise ValueError(f"{text!r} contains NUL")
    return raw + b"\0"


def decode(payload: bytes) -> Message:
    if len(payload) < _TYPE.size:
        raise ServiceError(f"var-config message of {len(payload)} bytes")
    (kind,) = _TYPE.unpack_from(payload, 0)
    if kind in (Type.SET_RESP, Type.DELETE_RESP):
        if len(payload) < _RESPONSE.size:
            raise ServiceError("var-config response without its result")
        return Response(Type(kind), _RESPONSE.unpack_from(payload, 0)[1])
    if kind not in (Type.SET_REQ, Type.DELETE_REQ):
        raise ServiceError(f"unknown var-config message type {kind}")
    strings = payload[_TYPE.size :].split(b"\0")
    wanted = 2 if kind == Type.SET_REQ else 1
    if len(strings) <= wanted or not strings[0]:
        raise ServiceError("var-config request without its NUL-terminated name" + (" and value" if wanted == 2 else ""))
    try:
        name, *rest = (s.decode() for s in strings[:wanted])
    except UnicodeDecodeError:
        raise ServiceError("var-config name or value is not UTF-8") from None
    return SetRequest(name, rest[0]) if kind == Type.SET_REQ else DeleteRequest(name)
