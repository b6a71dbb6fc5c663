"""`vio ds ...`: run a domain's DS agent, drive the well-known services, build libds.so."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .framework import PortConfig

ROLES = ("listen", "connect")


def _port_spec(text: str) -> tuple[PortConfig, str, str]:
    """ID:PEER_NAME:PEER_DHDL:listen|connect:PATH (listen = responder, the service-domain side)."""
    parts = text.split(":", 4)
    if len(parts) != 5 or parts[3] not in ROLES or not parts[4]:
        raise argparse.ArgumentTypeError(f"expected ID:PEER_NAME:PEER_DHDL:listen|connect:PATH, got {text!r}")
    try:
        port_id, dhdl = int(parts[0]), int(parts[2], 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port id and domain handle must be numbers in {text!r}") from None
    return PortConfig(port_id, parts[1], dhdl, initiator=parts[3] == "connect"), parts[3], parts[4]


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    ds = subparsers.add_parser("ds", help="Domain Services: agent, well-known services, libds.so")
    commands = ds.add_subparsers(dest="ds_command", required=True)

    agent = commands.add_parser("agent", help="run this domain's DS agent (libds connects to --socket)")
    agent.add_argument("--socket", required=True, help="control socket for libds (export VIO_DS_SOCKET=this)")
    agent.add_argument("--domain", required=True, help="this domain's name")
    agent.add_argument("--dhdl", type=lambda t: int(t, 0), default=0, help="this domain's domain handle")
    agent.add_argument(
        "--port", type=_port_spec, action="append", default=[], metavar="ID:PEER:DHDL:listen|connect:PATH",
        help="a DS port: LDC RELIABLE over the Unix socket PATH; the connecting side starts the DS handshake",
    )

    for name, text in (("shutdown", "ask a domain to shut down"), ("md-update", "tell a domain its MD changed")):
        command = commands.add_parser(name, help=text + " (a client of the service through libds)")
        command.add_argument("domain", help="the domain's name as the agent knows it")
        command.add_argument("--timeout", type=float, default=10.0)
        if name == "shutdown":
            command.add_argument("--delay", type=int, default=0, help="milliseconds before the domain shuts down")

    serve = commands.add_parser("guest-services", help="answer domain-shutdown and md-update as a domain does")
    serve.add_argument("--on-shutdown", help="shell command to run after answering a shutdown request")
    serve.add_argument("--on-md-update", help="shell command to run before answering an MD update")
    serve.add_argument("--count", type=int, default=0, help="exit after this many requests (0: run until signalled)")

    var = commands.add_parser("var-config", help="serve var-config as the control side: store variables a domain sets")
    var.add_argument("--store", required=True, help="JSON file holding the variables")
    var.add_argument("--count", type=int, default=0, help="exit after this many requests (0: run until signalled)")

    setvar = commands.add_parser("setvar", help="as a domain: set (or with --delete, delete) a variable over var-config")
    setvar.add_argument("name")
    setvar.add_argument("value", nargs="?", default="")
    setvar.add_argument("--delete", action="store_true")
    setvar.add_argument("--timeout", type=float, default=10.0)

    build = commands.add_parser("build-libds", help="build libds.so and ds.h (cffi embedding) into a directory")
    build.add_argument("--out", default="build/libds", help="output directory")


def dispatch(args: argparse.Namespace) -> int | None:
    if args.command != "ds":
        return None
    if args.ds_command == "agent":
        return _agent(args)
    if args.ds_command == "build-libds":
        from .cbuild import build

        print(build(args.out))
        return 0
    from . import drive

    return drive.run(args)


def _agent(args: argparse.Namespace) -> int:
    from .agent import DsAgent
    from .framework import DomainConfig

    ids = [port.port_id for port, _, _ in args.port]
    if len(set(ids)) != len(ids):
        print("vio ds agent: port ids must be unique", file=sys.stderr)
        return 2
    config = DomainConfig(args.domain, args.dhdl, tuple(port for port, _, _ in args.port))

    async def main() -> None:
        import signal

        agent = DsAgent(config, args.socket)
        await agent.start()
        for port, role, path in args.port:
            (agent.serve_port if role == "listen" else agent.connect_port)(port.port_id, path)
        print(f"ds agent {args.domain}: libds socket {args.socket}, {len(args.port)} port(s)", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        agent.close()

    try:
        asyncio.run(main())
    except OSError as exc:
        print(f"vio ds agent: {exc}", file=sys.stderr)
        return 1
    return 0
