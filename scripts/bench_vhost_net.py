"""vhost-user virtio-net benchmark: guest <-> host TCP through our back-end against QEMU's own tap networking.

One x86_64 TCG guest per path, each on a Linux bridge with a namespace host
behind it. The guest sends MB bytes with `dd | nc` to a socket in the
namespace (guest -> host), then receives MB bytes the namespace sends to
its `nc -l` (host -> guest). Throughput is measured on the host side.

- ours: `vio vhost-net` with a virtio-net port and an offloading tap uplink
  (the guest's TSO frames reach the kernel whole); also the back-end
  process's CPU time per MB from /proc/PID/stat (utime + stime), which
  measures the back-end itself rather than the TCG guest.
- reference: `-netdev tap` (QEMU's own userspace tap back-end), whose
  network path runs inside the QEMU process: its CPU is reported for the
  whole QEMU process, for scale only.

QEMU 7.2 crashes with vhost-user virtio-net and MSI-X under TCG, so both
guests use INTx (vectors=0) to compare like with like.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.qemu import (
    BackendProcess,
    Guest,
    GuestSpec,
    TapNet,
    VhostUserNet,
    arch_profile,
    guest_image,
)
from backend.vswitch.netns import add_netns_host, unique_name
from backend.vswitch.tap import link_info, netlink

from procstat import cpu_seconds  # scripts/procstat.py

HOST_IP, GUEST_IP = "198.19.95.2", "198.19.95.5"

HOST_SIDE = textwrap.dedent("""
    import socket, sys, time
    size = int(sys.argv[2])
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], 5001)); s.listen(1)
    print("listening", flush=True)
    c, _ = s.accept(); c.settimeout(120)
    got, start = 0, None
    while got < size:
        chunk = c.recv(1 << 20)
        if not chunk:
            break
        start = start or time.monotonic()
        got += len(chunk)
    print("in", got, time.monotonic() - start, flush=True)
    c.close()
    for _ in range(600):
        try:
            out = socket.create_connection((sys.argv[3], 5002), timeout=5)
            break
        except OSError:
            time.sleep(0.1)
    block, start = bytes(1 << 16), time.monotonic()
    for _ in range(size // len(block)):
        out.sendall(block)
    out.shutdown(socket.SHUT_WR); out.recv(1)
    print("out", size, time.monotonic() - start, flush=True)
""")


def guest_script(megabytes: int) -> str:
    return (f"ping -c 1 -W 5 {HOST_IP} >/dev/null; "
            f"dd if=/dev/zero bs=65536 count={megabytes * 16} 2>/dev/null | nc {HOST_IP} 5001; "
            f"nc -l -p 5002 > /dev/null")


async def transfer(bridge: str, device, megabytes: int, cpu_pid) -> dict[str, float]:
    """Boot a guest with `device`, run both transfers, return MB/s each way and CPU seconds used."""
    size = megabytes << 20
    with add_netns_host(bridge, f"{HOST_IP}/24") as host:
        side = await asyncio.create_subprocess_exec("ip", "netns", "exec", host.netns, sys.executable, "-c", HOST_SIDE, HOST_IP,
                                                    str(size), GUEST_IP, stdout=asyncio.subprocess.PIPE)
        assert side.stdout is not None
        try:
            assert (await side.stdout.readline()).decode().strip() == "listening"
            spec = GuestSpec(arch_profile("x86_64"), guest_image("x86_64"), devices=[device], command=guest_script(megabytes),
                             ip=f"{GUEST_IP}/24", device_props={"vectors": 0})
            async with Guest(spec) as guest:
                if isinstance(device, TapNet):
                    await asyncio.to_thread(enslave, device.ifname, bridge)
                await guest.ready(180)
                pid = cpu_pid(guest)
                before = cpu_seconds(pid)
                lines = [(await side.stdout.readline()).decode().split() for _ in range(2)]
                used = cpu_seconds(pid) - before
                await guest.command_exit(120)
            result = {words[0]: size / float(words[2]) / 1e6 for words in lines if len(words) == 3}
            return {"in": result["in"], "out": result["out"], "cpu_per_mb": used / (2 * megabytes)}
        finally:
            if side.returncode is None:
                side.kill()
                await side.wait()


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True)


def enslave(ifname: str, bridge: str) -> None:
    """QEMU creates its tap itself: put it on the bridge once it exists."""
    for _ in range(200):
        if netlink(lambda ipr: link_info(ipr, ifname=ifname)) is not None:
            break
        time.sleep(0.05)
    ip("link", "set", ifname, "master", bridge, "up")


async def main(megabytes: int) -> None:
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-vhost-net-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    results = {}

    bridge, tap, sock = unique_name("vbr"), unique_name("vtap"), str(work / "net0.sock")
    argv = [sys.executable, "-m", "backend", "vhost-net", "--port", f"g0={sock}", "--uplink", tap, "--bridge", bridge]
    async with BackendProcess(argv, sock) as backend:
        results["vio vhost-net"] = await transfer(bridge, VhostUserNet("net0", sock, "52:54:00:00:00:10"), megabytes,
                                                  lambda guest: backend.process.pid)

    bridge, tap = unique_name("vbr"), unique_name("qtap")
    await asyncio.to_thread(ip, "link", "add", bridge, "type", "bridge")
    try:
        await asyncio.to_thread(ip, "link", "set", bridge, "up")
        results["QEMU -netdev tap"] = await transfer(bridge, TapNet("net0", tap, "52:54:00:00:00:11"), megabytes,
                                                     lambda guest: guest.process.pid)
    finally:
        await asyncio.to_thread(ip, "link", "del", bridge)

    print(f"\nguest <-> host TCP, {megabytes} MiB each way, x86_64 guest under TCG, INTx")
    print(f"{'path':<18} {'guest->host MB/s':>17} {'host->guest MB/s':>17} {'CPU s/MB':>10}")
    for name, r in results.items():
        print(f"{name:<18} {r['in']:>17.2f} {r['out']:>17.2f} {r['cpu_per_mb']:>10.4f}")
    ours, ref = results["vio vhost-net"], results["QEMU -netdev tap"]
    print(f"ratio ours/tap: guest->host {ours['in'] / ref['in']:.2f}x, host->guest {ours['out'] / ref['out']:.2f}x "
          f"(target guest->host >= 0.5x)")
    print("CPU s/MB: ours = the vio vhost-net process alone; tap = the whole QEMU process (guest CPU included)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=16, help="MiB to move each way")
    asyncio.run(main(parser.parse_args().mb))
