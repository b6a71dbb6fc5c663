"""The services an LDC device channel can carry: a vds export, a vsw port, the control domain's DS port.

Each builds a `ChannelSpec` whose attach() runs the existing server-side code
(VdsDevice, VnetPort, DsAgent) on a fresh `QueueEndpoint`, opens the channel,
and returns how to take the service off it again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
from collections.abc import Callable

from ...ds.agent import DsAgent, LdcPortChannel
from ...ldc.constants import Mode
from ...vdisk.server import Export, VdsDevice
from ...vio.aio import VioEndpoint
from ...vswitch.port import PortConfig
from ...vswitch.switch import Switch
from ...vswitch.vnet_port import VnetPort
from .ldc import ChannelSpec
from .ldc_endpoint import QueueEndpoint
from .ldc_wire import ChannelInfo, Service

VNET_POOL = 2 << 20  # the switch side's TX ring and frame buffers, plus the map table
SMALL_POOL = 64 << 10  # vds and DS export nothing but their map table


def vdisk(channel_id: int, export: Export, name: str = "") -> ChannelSpec:
    """A vds export: the guest's vdc reads and writes `export` through its own memory."""

    def attach(ldc: QueueEndpoint) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        # One I/O thread per channel, as DiskServer has per client: requests run in
        # order (FLUSH is a barrier) and the event loop never waits for the disk.
        thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ldc-vds-{channel_id}")
        holder: list[VioEndpoint] = []

        def runner(work: Callable[[], list[int]], done: Callable[[list[int]], None]) -> None:
            def back(future: asyncio.Future[list[int]]) -> None:
                done(future.result())
                holder[0].pump()

            loop.run_in_executor(thread, work).add_done_callback(back)

        device = VdsDevice(export, runner)
        holder.append(VioEndpoint(ldc, device))  # type: ignore[arg-type]
        _open(ldc)

        def detach() -> None:
            thread.shutdown(wait=False)
            device.access.close()  # connection loss clears reservations (seed 1.1.6.17)

        return detach

    return ChannelSpec(ChannelInfo(channel_id, Service.VDISK, Mode.UNRELIABLE, SMALL_POOL), attach, name)


_port_numbers = itertools.count(1)


def vnet(channel_id: int, switch: Switch, mac: bytes, *, mtu: int = 1500, pvid: int = 1,
         vlans: frozenset[int] = frozenset(), name: str = "") -> ChannelSpec:
    """A port of `switch` (whose own MAC is `mac`) for the guest's vnet."""

    def attach(ldc: QueueEndpoint) -> Callable[[], None]:
        config = PortConfig(name or f"{switch.name}-ldc{next(_port_numbers)}", mtu, pvid, vlans)
        port = VnetPort(switch, ldc, mac, config)  # type: ignore[arg-type]
        _open(ldc)
        return port.detach

    return ChannelSpec(ChannelInfo(channel_id, Service.VNET, Mode.UNRELIABLE, VNET_POOL), attach, name)


def ds(channel_id: int, agent: DsAgent, port_id: int, name: str = "") -> ChannelSpec:
    """The control domain's DS port `port_id` (in `agent`'s config) to this guest."""

    def attach(ldc: QueueEndpoint) -> Callable[[], None]:
        agent.attach(port_id, LdcPortChannel(ldc))  # type: ignore[arg-type]
        _open(ldc)
        return lambda: None  # the agent keeps the port; its link went down with the endpoint

    return ChannelSpec(ChannelInfo(channel_id, Service.DS, Mode.RELIABLE, SMALL_POOL), attach, name)


def _open(ldc: QueueEndpoint) -> None:
    ldc.channel.open()
    ldc.flush()
