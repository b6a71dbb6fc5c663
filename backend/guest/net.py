"""The guest's vnet as a Linux interface: a tap in a network namespace, frames both ways through the vnet client.

Programs in the namespace (ping, iperf3) then talk through
vnet -> LDC -> vhost-user -> vsw -> tap uplink like through a real NIC.

With `lso` the tap has a virtio_net_hdr and checksum/TSO4 offloads: the
namespace's kernel hands over 64 KiB TCP frames, which the vnet client sends as
LSO frames (one descriptor each instead of ~45), and takes LSO frames whole.
"""

from __future__ import annotations

import asyncio
import logging

from ..vswitch.port import Offloads
from ..vswitch.tap import TapDevice, TapPort, netlink
from ..vswitch.vnet_hdr import VirtioNetHdr
from ..vswitch.vnet_port import LSO_OFFLOADS, VnetClient

log = logging.getLogger(__name__)


class GuestInterface:
    """A tap `name` moved into `netns` (which must exist), at `address` (CIDR), wired to a vnet client."""

    def __init__(self, name: str, netns: str, address: str | None, *, mtu: int = 1500, lso: bool = False) -> None:
        self.device = TapDevice(name, mtu=mtu, vnet_hdr=lso)
        self.netns = netns
        try:
            netlink(lambda ipr: ipr.link("set", index=self.device.index, net_ns_fd=netns))
            netlink(lambda ipr: self._configure(ipr, address), netns=netns)
        except BaseException:
            self.device.close()
            raise
        self.port = TapPort(self.device, offloads=LSO_OFFLOADS if lso else Offloads.NONE)
        self.mac = bytes.fromhex(self.device.mac.replace(":", ""))

    def _configure(self, ipr, address: str | None) -> None:
        index = ipr.link_lookup(ifname=self.device.name)[0]
        if address:
            ip, _, prefix = address.partition("/")
            ipr.addr("add", index=index, address=ip, prefixlen=int(prefix or 24))
        ipr.link("set", index=index, state="up")
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

    def connect(self, client: VnetClient) -> None:
        """Frames from the namespace go out on the vnet; the vnet's frames come in (set client's on_frame to deliver).

        With LSO negotiated the kernel's TCP frames are kept within the vnet's LSO maxlen
        (gso_max_size), so each goes as one LSO frame instead of being cut in software."""
        tsolen = client.device.tx_lso_max
        if tsolen and self.port.config.offloads:
            netlink(lambda ipr: ipr.link("set", index=ipr.link_lookup(ifname=self.device.name)[0], gso_max_size=tsolen),
                    netns=self.netns)

        def send(frame: bytes, hdr: VirtioNetHdr | None = None) -> None:
            client.send(frame, hdr=hdr)  # a full TX ring drops the frame, as a NIC's would

        self.port.attach(asyncio.get_running_loop(), send)

    def deliver(self, frame: bytes, hdr: VirtioNetHdr | None = None) -> None:
        """A frame from the vnet into the namespace (an LSO frame with its GSO header)."""
        self.port.transmit(frame, hdr)

    def close(self) -> None:
        self.port.close()
