"""Benchmark of the LDC transports end to end (see scripts/bench-ldc-vhost).

Each transport gets the same disk file and the same namespaces:
  vhost-user: vio ldc-vhost (vds + vsw) <- vio guest-sim (vdc as NBD, vnet as a tap)
  unix:       vio vds / vio vsw         <- this script's --unix-guest mode (the same NBD and tap edges,
                                            vdc / vnet over LdcEndpoint on SOCK_SEQPACKET)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from backend.vswitch.netns import (
    add_netns_host,
    create_netns,
    remove_netns,
    unique_name,
)
from backend.vswitch.tap import netlink

DISK = 1 << 30
STANDARD_MTU = 1500
FIO_JOBS = [
    ("4k randread qd32", {"rw": "randread", "bs": "4k", "iodepth": 32}),
    ("4k randwrite qd32", {"rw": "randwrite", "bs": "4k", "iodepth": 32}),
    ("1M seq read", {"rw": "read", "bs": "1M", "iodepth": 4}),
    ("1M seq write", {"rw": "write", "bs": "1M", "iodepth": 4}),
]


def vio(*args: str, ready: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "backend", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()  # type: ignore[union-attr]
    if ready not in line:
        process.kill()
        raise RuntimeError(f"vio {args[0]} did not start: {line!r}")
    return process


def own(*args: str, ready: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, __file__, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()  # type: ignore[union-attr]
    if ready not in line:
        process.kill()
        raise RuntimeError(f"guest helper did not start: {line!r}")
    return process


def fio(nbd: str, seconds: int, options: dict) -> tuple[float, float]:
    argv = ["fio", "--name=bench", "--ioengine=nbd", f"--uri=nbd+unix:///?socket={nbd}", f"--runtime={seconds}",
            "--time_based", "--size=512M", "--output-format=json"] + [f"--{k}={v}" for k, v in options.items()]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    result = json.loads(out[out.index("{"):])  # the nbd engine prints a line before the JSON
    job = result["jobs"][0]
    side = job["read"] if job["read"]["io_bytes"] else job["write"]
    return side["iops"], side["bw_bytes"] / 1e6


def iperf(server_ns: str, client_ns: str, address: str, seconds: int) -> float:
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
    try:
        import time

        time.sleep(0.5)
        out = subprocess.run(["ip", "netns", "exec", client_ns, "iperf3", "-c", address, "-t", str(seconds), "-J"],
                             capture_output=True, text=True, timeout=seconds + 60, check=False)
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        server.kill()
        server.wait()


def stop(*processes: subprocess.Popen) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def jumbo(host, mtu: int) -> None:
    """The uplink side's veth pair at `mtu` too (the bridge follows its ports)."""
    for ifname, netns in ((host.host_ifname, None), (host.ns_ifname, host.netns)):
        netlink(lambda ipr, name=ifname: ipr.link("set", index=ipr.link_lookup(ifname=name)[0], mtu=mtu), netns=netns)


