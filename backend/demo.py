"""`vio demo`: what works today, end to end, with progress for every step.

Until a real guest boots on the service domain (the daemon issue), the demo
shows the layers that guests will use, each between separate processes:
LDC messages and shared memory, a virtual disk served by `vio vds` and used
by a vdc client (its label then read by the host's fdisk), and a vnet client
that pings a network namespace through `vio vsw`'s tap uplink, answered by
the Linux kernel.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def vio(*args: str, **kwargs: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "backend", *args], stdout=subprocess.PIPE, text=True, **kwargs)  # type: ignore[call-overload]


def wait_line(process: subprocess.Popen, marker: str) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    if marker not in line:
        raise RuntimeError(f"expected {marker!r} from {process.args!r}, got {line!r}")
    return line.strip()


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(20)


def ldc_echo() -> None:
    for mode in ("reliable", "unreliable"):
        step(f"LDC: two processes, {mode} mode, messages 0 B..256 KiB and a 1 MiB shared-memory round trip")
        subprocess.run([sys.executable, "-m", "backend", "ldc-echo", "--mode", mode], check=True)


def vdisk(tmp: str) -> None:
    from .vdisk.client import VdcClient

    image = os.path.join(tmp, "demo-disk.img")
    step(f"vDisk: vio vds serves {image} (64 MiB, sparse)")
    server = vio("vds", "--disk", f"demo={image},size={64 * MiB}", "--socket-dir", tmp)
    try:
        print("    " + wait_line(server, "serving"))

        async def client() -> None:
            vdc = await VdcClient.connect(os.path.join(tmp, "demo.sock"))
            print(f"    vdc: VIO {vdc.endpoint.session.version}, {vdc.size_bytes // MiB} MiB disk, block {vdc.block_size}")
            pattern = os.urandom(MiB)
            start = time.perf_counter()
            await vdc.write(8 * MiB, pattern)
            await vdc.flush()
            back = await vdc.read(8 * MiB, MiB)
            print(f"    wrote and read back 1 MiB through the ring in {1e3 * (time.perf_counter() - start):.1f} ms: {'match' if back == pattern else 'MISMATCH'}")
            if back != pattern:
                raise RuntimeError("data read back differs")
            vdc.close()

        asyncio.run(client())
        step("vDisk: the client writes a Sun label; the host's fdisk reads it")
        subprocess.run([sys.executable, "-m", "backend", "disk", "--socket", os.path.join(tmp, "demo.sock"), "label", "--init", "sun"], check=True)
    finally:
        stop(server)
    listing = subprocess.run(["fdisk", "-l", image], capture_output=True, text=True, check=True).stdout
    print("    " + "\n    ".join(line for line in listing.splitlines() if "Disklabel" in line or "Whole disk" in line))


def vswitch(tmp: str) -> None:
    from .vswitch.netns import add_netns_host, unique_name
    from .vswitch.vnet_port import VnetClient

    tap, bridge = unique_name("demotap"), unique_name("demobr")
    socket_path = os.path.join(tmp, "vsw.sock")
    step(f"vSwitch: vio vsw with tap uplink {tap} on a new bridge {bridge}")
    switch = vio("vsw", "--socket", socket_path, "--uplink", tap, "--bridge", bridge)
    try:
        print("    " + wait_line(switch, "uplink"))
        step("vSwitch: a network namespace behind the bridge at 198.19.99.2")
        with add_netns_host(bridge, "198.19.99.2/24") as host:
            step("vSwitch: a vnet client (198.19.99.1) pings it; the kernel in the namespace answers")

            async def ping() -> None:
                from .vswitch import frames as eth
                from .vswitch.packets import arp, icmp_echo, parse_arp, parse_icmp

                me = bytes.fromhex("020000009901")
                client = await VnetClient.connect(socket_path, me)
                print(f"    vnet up: VIO {client.endpoint.session.version}, frame MTU {client.device.mtu}")
                client.send(arp(1, me, "198.19.99.1", bytes(6), "198.19.99.2"))
                peer = None
                while peer is None:
                    answer = parse_arp(await client.receive(5))
                    if answer is not None and answer[0] == 2:
                        peer = answer[1]
                print(f"    ARP: 198.19.99.2 is at {eth.format_mac(peer)} (namespace {host.netns})")
                for seq in range(1, 4):
                    start = time.perf_counter()
                    client.send(icmp_echo(me, "198.19.99.1", peer, "198.19.99.2", seq=seq))
                    while True:
                        echo = parse_icmp(await client.receive(5))
                        if echo is not None and echo[0] == 0 and echo[4] == seq:
                            break
                    print(f"    echo reply from 198.19.99.2: seq={seq} time={1e3 * (time.perf_counter() - start):.2f} ms")
                client.close()

            asyncio.run(ping())
    finally:
        stop(switch)
    print(f"    vsw stopped; {tap} and {bridge} removed")


def main() -> int:
    if os.geteuid() != 0:
        print("vio demo: the network part creates a tap, a bridge and a namespace: run it as root", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="vio-demo-") as tmp:
        ldc_echo()
        vdisk(tmp)
        vswitch(tmp)
    step("done")
    return 0
