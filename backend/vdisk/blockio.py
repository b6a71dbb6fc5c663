"""The narrow byte interface that labels and SCSI emulation use to reach a disk.

The disk engine (engine.py) implements it for real backing stores; anything
else that can read and write bytes at offsets (a bytearray in a test) can too.
"""

from __future__ import annotations

from typing import Protocol


class BlockIO(Protocol):
    #: Logical block size in bytes (512 for every disk we export today).
    block_size: int
    #: Writes fail with EROFS when set.
    read_only: bool

    @property
    def size_bytes(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes:
        """Bytes at `offset`; raises OSError(EINVAL) past the end."""
        ...

    def write(self, offset: int, data: bytes) -> None:
        """Store `data` at `offset`; raises OSError(EINVAL) past the end, OSError(EROFS) if read-only."""
        ...

    def flush(self) -> None:
        """Make every earlier write stable."""
        ...


class MemoryBlockIO:
    """A BlockIO over a bytearray (tests, and scratch labels before they reach a disk)."""

    def __init__(self, size_bytes: int, block_size: int = 512, read_only: bool = False) -> None:
        self.data = bytearray(size_bytes)
        self.block_size = block_size
        self.read_only = read_only
        self.flushes = 0

    @property
    def size_bytes(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        _check_range(offset, length, len(self.data))
        return bytes(self.data[offset : offset + length])

    def write(self, offset: int, data: bytes) -> None:
        if self.read_only:
            raise OSError(30, "read-only disk")  # EROFS
        _check_range(offset, len(data), len(self.data))
        self.data[offset : offset + len(data)] = data

    def flush(self) -> None:
        self.flushes += 1


def _check_range(offset: int, length: int, size: int) -> None:
    if offset < 0 or length < 0 or offset + length > size:
        raise OSError(22, f"{length} bytes at {offset} are outside a disk of {size} bytes")  # EINVAL
