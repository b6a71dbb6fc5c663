"""Network namespaces as stand-in hosts, for tests and demos of the tap uplink.

A `NetnsHost` is a namespace with one interface that has an address and whose
veth peer sits on a bridge in our namespace: a machine on the switch's LAN
that the kernel runs for us, answering ARP and ping like a real one.
"""

from __future__ import annotations

import errno
import secrets
import subprocess
from dataclasses import dataclass
from typing import Self

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import ConfigError
from .tap import check_ifname, link_info, netlink


def unique_name(prefix: str = "vt") -> str:
    """A short random interface/namespace name (fits IFNAMSIZ with a 4-character suffix to spare)."""
    return f"{prefix[:5]}{secrets.token_hex(3)}"


def create_netns(name: str) -> None:
    """Create /run/netns/NAME; refuse if it exists (it would not be ours to remove)."""
    check_ifname(name, "namespace")
    if name in netns.listnetns():
        raise ConfigError(f"network namespace {name!r} already exists")
    netns.create(name)


def remove_netns(name: str) -> None:
    """Remove a namespace (and with it every interface inside); no error if already gone."""
    if name in netns.listnetns():
        netns.remove(name)


def run_in_netns(name: str, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command inside the namespace (ip netns exec), capturing its output."""
    return subprocess.run(
        ["ip", "netns", "exec", name, *argv], check=check, timeout=timeout, capture_output=True, text=True
    )


@dataclass
class NetnsHost:
    """A namespace with `ns_ifname` at `address` (CIDR) and its veth peer `host_ifname` on `bridge`."""

    netns: str
    host_ifname: str
    ns_ifname: str
    address: str
    mac: str
    bridge: str

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return run_in_netns(self.netns, *argv, check=check, timeout=timeout)

    def close(self) -> None:
        """Remove the namespace (which takes the veth pair with it) and the host end if it lingers."""
        remove_netns(self.netns)

        def drop_host_end(ipr: IPRoute) -> None:
            info = link_info(ipr, ifname=self.host_ifname)
            if info is not None and info["kind"] == "veth":
                try:
                    ipr.link("del", index=info["index"])
                except NetlinkError as e:
                    if e.code != errno.ENODEV:
                        raise

        netlink(drop_host_end)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def add_netns_host(
    bridge: str,
    address: str,
    *,
    name: str | None = None,
    host_ifname: str | None = None,
    ns_ifname: str = "eth0",
) -> NetnsHost:
    """Create a namespace behind `bridge` (which must exist) with `ns_ifname` at `address`, all up.

    Everything made here is removed again if a later step fails.
    """
    name = name or unique_name("ns")
    host_ifname = host_ifname or unique_name("vh")
    check_ifname(host_ifname, "veth")
    check_ifname(ns_ifname, "veth")
    ip, _, prefix = address.partition("/")
    create_netns(name)
    host = NetnsHost(name, host_ifname, ns_ifname, address, "", bridge)
    try:

        def outside(ipr: IPRoute) -> None:
            br = link_info(ipr, ifname=bridge)
            if br is None or br["kind"] != "bridge":
                raise ConfigError(f"{bridge!r} is not an existing bridge")
            ipr.link("add", ifname=host_ifname, kind="veth", peer={"ifname": ns_ifname, "net_ns_fd": name})
            index = ipr.link_lookup(ifname=host_ifname)[0]
            ipr.link("set", index=index, master=br["index"], state="up")

        def inside(ipr: IPRoute) -> str:
            index = ipr.link_lookup(ifname=ns_ifname)[0]
            ipr.addr("add", index=index, address=ip, prefixlen=int(prefix or 24))
            ipr.link("set", index=index, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            return ipr.link("get", index=index)[0].get("address")

        netlink(outside)
        host.mac = netlink(inside, netns=name)
    except BaseException:
        host.close()
        raise
    return host
