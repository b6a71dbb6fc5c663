"""`vio ldc-vhost` (serve a guest's LDC channels over vhost-user) and `vio guest-sim` (play that guest)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from ..errors import BackendError


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("ldc-vhost", help="serve a guest's LDC channels (vds, vsw, DS) on a vhost-user socket")
    serve.add_argument("--socket", required=True, help="the vhost-user socket of this guest")
    serve.add_argument("--guest", default="ldg1", help="the guest domain's name (DS)")
    serve.add_argument("--guest-dhdl", type=lambda t: int(t, 0), default=5, help="the guest's domain handle (DS)")
    serve.add_argument("--disk", action="append", default=[], type=_disk, metavar="NAME=PATH[,ro][,size=BYTES]",
                       help="a vDisk channel exporting PATH; repeat for more")
    serve.add_argument("--vnets", type=int, default=0, help="vnet channels on the switch")
    serve.add_argument("--switch", default="vsw0", help="the switch's name")
    serve.add_argument("--switch-mac", type=_mac, default=bytes.fromhex("020000000001"), help="the switch's own MAC")
    serve.add_argument("--uplink", help="create this tap as the switch's uplink")
    serve.add_argument("--bridge", help="enslave the uplink to this bridge (created if missing)")
    serve.add_argument("--mtu", type=int, default=1500)
    serve.add_argument("--ds-socket", help="run the control domain's DS agent with its libds socket here, and a DS channel")
    serve.add_argument("--control", default="primary", help="the control domain's name (DS)")

    sim = commands.add_parser("guest-sim", help="play a sun4v guest on an LDC vhost-user device: NBD disk, tap network, DS")
    sim.add_argument("--socket", required=True, help="the LDC device's vhost-user socket")
    sim.add_argument("--nbd", action="append", default=[], metavar="PATH", help="serve the next vdisk channel as NBD on this Unix socket")
    sim.add_argument("--tap", action="append", default=[], type=_tap, metavar="NAME@NETNS[=CIDR]",
                     help="expose the next vnet channel as tap NAME in namespace NETNS (which must exist)")
    sim.add_argument("--ds-socket", help="run this guest's DS agent with its libds socket here (answers domain-shutdown)")
    sim.add_argument("--no-guest-services", action="store_true", help="do not answer domain-shutdown / md-update")
    sim.add_argument("--domain", default="ldg1", help="this guest's domain name")
    sim.add_argument("--dhdl", type=lambda t: int(t, 0), default=5)
    sim.add_argument("--control", default="primary", help="the control domain's name")
    sim.add_argument("--memory", type=int, default=512, help="guest memory in MiB")
    sim.add_argument("--mtu", type=int, default=1500, help="the taps' MTU (the vnet frame MTU follows; match the switch's --mtu)")
    sim.add_argument("--no-lso", nargs="*", metavar="TAP",
                     help="these taps' vnets (all, without names) offer no LSO and carry MTU-sized frames only")


def dispatch(args: argparse.Namespace) -> int | None:
    if args.command == "ldc-vhost":
        return _run("ldc-vhost", _serve(args))
    if args.command == "guest-sim":
        from .sim import SimConfig, run

        config = SimConfig(args.socket, args.nbd, args.tap, args.ds_socket, args.domain, args.dhdl, args.control,
                           not args.no_guest_services, args.memory << 20, args.mtu,
                           None if args.no_lso == [] else tuple(args.no_lso or ()))
        return _run("guest-sim", run(config))
    return None


async def _serve(args: argparse.Namespace) -> None:
    from ..cli import _until_signalled
    from .domain import DomainConfig, ServedDomain

    config = DomainConfig(args.socket, args.guest, args.guest_dhdl, args.disk, args.vnets, args.switch, args.switch_mac,
                          args.uplink, args.bridge, args.mtu, args.ds_socket, args.control)
    domain = ServedDomain(config)
    await domain.start()
    try:
        print(f"ldc-vhost {args.guest}: serving on {args.socket}: {domain.describe()}", flush=True)
        await _until_signalled()
    finally:
        domain.close()


def _run(name: str, coroutine) -> int:
    try:
        asyncio.run(coroutine)
    except (OSError, BackendError, ValueError, LookupError) as exc:
        logging.getLogger(__name__).debug("vio %s failed", name, exc_info=True)
        print(f"vio {name}: {exc}", file=sys.stderr)
        return 1
    return 0


def _disk(text: str):
    from .domain import DiskSpec

    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH[,ro][,size=BYTES], got {text!r}")
    path, *options = rest.split(",")
    spec = DiskSpec(name, path)
    for option in options:
        if option == "ro":
            spec.read_only = True
        elif option.startswith("size=") and option[5:].isdigit():
            spec.size = int(option[5:])
        else:
            raise argparse.ArgumentTypeError(f"unknown disk option {option!r} in {text!r}")
    return spec


def _mac(text: str) -> bytes:
    try:
        mac = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        mac = b""
    if len(mac) != 6:
        raise argparse.ArgumentTypeError(f"{text!r} is not a MAC address")
    return mac


def _tap(text: str) -> tuple[str, str, str | None]:
    name, sep, rest = text.partition("@")
    netns, _, address = rest.partition("=")
    if not sep or not name or not netns:
        raise argparse.ArgumentTypeError(f"expected NAME@NETNS[=CIDR], got {text!r}")
    return name, netns, address or None
