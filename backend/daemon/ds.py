"""The `[ds]` kind: the service domain's own DS agent (backend/ds/agent.py).

libds programs on this host (`vio ds shutdown ldg1`, `vio guest stop`)
connect to its control socket. Guests reach it over their LDC devices: each
`[[ldc]]` with `ds = true` asks for a DS port toward its domain when it
starts (`port_for`), so adding or removing a guest never restarts the agent
or touches another guest's DS link. A port stays once made (the framework has
no port removal); with its channel gone it is simply down.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..config.fields import Dirs, Field, integer, name, socket_path
from ..config.load import CheckEnv
from ..config.model import ServiceSpec, Where
from .channels import format_version
from .registry import Context, Sample
from .sockets import remove_socket

#: The key every [ds] section has, so other kinds can `need` it.
DS_NAME = "ds"


@dataclass(frozen=True, kw_only=True)
class DsSpec(ServiceSpec):
    kind = "ds"
    #: This (the service) domain's name, as guests see it in DS.
    own_name: str
    dhdl: int
    socket: str

    def sockets(self) -> dict[str, str]:
        return {"socket": self.socket}


class DsKind:
    section = "ds"
    group = "ds"
    many = False
    fields = (
        Field("name", name, default="primary", doc="this service domain's name in DS"),
        Field("dhdl", integer(0, 0xFFFF_FFFF), default=0, doc="this domain's domain handle"),
        Field("socket", socket_path, doc="libds control socket (default: ds.sock in the state directory; VIO_DS_SOCKET)"),
    )

    def build(self, values: dict[str, Any], where: Where, dirs: Dirs) -> DsSpec:
        sock = values["socket"] or socket_path("ds.sock", dirs)
        return DsSpec(name=DS_NAME, where=where, own_name=values["name"], dhdl=values["dhdl"], socket=sock)

    def check(self, spec: DsSpec, env: CheckEnv) -> None:
        return None

    async def start(self, spec: DsSpec, ctx: Context) -> DsService:
        from ..ds.agent import DsAgent
        from ..ds.framework import DomainConfig

        agent = DsAgent(DomainConfig(spec.own_name, spec.dhdl, ()), spec.socket)
        try:
            await agent.start()
        except BaseException:
            agent.close()
            remove_socket(spec.socket)
            raise
        return DsService(spec, agent)


class DsService:
    def __init__(self, spec: DsSpec, agent: Any) -> None:
        self.spec, self.agent = spec, agent
        self.peers: dict[str, int] = {}  # guest domain name -> DS port id

    def port_for(self, domain: str, dhdl: int) -> int:
        """The DS port toward `domain` (made on first use; we answer, the guest starts the handshake)."""
        from ..ds.framework import PortConfig

        if domain not in self.peers:
            port_id = len(self.peers) + 1
            self.agent.framework.add_port(PortConfig(port_id, domain, dhdl, initiator=False))
            self.peers[domain] = port_id
        return self.peers[domain]

    def status(self) -> dict[str, Any]:
        ports = []
        for domain, port_id in self.peers.items():
            port = self.agent.framework.ports[port_id]
            ports.append({
                "peer": domain, "port": port_id, "state": port.state.name.lower(), "version": format_version(port.version),
                "services": [{"svc_id": s.svc_id, "role": "provider" if s.provider else "client", "active": s.active,
                              "version": format_version(s.version)} for s in port.services],
            })
        return {"socket": self.spec.socket, "own_name": self.spec.own_name, "instances": len(self.agent.instances),
                "ports": ports, "channels": []}

    def ready(self, domain: str) -> bool:
        """Whether `domain`'s DS is up over its port (its services can be asked for)."""
        from ..ds.protocol import PortState

        port_id = self.peers.get(domain)
        return port_id is not None and self.agent.framework.ports[port_id].state is PortState.READY

    def samples(self) -> Iterable[Sample]:
        yield Sample("ds_instances", "libds instances connected", len(self.agent.instances), {}, counter=False)
        for domain, port_id in self.peers.items():
            port = self.agent.framework.ports[port_id]
            active = sum(s.active for s in port.services)
            yield Sample("ds_port_services_active", "DS services connected over the port", active,
                         {"domain": domain}, counter=False)

    def links(self) -> set[str]:
        return set()

    async def stop(self) -> None:
        self.agent.close()  # also unlinks the control socket


KIND = DsKind()
