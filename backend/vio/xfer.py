"""The attribute `xfer_mode`: an enumeration before VIO 1.2, a bit mask from 1.2."""

from __future__ import annotations

from enum import Flag, auto

from ..errors import ProtocolError
from .constants import XferBits, XferMode


class Transfer(Flag):
    """Transfer modes, independent of how a version encodes them."""

    PKT = auto()
    DESC = auto()
    DRING = auto()


_ENUM = {Transfer.PKT: XferMode.PKT, Transfer.DESC: XferMode.DESC, Transfer.DRING: XferMode.DRING}
_BITS = {Transfer.PKT: XferBits.PKT, Transfer.DESC: XferBits.DESC, Transfer.DRING: XferBits.DRING}


def uses_bitmask(version: tuple[int, int]) -> bool:
    return version >= (1, 2)


def encode_xfer_mode(version: tuple[int, int], modes: Transfer) -> int:
    """The byte for `modes` under `version` (below 1.2 only one mode fits)."""
    if uses_bitmask(version):
        return sum(int(bit) for mode, bit in _BITS.items() if mode in modes)
    if modes not in _ENUM:
        raise ValueError(f"version {version[0]}.{version[1]} carries exactly one transfer mode, not {modes}")
    return int(_ENUM[modes])


def decode_xfer_mode(version: tuple[int, int], value: int) -> Transfer:
    """The modes a peer's `xfer_mode` byte names; ProtocolError for a value the version does not define."""
    if uses_bitmask(version):
        known = sum(int(bit) for bit in _BITS.values())
        if not value or value & ~known:
            raise ProtocolError(f"xfer_mode 0x{value:02x} is not a mask of PKT 0x1, DESC 0x2, DRING 0x4")
        result = Transfer(0)
        for mode, bit in _BITS.items():
            if value & bit:
                result |= mode
        return result
    for mode, number in _ENUM.items():
        if value == number:
            return mode
    raise ProtocolError(f"xfer_mode {value} is not PKT 1, DESC 2 or DRING 3 (version {version[0]}.{version[1]})")
