"""The services an LDC device channel can carry: a vds export, a vsw port, the control domain's DS port.

Each builds a `ChannelSpec` whose attach() runs the existing server-side code
(VdsDevice, VnetPort, DsAgent) on a fresh `QueueEndpoint`, opens the channel,
and returns how to take the service off it again.
"""

from __future__ import annotations

import itertools

from ...ds.agent import DsAgent, LdcPortChannel
from ...ldc.constants import Mode
from ...vdisk.serve import serve_export
from ...vdisk.server import Export
from ...vswitch.port import PortConfig
from ...vswitch.switch import Switch
from ...vswitch.vnet_port import VnetPort
from .ldc import Attached, ChannelSpec
from .ldc_endpoint import QueueEndpoint
from .ldc_wire import ChannelInfo, Service

VNET_POOL = 2 << 20  # the switch side's TX ring and frame buffers, plus the map table
JUMBO_SLOTS = 256  # a vnet's ring depth when its frames are large (backend/vswitch/vnet.py)
SMALL_POOL = 64 << 10  # vds and DS export nothing but their map table


def vdisk(channel_id: int, export: Export, name: str = "") -> ChannelSpec:
    """A vds export: the guest's vdc reads and writes `export` through its own memory."""

    def attach(ldc: QueueEndpoint) -> Attached:
        session, stop = serve_export(export, ldc, thread_name=f"ldc-vds-{channel_id}")
        return Attached(stop, session)

    return ChannelSpec(ChannelInfo(channel_id, Service.VDISK, Mode.UNRELIABLE, SMALL_POOL), attach, name)


_port_numbers = itertools.count(1)


def vnet(channel_id: int, switch: Switch, mac: bytes, *, mtu: int = 1500, pvid: int = 1,
         vlans: frozenset[int] = frozenset(), name: str = "") -> ChannelSpec:
    """A port of `switch` (whose own MAC is `mac`) for the guest's vnet."""

    def attach(ldc: QueueEndpoint) -> Attached:
        config = PortConfig(name or f"{switch.name}-ldc{next(_port_numbers)}", mtu, pvid, vlans)
        port = VnetPort(switch, ldc, mac, config)  # type: ignore[arg-type]
        _open(ldc)
        return Attached(port.detach, port.endpoint)

    return ChannelSpec(ChannelInfo(channel_id, Service.VNET, Mode.UNRELIABLE, vnet_pool(mtu)), attach, name)


def vnet_pool(mtu: int) -> int:
    """Pool a vnet channel needs: VNET_POOL covers standard frames; a jumbo MTU needs
    its ring of large frame buffers (each with a tag, the frame offset and 8-byte
    rounding: 32 bytes of slack) on top of the ring and map table VNET_POOL holds."""
    return VNET_POOL + JUMBO_SLOTS * (mtu + 32) if mtu > 1500 else VNET_POOL


def ds(channel_id: int, agent: DsAgent, port_id: int, name: str = "") -> ChannelSpec:
    """The control domain's DS port `port_id` (in `agent`'s config) to this guest."""

    def attach(ldc: QueueEndpoint) -> Attached:
        agent.attach(port_id, LdcPortChannel(ldc))  # type: ignore[arg-type]
        _open(ldc)
        return Attached(lambda: None)  # the agent keeps the port; its link went down with the endpoint

    return ChannelSpec(ChannelInfo(channel_id, Service.DS, Mode.RELIABLE, SMALL_POOL), attach, name)


def _open(ldc: QueueEndpoint) -> None:
    ldc.channel.open()
    ldc.flush()
