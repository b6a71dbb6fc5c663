"""md-update: the control side tells a domain its machine description changed; the domain re-reads it and answers.

Request {req_num u64}; response {req_num u64, result u32} padded to 16
bytes (Linux's struct).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import ServiceError

SVC_ID = "md-update"
OK = 0
_REQUEST = struct.Struct(">Q")
_RESPONSE = struct.Struct(">QI4x")


@dataclass(frozen=True)
class Request:
    req_num: int

    def encode(self) -> bytes:
        return _REQUEST.pack(self.req_num)

    @classmethod
    def decode(cls, payload: bytes) -> Request:
        if len(payload) < _REQUEST.size:
            raise ServiceError(f"{SVC_ID} request of {len(payload)} bytes (needs 8)")
        return cls(*_REQUEST.unpack_from(payload, 0))


@dataclass(frozen=True)
class Response:
    req_num: int
    result: int

    def encode(self) -> bytes:
        return _RESPONSE.pack(self.req_num, self.result)

    @classmethod
    def decode(cls, payload: bytes) -> Response:
        if len(payload) < 12:
            raise ServiceError(f"{SVC_ID} response of {len(payload)} bytes (needs 12)")
        return cls(*struct.unpack_from(">QI", payload, 0))
