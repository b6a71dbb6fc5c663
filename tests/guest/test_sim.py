"""The guest simulator end to end, with real processes and real tools.

Disk: qemu-io and qemu-img over NBD -> guest-sim's vdc -> LDC -> vhost-user -> vds -> file.
Network: ping and TCP between a namespace holding the guest's tap and one behind the switch's uplink.
DS: `vio ds shutdown` on the control side; the simulated guest answers and powers off.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from backend.vswitch.netns import (
    add_netns_host,
    create_netns,
    remove_netns,
    run_in_netns,
    unique_name,
)

from backend.vswitch.tap import netlink

from .helpers import ROOT, backend, guest

pytestmark = pytest.mark.slow
DISK = 32 << 20


def nbd_url(path: str) -> str:
    return f"nbd+unix:///?socket={path}"


def qemu_io(url: str, *commands: str) -> subprocess.CompletedProcess[str]:
    argv = ["qemu-io", "-f", "raw"]
    for command in commands:
        argv += ["-c", command]
    return subprocess.run([*argv, url], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(DISK)
    return str(path)


def test_qemu_io_and_qemu_img_through_the_whole_vdisk_path(tmp_path, disk: str) -> None:
    sock, nbd = str(tmp_path / "ldc.sock"), str(tmp_path / "nbd.sock")
    source = tmp_path / "source.img"
    source.write_bytes(os.urandom(4 << 20) + bytes(DISK - (4 << 20)))
    with backend("--socket", sock, "--disk", f"vdisk0={disk}"), guest("--socket", sock, "--nbd", nbd):
        done = qemu_io(nbd_url(nbd), "write -P 0xa5 0 1M", "write -P 0x3c 5M 64k", "aio_write -P 0x77 8M 4k",
                       "aio_flush", "read -P 0xa5 0 1M", "read -P 0x3c 5M 64k", "read -P 0x77 8M 4k", "read -P 0 9M 4k")
        assert done.returncode == 0 and "Pattern verification failed" not in done.stdout, done.stdout + done.stderr
        bad = qemu_io(nbd_url(nbd), "read -P 0xa6 0 4k")  # the check can fail
        assert "Pattern verification failed" in bad.stdout
        with open(disk, "rb") as f:
            assert f.read(1 << 20) == b"\xa5" * (1 << 20)
        convert = subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(source), nbd_url(nbd)],
                                 capture_output=True, text=True, timeout=300, check=False)
        assert convert.returncode == 0, convert.stderr
        compare = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(source), nbd_url(nbd)],
                                 capture_output=True, text=True, timeout=300, check=False)
        assert compare.returncode == 0 and "identical" in compare.stdout, compare.stdout + compare.stderr
    with open(disk, "rb") as f:
        assert f.read() == source.read_bytes()


def test_a_killed_guest_loses_nothing_acknowledged_and_the_backend_serves_the_next(tmp_path, disk: str) -> None:
    sock, nbd = str(tmp_path / "ldc.sock"), str(tmp_path / "nbd.sock")
    with backend("--socket", sock, "--disk", f"vdisk0={disk}") as served:
        with guest("--socket", sock, "--nbd", nbd) as first:
            assert qemu_io(nbd_url(nbd), "write -P 0x42 0 2M").returncode == 0  # acknowledged
            writer = subprocess.Popen(["qemu-io", "-f", "raw", "-c", "write -P 0x43 4M 16M", nbd_url(nbd)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            first.kill()  # mid-transfer
            writer.wait(30)
        with guest("--socket", sock, "--nbd", nbd):
            done = qemu_io(nbd_url(nbd), "read -P 0x42 0 2M")
            assert done.returncode == 0 and "Pattern verification failed" not in done.stdout, done.stdout
        assert served.popen.poll() is None


@pytest.fixture
def networks():
    bridge, uplink, guest_ns = unique_name("br"), unique_name("up"), unique_name("gns")
    create_netns(guest_ns)
    made = {"bridge": bridge, "uplink": uplink, "guest_ns": guest_ns}
    try:
        yield made
    finally:
        if "host" in made:
            made["host"].close()
        remove_netns(guest_ns)


def test_ping_and_tcp_between_the_guest_namespace_and_the_uplink_side(tmp_path, networks) -> None:
    sock = str(tmp_path / "net.sock")
    with backend("--socket", sock, "--vnets", "1", "--uplink", networks["uplink"], "--bridge", networks["bridge"]):
        host = networks["host"] = add_netns_host(networks["bridge"], "10.78.0.1/24")
        with guest("--socket", sock, "--tap", f"gtap0@{networks['guest_ns']}=10.78.0.2/24"):
            for size in ("56", "1472"):  # small and full-MTU frames
                ping = run_in_netns(networks["guest_ns"], "busybox", "ping", "-c", "3", "-s", size, "-W", "3", host.ip, check=False)
                assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
            payload = os.urandom(1 << 20)
            server = subprocess.Popen(["ip", "netns", "exec", host.netns, sys.executable, "-c", TCP_SINK, "5001"],
                                      stdout=subprocess.PIPE, cwd=ROOT)
            assert server.stdout is not None and server.stdout.readline().strip() == b"listening"
            client = subprocess.run(["ip", "netns", "exec", networks["guest_ns"], sys.executable, "-c", TCP_SOURCE, host.ip, "5001"],
                                    input=payload, capture_output=True, timeout=60, check=False)
            assert client.returncode == 0, client.stderr
            import hashlib

            assert server.communicate(timeout=60)[0].strip().decode() == hashlib.sha256(payload).hexdigest()


def tcp_transfer(source_ns: str, sink_ns: str, sink_ip: str, port: int, size: int = 16 << 20) -> None:
    """`size` random bytes over TCP from one namespace to another; the sink's SHA-256 must match."""
    payload = os.urandom(size)
    server = subprocess.Popen(["ip", "netns", "exec", sink_ns, sys.executable, "-c", TCP_SINK, str(port)],
                              stdout=subprocess.PIPE, cwd=ROOT)
    assert server.stdout is not None and server.stdout.readline().strip() == b"listening"
    client = subprocess.run(["ip", "netns", "exec", source_ns, sys.executable, "-c", TCP_SOURCE, sink_ip, str(port)],
                            input=payload, capture_output=True, timeout=120, check=False)
    assert client.returncode == 0, client.stderr
    assert server.communicate(timeout=60)[0].strip().decode() == hashlib.sha256(payload).hexdigest()


