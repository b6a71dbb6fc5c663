"""Payload codecs of the well-known DS services (the bytes after the 16-byte DATA header)."""

from ...errors import ProtocolError


class ServiceError(ProtocolError):
    """A service payload that is not a well-formed message of that service."""


__all__ = ["ServiceError"]
