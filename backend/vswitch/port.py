"""What the switch engine needs of a port, whatever is behind it.

A vnet over LDC, a virtio-net queue pair and a tap uplink are all ports: the
switch hands each of them frames through `transmit`, and they hand the switch
what they receive through `Switch.receive(port, frame, now, hdr)`.

A port that gets frames in runs (a vnet's ring walk) may hand them in with
`Switch.receive_batch`, and a port may also take runs out: with a method
`transmit_groups(batch, groups, selected)` (see VnetPort) the switch hands it
the frames of whole station-pair groups in one call.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .vnet_hdr import VirtioNetHdr


class Offloads(enum.Flag):
    """Unfinished frames a port can take (as negotiated with whatever is behind it)."""

    NONE = 0
    CSUM = enum.auto()
    TSO4 = enum.auto()
    TSO6 = enum.auto()
    ECN = enum.auto()


@dataclass
class PortConfig:
    """Per-port switching policy."""

    name: str
    #: Largest L3 payload (the interface MTU); frames carry 14 header bytes more (18 with a tag).
    mtu: int = 1500
    #: VLAN of untagged frames (IEEE 802.1Q PVID).
    pvid: int = 1
    #: VLANs the port may carry tagged (besides the PVID, which goes untagged).
    vlans: frozenset[int] = field(default_factory=frozenset)
    #: The port understands 802.1Q tags (a vnet that negotiated 1.3+, a trunk uplink).
    tagged: bool = False
    #: Checksum and segmentation work the far side does itself; the switch finishes
    #: frames in software for a port that lacks what a frame needs.
    offloads: Offloads = Offloads.NONE


class Port(Protocol):
    config: PortConfig

    def transmit(self, frame: bytes, hdr: VirtioNetHdr | None = None) -> None:
        """Deliver a frame out of the switch to whatever is behind this port.

        `hdr` (the frame's virtio_net_hdr) comes only with an unfinished frame,
        and only to a port whose `config.offloads` cover what it needs; a port
        without offloads is always called with the frame alone.
        """
        ...
