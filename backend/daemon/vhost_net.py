"""The `[[vhost_net]]` kind: one guest NIC as a virtio-net device over vhost-user, a port of a `[[switch]]`.

The device (backend/vhost/devices/net.py) joins the switch when it starts,
under this entry's name, so the switch's status lists it with its counters
and learned addresses; this service adds the device's own counters (frames
seen by the guest, drops for want of receive buffers).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..config.fields import (
    Dirs,
    Field,
    boolean,
    integer,
    mac,
    name,
    socket_path,
    vlan_id,
    vlan_ids,
)
from ..config.load import CheckEnv
from ..config.model import ServiceSpec, Where
from .registry import Context, Sample
from .sockets import remove_socket
from .vhost_common import check_domain, describe_connection


@dataclass(frozen=True, kw_only=True)
class VhostNetSpec(ServiceSpec):
    kind = "vhost_net"
    switch: str
    mac: str
    mtu: int | None
    pvid: int
    vlans: frozenset[int]
    queues: int
    offloads: bool
    socket: str

    def sockets(self) -> dict[str, str]:
        return {"socket": self.socket}

    def needs(self) -> tuple[tuple[str, str], ...]:
        return (("switch", self.switch),)


class VhostNetKind:
    section = "vhost_net"
    group = "ports"
    many = True
    fields = (
        Field("name", name, required=True, doc="the port's name (unique across all switches; also the QEMU device id)"),
        Field("domain", name, doc="the guest whose QEMU uses it (required)"),
        Field("switch", name, required=True, doc="the [[switch]] it is a port of"),
        Field("mac", mac, doc="the guest NIC's MAC (default: derived from the domain and name)"),
        Field("mtu", integer(68, 65535), doc="L3 MTU offered to the guest (default: the switch's)"),
        Field("pvid", vlan_id, default=1, doc="VLAN of the guest's untagged frames"),
        Field("vlans", vlan_ids, default=frozenset(), doc="VLANs the guest may use tagged"),
        Field("queues", integer(1, 16), default=1, doc="queue pairs (virtio-net multiqueue)"),
        Field("offloads", boolean, default=True, doc="offer checksum and TSO offloads to the guest"),
        Field("socket", socket_path, doc="vhost-user socket (default: vhost-net-NAME.sock in the state directory)"),
    )

    def build(self, values: dict[str, Any], where: Where, dirs: Dirs) -> VhostNetSpec:
        sock = values["socket"] or socket_path(f"vhost-net-{values['name']}.sock", dirs)
        station = values["mac"] or guest_mac(f"{values['domain']}/{values['name']}")
        return VhostNetSpec(
            name=values["name"], domain=values["domain"], where=where, switch=values["switch"], mac=station,
            mtu=values["mtu"], pvid=values["pvid"], vlans=values["vlans"], queues=values["queues"],
            offloads=values["offloads"], socket=sock,
        )

    def check(self, spec: VhostNetSpec, env: CheckEnv) -> None:
        check_domain(spec, env)
        from .switches import SwitchSpec

        uplinks = {s.uplink for s in env.config.services if isinstance(s, SwitchSpec)}
        if spec.name in uplinks:
            env.problems.append(spec.where.child("name").problem(f"{spec.name!r} is also the name of a switch uplink; port names must differ"))
        for other in env.config.services:
            if other is spec:
                break
            if isinstance(other, VhostNetSpec) and other.mac == spec.mac:
                env.problems.append(spec.where.child("mac").problem(
                    f"MAC {spec.mac} is already the MAC of vhost_net {other.name!r} (line {other.where.line})"))

    async def start(self, spec: VhostNetSpec, ctx: Context) -> VhostNetService:
        from ..vhost.aio import VhostUserServer
        from ..vhost.devices.net import NetDevice
        from ..vswitch.port import PortConfig
        from .switches import SwitchService

        switch = ctx.service("switch", spec.switch)
        assert isinstance(switch, SwitchService)
        config = PortConfig(spec.name, spec.mtu or switch.spec.mtu, spec.pvid, spec.vlans)
        device = NetDevice(switch.switch, config, bytes.fromhex(spec.mac.replace(":", "")), queue_pairs=spec.queues,
                           offloads=spec.offloads)
        server = VhostUserServer(spec.socket, device)
        try:
            await server.start()
        except BaseException:
            server.close()
            device.close()
            remove_socket(spec.socket)
            raise
        return VhostNetService(spec, device, server)


def guest_mac(key: str) -> str:
    """A stable locally administered unicast MAC for a guest NIC (52:54:00 is QEMU's prefix)."""
    import hashlib

    digest = hashlib.sha256(key.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x52, 0x54, 0x00, *digest[:3]))


class VhostNetService:
    def __init__(self, spec: VhostNetSpec, device: Any, server: Any) -> None:
        self.spec, self.device, self.server = spec, device, server

    def status(self) -> dict[str, Any]:
        spec = self.spec
        return {"transport": "vhost-user-net", "switch": spec.switch, "socket": spec.socket, "mac": spec.mac,
                "mtu": self.device.port.config.mtu, "queues": spec.queues, "link_up": self.device.link_up,
                "counters": vars(self.device.counters).copy(), "channels": [], **describe_connection(self.server)}

    def samples(self) -> Iterable[Sample]:
        labels = {"port": self.spec.name, "switch": self.spec.switch, "domain": self.spec.domain or ""}
        yield Sample("vhost_net_connected", "1 while the guest's QEMU is connected",
                     int(describe_connection(self.server)["connected"]), labels, counter=False)
        for key, value in vars(self.device.counters).items():
            yield Sample(f"vhost_net_{key}", f"virtio-net {key.replace('_', ' ')}", value, labels)

    def links(self) -> set[str]:
        return set()

    async def stop(self) -> None:
        self.server.close()
        self.device.close()  # leaves the switch
        remove_socket(self.spec.socket)


KIND = VhostNetKind()
