"""The `vio` command (also `python -m backend`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import tempfile

from .ldc.constants import Mode

MODES = {"unreliable": Mode.UNRELIABLE, "reliable": Mode.RELIABLE}
DEFAULT_SIZES = [0, 1, 56, 4096, 65536, 262144]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vio", description="sun4v LDoms virtual I/O service domain")
    parser.add_argument("-v", "--verbose", action="store_true", help="log protocol events")
    commands = parser.add_subparsers(dest="command", required=True)

    echo = commands.add_parser("ldc-echo", help="two processes talk over an LDC channel (Unix socket transport)")
    echo.add_argument("--mode", choices=sorted(MODES), default="reliable")
    echo.add_argument("--socket", help="socket path (default: a temporary one)")
    echo.add_argument("--serve", action="store_true", help="only run the echo server on --socket")
    echo.add_argument("--connect", action="store_true", help="only run the client against --socket")
    echo.add_argument("--sizes", type=_sizes, default=DEFAULT_SIZES, help="comma-separated message sizes")
    echo.add_argument("--shm-size", type=int, default=1 << 20, help="bytes for the shared-memory round trip")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if args.command == "ldc-echo":
        return _ldc_echo(args)
    return 2


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of sizes: {text!r}") from None
    if any(size < 0 or size > 64 << 20 for size in sizes):
        raise argparse.ArgumentTypeError("sizes must be between 0 and 64 MiB")
    return sizes


def _ldc_echo(args: argparse.Namespace) -> int:
    from .ldc import echo
    from .ldc.aio import LdcEndpoint, listen

    mode = MODES[args.mode]
    if args.serve or args.connect:
        if not args.socket:
            print("vio ldc-echo: --serve and --connect need --socket PATH", file=sys.stderr)
            return 2

    async def server() -> None:
        listener = listen(args.socket)
        print(f"server: listening on {args.socket}", flush=True)
        endpoint = await LdcEndpoint.accept(listener, mode)
        listener.close()
        served = await echo.serve_one(endpoint)
        print(f"server: peer gone after {served} requests", flush=True)

    async def client() -> None:
        endpoint = await LdcEndpoint.connect(args.socket, mode)
        await echo.run_client(endpoint, args.sizes, args.shm_size, say=lambda line: print(f"client: {line}", flush=True))
        endpoint.close()

    if args.serve:
        asyncio.run(server())
        return 0
    if args.connect:
        asyncio.run(client())
        return 0
    with tempfile.TemporaryDirectory(prefix="vio-ldc-") as tmp:
        args.socket = args.socket or os.path.join(tmp, "ldc.sock")
        child = subprocess.Popen(
            [sys.executable, "-m", "backend", "ldc-echo", "--serve", "--socket", args.socket, "--mode", args.mode],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert child.stdout is not None
            print(child.stdout.readline(), end="", flush=True)  # "listening": safe to connect now
            print(f"client: pid {os.getpid()}, server: pid {child.pid}", flush=True)
            asyncio.run(client())
            print(child.stdout.read(), end="")
            return child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
