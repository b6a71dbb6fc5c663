"""What the switch engine needs of a port, whatever is behind it.

A vnet over LDC, a virtio-net queue pair and a tap uplink are all ports: the
switch hands each of them frames through `transmit`, and they hand the switch
what they receive through `Switch.receive(port, frame)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


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


class Port(Protocol):
    config: PortConfig

    def transmit(self, frame: bytes) -> None:
        """Deliver a frame out of the switch to whatever is behind this port."""
        ...