def run_transport(kind: str, tmp: str, disk: str, seconds: int, mtu: int) -> dict[str, str]:
    """The disk workloads (at the standard MTU only) and iperf3, on one transport at one MTU."""
    results: dict[str, str] = {}
    nbd = os.path.join(tmp, f"{kind}-nbd.sock")
    bridge, uplink, guest_ns = unique_name("bb"), unique_name("bu"), unique_name("bg")
    create_netns(guest_ns)
    host = None
    processes: list[subprocess.Popen] = []
    try:
        if kind == "vhost-user":
            sock = os.path.join(tmp, "ldc.sock")
            processes.append(vio("ldc-vhost", "--socket", sock, "--disk", f"vdisk0={disk}", "--vnets", "1",
                                 "--uplink", uplink, "--bridge", bridge, "--mtu", str(mtu), ready="serving on"))
            host = add_netns_host(bridge, "10.79.0.1/24")
            processes.append(vio("guest-sim", "--socket", sock, "--nbd", nbd, "--tap", f"btap0@{guest_ns}=10.79.0.2/24",
                                 "--mtu", str(mtu), ready="ready"))
        else:
            vds_dir = os.path.join(tmp, "vds")
            os.makedirs(vds_dir, exist_ok=True)
            processes.append(vio("vds", "--disk", f"vdisk0={disk}", "--socket-dir", vds_dir, ready="serving"))
            vsw = os.path.join(tmp, "vsw.sock")
            processes.append(vio("vsw", "--socket", vsw, "--uplink", uplink, "--bridge", bridge, "--mtu", str(mtu), ready="vnet ports"))
            host = add_netns_host(bridge, "10.79.0.1/24")
            processes.append(own("--unix-guest", os.path.join(vds_dir, "vdisk0.sock"), nbd, vsw, guest_ns, "10.79.0.2/24", str(mtu),
                                 ready="ready"))
        if mtu != STANDARD_MTU:
            jumbo(host, mtu)
        else:
            for name, options in FIO_JOBS:
                iops, mbs = fio(nbd, seconds, options)
                results[name] = f"{iops:9.0f} IOPS {mbs:8.1f} MB/s"
        results[f"iperf3 TCP, MTU {mtu}"] = f"{iperf(host.netns, guest_ns, host.ip, seconds):9.3f} Gbit/s"
    finally:
        stop(*reversed(processes))
        if host is not None:
            host.close()
        remove_netns(guest_ns)
    return results


async def unix_guest(vds: str, nbd: str, vsw: str, netns: str, address: str, mtu: str) -> None:
    """The Unix-transport twin of guest-sim: the same NBD and tap edges on LdcEndpoint connections."""
    from backend.cli import _until_signalled
    from backend.guest.nbd_serve import NbdExport
    from backend.guest.net import GuestInterface
    from backend.vdisk.client import VdcClient
    from backend.vswitch.frames import TAGGED_HEADER_LEN
    from backend.vswitch.vnet import MAX_TSO
    from backend.vswitch.vnet_port import VnetClient

    client = await VdcClient.connect(vds)
    export = NbdExport(client, nbd, max_block=client.device.max_xfer)
    await export.start()
    interface = GuestInterface("utap0", netns, address, mtu=int(mtu), lso=True)
    vnet = await VnetClient.connect(vsw, interface.mac, mtu=int(mtu) + TAGGED_HEADER_LEN, on_frame=interface.deliver,
                                    lso_maxlen=MAX_TSO)
    interface.connect(vnet)
    print("ready", flush=True)
    await _until_signalled()
    interface.close()
    export.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="per workload")
    parser.add_argument("--mtus", default="1500,16000,65000",
                        help="MTUs for iperf3 (16000: the largest Oracle VM Server for SPARC allows; 65000: near Linux vnet's 65535)")
    parser.add_argument("--unix-guest", nargs=6, metavar=("VDS", "NBD", "VSW", "NETNS", "CIDR", "MTU"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.unix_guest:
        asyncio.run(unix_guest(*args.unix_guest))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-ldc-") as tmp:
        disk = os.path.join(tmp, "disk.img")
        with open(disk, "wb") as f:
            f.truncate(DISK)
        mtus = [int(m) for m in args.mtus.split(",")]
        table = {kind: {name: value for mtu in mtus for name, value in run_transport(kind, tmp, disk, args.seconds, mtu).items()}
                 for kind in ("vhost-user", "unix")}
    print(f"{'workload':24} {'LDC over vhost-user':>34} {'LDC over Unix socket':>34}")
    for name in table["vhost-user"]:
        print(f"{name:24} {table['vhost-user'][name]:>34} {table['unix'][name]:>34}")
    print("targets (issue 9): 20,000 IOPS, 500 MB/s sequential, 1 Gbit/s TCP")
    print("(jumbo MTUs: every hop, from the guest's tap to the host's veth, at that MTU; the vnet negotiates it from 1.4)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
