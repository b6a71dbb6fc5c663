"""domain-shutdown: the control side asks a domain to shut down; the domain answers, then powers off.

Request {req_num u64, ms_delay u32} (Linux's struct: 16 bytes with
padding); response {req_num u64, result u32, reason: NUL-terminated text
from offset 12}, padded to a multiple of 8 (at least 16 bytes, as Linux
sends it). A response may carry an empty reason.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import ServiceError

SVC_ID = "domain-shutdown"
OK = 0
_REQUEST = struct.Struct(">QI4x")
_HEAD = struct.Struct(">QI")


@dataclass(frozen=True)
class Request:
    req_num: int
    ms_delay: int

    def encode(self) -> bytes:
        return _REQUEST.pack(self.req_num, self.ms_delay)

    @classmethod
    def decode(cls, payload: bytes) -> Request:
        if len(payload) < _HEAD.size:
            raise ServiceError(f"{SVC_ID} request of {len(payload)} bytes (needs {_HEAD.size})")
        return cls(*_HEAD.unpack_from(payload, 0))


@dataclass(frozen=True)
class Response:
    req_num: int
    result: int
    reason: str = ""

    def encode(self) -> bytes:
        body = _HEAD.pack(self.req_num, self.result) + self.reason.encode() + b"\0"
        return body.ljust(max(16, -(-len(body) // 8) * 8), b"\0")

    @classmethod
    def decode(cls, payload: bytes) -> Response:
        return cls(*decode_answer(payload, SVC_ID))


def decode_answer(payload: bytes, service: str) -> tuple[int, int, str]:
    """{req_num, result, reason}: the answer shape domain-shutdown and domain-panic share."""
    if len(payload) < _HEAD.size:
        raise ServiceError(f"{service} response of {len(payload)} bytes (needs {_HEAD.size})")
    req_num, result = _HEAD.unpack_from(payload, 0)
    reason = payload[_HEAD.size :].split(b"\0", 1)[0].decode("utf-8", "replace")
    return req_num, result, reason
