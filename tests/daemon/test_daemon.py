"""`vio serve` end to end: real processes, a real tap on a real bridge, a namespace the kernel answers in."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pyroute2 import netns

from backend.config import parse_config
from backend.control import request
from backend.daemon.core import Daemon
from backend.daemon.registry import kinds
from backend.errors import ConfigError
from backend.vdisk.client import VdcClient
from backend.vswitch.netns import add_netns_host, unique_name
from backend.vswitch.tap import link_info, netlink
from backend.vswitch.vnet_port import VnetClient

from .helpers import Served, free_port, link_exists, ping_host, sockets_in, write_config

GUEST_MAC = bytes.fromhex("020000a00001")
SUBNET = f"198.19.{os.getpid() % 200 + 20}."
OUR_IP, HOST_IP = SUBNET + "1", SUBNET + "2"


@pytest.fixture
def net():
    """Names of the tap, the bridge and the namespace; whatever exists at the end is removed."""
    names = {"tap": unique_name("vtap"), "bridge": unique_name("vbr"), "ns": unique_name("ns"), "veth": unique_name("vh")}
    yield names
    if names["ns"] in netns.listnetns():
        netns.remove(names["ns"])

    def drop(ipr) -> None:
        for key in ("tap", "bridge", "veth"):
            info = link_info(ipr, ifname=names[key])
            if info is not None:
                ipr.link("del", index=info["index"])

    netlink(drop)


def config_text(tmp_path, net, port: int, disks: list[str], ports: list[str]) -> str:
    text = f'''
        [daemon]
        state_dir = "{tmp_path}/state"

        [[domain]]
        name = "ldg1"

        [[switch]]
        name = "vsw0"
        uplink = "{net['tap']}"
        bridge = "{net['bridge']}"
        capture = "uplink.pcap"

        [metrics]
        port = {port}
        textfile = "{tmp_path}/state/vio.prom"
    '''
    for name in disks:
        text += f'''
        [[disk]]
        name = "{name}"
        domain = "ldg1"
        path = "{name}.img"
        size = "8M"
        '''
    for name in ports:
        text += f'''
        [[vnet]]
        name = "{name}"
        switch = "vsw0"
        domain = "ldg1"
        '''
    return text


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def test_serve_use_reload_status_metrics_and_clean_shutdown(tmp_path, net) -> None:
    port = free_port()
    config = tmp_path / "vio.toml"
    write_config(config, config_text(tmp_path, net, port, ["a", "b"], ["p1", "p2"]))
    state = tmp_path / "state"
    served = Served(str(config), str(state / "control.sock"), tmp_path / "daemon.log")
    try:
        assert sockets_in(str(state)) == ["control.sock", "disk-a.sock", "disk-b.sock", "vnet-p1.sock", "vnet-p2.sock"]
        assert link_exists(net["tap"]) and link_exists(net["bridge"])
        host = add_netns_host(net["bridge"], f"{HOST_IP}/24", name=net["ns"], host_ifname=net["veth"])
        pattern = os.urandom(64 << 10)

        async def scenario() -> None:
            disk = await VdcClient.connect(str(state / "disk-a.sock"))
            await disk.write(1 << 20, pattern)
            await disk.flush()
            assert await disk.read(1 << 20, len(pattern)) == pattern
            vnet = await VnetClient.connect(str(state / "vnet-p1.sock"), GUEST_MAC)
            host_mac = await ping_host(vnet, OUR_IP, HOST_IP, seq=1)
            assert host_mac == bytes.fromhex(host.mac.replace(":", ""))

            # -- status: domains, channels with versions, disks with counters, ports with FDB
            status = await asyncio.to_thread(served.status)
            (domain,) = status["domains"]
            assert domain["name"] == "ldg1" and set(domain["services"]) == {"disk:a", "disk:b", "vnet:p1", "vnet:p2"}
            channels = {c["service"]: c for c in domain["channels"]}
            assert channels["a"]["vio_version"] == "1.1" and channels["a"]["ldc_state"] == "up"
            assert channels["p1"]["vio_version"] == "1.8" and channels["p1"]["peer_mac"] == GUEST_MAC.hex(":")
            disks = {d["name"]: d for d in status["services"]["disks"]}
            assert disks["a"]["counters"]["written_bytes"] >= len(pattern) and disks["a"]["counters"]["flushes"] >= 1
            assert disks["a"]["counters"]["read_bytes"] >= len(pattern) and disks["b"]["counters"]["writes"] == 0
            (switch,) = status["services"]["switches"]
            assert switch["uplink"]["tap"] == net["tap"] and switch["uplink"]["created_bridge"]
            ports = {p["name"]: p for p in switch["ports"]}
            assert set(ports) == {net["tap"], "p1"}  # p2 has no guest, so it is not on the switch
            assert {e["mac"] for e in ports["p1"]["fdb"]} == {GUEST_MAC.hex(":")}
            assert host.mac in {e["mac"] for e in ports[net["tap"]]["fdb"]}
            assert ports["p1"]["counters"]["rx_frames"] >= 2 and ports["p1"]["counters"]["tx_frames"] >= 2
            text = (await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "backend", "status", "--control", served.control],
                                            capture_output=True, text=True, check=True)).stdout
            for expected in ("DOMAINS", "CHANNELS", "DISKS", "SWITCH vsw0", "PORTS", "established 1.1", GUEST_MAC.hex(":")):
                assert expected in text, text

            # -- metrics: the same counters, scraped over HTTP and in the textfile
            metrics = await asyncio.to_thread(scrape, port)
            assert metrics[("vio_disk_written_bytes_total", (("disk", "a"), ("domain", "ldg1")))] >= len(pattern)
            assert metrics[("vio_switch_port_rx_frames_total", (("port", "p1"), ("switch", "vsw0")))] >= 2
            assert metrics[("vio_vnet_connected", (("domain", "ldg1"), ("port", "p1"), ("switch", "vsw0")))] == 1
            assert metrics[("vio_service_up", (("kind", "disk"), ("name", "b")))] == 1
            assert "vio_disk_reads_total" in (state / "vio.prom").read_text()

            # -- reload: drop disk b and port p2, add disk c and port p3; a and p1 keep their connections
            write_config(config, config_text(tmp_path, net, port, ["a", "c"], ["p1", "p3"]))
            served.signal(signal.SIGHUP)
            for _ in range(100):
                names = {d["name"] for d in (await asyncio.to_thread(served.status))["services"]["disks"]}
                if "c" in names:
                    break
                await asyncio.sleep(0.1)
            assert names == {"a", "c"}
            assert sockets_in(str(state)) == ["control.sock", "disk-a.sock", "disk-c.sock", "vnet-p1.sock", "vnet-p3.sock"]
            assert await disk.read(1 << 20, len(pattern)) == pattern  # the same connection, still served
            await disk.write(0, b"after reload".ljust(512, b"\0"))
            await ping_host(vnet, OUR_IP, HOST_IP, seq=2)
            other = await VdcClient.connect(str(state / "disk-c.sock"))
            assert await other.read(0, 512) == bytes(512)
            other.close()
            vnet3 = await VnetClient.connect(str(state / "vnet-p3.sock"), bytes.fromhex("020000a00003"))
            await ping_host(vnet3, SUBNET + "3", HOST_IP, seq=3)
            vnet3.close()

            # -- a broken file changes nothing: `vio reload` says what is wrong
            config.write_text(config.read_text() + "\n[[vnet]]\nname = \"p9\"\n")
            bad = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "backend", "reload", "--config", str(config)],
                                          capture_output=True, text=True)
            assert bad.returncode == 1 and "missing required key 'switch'" in bad.stderr, bad.stderr
            assert await disk.read(0, 512) == b"after reload".ljust(512, b"\0")
            disk.close()
            vnet.close()

        asyncio.run(asyncio.wait_for(scenario(), 120))
        host.close()
    finally:
        code = served.stop()
    log = [json.loads(line) for line in (tmp_path / "daemon.log").read_text().splitlines()]
    assert code == 0, log
    events = [entry.get("event") for entry in log]
    assert "ready" in events and "reloaded" in events and events[-1] == "exit"
    reloaded = next(entry for entry in log if entry.get("event") == "reloaded")
    assert (reloaded["added"], reloaded["removed"]) == (["disk:c", "vnet:p3"], ["disk:b", "vnet:p2"])
    assert not link_exists(net["tap"]) and not link_exists(net["bridge"])  # removed what it created
    assert sockets_in(str(state)) == [] and not (state / "vio.prom").exists()
    with open(tmp_path / "a.img", "rb") as f:
        assert f.read(12) == b"after reload"
        f.seek(1 << 20)
        assert f.read(len(pattern)) == pattern
    dump = subprocess.run(["tcpdump", "-r", str(tmp_path / "uplink.pcap"), "-nn"], capture_output=True, text=True, check=True).stdout
    assert f"{HOST_IP} > {OUR_IP}: ICMP echo reply" in dump


def test_vio_disk_uses_a_served_disk_and_vio_stop_ends_the_daemon(tmp_path) -> None:
    config = write_config(tmp_path / "vio.toml", f'''
        [daemon]
        state_dir = "{tmp_path}/state"
        log_format = "text"
        [[disk]]
        name = "d"
        path = "d.img"
        size = "1M"
        read_only = true
    ''')
    served = Served(config, str(tmp_path / "state" / "control.sock"), tmp_path / "daemon.log")
    try:
        info = subprocess.run([sys.executable, "-m", "backend", "disk", "--socket", str(tmp_path / "state" / "disk-d.sock"), "info"],
                              capture_output=True, text=True, timeout=60)
        assert info.returncode == 0 and "version (1, 1)" in info.stdout and "2048 blocks" in info.stdout, info
        stop = subprocess.run([sys.executable, "-m", "backend", "stop", "--config", config], capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0 and stop.stdout == "stopping\n"
        assert served.process.wait(30) == 0
    finally:
        served.stop()
    assert "event=exit" in (tmp_path / "daemon.log").read_text()
    assert sockets_in(str(tmp_path / "state")) == []
    gone = subprocess.run([sys.executable, "-m", "backend", "status", "--config", config], capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and "is vio serve running?" in gone.stderr


def test_a_second_daemon_on_the_same_sockets_is_refused(tmp_path) -> None:
    config = write_config(tmp_path / "vio.toml", f'''
        [daemon]
        state_dir = "{tmp_path}/state"
        [[disk]]
        name = "d"
        path = "d.img"
        size = "1M"
    ''')
    served = Served(config, str(tmp_path / "state" / "control.sock"), tmp_path / "daemon.log")
    try:
        second = subprocess.run([sys.executable, "-m", "backend", "serve", config], capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert f"{config}:4: disk[0].socket: socket {tmp_path}/state/disk-d.sock is in use by another process" in second.stderr
        assert "daemon.control_socket: socket" in second.stderr
        assert served.status()["services"]["disks"][0]["name"] == "d"  # the first one is unharmed
    finally:
        assert served.stop() == 0


def test_a_start_error_leaves_nothing_behind(tmp_path, net) -> None:
    """The second switch's tap name is taken between the check and the start: the first switch's
    tap and bridge, already made, are removed again, and no disk socket stays."""
    (tmp_path / "state").mkdir()
    config = parse_config(f'''
        [[switch]]
        name = "first"
        uplink = "{net['tap']}"
        bridge = "{net['bridge']}"
        [[switch]]
        name = "second"
        uplink = "{net['veth']}"
        [[disk]]
        name = "d"
        path = "d.img"
        size = "1M"
    ''', "test", kinds(), config_dir=str(tmp_path), state_dir=str(tmp_path / "state"))
    netlink(lambda ipr: ipr.link("add", ifname=net["veth"], kind="bridge"))
    daemon = Daemon(kinds(), config)
    with pytest.raises(ConfigError, match=f"cannot create tap '{net['veth']}': the name is taken"):
        asyncio.run(daemon.start())
    assert daemon.services() == []
    assert not link_exists(net["tap"]) and not link_exists(net["bridge"])
    assert sockets_in(str(tmp_path / "state")) == [] and not (tmp_path / "d.img").exists()


def test_control_socket_answers_bad_requests_with_errors(tmp_path) -> None:
    import socket

    config = write_config(tmp_path / "vio.toml", f'''
        [daemon]
        state_dir = "{tmp_path}/state"
    ''')
    served = Served(config, str(tmp_path / "state" / "control.sock"), tmp_path / "daemon.log")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(served.control)
            reader = sock.makefile("rb")
            for line, error in ((b"not json\n", "not JSON"), (b"[1, 2]\n", "expected a JSON object"),
                                (b'{"command": "dance"}\n', "unknown command 'dance'; known: attach, detach, domain, reload, status, stop")):
                sock.sendall(line)
                reply = json.loads(reader.readline())
                assert reply["ok"] is False and error in reply["error"]
            sock.sendall(b'{"command": "status"}\n')
            assert json.loads(reader.readline())["result"]["daemon"]["pid"] == served.process.pid
        assert request(served.control, "status")["services"] == {}
    finally:
        assert served.stop() == 0
