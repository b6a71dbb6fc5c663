"""A tap uplink that carries checksum and TCP segmentation offloads both ways.

`TapDevice(vnet_hdr=True)` already puts a virtio_net_hdr in front of every
frame; TUNSETOFFLOAD then tells the kernel which unfinished frames we take
(TUN_F_CSUM: partial checksums; TUN_F_TSO4/6: up to 64 KiB TCP frames;
TUN_F_TSO_ECN: those with CWR). Writes need no such promise: the kernel
accepts a GSO frame from us whenever the header describes it, and finishes
or segments it itself where the stack needs that.

`OffloadTapPort` is the switch port over such a tap: large frames from the
host's stack go into the switch through `switch_offloaded`, large frames
from a virtio-net guest come out through `deliver` and reach the kernel as
one write.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
from collections.abc import Callable

from ..errors import GuestError
from .offload import ALL, Offloads
from .offload_ports import deliver
from .port import PortConfig
from .tap import (
    FRAMES_PER_WAKEUP,
    VIRTIO_NET_HDR_SIZE,
    TapCounters,
    TapDevice,
    VirtioNetHdr,
)

log = logging.getLogger(__name__)

TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
_TUN_FLAGS = {Offloads.CSUM: TUN_F_CSUM, Offloads.TSO4: TUN_F_TSO4, Offloads.TSO6: TUN_F_TSO6, Offloads.ECN: TUN_F_TSO_ECN}
_DROP_ERRNOS = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.EIO})
_ZERO_HDR = VirtioNetHdr().pack(VIRTIO_NET_HDR_SIZE)

# (port, frame, hdr): the switch entry for a frame that came with a header
OnFrame = Callable[[bytes, VirtioNetHdr], None]


def set_tap_offloads(device: TapDevice, offloads: Offloads) -> None:
    """TUNSETOFFLOAD: which unfinished frames the kernel may hand us (TSO needs CSUM)."""
    if device.vnet_hdr_size != VIRTIO_NET_HDR_SIZE:
        raise ValueError(f"{device.name}: offloads need a tap opened with a {VIRTIO_NET_HDR_SIZE}-byte vnet header")
    if offloads & (Offloads.TSO4 | Offloads.TSO6 | Offloads.ECN) and not offloads & Offloads.CSUM:
        raise ValueError("segmentation offloads need checksum offload too")
    flags = 0
    for offload, bit in _TUN_FLAGS.items():
        if offloads & offload:
            flags |= bit
    fcntl.ioctl(device.fileno(), TUNSETOFFLOAD, flags)  # the flags are the argument itself, not a pointer


class OffloadTapPort:
    """A switch port (an OffloadPort) over a tap opened with a 10-byte vnet header and offloads on."""

    def __init__(self, device: TapDevice, config: PortConfig | None = None, *, offloads: Offloads = ALL) -> None:
        set_tap_offloads(device, offloads)
        self.device = device
        self.config = config if config is not None else PortConfig(name=device.name, mtu=device.mtu)
        self.counters = TapCounters()
        #: GSO frames written to the kernel whole / received whole from it.
        self.tx_gso = 0
        self.rx_gso = 0
        self._offloads = offloads
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_frame: OnFrame | None = None

    def offloads(self) -> Offloads:
        return self._offloads

    def attach(self, loop: asyncio.AbstractEventLoop, on_frame: OnFrame) -> None:
        """Hand every frame the kernel sends us, with its header, to on_frame (see switch_offloaded)."""
        if self._loop is not None:
            raise RuntimeError(f"{self.config.name} is already attached")
        self._loop, self._on_frame = loop, on_frame
        loop.add_reader(self.device.fileno(), self._readable)

    def detach(self) -> None:
        if self._loop is not None:
            if self.device.fileno() >= 0:
                self._loop.remove_reader(self.device.fileno())
            self._loop = self._on_frame = None

    def close(self) -> None:
        self.detach()
        self.device.close()

    def _readable(self) -> None:
        for _ in range(FRAMES_PER_WAKEUP):
            try:
                data = self.device.read()
            except InterruptedError:
                continue
            except OSError as e:
                self.counters.errors += 1
                log.warning("%s: read failed (%s); no longer reading", self.config.name, e.strerror)
                self.detach()
                return
            if data is None or self._on_frame is None:
                return
            if len(data) < VIRTIO_NET_HDR_SIZE:
                self.counters.errors += 1
                continue
            hdr = VirtioNetHdr.unpack(data)
            frame = data[VIRTIO_NET_HDR_SIZE:]
            self.counters.rx_frames += 1
            self.counters.rx_bytes += len(frame)
            self.rx_gso += hdr.gso_type != 0
            try:
                self._on_frame(frame, hdr)
            except GuestError as e:
                self.counters.errors += 1
                log.debug("%s: frame from the kernel refused: %s", self.config.name, e)
            except Exception:
                self.counters.errors += 1
                log.exception("%s: the switch failed on a received frame", self.config.name)

    def transmit(self, frame: bytes) -> None:
        """From the switch: the carried whole frame with its header if there is one, else a plain frame."""
        if self.device.closed:
            self.counters.errors += 1
            return
        deliver(frame, self._offloads, self._write)

    def _write(self, frame: bytes, hdr: VirtioNetHdr | None) -> None:
        try:
            self.device.write((hdr.pack(VIRTIO_NET_HDR_SIZE) if hdr is not None else _ZERO_HDR) + frame)
        except OSError as e:
            if e.errno in _DROP_ERRNOS:
                self.counters.tx_dropped += 1
            else:
                self.counters.errors += 1
                log.debug("%s: write of %d bytes failed: %s", self.config.name, len(frame), e.strerror)
            return
        self.counters.tx_frames += 1
        self.counters.tx_bytes += len(frame)
        self.tx_gso += hdr is not None and hdr.gso_type != 0
