"""`vio vhost-net`: a virtio-net port and a vnet socket on one switch in a separate process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

from backend.vhost.devices import net
from backend.vswitch.packets import arp, parse_arp
from backend.vswitch.vnet_port import VnetClient

from .net_driver import NetGuest
from .test_net import ALL, mac


def vio(*argv: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "backend", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_a_guest_and_a_vnet_client_meet_on_the_switch_of_vio_vhost_net(tmp_path) -> None:
    sock, vnet_sock = str(tmp_path / "g0.sock"), str(tmp_path / "vsw.sock")
    server = vio("vhost-net", "--port", f"g0={sock},mac=52:54:00:00:00:42", "--vnet-socket", vnet_sock, "--mtu", "9000")
    try:
        line = server.stdout.readline()
        assert "g0 on" in line and "vnets on" in line, line + server.stderr.read()
        guest = NetGuest(sock, ALL)
        try:
            assert net.CONFIG.unpack(guest.guest.read_config(0, net.CONFIG.size))[0:4:3] == (bytes.fromhex("525400000042"), 9000)

            async def vnet_side() -> None:
                client = await VnetClient.connect(vnet_sock, mac(2))
                client.send(arp(1, mac(2), "10.20.0.2", bytes(6), "10.20.0.1"))
                await asyncio.sleep(0.2)
                client.close()

            asyncio.run(vnet_side())
            _, frame = guest.receive_matching(lambda f: parse_arp(f) is not None)
            assert parse_arp(frame)[1:] == (mac(2), "10.20.0.2", "10.20.0.1")
        finally:
            guest.close()
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(20) == 0, server.stderr.read()


def test_bad_command_lines_are_refused_clearly(tmp_path) -> None:
    for argv, words in [
        (["--port", "nosocket"], "expected NAME=SOCKET"),
        (["--port", f"a={tmp_path}/a.sock,mac=01:00:00:00:00:01"], "not a unicast MAC"),
        (["--port", f"a={tmp_path}/a.sock", "--port", f"a={tmp_path}/b.sock"], "port names must differ"),
        (["--port", f"a={tmp_path}/a.sock,queues=99"], "queue_pairs 99"),
        (["--port", f"a={tmp_path}/a.sock,bogus=1"], "unknown option"),
    ]:
        proc = vio("vhost-net", *argv)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode in (1, 2) and words in err, err
