"""The guest simulator: a process that plays a sun4v guest on the LDC device.

It connects to the device's vhost-user socket with its own guest memory and
runs, per channel the device offers: the vdc client (served as an NBD
export), the vnet client (as a tap in a network namespace), and its DS
agent (with `vio ds guest-services` answering domain-shutdown and md-update;
a shutdown request ends the simulator as it would power a guest off).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field

from ..ds.agent import DsAgent, LdcPortChannel
from ..ds.framework import DomainConfig as DsDomain
from ..ds.framework import PortConfig as DsPort
from ..vdisk.client import VdcClient
from ..vhost.devices.ldc_wire import Service
from ..vswitch.frames import TAGGED_HEADER_LEN
from ..vswitch.vnet import MAX_TSO
from ..vswitch.vnet_port import VnetClient
from .link import GuestLdc
from .nbd_serve import NbdExport
from .net import GuestInterface

log = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DS_PORT = 1


@dataclass
class SimConfig:
    socket: str
    nbd: list[str] = field(default_factory=list)  # one NBD socket per vdisk channel, in order
    taps: list[tuple[str, str, str | None]] = field(default_factory=list)  # (tap, netns, address) per vnet channel
    ds_socket: str | None = None  # our DS agent's libds socket
    domain: str = "ldg1"
    dhdl: int = 5
    control: str = "primary"
    guest_services: bool = True
    memory: int = 512 << 20
    mtu: int = 1500  # the taps' MTU (layer 3), as the switch's port MTU
    no_lso: tuple[str, ...] | None = ()  # taps whose vnet offers no LSO (None: none offers it)


class GuestSim:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.ldc: GuestLdc | None = None
        self.disks: list[VdcClient] = []
        self.exports: list[NbdExport] = []
        self.vnets: list[VnetClient] = []
        self.interfaces: list[GuestInterface] = []
        self.agent: DsAgent | None = None
        self._services: subprocess.Popen | None = None

    async def start(self) -> None:
        config = self.config
        self.ldc = ldc = await GuestLdc.connect(config.socket, memory_size=config.memory)
        disks = [c for c in ldc.channels if c.info.service == Service.VDISK]
        vnets = [c for c in ldc.channels if c.info.service == Service.VNET]
        ds = [c for c in ldc.channels if c.info.service == Service.DS]
        if len(config.nbd) > len(disks) or len(config.taps) > len(vnets):
            raise ValueError(f"the device offers {len(disks)} vdisk and {len(vnets)} vnet channels; "
                             f"asked for {len(config.nbd)} NBD exports and {len(config.taps)} taps")
        if ds and config.ds_socket:
            await self._start_ds(ds[0].endpoint)
        # Every client takes its channel's events before any link comes up: the device opens
        # its ends at once, and a handshake nobody listens to would leave a session behind.
        self.disks = [VdcClient(channel.endpoint) for channel in disks[: len(config.nbd)]]  # type: ignore[arg-type]
        for channel, (tap, netns, address) in zip(vnets, config.taps):
            lso = config.no_lso is not None and tap not in config.no_lso
            interface = GuestInterface(tap, netns, address, mtu=config.mtu, lso=lso)
            self.interfaces.append(interface)
            # A frame MTU with room for a VLAN tag: from vnet 1.4 the switch counts the tag in the
            # port MTU, so a 1514-byte offer (MTU 1500) would leave 1496 bytes of L3 payload.
            frame_mtu = config.mtu + TAGGED_HEADER_LEN
            self.vnets.append(VnetClient(channel.endpoint, interface.mac, mtu=frame_mtu, on_frame=interface.deliver,  # type: ignore[arg-type]
                                         lso_maxlen=MAX_TSO if lso else 0))
        for client, path in zip(self.disks, config.nbd):
            await client.open()
            export = NbdExport(client, path, max_block=client.device.max_xfer)
            await export.start()
            self.exports.append(export)
        for vnet, interface in zip(self.vnets, self.interfaces):
            await vnet.endpoint.open()
            interface.connect(vnet)

    async def _start_ds(self, endpoint) -> None:
        config = self.config
        assert config.ds_socket is not None
        domain = DsDomain(config.domain, config.dhdl, (DsPort(DS_PORT, config.control, 0, initiator=True),))
        self.agent = DsAgent(domain, config.ds_socket)
        await self.agent.start()
        self.agent.attach(DS_PORT, LdcPortChannel(endpoint))
        endpoint.channel.open()
        endpoint.flush()

    def start_guest_services(self) -> None:
        """`vio ds guest-services` against our agent: a shutdown request SIGTERMs us after answering."""
        assert self.config.ds_socket is not None
        # setpriv --pdeathsig: the child goes when we do, even if we are SIGKILLed.
        command = ["setpriv", "--pdeathsig", "TERM", "--", sys.executable, "-m", "backend", "ds", "guest-services",
                   "--on-shutdown", f"kill -TERM {os.getpid()}"]
        env = {**os.environ, "VIO_DS_SOCKET": self.config.ds_socket, "PYTHONPATH": ROOT}
        self._services = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        log.info("guest services: %s", shlex.join(command))

    def describe(self) -> str:
        parts = [f"nbd {e.socket_path} ({e.export.size} bytes)" for e in self.exports]
        parts += [f"tap {i.device.name} in {i.netns}" for i in self.interfaces]
        if self.agent is not None:
            parts.append(f"DS agent {self.config.domain} at {self.config.ds_socket}")
        return ", ".join(parts) or "no services"

    def close(self) -> None:
        if self._services is not None and self._services.poll() is None:
            self._services.terminate()
            self._services.wait(10)
        for export in self.exports:
            export.close()
        for interface in self.interfaces:
            interface.close()
        if self.agent is not None:
            self.agent.close()
        if self.ldc is not None:
            self.ldc.close()


async def run(config: SimConfig) -> None:
    """Start, say so on stdout (one line; tests wait for it), serve until signalled or the device goes."""
    sim = GuestSim(config)
    try:
        await sim.start()
        if sim.agent is not None and config.guest_services:
            sim.start_guest_services()
        print(f"guest-sim {config.domain}: ready: {sim.describe()}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        assert sim.ldc is not None
        gone = asyncio.ensure_future(sim.ldc.closed.wait())
        await asyncio.wait([gone, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if gone.done():
            raise ConnectionError(f"the LDC device stopped: {sim.ldc.reason}")
        print(f"guest-sim {config.domain}: stopping", flush=True)
        for vnet, interface in zip(sim.vnets, sim.interfaces):
            counters = " ".join(f"{name}={value}" for name, value in vnet.device.counters.items())
            print(f"guest-sim {config.domain}: vnet {interface.device.name}: tsolen={vnet.device.tsolen} {counters}", flush=True)
    finally:
        sim.close()