def vnet_counters(output: str, tap: str) -> dict[str, int]:
    """The counters guest-sim prints for a tap's vnet when it stops."""
    line = next(line for line in output.splitlines() if f"vnet {tap}:" in line)
    return {key: int(value) for key, value in (field.split("=") for field in line.split(": ")[-1].split())}


def test_lso_carries_tcp_in_large_frames_at_mtu_1500_and_a_vnet_without_lso_gets_segments(tmp_path, networks) -> None:
    """The guest's kernel hands its tap 24 KiB TCP frames; the vnet sends each as one LSO
    descriptor; the switch passes them on finished (the uplink, and a second vnet without
    LSO, get checksummed segments the receiving kernels accept: the digests match)."""
    sock = str(tmp_path / "lso.sock")
    plain_ns = networks["plain_ns"] = unique_name("pns")
    create_netns(plain_ns)
    try:
        with backend("--socket", sock, "--vnets", "2", "--uplink", networks["uplink"], "--bridge", networks["bridge"]):
            host = networks["host"] = add_netns_host(networks["bridge"], "10.75.0.1/24")
            with guest("--socket", sock, "--tap", f"ltap0@{networks['guest_ns']}=10.75.0.2/24",
                       "--tap", f"ltap1@{plain_ns}=10.75.0.3/24", "--no-lso", "ltap1") as sim:
                tcp_transfer(networks["guest_ns"], host.netns, host.ip, 5003)  # LSO vnet -> uplink
                tcp_transfer(host.netns, networks["guest_ns"], "10.75.0.2", 5004)  # uplink -> LSO vnet
                tcp_transfer(networks["guest_ns"], plain_ns, "10.75.0.3", 5005)  # LSO vnet -> vnet without LSO
                sim.popen.terminate()
                output = sim.popen.communicate(timeout=30)[0]
    finally:
        remove_netns(plain_ns)
    lso, plain = vnet_counters(output, "ltap0"), vnet_counters(output, "ltap1")
    assert lso["tsolen"] > 1514 and plain["tsolen"] == 0
    # 32 MiB left the LSO vnet; with LSO that is a few thousand frames, without it ~23,000.
    assert lso["tx_bytes"] > 32 << 20 and lso["tx_lso"] > (32 << 20) // lso["tsolen"] // 2
    assert lso["tx_frames"] < (32 << 20) // 1448 // 2
    assert plain["rx_lso"] == 0 and plain["rx_bytes"] > 16 << 20 and plain["rx_frames"] > (16 << 20) // 1448


