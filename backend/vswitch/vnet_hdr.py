"""The virtio_net_hdr that rides with a frame whose checksum or segmentation is left to its far side.

Shared by the switch engine, software offload, taps with IFF_VNET_HDR and virtio-net;
kept apart so the engine imports no I/O module.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import ConfigError

# <linux/virtio_net.h>
VIRTIO_NET_HDR_SIZE = 10  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VIRTIO_NET_HDR_MRG_RXBUF_SIZE = 12  # ... + num_buffers
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
_VNET_HDR = struct.Struct("<BBHHHH")
_NUM_BUFFERS = struct.Struct("<H")


@dataclass(frozen=True)
class VirtioNetHdr:
    """struct virtio_net_hdr(_mrg_rxbuf), little-endian as virtio 1.0 lays it out."""

    flags: int = 0
    gso_type: int = VIRTIO_NET_HDR_GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0
    #: Only in the 12-byte form; tun never writes it (we read it as 0).
    num_buffers: int = 0

    @classmethod
    def unpack(cls, data: bytes | memoryview, size: int = VIRTIO_NET_HDR_SIZE) -> VirtioNetHdr:
        check_hdr_size(size)
        if len(data) < size:
            raise ValueError(f"virtio_net_hdr needs {size} bytes, got {len(data)}")
        flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = _VNET_HDR.unpack_from(data, 0)
        num_buffers = _NUM_BUFFERS.unpack_from(data, 10)[0] if size == VIRTIO_NET_HDR_MRG_RXBUF_SIZE else 0
        return cls(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers)

    def pack(self, size: int = VIRTIO_NET_HDR_SIZE) -> bytes:
        check_hdr_size(size)
        head = _VNET_HDR.pack(
            self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset
        )
        return head + _NUM_BUFFERS.pack(self.num_buffers) if size == VIRTIO_NET_HDR_MRG_RXBUF_SIZE else head

    @property
    def is_plain(self) -> bool:
        """No checksum to finish and no segmentation to do: the frame is complete as is."""
        return not (self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) and self.gso_type == VIRTIO_NET_HDR_GSO_NONE


def check_hdr_size(size: int) -> None:
    if size not in (VIRTIO_NET_HDR_SIZE, VIRTIO_NET_HDR_MRG_RXBUF_SIZE):
        raise ConfigError(f"virtio_net_hdr size must be 10 or 12, not {size}")
