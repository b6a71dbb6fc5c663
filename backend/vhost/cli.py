"""`vio vhost-blk`: serve a disk file to QEMU (vhost-user-blk-pci) or any vhost-user front-end."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys


def add_commands(commands: argparse._SubParsersAction) -> None:
    blk = commands.add_parser("vhost-blk", help="serve a disk over vhost-user (QEMU: -device vhost-user-blk-pci)")
    blk.add_argument("--socket", required=True, help="Unix socket QEMU's chardev connects to")
    blk.add_argument("--disk", required=True, help="backing file or block device")
    blk.add_argument("--ro", action="store_true", help="export read-only (VIRTIO_BLK_F_RO)")
    blk.add_argument("--queues", type=int, default=1, help="request queues (1..64)")
    blk.add_argument("--queue-size", type=int, default=256, help="largest ring the driver may use")
    blk.add_argument("--io-threads", type=int, default=4, help="threads doing disk I/O")
    blk.add_argument("--size", type=int, help="create the file with this many bytes if it does not exist")
    blk.add_argument("--no-iommu", dest="iommu", action="store_false",
                     help="do not offer VIRTIO_F_ACCESS_PLATFORM (the device IOTLB, for guests behind an IOMMU)")


def dispatch(args: argparse.Namespace) -> int | None:
    if args.command != "vhost-blk":
        return None
    if not 1 <= args.queues <= 64:
        print("vio vhost-blk: --queues must be 1..64", file=sys.stderr)
        return 2
    if args.queue_size < 1 or args.queue_size > 32768 or args.queue_size & (args.queue_size - 1):
        print("vio vhost-blk: --queue-size must be a power of two up to 32768", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve_blk(args))
    except OSError as exc:
        print(f"vio vhost-blk: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve_blk(args: argparse.Namespace) -> None:
    from ..vdisk.devid import device_id_for
    from ..vdisk.engine import DiskEngine
    from .aio import VhostUserServer
    from .devices.blk import BlockDevice

    engine = DiskEngine(args.disk, read_only=args.ro, create_size=args.size)
    try:
        device = BlockDevice(engine, device_id_for(args.disk), num_queues=args.queues, queue_size=args.queue_size)
        server = VhostUserServer(args.socket, device, io_threads=args.io_threads, iommu=args.iommu)
        await server.start()
        print(f"vhost-blk: serving {args.disk} ({engine.size_bytes} bytes, {args.queues} queue(s)"
              f"{', read-only' if args.ro else ''}) on {args.socket}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()
    finally:
        engine.close()
