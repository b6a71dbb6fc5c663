"""The service-domain side for one guest: its domain config turned into an LDC device on a vhost-user socket.

`DomainConfig` lists what the guest gets (disks, vnet ports on a switch, a DS
port); `serve_domain` builds the engines, the switch with its tap uplink, the
control domain's DS agent, and the `LdcDevice` carrying one channel each.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from ..ds.agent import DsAgent
from ..ds.framework import DomainConfig as DsDomain
from ..ds.framework import PortConfig as DsPort
from ..errors import ConfigError
from ..vdisk.devid import device_id_for
from ..vdisk.engine import DiskEngine
from ..vdisk.server import Export
from ..vhost.aio import VhostUserServer
from ..vhost.devices import ldc_services
from ..vhost.devices.ldc import ChannelSpec, LdcDevice
from ..vswitch.switch import Switch
from ..vswitch.tap import TapPort, open_uplink

DS_PORT = 1


@dataclass
class DiskSpec:
    name: str
    path: str
    read_only: bool = False
    size: int | None = None


@dataclass
class DomainConfig:
    """What one guest is given. The DS port is the control domain's (`control`, dhdl 0) side."""

    socket: str
    guest: str = "ldg1"
    guest_dhdl: int = 5
    disks: list[DiskSpec] = field(default_factory=list)
    vnets: int = 0
    switch: str = "vsw0"
    switch_mac: bytes = bytes.fromhex("020000000001")
    uplink: str | None = None
    bridge: str | None = None
    mtu: int = 1500
    ds_socket: str | None = None
    control: str = "primary"


class ServedDomain:
    """Everything serving one guest; close() takes it all down."""

    def __init__(self, config: DomainConfig) -> None:
        self.config = config
        self.engines: list[DiskEngine] = []
        self.switch: Switch | None = None
        self.uplink: TapPort | None = None
        self.agent: DsAgent | None = None
        self.server: VhostUserServer | None = None
        self._stack = contextlib.ExitStack()

    async def start(self) -> None:
        config = self.config
        specs: list[ChannelSpec] = []
        try:
            for disk in config.disks:
                engine = DiskEngine(disk.path, read_only=disk.read_only, create_size=disk.size)
                self._stack.callback(engine.close)
                self.engines.append(engine)
                specs.append(ldc_services.vdisk(len(specs), Export(engine, device_id_for(disk.path)), disk.name))
            if config.vnets:
                self.switch = Switch(config.switch)
                if config.uplink:
                    self._attach_uplink()
                for n in range(config.vnets):
                    specs.append(ldc_services.vnet(len(specs), self.switch, config.switch_mac, mtu=config.mtu, name=f"{config.switch}-{config.guest}-{n}"))
            if config.ds_socket:
                ds = DsDomain(config.control, 0, (DsPort(DS_PORT, config.guest, config.guest_dhdl, initiator=False),))
                self.agent = DsAgent(ds, config.ds_socket)
                await self.agent.start()
                self._stack.callback(self.agent.close)
                specs.append(ldc_services.ds(len(specs), self.agent, DS_PORT, "ds"))
            if not specs:
                raise ConfigError("the domain config gives the guest no channels")
            self.server = VhostUserServer(config.socket, LdcDevice(specs))
            await self.server.start()
            self._stack.callback(self.server.close)
        except BaseException:
            self.close()
            raise

    def _attach_uplink(self) -> None:
        assert self.switch is not None and self.config.uplink
        uplink = open_uplink(self.switch, self.config.uplink, mtu=self.config.mtu, bridge=self.config.bridge,
                             create_bridge=bool(self.config.bridge))
        self._stack.callback(uplink.close)
        self.uplink = uplink

    def describe(self) -> str:
        parts = [f"{d.name}={d.path}" for d in self.config.disks]
        if self.config.vnets:
            parts.append(f"{self.config.vnets} vnet(s) on {self.config.switch}" + (f" (uplink {self.config.uplink})" if self.config.uplink else ""))
        if self.agent is not None:
            parts.append(f"DS (control domain {self.config.control}, libds socket {self.config.ds_socket})")
        return ", ".join(parts)

    def close(self) -> None:
        self._stack.close()