JUMBO = 16000  # the largest MTU Oracle VM Server for SPARC configures on a vsw/vnet


def test_jumbo_frames_cross_every_hop_unfragmented(tmp_path, networks) -> None:
    sock = str(tmp_path / "jumbo.sock")
    with backend("--socket", sock, "--vnets", "1", "--uplink", networks["uplink"], "--bridge", networks["bridge"], "--mtu", str(JUMBO)):
        host = networks["host"] = add_netns_host(networks["bridge"], "10.77.0.1/24")
        for ifname, netns in ((host.host_ifname, None), (host.ns_ifname, host.netns)):
            netlink(lambda ipr, name=ifname: ipr.link("set", index=ipr.link_lookup(ifname=name)[0], mtu=JUMBO), netns=netns)
        with guest("--socket", sock, "--tap", f"jtap0@{networks['guest_ns']}=10.77.0.2/24", "--mtu", str(JUMBO)):
            receiver = subprocess.Popen(["ip", "netns", "exec", host.netns, sys.executable, "-c", UDP_SINK, "5002"],
                                        stdout=subprocess.PIPE, cwd=ROOT)
            assert receiver.stdout is not None and receiver.stdout.readline().strip() == b"listening"
            # One IP packet of exactly the MTU, "don't fragment": it arrives only if every hop
            # (tap, vnet, LDC device, vsw, uplink tap, bridge, veth) carries a 16000-byte frame.
            sent = subprocess.run(["ip", "netns", "exec", networks["guest_ns"], sys.executable, "-c", UDP_SOURCE, host.ip, "5002",
                                   str(JUMBO - 28)], capture_output=True, timeout=60, check=False)
            assert sent.returncode == 0, sent.stderr
            assert receiver.communicate(timeout=30)[0].split() == [str(JUMBO - 28).encode()]


UDP_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1]))); s.settimeout(20)
print("listening", flush=True)
print(len(s.recv(65536)), flush=True)
"""
UDP_SOURCE = """
import socket, sys, time
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2  # <linux/in.h>: set DF, never fragment
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
for _ in range(5):  # the first may wait on ARP; the sink reports the first that arrives
    s.sendto(bytes(int(sys.argv[3])), (sys.argv[1], int(sys.argv[2]))); time.sleep(0.3)
"""
TCP_SINK = """
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1)
print("listening", flush=True)
c, _ = s.accept(); h = hashlib.sha256()
while (d := c.recv(65536)):
    h.update(d)
print(h.hexdigest(), flush=True)
"""
TCP_SOURCE = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30); c.sendall(sys.stdin.buffer.read()); c.close()
"""


def test_domain_shutdown_from_the_control_side_powers_the_guest_off(tmp_path, disk: str) -> None:
    sock, primary, ldg1 = str(tmp_path / "ldc.sock"), str(tmp_path / "primary.sock"), str(tmp_path / "ldg1.sock")
    env = {**os.environ, "VIO_DS_SOCKET": primary, "PYTHONPATH": ROOT}
    with backend("--socket", sock, "--disk", f"vdisk0={disk}", "--ds-socket", primary, "--guest", "ldg1"), \
         guest("--socket", sock, "--ds-socket", ldg1, "--domain", "ldg1") as sim:
        md = subprocess.run([sys.executable, "-m", "backend", "ds", "md-update", "ldg1", "--timeout", "30"], env=env, capture_output=True, text=True, timeout=60, check=False)
        assert md.returncode == 0 and "result 0" in md.stdout, md.stdout + md.stderr
        done = subprocess.run([sys.executable, "-m", "backend", "ds", "shutdown", "ldg1", "--timeout", "30"], env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0 and "shutdown accepted" in done.stdout, done.stdout + done.stderr
        assert sim.popen.wait(30) == 0
        assert "stopping" in sim.popen.stdout.read()
