"""Real x86_64 guests on our vhost-user virtio-net (`vio vhost-net`): through the switch's tap uplink
to a namespace (ping, bulk TCP measured on the host), and two guests pinging each other.

QEMU 7.2 under TCG crashes in its MSI-X vector-notifier path as soon as a
vhost-user virtio-net starts (whatever the back-end offers), so the guests'
PCI devices run without MSI-X (vectors=0, INTx): see docs/vhost-net.md.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

import pytest

from backend.qemu import BackendProcess, Guest, VhostUserNet
from backend.vswitch.netns import add_netns_host, unique_name

from .helpers import BOOT_TIMEOUT, run, run_command_guest, spec_for

pytestmark = pytest.mark.slow

NO_MSIX = {"vectors": 0}
HOST_IP = "198.19.90.2"
BULK_BYTES = 16 << 20

RECEIVER = textwrap.dedent("""
    import socket, sys, time
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], 5001)); s.listen(1)
    print("listening", flush=True)
    c, _ = s.accept(); c.settimeout(60)
    want, got, start = int(sys.argv[2]), 0, time.monotonic()
    while got < want:
        chunk = c.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    print(got, time.monotonic() - start, flush=True)
""")


def vhost_net_argv(sockets: dict[str, str], *extra: str) -> list[str]:
    ports = [arg for name, path in sockets.items() for arg in ("--port", f"{name}={path}")]
    return [sys.executable, "-m", "backend", "vhost-net", *ports, *extra]


def test_guest_pings_the_namespace_behind_the_uplink_and_sends_bulk_tcp(tmp_path: Path) -> None:
    tap, bridge = unique_name("vtap"), unique_name("vbr")
    sock = str(tmp_path / "net0.sock")

    async def scenario() -> tuple[int, str]:
        async with BackendProcess(vhost_net_argv({"g0": sock}, "--uplink", tap, "--bridge", bridge), sock):
            with add_netns_host(bridge, f"{HOST_IP}/24") as host:
                receiver = await asyncio.create_subprocess_exec(
                    "ip", "netns", "exec", host.netns, "python3", "-c", RECEIVER, HOST_IP, str(BULK_BYTES), stdout=asyncio.subprocess.PIPE)
                try:
                    assert receiver.stdout is not None
                    assert (await receiver.stdout.readline()).decode().strip() == "listening"
                    script = (f"ping -c 3 -W 3 {HOST_IP} && "
                              f"dd if=/dev/zero bs=65536 count={BULK_BYTES // 65536} 2>/dev/null | nc {HOST_IP} 5001")
                    spec = spec_for("x86_64", [VhostUserNet("net0", sock, "52:54:00:00:00:10")], script,
                                    ip="198.19.90.5/24", device_props=NO_MSIX)
                    rc, console, qemu_rc = await run_command_guest(spec)
                    assert rc == 0 and qemu_rc == 0, console[-3000:]
                    out, _ = await asyncio.wait_for(receiver.communicate(), 30)
                    return rc, out.decode()
                finally:
                    if receiver.returncode is None:
                        receiver.kill()
                        await receiver.wait()

    _, received = run(scenario())
    count, seconds = received.split()
    assert int(count) == BULK_BYTES
    print(f"guest -> namespace TCP: {BULK_BYTES / float(seconds) / 1e6:.1f} MB/s (TCG guest)")


def test_two_guests_ping_each_other_through_one_switch(tmp_path: Path) -> None:
    sockets = {"g0": str(tmp_path / "g0.sock"), "g1": str(tmp_path / "g1.sock")}

    async def scenario() -> None:
        async with BackendProcess(vhost_net_argv(sockets), sockets["g0"]):
            while not Path(sockets["g1"]).exists():
                await asyncio.sleep(0.05)
            quiet = spec_for("x86_64", [VhostUserNet("net0", sockets["g1"], "52:54:00:00:01:02")], None,
                             ip="10.77.0.2/24", device_props=NO_MSIX)
            async with Guest(quiet) as responder:
                await responder.ready(BOOT_TIMEOUT)
                pinger = spec_for("x86_64", [VhostUserNet("net0", sockets["g0"], "52:54:00:00:01:01")],
                                  "ping -c 3 -W 3 10.77.0.2", ip="10.77.0.1/24", device_props=NO_MSIX)
                rc, console, qemu_rc = await run_command_guest(pinger)
                assert rc == 0 and qemu_rc == 0, console[-3000:]
                assert "3 packets transmitted, 3 packets received" in console
                rc, output = await responder.run("ping -c 2 -W 3 10.77.0.1 || true; cat /sys/class/net/eth0/statistics/rx_packets")
                assert int(output.split()[-1]) >= 3  # the responder answered three echo requests it received
                await responder.power_down(60)

    run(scenario())
