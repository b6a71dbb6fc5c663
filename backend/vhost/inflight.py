"""Inflight tracking for split rings (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): requests survive a back-end crash.

The front-end keeps a shared memory region (GET_INFLIGHT_FD creates it,
SET_INFLIGHT_FD hands it to every later back-end, also after a restart). Per
queue, the back-end marks each head it takes and unmarks it once the used
ring carries it. A back-end that starts on a region with marks resubmits those
heads (oldest first) before anything new, and resumes the avail ring at
`used.idx + marked`: everything taken before the crash was either completed
(counted in used.idx) or is marked.

Layout of one queue's part (little-endian, as QEMU's docs/interop/vhost-user.rst
and libvhost-user lay it out), parts packed back to back, each padded to 64 bytes:
  features u64, version u16 (0: fresh or reset, 1: in use), desc_num u16,
  last_batch_head u16, used_idx u16,
  desc_num x {inflight u8, padding 5, next u16, counter u64}
`last_batch_head`/`used_idx` close the window between writing the used ring and
clearing the mark: if the region's used_idx lags the ring's, the last head put
was completed and its mark is stale.
"""

from __future__ import annotations

import struct

from ..errors import GuestError

HEADER = struct.Struct("<QHHHH")
DESC_STATE = struct.Struct("<B5xHQ")
ALIGNMENT = 64
VERSION = 1
_VERSION_AT, _DESC_NUM_AT, _LAST_BATCH_AT, _USED_IDX_AT = 8, 10, 12, 14


def queue_region_size(queue_size: int) -> int:
    return -(-(HEADER.size + DESC_STATE.size * queue_size) // ALIGNMENT) * ALIGNMENT


def region_size(num_queues: int, queue_size: int) -> int:
    return num_queues * queue_region_size(queue_size)


class InflightRing:
    """One queue's part of the region: marks taken heads, and recovers them after a restart."""

    def __init__(self, region: memoryview, queue_size: int) -> None:
        if len(region) < queue_region_size(queue_size):
            raise GuestError(f"inflight region of {len(region)} bytes is too small for a queue of {queue_size}")
        self._region = region
        self._size = queue_size
        self._counter = 0

    def _u16(self, offset: int) -> int:
        return struct.unpack_from("<H", self._region, offset)[0]

    def _set_u16(self, offset: int, value: int) -> None:
        struct.pack_into("<H", self._region, offset, value)

    def _desc(self, head: int) -> int:
        return HEADER.size + DESC_STATE.size * head

    def recover(self, used_idx: int) -> list[int] | None:
        """At ring start: the heads to resubmit, oldest first; None for a fresh region (nothing to do)."""
        if self._u16(_VERSION_AT) == 0:
            self._region[: queue_region_size(self._size)] = bytes(queue_region_size(self._size))
            self._set_u16(_VERSION_AT, VERSION)
            self._set_u16(_DESC_NUM_AT, self._size)
            self._set_u16(_USED_IDX_AT, used_idx)
            return None
        if self._u16(_DESC_NUM_AT) != self._size:
            raise GuestError(f"inflight region tracks {self._u16(_DESC_NUM_AT)} descriptors, the queue has {self._size}")
        if self._u16(_USED_IDX_AT) != used_idx:
            last = self._u16(_LAST_BATCH_AT)
            if last >= self._size:
                raise GuestError(f"inflight region's last head {last} is outside a queue of {self._size}")
            self._region[self._desc(last)] = 0  # completed just before the crash
            self._set_u16(_USED_IDX_AT, used_idx)
        marked = []
        for head in range(self._size):
            flag, _, counter = DESC_STATE.unpack_from(self._region, self._desc(head))
            if flag:
                marked.append((counter, head))
        marked.sort()
        self._counter = marked[-1][0] + 1 if marked else 0
        return [head for _, head in marked]

    def taken(self, head: int) -> None:
        DESC_STATE.pack_into(self._region, self._desc(head), 1, 0, self._counter)
        self._counter += 1

    def untaken(self, head: int) -> None:
        """A head given back unprocessed (rewind)."""
        self._region[self._desc(head)] = 0

    def putting(self, head: int) -> None:
        """Before the used ring gets `head`."""
        self._set_u16(_LAST_BATCH_AT, head)

    def put(self, head: int, used_idx: int) -> None:
        """After the used ring carries `head` and its index moved to `used_idx`."""
        self._region[self._desc(head)] = 0
        self._set_u16(_USED_IDX_AT, used_idx)
