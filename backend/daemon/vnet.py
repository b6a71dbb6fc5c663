"""The `[[vnet]]` kind: one guest network port of a switch, a vnet over a Unix LDC socket.

A port is one guest's NIC, so it takes one connection at a time; the port
joins the switch (under the configured name) once the vnet handshake is done
and leaves it when the connection goes. A capture file records the port's
traffic across reconnections.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..config.fields import (
    Dirs,
    Field,
    file_path,
    integer,
    name,
    socket_path,
    vlan_id,
    vlan_ids,
)
from ..config.load import CheckEnv
from ..config.model import ServiceSpec, Where
from .channels import format_version
from .registry import Context, Sample
from .sockets import remove_socket

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class VnetSpec(ServiceSpec):
    kind = "vnet"
    switch: str
    socket: str
    mtu: int | None
    pvid: int
    vlans: frozenset[int]
    capture: str | None

    def sockets(self) -> dict[str, str]:
        return {"socket": self.socket}

    def needs(self) -> tuple[tuple[str, str], ...]:
        return (("switch", self.switch),)


class VnetKind:
    section = "vnet"
    group = "ports"
    many = True
    fields = (
        Field("name", name, required=True, doc="the port's name (unique across all switches)"),
        Field("switch", name, required=True, doc="the [[switch]] it is a port of"),
        Field("domain", name, doc="the guest it is for"),
        Field("socket", socket_path, doc="where the guest's vnet connects (default: vnet-NAME.sock in the state directory)"),
        Field("mtu", integer(68, 65535), doc="L3 MTU offered to the guest (default: the switch's)"),
        Field("pvid", vlan_id, default=1, doc="VLAN of the guest's untagged frames"),
        Field("vlans", vlan_ids, default=frozenset(), doc="VLANs the guest may use tagged (vnet 1.3+)"),
        Field("capture", file_path, doc="pcap file recording this port's traffic"),
    )

    def build(self, values: dict[str, Any], where: Where, dirs: Dirs) -> VnetSpec:
        sock = values["socket"] or socket_path(f"vnet-{values['name']}.sock", dirs)
        return VnetSpec(
            name=values["name"], domain=values["domain"], where=where, switch=values["switch"], socket=sock,
            mtu=values["mtu"], pvid=values["pvid"], vlans=values["vlans"], capture=values["capture"],
        )

    def check(self, spec: VnetSpec, env: CheckEnv) -> None:
        if spec.capture is not None and not os.path.isdir(os.path.dirname(spec.capture)) and not env.in_state_dir(spec.capture):
            env.problems.append(spec.where.child("capture").problem(f"directory {os.path.dirname(spec.capture)} does not exist"))
        from .switches import SwitchSpec

        uplinks = {s.uplink for s in env.config.services if isinstance(s, SwitchSpec)}
        if spec.name in uplinks:
            env.problems.append(spec.where.child("name").problem(f"{spec.name!r} is also the name of a switch uplink; port names must differ"))

    async def start(self, spec: VnetSpec, ctx: Context) -> VnetService:
        from .switches import SwitchService

        switch = ctx.service("switch", spec.switch)
        assert isinstance(switch, SwitchService)
        service = VnetService(spec, switch)
        try:
            await service.server.start()
        except BaseException:
            await service.stop()
            raise
        return service


class VnetService:
    def __init__(self, spec: VnetSpec, switch: Any) -> None:
        from ..ldc.aio import SocketServer
        from ..vswitch.pcap import PcapWriter

        self.spec, self.switch_service = spec, switch
        self.port: Any = None
        self.connections = 0
        self.server = SocketServer(spec.socket, self._connected)
        self._writer = PcapWriter(spec.capture) if spec.capture else None
        self._capture: Any = None

    def _connected(self, sock: socket.socket) -> None:
        from ..ldc.aio import LdcEndpoint
        from ..ldc.channel import Channel
        from ..ldc.constants import Mode
        from ..vswitch.port import PortConfig
        from ..vswitch.vnet_port import VnetPort

        if self.port is not None:
            log.warning("port already has a guest; refusing a second connection",
                        extra={"event": "refused", "kind": "vnet", "service": self.spec.name})
            sock.close()
            return
        spec = self.spec
        config = PortConfig(spec.name, spec.mtu or self.switch_service.spec.mtu, spec.pvid, spec.vlans)
        port = VnetPort(self.switch_service.switch, LdcEndpoint(sock, Channel(Mode.UNRELIABLE)), self.switch_service.mac, config)
        announce = port.device.on_up
        assert announce is not None  # VnetPort attaches itself to the switch there

        def up(session: Any) -> None:
            announce(session)
            self._start_capture(port)
            log.info("vnet port up", extra={"event": "port_up", "kind": "vnet", "service": spec.name,
                                            "version": format_version(session.version)})

        port.device.on_up = up
        self.port = port
        self.connections += 1
        port.endpoint.ldc.channel.open()
        port.endpoint.ldc.flush()
        asyncio.get_running_loop().create_task(self._reap(port))

    def _start_capture(self, port: Any) -> None:
        if self._writer is not None and self._capture is None:
            from ..vswitch.pcap import Capture

            self._capture = Capture(self.switch_service.switch, port, self._writer,
                                    offset=time.time() - time.monotonic(), directions="both")

    async def _reap(self, port: Any) -> None:
        await port.endpoint.ldc.closed_event.wait()
        self._release(port)

    def _release(self, port: Any) -> None:
        if self._capture is not None:
            self._capture.close()  # flushes our writer; it stays open for the next connection
            self._capture = None
        port.detach()
        if self.port is port:
            self.port = None

    def status(self) -> dict[str, Any]:
        from .channels import describe_channel

        out: dict[str, Any] = {"switch": self.spec.switch, "socket": self.spec.socket, "connections": self.connections,
                               "capture": self.spec.capture, "channels": []}
        port = self.port
        if port is not None:
            channel = describe_channel(port.endpoint)
            channel["peer_mac"] = port.device.peer_mac.hex(":") if port.device.peer_mac else None
            channel["attached"] = port.attached
            out["channels"].append(channel)
        return out

    def samples(self) -> Iterable[Sample]:
        labels = {"port": self.spec.name, "switch": self.spec.switch, "domain": self.spec.domain or ""}
        yield Sample("vnet_connected", "1 while a guest vnet is connected", int(self.port is not None), labels, counter=False)
        yield Sample("vnet_connections", "guest connections accepted", self.connections, labels)

    def links(self) -> set[str]:
        return set()

    async def stop(self) -> None:
        self.server.close()
        if self.port is not None:
            port = self.port
            port.endpoint.ldc.close()
            self._release(port)
        if self._writer is not None:
            self._writer.close()
        remove_socket(self.spec.socket)


KIND = VnetKind()
