"""Frames side by side in one buffer: what a ring walk copied in, or what a sender hands over.

The C data path (backend/native/vnet.c, vsw.c) works on runs of frames, not
on one `bytes` per frame: a vnet copies a walk's worth of frames out of the
peer's memory into one `FrameBatch`, the switch groups them by station pair
and decides once per group, and a vnet queues the frames of a batch on its
TX ring in one call. Python touches a single frame only where a decision
needs it (its header) or where it leaves the data path (`frame`, `frames`).

A batch a vnet received is valid until the callback it was handed to
returns: the vnet reuses the buffer for its next walk.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import Any

from ..native import native

#: Station pairs a switch decides on per batch; frames of further pairs take the per-frame path.
MAX_GROUPS = 16


class FrameBatch:
    """Frames at `offsets` with `lengths` in one buffer (C `struct vnet_frames`).

    A negative length marks a slot without a frame (why: `vnet_rx_status`).
    `mss[i]` is not 0 for an LSO frame (one large TCP/IPv4 frame to be cut into
    segments of that many payload bytes); `flags[i]` are its descriptor's
    VNET_PKT_* flags.
    """

    __slots__ = ("_data", "_view", "capacity", "flags", "lengths", "mss", "offsets", "struct")

    def __init__(self, data: bytes | bytearray, capacity: int, offsets: list[int] | None = None,
                 lengths: list[int] | None = None, mss: list[int] | None = None) -> None:
        ffi, _ = native()
        self._data = data
        self._view = memoryview(data)
        self.capacity = capacity
        self.offsets = ffi.new("uint64_t[]", offsets or max(capacity, 1))
        self.lengths = ffi.new("int32_t[]", lengths or max(capacity, 1))
        self.flags = ffi.new("uint8_t[]", max(capacity, 1))
        self.mss = ffi.new("uint16_t[]", mss or max(capacity, 1))
        self.struct = ffi.new("struct vnet_frames *")
        self.struct.data = ffi.from_buffer("uint8_t[]", data)
        self.struct.size = len(data)
        self.struct.offsets = self.offsets
        self.struct.lengths = self.lengths
        self.struct.flags = self.flags
        self.struct.mss = self.mss

    @classmethod
    def empty(cls, frames: int, frame_size: int) -> FrameBatch:
        """Room for `frames` frames of up to `frame_size` bytes (each starts 8-aligned)."""
        return cls(bytearray(frames * (-(-frame_size // 8) * 8)), frames)

    @classmethod
    def of(cls, frames: Sequence[bytes], mss: list[int] | None = None) -> FrameBatch:
        """The given frames, in order (LSO frames where `mss` is not 0)."""
        sizes = [len(frame) for frame in frames]
        batch = cls(b"".join(frames), len(frames), list(accumulate(sizes, initial=0))[:-1], sizes, mss)
        batch.struct.count = batch.struct.good = len(frames)
        batch.struct.lso = sum(1 for m in mss or () if m)
        batch.struct.bytes = sum(sizes)
        return batch

    @property
    def count(self) -> int:
        """Slots in use (frames and receive errors)."""
        return int(self.struct.count)

    @property
    def good(self) -> int:
        """Frames present."""
        return int(self.struct.good)

    @property
    def lso(self) -> int:
        """LSO frames present."""
        return int(self.struct.lso)

    @property
    def total(self) -> int:
        """Bytes of the frames present."""
        return int(self.struct.bytes)

    def frame(self, index: int) -> bytes:
        """A copy of frame `index` (which must be present)."""
        start = self.offsets[index]
        return bytes(self._view[start : start + self.lengths[index]])

    def addresses(self, index: int) -> tuple[bytes, bytes]:
        """Destination and source address of frame `index`."""
        start = self.offsets[index]
        view = self._view
        return bytes(view[start : start + 6]), bytes(view[start + 6 : start + 12])

    def frames(self) -> list[bytes]:
        """Copies of the frames present, in order."""
        ffi, _ = native()
        n = self.count
        if not n:
            return []
        offsets, lengths = ffi.unpack(self.offsets, n), ffi.unpack(self.lengths, n)
        data = bytes(self._view[: offsets[-1] + max(lengths[-1], 0)])  # one copy, then cheap slices
        return [data[start : start + length] for start, length in zip(offsets, lengths) if length >= 0]


class PairGroups:
    """A batch's plain unicast frames grouped by (destination, source), in order of first
    appearance (`vsw_classify`); `of[i]` is frame i's group, or VSW_SLOW / VSW_NONE."""

    __slots__ = ("bytes", "count", "first", "groups", "of")

    def __init__(self, batch: FrameBatch, max_len: int) -> None:
        ffi, lib = native()
        self.of: Any = ffi.new("int32_t[]", max(batch.count, 1))
        self.first = ffi.new("uint32_t[]", MAX_GROUPS)
        self.count = ffi.new("uint32_t[]", MAX_GROUPS)
        self.bytes = ffi.new("uint64_t[]", MAX_GROUPS)
        self.groups = int(lib.vsw_classify(batch.struct, max_len, self.of, self.first, self.count, self.bytes, MAX_GROUPS))

    @property
    def grouped(self) -> int:
        """Frames in some group."""
        return sum(self.count[g] for g in range(self.groups))
