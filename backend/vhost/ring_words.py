"""The split ring's 16-bit words, read and written in one access each.

The driver and the device move the ring indices (avail idx, used idx) and the
event-index words (used_event, avail_event) while the other side runs.
`struct.pack_into` zeroes a field before writing its value and
`struct.unpack_from` reads a field byte by byte, so a peer looking at that
moment sees 0, or half an old and half a new index: a device that read an
avail index of 0 took the queue for broken and stopped the guest's channels.
A memoryview cast to unsigned 16-bit loads and stores each word whole.

Where one side stores its word and then loads the other side's (publish an
index, then check whether the peer wants a wake-up), `fence()` keeps the CPU
from doing the load first: without it both sides can decide that the other
one needs no notification, and the queue stalls.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from ..native import native

if sys.byteorder != "little":  # virtio 1.x rings are little-endian; native words are used as they are
    raise ImportError("the virtqueue code runs on little-endian hosts only")


def words(view: memoryview) -> memoryview:
    """`view` (bytes, even length) as 16-bit words: `words(v)[i]` is the field at byte 2*i."""
    return view.cast("B").cast("H")


fence: Callable[[], None] = native()[1].full_fence
