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

    vds = commands.add_parser("vds", help="serve disks to vDisk clients (one socket per disk)")
    vds.add_argument("--disk", action="append", required=True, type=_disk_spec, metavar="NAME=PATH[,ro][,size=BYTES]",
                     help="a disk to export; repeat for more")
    vds.add_argument("--socket-dir", required=True, help="where NAME.sock sockets are created")

    disk = commands.add_parser("disk", help="use a vDisk server as a client")
    disk.add_argument("--socket", required=True, help="the vds socket of the disk")
    disk.add_argument("--inband", action="store_true", help="use in-band descriptors instead of a shared ring")
    actions = disk.add_subparsers(dest="action", required=True)
    actions.add_parser("info", help="attributes, capacity, device id")
    read = actions.add_parser("read", help="read bytes to stdout or a file")
    read.add_argument("offset", type=int)
    read.add_argument("length", type=int)
    read.add_argument("--output", help="file to write (default: hex dump to stdout)")
    write = actions.add_parser("write", help="write a file's bytes at an offset")
    write.add_argument("offset", type=int)
    write.add_argument("input", help="file whose bytes to write")
    label = actions.add_parser("label", help="show the disk's label, or write a new one")
    label.add_argument("--init", choices=["sun", "gpt"], help="write a default Sun (SMI VTOC) or GPT label first")

    commands.add_parser("demo", help="show the working layers end to end (needs root for the network part)")

    vsw = commands.add_parser("vsw", help="run a virtual switch: vnet ports on a socket, optionally a tap uplink")
    vsw.add_argument("--name", default="vsw0", help="switch name")
    vsw.add_argument("--socket", required=True, help="Unix socket vnet clients connect to")
    vsw.add_argument("--mac", default="02:00:00:00:ff:01", help="the switch's own MAC (vnet attribute exchange)")
    vsw.add_argument("--mtu", type=int, default=1500, help="port MTU (L3 bytes)")
    vsw.add_argument("--uplink", help="create a tap device with this name as the uplink")
    vsw.add_argument("--bridge", help="enslave the uplink to this Linux bridge (created if missing)")
    vsw.add_argument("--capture", metavar="FILE", help="write the uplink's traffic to a pcap file (tcpdump -r FILE)")

    plugins = _command_plugins()
    for plugin in plugins:
        plugin.add_commands(commands)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    for plugin in plugins:
        handled = plugin.dispatch(args)
        if handled is not None:
            return handled
    if args.command == "ldc-echo":
        return _ldc_echo(args)
    if args.command == "vds":
        return _vds(args)
    if args.command == "disk":
        return _disk(args)
    if args.command == "vsw":
        return _vsw(args)
    if args.command == "demo":
        from .demo import main as demo

        return demo()
    return 2


# Packages that bring their own subcommands: each module has add_commands(subparsers) and
# dispatch(args) -> exit code, or None when the command is not one of its own.
PLUGIN_MODULES: list[str] = [".ds.cli", ".daemon_cli", ".vhost.cli", ".guest.cli", ".vhost.net_cli", ".qemu.cli"]


def _command_plugins() -> list:
    import importlib

    return [importlib.import_module(name, __package__) for name in PLUGIN_MODULES]


