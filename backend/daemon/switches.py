"""The `[[switch]]` kind: a switch engine, optionally with a tap uplink on a Linux bridge.

Ports come from other kinds (`[[vnet]]` here, virtio-net later) that name the
switch; this service owns the engine, the uplink, its capture, and the ageing
of learned addresses. Its status lists every port of the switch, whoever
attached it, with counters and the addresses learned behind it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..config.fields import (
    Dirs,
    Field,
    boolean,
    file_path,
    ifname,
    integer,
    mac,
    name,
    seconds,
    vlan_id,
    vlan_ids,
)
from ..config.load import CheckEnv
from ..config.model import ServiceSpec, Where
from ..vswitch.switch import Switch
from .registry import Context, Sample

#: How often learned addresses past their age are swept out (lookups ignore them anyway).
AGEING_SWEEP = 10.0
CAP_NET_ADMIN = 12


@dataclass(frozen=True, kw_only=True)
class SwitchSpec(ServiceSpec):
    kind = "switch"
    mac: str
    mtu: int
    uplink: str | None
    bridge: str | None
    create_bridge: bool
    pvid: int
    vlans: frozenset[int]
    capture: str | None
    ageing: float
    max_fdb: int


class SwitchKind:
    section = "switch"
    group = "switches"
    many = True
    fields = (
        Field("name", name, required=True, doc="the switch's name"),
        Field("mac", mac, doc="the switch's own MAC in vnet attribute exchanges (default: derived from the name)"),
        Field("mtu", integer(68, 65535), default=1500, doc="L3 MTU of the uplink and default of the ports"),
        Field("uplink", ifname, doc="tap device to create as the uplink"),
        Field("bridge", ifname, doc="Linux bridge to put the uplink on"),
        Field("create_bridge", boolean, default=True, doc="create the bridge if missing (and remove it on exit)"),
        Field("pvid", vlan_id, default=1, doc="VLAN of untagged frames on the uplink"),
        Field("vlans", vlan_ids, default=frozenset(), doc="VLANs the uplink carries tagged"),
        Field("capture", file_path, doc="pcap file recording the uplink's traffic"),
        Field("ageing", seconds, default=300.0, doc="seconds a learned address lives unseen"),
        Field("max_fdb", integer(0, 1 << 20), default=4096, doc="most addresses learned at once"),
    )

    def build(self, values: dict[str, Any], where: Where, dirs: Dirs) -> SwitchSpec:
        own_mac = values["mac"] or derived_mac(values["name"])
        return SwitchSpec(
            name=values["name"], where=where, mac=own_mac, mtu=values["mtu"], uplink=values["uplink"],
            bridge=values["bridge"], create_bridge=values["create_bridge"], pvid=values["pvid"],
            vlans=values["vlans"], capture=values["capture"], ageing=values["ageing"], max_fdb=values["max_fdb"],
        )

    def check(self, spec: SwitchSpec, env: CheckEnv) -> None:
        import os

        where = spec.where
        for key in ("bridge", "capture"):
            if getattr(spec, key) is not None and spec.uplink is None:
                env.problems.append(where.child(key).problem(f"{key} needs an uplink; add uplink = \"tapNAME\""))
        if spec.capture is not None and not os.path.isdir(os.path.dirname(spec.capture)) and not env.in_state_dir(spec.capture):
            env.problems.append(where.child("capture").problem(f"directory {os.path.dirname(spec.capture)} does not exist"))
        if spec.uplink is None:
            return
        for other in env.config.services:
            if other is spec:
                break
            if isinstance(other, SwitchSpec) and spec.uplink in (other.uplink, other.bridge):
                env.problems.append(where.child("uplink").problem(f"{spec.uplink} is already used by switch {other.name!r} (line {other.where.line})"))
                return
        if not has_net_admin():
            env.problems.append(where.child("uplink").problem(
                f"creating tap {spec.uplink} needs CAP_NET_ADMIN: run vio serve as root (sudo vio serve ...)"))
            return
        links = existing_links()
        if spec.uplink in links and spec.uplink not in env.owned.links:
            env.problems.append(where.child("uplink").problem(
                f"an interface named {spec.uplink} already exists ({links[spec.uplink] or 'device'}); "
                "the daemon creates its own tap: choose another name or delete that interface"))
        if spec.bridge is None:
            return
        if spec.bridge not in links:
            if not spec.create_bridge:
                env.problems.append(where.child("bridge").problem(
                    f"bridge {spec.bridge} does not exist; create it (ip link add {spec.bridge} type bridge) or set create_bridge = true"))
        elif links[spec.bridge] != "bridge":
            env.problems.append(where.child("bridge").problem(
                f"{spec.bridge} exists but is a {links[spec.bridge] or 'plain device'}, not a bridge"))

    async def start(self, spec: SwitchSpec, ctx: Context) -> SwitchService:
        service = SwitchService(spec)
        try:
            await service.start()
        except BaseException:
            await service.stop()
            raise
        return service


def derived_mac(switch_name: str) -> str:
    """A stable locally administered unicast MAC for a switch name."""
    digest = hashlib.sha256(switch_name.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def has_net_admin() -> bool:
    """Whether this process may create taps and bridges."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << CAP_NET_ADMIN))
    except OSError:
        pass
    import os

    return os.geteuid() == 0


