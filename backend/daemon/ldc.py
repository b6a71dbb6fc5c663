"""The `[[ldc]]` kind: a sun4v guest's LDC channels (vds, vsw, DS) on one vhost-user socket.

The device is backend/vhost/devices/ldc.py. Its channels reuse what other
services already run: a vdisk channel exports a `[[disk]]`'s store (the same
engine and counters as its Unix-socket vds), a vnet channel is a port of a
`[[switch]]`, the DS channel is a port of the `[ds]` agent. Those services are
`needs()`, so a changed disk or switch restarts this device too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config.fields import Dirs, Field, Invalid, boolean, integer, name, socket_path
from ..config.load import CheckEnv
from ..config.model import ServiceSpec, Where
from .ds import DS_NAME
from .registry import Context, Sample

if TYPE_CHECKING:
    from ..vhost.devices.ldc import Attached
from .sockets import remove_socket
from .vhost_common import check_domain, describe_connection


def _names(value: Any, dirs: Dirs) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise Invalid(f"expected an array of names, got {type(value).__name__}")
    out = []
    for index, item in enumerate(value):
        try:
            out.append(name(item, dirs))
        except Invalid as exc:
            raise Invalid(f"element {index}: {exc}") from None
    return tuple(out)


@dataclass(frozen=True, kw_only=True)
class LdcSpec(ServiceSpec):
    kind = "ldc"
    disks: tuple[str, ...]
    vnets: tuple[str, ...]
    ds: bool
    dhdl: int
    socket: str

    def sockets(self) -> dict[str, str]:
        return {"socket": self.socket}

    def needs(self) -> tuple[tuple[str, str], ...]:
        wanted = [("disk", d) for d in self.disks] + [("switch", s) for s in dict.fromkeys(self.vnets)]
        return tuple(wanted + ([("ds", DS_NAME)] if self.ds else []))

    def channel_names(self) -> list[str]:
        """Channel names in channel-id order (vdisks, then vnets, then DS)."""
        return [*self.disks, *(f"{self.name}-vnet{n}" for n in range(len(self.vnets))), *(["ds"] if self.ds else [])]


class LdcKind:
    section = "ldc"
    group = "ldc"
    many = True
    fields = (
        Field("name", name, required=True, doc="the device's name"),
        Field("domain", name, doc="the guest it carries channels for (required)"),
        Field("disks", _names, default=(), doc="[[disk]] names: one vdisk channel each"),
        Field("vnets", _names, default=(), doc="[[switch]] names: one vnet channel (a port) each"),
        Field("ds", boolean, default=False, doc="a DS channel to the [ds] agent"),
        Field("dhdl", integer(1, 0xFFFF_FFFF), doc="the guest's domain handle in DS (default: derived from its name)"),
        Field("socket", socket_path, doc="vhost-user socket (default: ldc-NAME.sock in the state directory)"),
    )

    def build(self, values: dict[str, Any], where: Where, dirs: Dirs) -> LdcSpec:
        sock = values["socket"] or socket_path(f"ldc-{values['name']}.sock", dirs)
        dhdl = values["dhdl"] or 1 + int.from_bytes(hashlib.sha256((values["domain"] or "").encode()).digest()[:2], "big")
        return LdcSpec(name=values["name"], domain=values["domain"], where=where, disks=values["disks"],
                       vnets=values["vnets"], ds=values["ds"], dhdl=dhdl, socket=sock)

    def check(self, spec: LdcSpec, env: CheckEnv) -> None:
        check_domain(spec, env)
        if not spec.channel_names():
            env.problems.append(spec.where.problem("the device has no channels: give it disks, vnets or ds = true"))
        for key, kind in (("disks", "disk"), ("vnets", "switch")):
            for index, wanted in enumerate(getattr(spec, key)):
                if env.config.service(kind, wanted) is None:
                    env.problems.append(spec.where.child(key).problem(f"element {index}: no [[{kind}]] named {wanted!r}"))
        if len(set(spec.disks)) != len(spec.disks):
            env.problems.append(spec.where.child("disks").problem("a disk is listed twice"))
        if spec.ds and env.config.service("ds", DS_NAME) is None:
            env.problems.append(spec.where.child("ds").problem("there is no [ds] section: add one (an empty [ds] will do)"))
        if spec.ds:
            for other in env.config.services:
                if other is spec:
                    break
                if isinstance(other, LdcSpec) and other.ds and other.domain == spec.domain:
                    env.problems.append(spec.where.child("ds").problem(
                        f"domain {spec.domain!r} already has a DS channel (ldc {other.name!r}, line {other.where.line})"))

    async def start(self, spec: LdcSpec, ctx: Context) -> LdcService:
        from ..vhost.aio import VhostUserServer
        from ..vhost.devices import ldc_services
        from ..vhost.devices.ldc import LdcDevice
        from .ds import DsService
        from .switches import SwitchService

        channels: list[Any] = []
        for disk in spec.disks:
            export = ctx.service("disk", disk).server.export  # type: ignore[attr-defined]
            channels.append(ldc_services.vdisk(len(channels), export, disk))
        for number, switch_name in enumerate(spec.vnets):
            switch = ctx.service("switch", switch_name)
            assert isinstance(switch, SwitchService)
            channels.append(ldc_services.vnet(len(channels), switch.switch, switch.mac, mtu=switch.spec.mtu,
                                              name=f"{spec.name}-vnet{number}"))
        if spec.ds:
            agent = ctx.service("ds", DS_NAME)
            assert isinstance(agent, DsService) and spec.domain is not None
            channels.append(ldc_services.ds(len(channels), agent.agent, agent.port_for(spec.domain, spec.dhdl), "ds"))
        device = LdcDevice(channels)
        server = VhostUserServer(spec.socket, device)
        try:
            await server.start()
        except BaseException:
            server.close()
            remove_socket(spec.socket)
            raise
        return LdcService(spec, device, server)


class LdcService:
    def __init__(self, spec: LdcSpec, device: Any, server: Any) -> None:
        self.spec, self.device, self.server = spec, device, server

    def status(self) -> dict[str, Any]:
        from .channels import format_version

        channels = []
        for channel_name, channel in zip(self.spec.channel_names(), self.device.channels, strict=True):
            endpoint = channel.endpoint
            ldc = getattr(endpoint, "channel", None)
            channels.append({
                "service": f"{self.spec.name}/{channel_name}", "carries": channel.spec.info.service.name.lower(),
                "channel_id": channel.spec.info.channel_id,
                "ldc_state": "down" if ldc is None else ldc.state.value,
                "ldc_version": format_version(getattr(ldc, "version", None)),
                **_vio(channel.attached),
            })
        return {"socket": self.spec.socket, "channels": channels, **describe_connection(self.server)}

    def samples(self) -> Iterable[Sample]:
        labels = {"ldc": self.spec.name, "domain": self.spec.domain or ""}
        yield Sample("ldc_connected", "1 while the guest's front-end is connected",
                     int(describe_connection(self.server)["connected"]), labels, counter=False)
        yield Sample("ldc_channels", "channels the device carries", len(self.device.channels), labels, counter=False)

    def links(self) -> set[str]:
        return set()

    async def stop(self) -> None:
        self.server.close()
        remove_socket(self.spec.socket)


KIND = LdcKind()


def _vio(attached: Attached | None) -> dict[str, Any]:
    """The VIO phase and negotiated version of a channel's service (DS has no VIO session)."""
    from .channels import format_version

    if attached is None or attached.session is None:
        return {"vio_phase": "-", "vio_version": None}
    session = attached.session.session
    return {"vio_phase": session.phase.name.lower(), "vio_version": format_version(session.version)}