def _vsw(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .vswitch.switch import Switch
    from .vswitch.vnet_port import SwitchServer

    try:
        mac = bytes.fromhex(args.mac.replace(":", ""))
        if len(mac) != 6:
            raise ValueError
    except ValueError:
        print(f"vio vsw: --mac {args.mac!r} is not a MAC address", file=sys.stderr)
        return 2

    async def main() -> None:
        switch = Switch(args.name)
        server = SwitchServer(switch, args.socket, mac, mtu=args.mtu)
        uplink = recording = None
        if args.capture and not args.uplink:
            raise ConfigError("--capture records the uplink: give --uplink too")
        if args.uplink:
            from .vswitch.tap import open_uplink

            uplink = open_uplink(switch, args.uplink, mtu=args.mtu, bridge=args.bridge, create_bridge=bool(args.bridge))
            if args.capture:
                from .vswitch.pcap import capture

                recording = capture(switch, uplink, args.capture, offset=time.time() - time.monotonic())
        await server.start()
        print(f"vsw {args.name}: vnet ports on {args.socket}" + (f", uplink {args.uplink}" if args.uplink else ""), flush=True)
        await _until_signalled()
        server.close()
        if recording is not None:
            recording.close()
        if uplink is not None:
            uplink.close()

    import time

    return _run(main, "vsw", (OSError, ConfigError))


def _disk_spec(text: str) -> tuple[str, str, bool, int | None]:
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH[,ro][,size=BYTES], got {text!r}")
    path, *options = rest.split(",")
    read_only, size = False, None
    for option in options:
        if option == "ro":
            read_only = True
        elif option.startswith("size="):
            try:
                size = int(option[5:])
            except ValueError:
                raise argparse.ArgumentTypeError(f"bad size in {text!r}") from None
        else:
            raise argparse.ArgumentTypeError(f"unknown disk option {option!r} in {text!r}")
    return name, path, read_only, size


def _vds(args: argparse.Namespace) -> int:
    from .vdisk.devid import device_id_for
    from .vdisk.engine import DiskEngine
    from .vdisk.serve import DiskServer
    from .vdisk.server import Export

    async def main() -> None:
        servers = []
        for name, path, read_only, size in args.disk:
            engine = DiskEngine(path, read_only=read_only, create_size=size)
            export = Export(engine, device_id_for(path))
            server = DiskServer(export, os.path.join(args.socket_dir, f"{name}.sock"))
            await server.start()
            servers.append(server)
            print(f"vds: serving {name} ({path}, {engine.size_bytes} bytes{', read-only' if read_only else ''}) on {server.socket_path}", flush=True)
        await _until_signalled()
        for server in servers:
            server.close()
            server.export.engine.close()

    return _run(main, "vds", (OSError,))


async def _label(client, init: str | None) -> None:
    """Show the label a vds reports (Sun VTOC, or GPT through GET_EFI); optionally write one."""
    import uuid

    from .vdisk import labels
    from .vdisk.blockio import MemoryBlockIO

    size = client.size_bytes
    if init == "sun":
        geometry = labels.default_geometry(size, client.block_size)
        await client.set_geometry(geometry)
        await client.set_vtoc(labels.default_vtoc(size, client.block_size, geometry))
    elif init == "gpt":
        scratch = MemoryBlockIO(size, client.block_size)
        _, first, last = labels.gpt_layout(size // client.block_size, client.block_size)
        labels.write_gpt(scratch, [labels.GptPartition(uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4"), uuid.uuid4(), first, last, name="data")])
        block = client.block_size
        await client.write(0, scratch.read(0, block))  # protective MBR
        await client.set_efi(2, scratch.read(2 * block, 32 * block))
        await client.set_efi(1, scratch.read(block, block))
    try:
        vtoc = await client.get_vtoc()
        geometry = await client.get_geometry()
        print(f"Sun label {vtoc.ascii_label!r}: {geometry.num_cyl} cylinders x {geometry.num_hd} heads x {geometry.num_sec} sectors")
        for number, part in enumerate(vtoc.partitions):
            if part.num_blocks:
                print(f"  slice {number}: tag {part.id} flags {part.perm_flags} start {part.start_block} blocks {part.num_blocks}")
        return
    except OSError:
        pass
    header = await client.get_efi(1, client.block_size)
    if header[:8] != b"EFI PART":
        print("no label (neither a Sun VTOC nor a GPT)")
        return
    entries = await client.get_efi(2, 32 * client.block_size)
    scratch = MemoryBlockIO(size, client.block_size)
    scratch.write(client.block_size, header)
    scratch.write(2 * client.block_size, entries)
    table = labels.read_gpt(scratch)
    print(f"GPT, {len(table.partitions)} partitions")
    for part in table.partitions:
        print(f"  {part.slot}: {part.name!r} LBA {part.first_lba}..{part.last_lba} type {part.type_guid}")


def _disk(args: argparse.Namespace) -> int:
    from .vdisk.client import VdcClient
    from .vdisk.devid import DeviceId

    async def main() -> None:
        client = await VdcClient.connect(args.socket, inband=args.inband)
        try:
            if args.action == "info":
                attrs = client.attrs
                block, blocks = await client.get_capacity()
                devid = DeviceId.decode(await client.get_devid())
                print(f"version {client.endpoint.session.version}, block size {attrs.vdisk_block_size}, {blocks} blocks ({block * blocks} bytes)")
                print(f"disk type {attrs.vdisk_type}, media type {attrs.vdisk_mtype}, max transfer {attrs.max_xfer_size} blocks, operations 0x{attrs.operations:x}")
                print(f"write cache {'on' if await client.get_wce() else 'off'}, device id type {devid.type} {devid.id.hex()}")
            elif args.action == "read":
                data = await client.read(args.offset, args.length)
                if args.output:
                    with open(args.output, "wb") as f:
                        f.write(data)
                else:
                    print(data.hex())
            elif args.action == "write":
                with open(args.input, "rb") as f:
                    await client.write(args.offset, f.read())
                await client.flush()
            elif args.action == "label":
                await _label(client, args.init)
        finally:
            client.close()

    return _run(main, "disk", (OSError, ValueError))


def _run(main, command: str, errors: tuple[type[BaseException], ...]) -> int:
    """Run a command's coroutine; the errors a user can cause become one clear line and status 1."""
    try:
        asyncio.run(main())
    except errors as exc:
        print(f"vio {command}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _until_signalled() -> None:
    """Serve until SIGTERM or SIGINT (then the caller shuts down cleanly)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


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
