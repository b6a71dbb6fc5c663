"""`vio vhost-net`: a switch whose ports are virtio-net devices over vhost-user (and vnets, and a tap uplink).

One process, one asyncio loop, one switch engine: QEMU guests connect to
the vhost-user sockets (`-netdev vhost-user` + `-device virtio-net-pci`),
sun4v vnet clients to the vnet socket, and the host's stack sits behind the
tap uplink, which carries checksum/TSO offloads unless told not to.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class NetPortSpec:
    name: str
    socket: str
    mac: bytes
    queue_pairs: int


def _port_spec(text: str) -> NetPortSpec:
    from ..errors import ConfigError
    from ..vswitch.frames import parse_mac

    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"expected NAME=SOCKET[,mac=MAC][,queues=N], got {text!r}")
    socket, *options = rest.split(",")
    mac, pairs = None, 1
    try:
        for option in options:
            key, _, value = option.partition("=")
            if key == "mac":
                mac = parse_mac(value)
            elif key == "queues":
                pairs = int(value)
            else:
                raise argparse.ArgumentTypeError(f"unknown option {option!r} in {text!r}")
    except (ConfigError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    if mac is None:
        mac = bytes.fromhex("5254000000") + bytes([sum(name.encode()) % 250 + 1])  # stable per name
    return NetPortSpec(name, socket, mac, pairs)


def add_commands(commands: argparse._SubParsersAction) -> None:
    net = commands.add_parser("vhost-net", help="a switch with virtio-net ports over vhost-user (QEMU: -netdev vhost-user)")
    net.add_argument("--port", action="append", required=True, type=_port_spec, metavar="NAME=SOCKET[,mac=MAC][,queues=N]",
                     help="a virtio-net port on a vhost-user socket; repeat for more")
    net.add_argument("--name", default="vsw0", help="switch name")
    net.add_argument("--mtu", type=int, default=1500, help="MTU of every port (L3 bytes); virtio-net offers it to the guest")
    net.add_argument("--vnet-socket", help="also accept sun4v vnet clients on this Unix socket")
    net.add_argument("--uplink", help="create a tap device with this name as the uplink")
    net.add_argument("--bridge", help="enslave the uplink to this Linux bridge (created if missing)")
    net.add_argument("--no-offload", action="store_true", help="neither offer checksum/TSO offloads nor enable them on the tap")


def dispatch(args: argparse.Namespace) -> int | None:
    if args.command != "vhost-net":
        return None
    from ..cli import _run
    from ..errors import ConfigError

    names = [spec.name for spec in args.port]
    if len(set(names)) != len(names):
        print(f"vio vhost-net: port names must differ: {names}", file=sys.stderr)
        return 2
    return _run(lambda: _serve(args), "vhost-net", (OSError, ConfigError))


async def _serve(args: argparse.Namespace) -> None:
    from ..cli import _until_signalled
    from ..vswitch.offload import ALL
    from ..vswitch.port import Offloads, PortConfig
    from ..vswitch.switch import Switch
    from .aio import VhostUserServer
    from .devices.net import NetDevice

    switch = Switch(args.name)
    closers = []
    try:
        if args.uplink:  # first: once the sockets exist, the tap and bridge do too
            closers.append(_uplink(switch, args, Offloads.NONE if args.no_offload else ALL))
        for spec in args.port:
            device = NetDevice(switch, PortConfig(spec.name, mtu=args.mtu), spec.mac, queue_pairs=spec.queue_pairs,
                               offloads=not args.no_offload)
            server = VhostUserServer(spec.socket, device)
            await server.start()
            closers += [device.close, server.close]
        if args.vnet_socket:
            from ..vswitch.vnet_port import SwitchServer

            vnets = SwitchServer(switch, args.vnet_socket, bytes.fromhex("0200000000ff"), mtu=args.mtu)
            await vnets.start()
            closers.append(vnets.close)
        print(f"vhost-net {args.name}: " + ", ".join(f"{s.name} on {s.socket}" for s in args.port)
              + (f", vnets on {args.vnet_socket}" if args.vnet_socket else "")
              + (f", uplink {args.uplink}" if args.uplink else ""), flush=True)
        await _until_signalled()
    finally:
        for close in reversed(closers):
            close()


def _uplink(switch, args: argparse.Namespace, offloads):
    """The tap uplink (with vnet headers and TUNSETOFFLOAD) as an offload-carrying switch port; returns its closer."""
    from ..vswitch.tap import open_uplink

    return open_uplink(switch, args.uplink, mtu=args.mtu, bridge=args.bridge, create_bridge=bool(args.bridge),
                       offloads=offloads).close
