"""`vio guest start|stop|attach|detach|config`: QEMU guests wired to the daemon's sockets for a domain.

Every command first asks the running daemon (control socket) what the domain
has, so QEMU's devices are always the ones the daemon serves. Attach is
"daemon first": the daemon starts the back-end, then QMP plugs the device;
detach is the reverse. Stop asks politely in the best way the guest offers:
its DS domain-shutdown service when its DS is up, else the power button
(x86_64), else `poweroff` typed on the console (sun4u has no power button);
QEMU is told to quit, then killed, only when that does not work in time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from ..config.load import DEFAULT_STATE_DIR
from ..errors import BackendError

DEFAULT_CONTROL = f"{DEFAULT_STATE_DIR}/control.sock"


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    guest = subparsers.add_parser("guest", help="start, stop, hot-plug QEMU guests on the daemon's devices")
    commands = guest.add_subparsers(dest="guest_command", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("domain", help="the domain's name in the daemon's config")
        parser.add_argument("--control", default=DEFAULT_CONTROL, help=f"the daemon's control socket (default {DEFAULT_CONTROL})")

    start = commands.add_parser("start", help="boot a guest with every vhost-user device the daemon has for the domain")
    common(start)
    start.add_argument("--arch", choices=("x86_64", "sparc64"), default="sparc64")
    start.add_argument("--memory", type=int, default=256, help="MiB of guest RAM")
    start.add_argument("--ip", help="address/prefix for the guest's eth0 (the test /init sets it)")
    start.add_argument("--command", dest="script", help="shell script the guest's /init runs before powering off")
    start.add_argument("--wait", metavar="REGEX", help="wait for a console line matching REGEX, echoing the console")
    start.add_argument("--timeout", type=float, default=180.0, help="seconds --wait waits")
    start.add_argument("--without", action="append", default=[], metavar="NAME",
                       help="leave the domain's device NAME out of this guest (repeatable)")
    start.add_argument("--qemu", help="the QEMU binary (default: the architecture's; sparc64: scripts/build-qemu-sparc64's)")

    config = commands.add_parser("config", help="print the domain's QEMU -readconfig file (what start would run)")
    common(config)
    config.add_argument("--arch", choices=("x86_64", "sparc64"), default="sparc64")
    config.add_argument("--memory", type=int, default=256)

    stop = commands.add_parser("stop", help="shut the guest down (DS domain-shutdown, power button or console)")
    common(stop)
    stop.add_argument("--timeout", type=float, default=30.0, help="seconds the guest gets before QEMU is told to quit")

    attach = commands.add_parser("attach", help="hot-plug a disk or NIC: the daemon serves it, QMP plugs it")
    common(attach)
    what = attach.add_mutually_exclusive_group(required=True)
    what.add_argument("--disk", metavar="NAME=PATH[,ro][,size=64M][,queues=N]", help="a vhost-user-blk disk")
    what.add_argument("--nic", metavar="NAME=SWITCH[,mac=MAC][,mtu=N]", help="a vhost-user-net port on a switch")

    detach = commands.add_parser("detach", help="unplug a device attach added, then the daemon stops serving it")
    common(detach)
    detach.add_argument("name", help="the device's name")
    detach.add_argument("--timeout", type=float, default=30.0, help="seconds the guest gets to release the device")


def dispatch(args: argparse.Namespace) -> int | None:
    if args.command != "guest":
        return None
    from ..control import ControlError

    handlers = {"start": _start, "config": _config, "stop": _stop, "attach": _attach, "detach": _detach}
    try:
        return handlers[args.guest_command](args)
    except (BackendError, ControlError, OSError) as exc:
        print(f"vio guest {args.guest_command}: {exc}", file=sys.stderr)
        return 1


def _domain(args: argparse.Namespace) -> dict[str, Any]:
    from ..control import request

    return request(args.control, "domain", name=args.domain)


def _spec(args: argparse.Namespace, domain: dict[str, Any], ip: str | None = None, command: str | None = None,
          binary: str | None = None) -> tuple[Any, list[str]]:
    from .images import guest_image
    from .managed import build_spec, guest_devices

    left_out = set(getattr(args, "without", []))
    unknown = left_out - {d["name"] for d in domain["devices"]}
    if unknown:
        raise BackendError(f"--without {', '.join(sorted(unknown))}: the domain has no such device")
    devices, notes = guest_devices({**domain, "devices": [d for d in domain["devices"] if d["name"] not in left_out]})
    spec = build_spec(args.arch, guest_image(args.arch), devices, memory_mb=args.memory, ip=ip, command=command,
                      binary=binary)
    return spec, notes


def _start(args: argparse.Namespace) -> int:
    from .managed import GuestFiles, follow, launch

    domain = _domain(args)
    spec, notes = _spec(args, domain, args.ip, args.script, args.qemu)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    files = GuestFiles.of(domain["state_dir"], args.domain)
    pid = launch(files, spec)
    devices = ", ".join(f"{d.id} ({type(d).__name__})" for d in spec.devices) or "no devices"
    print(f"{args.domain}: {spec.arch.name} guest started (QEMU pid {pid}, {spec.arch.binary}) with {devices}; "
          f"console log {files.log}", flush=True)
    if args.wait:
        follow(files, args.wait, args.timeout, echo=lambda line: print(f"  [{args.domain}] {line}", flush=True))
    return 0


def _config(args: argparse.Namespace) -> int:
    from .arch import arch_profile
    from .options import render_readconfig

    domain = _domain(args)
    spec, _ = _spec(args, domain, binary=arch_profile(args.arch).binary)  # the binary is not part of the file
    header = (f"{args.arch} guest of domain {args.domain}, wired to the sockets the daemon serves for it.\n"
              "Generated by vio guest config.")
    print(render_readconfig(spec.groups(), header), end="")
    return 0


def _stop(args: argparse.Namespace) -> int:
    from .arch import arch_profile
    from .managed import (
        GuestFiles,
        kill,
        power_button,
        quit_qemu,
        type_on_console,
        wait_gone,
    )

    domain = _domain(args)
    files = GuestFiles.of(domain["state_dir"], args.domain)
    pid = files.pid()
    asked = None
    if domain["ds_ready"]:
        answer = _ds_shutdown(domain["ds_socket"], args.domain, min(args.timeout, 10.0))
        print(f"{args.domain}: {answer}", flush=True)
        asked = "DS domain-shutdown"
    if pid is None:
        files.clean()
        print(f"{args.domain}: no QEMU guest running" + (f" (asked by {asked})" if asked else ""))
        return 0
    meta = files.read_meta()
    if asked is None:
        if arch_profile(meta["arch"]).power_button:
            asyncio.run(power_button(files))
            asked = "QMP system_powerdown"
        else:
            type_on_console(files, "sync; poweroff -f\n")
            asked = "poweroff on the console (sun4u has no power button)"
    print(f"{args.domain}: asked to shut down by {asked}; waiting up to {args.timeout:.0f} s", flush=True)
    if wait_gone(files, pid, args.timeout):
        how = "powered off"
    else:
        asyncio.run(quit_qemu(files))
        how = "did not power off; QEMU quit"
        if not wait_gone(files, pid, 10):
            kill(pid)
            how = "did not power off; QEMU killed"
    files.clean()
    print(f"{args.domain}: {how}")
    return 0


def _ds_shutdown(ds_socket: str, domain: str, timeout: float) -> str:
    from ..ds.api import DomainServices
    from ..ds.services import domain_shutdown

    with DomainServices(ds_socket) as ds, ds.client(domain_shutdown.SVC_ID) as service:
        handle = service.wait_ready(timeout, domain=domain)
        request = domain_shutdown.Request(time.time_ns() & 0xFFFF_FFFF_FFFF_FFFF, 0)
        answer = domain_shutdown.Response.decode(service.request(handle, request.encode(), timeout))
    verdict = "accepted" if answer.result == domain_shutdown.OK else "refused"
    return f"DS domain-shutdown {verdict} (result {answer.result}){': ' + answer.reason if answer.reason else ''}"


def _attach(args: argparse.Namespace) -> int:
    from ..control import request
    from .managed import GuestFiles, plug, to_device

    kind, values = _device_values(args.disk, args.nic)
    domain = _domain(args)
    files = GuestFiles.of(domain["state_dir"], args.domain)
    if files.pid() is None:
        raise BackendError(f"no guest of {args.domain} is running: vio guest start {args.domain} first")
    entry = request(args.control, "attach", domain=args.domain, kind=kind, values=values)
    device = to_device(entry)
    assert device is not None
    try:
        slot = asyncio.run(plug(files, device))
    except BaseException:
        request(args.control, "detach", kind=kind, name=values["name"])
        raise
    where = f" in slot {slot}" if slot is not None else ""
    print(f"{args.domain}: {kind} {values['name']} attached{where} (socket {entry['socket']})")
    return 0


def _device_values(disk: str | None, nic: str | None) -> tuple[str, dict[str, Any]]:
    """NAME=MAIN[,key=value|flag...] -> (kind, config values); the daemon checks them."""
    text, kind, main, flags = (disk, "vhost_blk", "path", {"ro": "read_only"}) if disk else (nic, "vhost_net", "switch", {})
    assert text is not None
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise BackendError(f"expected NAME={main.upper()}[,option...], got {text!r}")
    first, *options = rest.split(",")
    values: dict[str, Any] = {"name": name, main: first}
    for option in options:
        key, has_value, value = option.partition("=")
        if not has_value:
            if key not in flags:
                raise BackendError(f"unknown option {option!r} (flags: {', '.join(flags) or 'none'})")
            values[flags[key]] = True
        else:
            values[key] = int(value) if value.isdigit() else value
    return kind, values


def _detach(args: argparse.Namespace) -> int:
    from ..control import request
    from .managed import GuestFiles, to_device, unplug

    domain = _domain(args)
    entry = next((d for d in domain["devices"] if d["name"] == args.name), None)
    if entry is None:
        raise BackendError(f"domain {args.domain} has no device {args.name!r}")
    files = GuestFiles.of(domain["state_dir"], args.domain)
    device = to_device(entry)
    if device is not None and files.pid() is not None and args.name in files.read_meta()["plugged"]:
        asyncio.run(unplug(files, device, args.timeout))
    request(args.control, "detach", kind=entry["kind"], name=args.name)
    print(f"{args.domain}: {entry['kind']} {args.name} detached")
    return 0