def existing_links() -> dict[str, str | None]:
    """Interface name -> link kind ("bridge", "tun", "veth", None for plain devices)."""
    from ..vswitch.tap import netlink

    def dump(ipr: Any) -> dict[str, str | None]:
        return {m.get("ifname"): m.get(("linkinfo", "kind")) for m in ipr.get_links()}

    return netlink(dump)


class SwitchService:
    def __init__(self, spec: SwitchSpec) -> None:
        self.spec = spec
        self.mac = bytes.fromhex(spec.mac.replace(":", ""))
        self.switch = Switch(spec.name, ageing=spec.ageing, max_fdb=spec.max_fdb)
        self.uplink: Any = None
        self._capture: Any = None
        self._ager: asyncio.Task[None] | None = None

    async def start(self) -> None:
        spec = self.spec
        if spec.uplink is not None:
            from ..vswitch.port import PortConfig
            from ..vswitch.tap import open_uplink

            uplink = open_uplink(self.switch, spec.uplink, mtu=spec.mtu, bridge=spec.bridge,
                                 create_bridge=spec.create_bridge and spec.bridge is not None,
                                 config=PortConfig(spec.uplink, spec.mtu, spec.pvid, spec.vlans, tagged=bool(spec.vlans)))
            self.uplink = uplink
            if spec.capture is not None:
                from ..vswitch.pcap import capture

                self._capture = capture(self.switch, uplink, spec.capture, offset=time.time() - time.monotonic())
        self._ager = asyncio.get_running_loop().create_task(self._age())

    async def _age(self) -> None:
        while True:
            await asyncio.sleep(min(AGEING_SWEEP, max(self.spec.ageing, 0.1)))
            self.switch.age(time.monotonic())

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        fdb: dict[str, list[dict[str, Any]]] = {}
        for (vlan, station), entry in self.switch.fdb.items():
            if now - entry.seen < self.switch.ageing:
                fdb.setdefault(entry.port.config.name, []).append(
                    {"vlan": vlan, "mac": station.hex(":"), "age": round(now - entry.seen, 1)})
        ports = []
        for port in self.switch.ports:
            counters = self.switch.counters(port)
            config = port.config
            ports.append({
                "name": config.name, "uplink": self.switch.is_uplink(port), "mtu": config.mtu, "pvid": config.pvid,
                "vlans": sorted(config.vlans), "counters": _port_counters(counters), "fdb": fdb.get(config.name, []),
            })
        uplink = None
        if self.uplink is not None:
            device = self.uplink.device
            uplink = {"tap": device.name, "bridge": device.bridge, "created_bridge": device.created_bridge,
                      "capture": self.spec.capture, "counters": vars(self.uplink.counters).copy()}
        return {"mac": self.spec.mac, "mtu": self.spec.mtu, "uplink": uplink,
                "stats": vars(self.switch.stats).copy(), "ports": ports}

    def samples(self) -> Iterable[Sample]:
        for key, value in vars(self.switch.stats).items():
            yield Sample(f"switch_{key}", f"switch {key.replace('_', ' ')}", value, {"switch": self.spec.name})
        yield Sample("switch_fdb_entries", "addresses in the forwarding table", len(self.switch.fdb),
                     {"switch": self.spec.name}, counter=False)
        for port in self.switch.ports:
            labels = {"switch": self.spec.name, "port": port.config.name}
            counters = self.switch.counters(port)
            for key, value in _port_counters(counters).items():
                if key != "drops":
                    yield Sample(f"switch_port_{key}", f"port {key.replace('_', ' ')}", value, labels)
            for reason, value in counters.drops.items():
                yield Sample("switch_port_drops", "frames dropped, by reason", value, {**labels, "reason": reason})

    def links(self) -> set[str]:
        if self.uplink is None:
            return set()
        device = self.uplink.device
        return {device.name} | ({device.bridge} if device.created_bridge else set())

    async def stop(self) -> None:
        if self._ager is not None:
            self._ager.cancel()
        if self._capture is not None:
            self._capture.close()
        if self.uplink is not None:
            self.uplink.close()  # removes the tap, and the bridge if we created it


def _port_counters(counters: Any) -> dict[str, Any]:
    return {"rx_frames": counters.rx_frames, "rx_bytes": counters.rx_bytes, "tx_frames": counters.tx_frames,
            "tx_bytes": counters.tx_bytes, "forwarded": counters.forwarded, "drops": dict(counters.drops)}


KIND = SwitchKind()
