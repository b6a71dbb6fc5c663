"""vnet clients through a real switch over the LDC Unix transport, and the kernel behind a tap."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import pytest

from backend.vswitch.netns import add_netns_host, unique_name
from backend.vswitch.switch import Switch
from backend.vswitch.vnet_port import SwitchServer, VnetClient

from backend.vswitch.packets import arp, icmp_echo, parse_arp, parse_icmp

SWITCH_MAC = bytes.fromhex("0200000000f1")


def mac(n: int) -> bytes:
    return bytes.fromhex(f"02000000{n:04x}")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def switch_with(tmp_path, *pvids: int, clock=None) -> tuple[Switch, list[str]]:
    switch = Switch("sw0")
    paths = []
    for n, pvid in enumerate(pvids):
        path = str(tmp_path / f"p{n}.sock")
        kwargs = {"clock": clock} if clock else {}
        await SwitchServer(switch, path, SWITCH_MAC, pvid=pvid, **kwargs).start()
        paths.append(path)
    return switch, paths


async def receive_matching(client: VnetClient, predicate, timeout: float = 5.0) -> bytes:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        frame = await client.receive(max(0.01, deadline - asyncio.get_running_loop().time()))
        if predicate(frame):
            return frame


async def ping(a: VnetClient, a_ip: str, b: VnetClient, b_ip: str) -> None:
    """a resolves b with ARP and pings it; the test plays b's IP stack."""
    a.send(arp(1, a.mac, a_ip, bytes(6), b_ip))
    request = await receive_matching(b, lambda f: (parse_arp(f) or (0,))[0] == 1)
    assert parse_arp(request)[2:] == (a_ip, b_ip)
    b.send(arp(2, b.mac, b_ip, a.mac, a_ip))
    reply = await receive_matching(a, lambda f: (parse_arp(f) or (0,))[0] == 2)
    assert parse_arp(reply)[1] == b.mac
    a.send(icmp_echo(a.mac, a_ip, b.mac, b_ip, seq=1))
    echo = await receive_matching(b, lambda f: (parse_icmp(f) or (0,))[0] == 8)
    b.send(icmp_echo(b.mac, b_ip, a.mac, a_ip, reply=True, seq=parse_icmp(echo)[4]))
    answer = await receive_matching(a, lambda f: (parse_icmp(f) or (99,))[0] == 0)
    assert parse_icmp(answer)[1:] == (b_ip, a_ip, 7, 1)


def test_two_vnet_clients_ping_each_other(tmp_path) -> None:
    async def main() -> None:
        switch, (path,) = await switch_with(tmp_path, 1)
        a = await VnetClient.connect(path, mac(1))
        b = await VnetClient.connect(path, mac(2))
        await ping(a, "10.9.0.1", b, "10.9.0.2")
        await ping(b, "10.9.0.2", a, "10.9.0.1")
        assert {key[1] for key in switch.fdb} >= {mac(1), mac(2)}
        a.close()
        b.close()

    run(main())


def test_default_clients_carry_a_full_1500_byte_payload(tmp_path) -> None:
    """From vnet 1.3 the frame MTU counts a VLAN tag: a client's default must leave
    room for 1500 bytes of payload in an untagged frame, as an Ethernet NIC does."""

    async def main() -> None:
        switch, (path,) = await switch_with(tmp_path, 1)
        a = await VnetClient.connect(path, mac(1))
        b = await VnetClient.connect(path, mac(2))
        await ping(a, "10.9.0.1", b, "10.9.0.2")  # both stations learned
        full = mac(2) + mac(1) + b"\x08\x00" + bytes(range(256)) * 5 + bytes(220)
        assert len(full) == 14 + 1500
        a.send(full)
        assert await receive_matching(b, lambda f: len(f) == len(full)) == full
        a.close()
        b.close()

    run(main())


def test_multicast_only_to_subscribers(tmp_path) -> None:
    group = bytes.fromhex("01005e0a0a0a")

    async def main() -> None:
        switch, (path,) = await switch_with(tmp_path, 1)
        sender, member, other = [await VnetClient.connect(path, mac(n)) for n in (1, 2, 3)]
        member.join([group])
        await asyncio.sleep(0.2)
        sender.send((group + sender.mac + b"\x08\x00").ljust(60, b"m"))
        got = await member.receive()
        assert got[:6] == group
        with pytest.raises(TimeoutError):
            await other.receive(0.5)
        for c in (sender, member, other):
            c.close()

    run(main())


def test_vlan_isolation_between_ports(tmp_path) -> None:
    async def main() -> None:
        switch, (red, blue) = await switch_with(tmp_path, 10, 20)
        r1, r2 = await VnetClient.connect(red, mac(1)), await VnetClient.connect(red, mac(2))
        b1 = await VnetClient.connect(blue, mac(3))
        r1.send(b"\xff" * 6 + r1.mac + b"\x08\x06" + bytes(46))  # a broadcast on VLAN 10
        assert (await r2.receive())[6:12] == r1.mac
        with pytest.raises(TimeoutError):
            await b1.receive(0.5)  # never crosses into VLAN 20
        for c in (r1, r2, b1):
            c.close()

    run(main())


def test_mtu_negotiated_down_to_the_port(tmp_path) -> None:
    async def main() -> None:
        switch, (path,) = await switch_with(tmp_path, 1)
        jumbo = await VnetClient.connect(path, mac(1), mtu=9018)
        assert jumbo.device.mtu == 1518  # the switch port's 1500 + header + tag
        assert not jumbo.send((b"\xff" * 6 + jumbo.mac + b"\x08\x00").ljust(4000, b"j"))
        jumbo.close()

    run(main())


def test_reconnect_with_a_new_mac_and_fdb_ageing(tmp_path) -> None:
    now = [1000.0]

    async def main() -> None:
        switch, (path,) = await switch_with(tmp_path, 1, clock=lambda: now[0])
        a = await VnetClient.connect(path, mac(1))
        b = await VnetClient.connect(path, mac(2))
        await ping(a, "10.9.0.1", b, "10.9.0.2")
        a.close()
        await asyncio.sleep(0.3)
        a2 = await VnetClient.connect(path, mac(9))  # the same guest, a new MAC
        await ping(a2, "10.9.0.1", b, "10.9.0.2")
        assert any(key[1] == mac(9) for key in switch.fdb)
        now[0] += 10_000
        switch.age(now[0])
        assert not switch.fdb  # everything learned has aged out
        a2.close()
        b.close()

    run(main())


def test_kernel_answers_a_vnet_client_through_the_tap(tmp_path) -> None:
    tap, bridge = unique_name("vtap"), unique_name("vbr")
    socket_path = str(tmp_path / "vsw.sock")
    pcap = tmp_path / "uplink.pcap"
    vsw = subprocess.Popen(
        [sys.executable, "-m", "backend", "vsw", "--socket", socket_path, "--uplink", tap, "--bridge", bridge, "--capture", str(pcap)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = vsw.stdout.readline()
        assert "uplink" in line, line + vsw.stderr.read()
        with add_netns_host(bridge, "198.19.77.2/24") as host:

            async def main() -> None:
                client = await VnetClient.connect(socket_path, mac(1))
                client.send(arp(1, client.mac, "198.19.77.1", bytes(6), "198.19.77.2"))
                reply = await receive_matching(client, lambda f: (parse_arp(f) or (0,))[0] == 2)
                host_mac = parse_arp(reply)[1]
                assert host_mac == bytes.fromhex(host.mac.replace(":", ""))
                client.send(icmp_echo(client.mac, "198.19.77.1", host_mac, "198.19.77.2", seq=5))
                echo = await receive_matching(client, lambda f: (parse_icmp(f) or (99,))[0] == 0)
                assert parse_icmp(echo)[1:] == ("198.19.77.2", "198.19.77.1", 7, 5)  # the kernel's reply
                client.close()

            run(main())
    finally:
        vsw.send_signal(signal.SIGTERM)
        assert vsw.wait(20) == 0
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert tap not in links and bridge not in links  # the switch removed what it created
    dump = subprocess.run(["tcpdump", "-r", str(pcap), "-nn"], capture_output=True, text=True, check=True).stdout
    assert "198.19.77.2 > 198.19.77.1: ICMP echo reply" in dump  # the uplink capture saw the kernel's answer


def test_a_bulk_sender_waits_for_ring_space_instead_of_dropping(tmp_path) -> None:
    async def main() -> None:
        switch, (path,) = await switch_with(tmp_path, 1)
        got: list[bytes] = []
        a = await VnetClient.connect(path, mac(1))
        b = await VnetClient.connect(path, mac(2), on_frame=got.append)
        b.send((a.mac + b.mac + b"\x88\xb5").ljust(60, b"\0"))  # the switch learns b
        await asyncio.sleep(0.1)
        frames = [(b.mac + a.mac + b"\x88\xb5" + n.to_bytes(4, "big")).ljust(60, b"\0") for n in range(2000)]
        for frame in frames:  # far more than a ring holds
            await a.send_when_possible(frame)
        for _ in range(100):
            if len(got) == len(frames):
                break
            await asyncio.sleep(0.05)
        assert a.device.counters["tx_dropped"] == 0
        assert got == frames  # in one process nothing is faster than the receiver: all arrive, in order
        with pytest.raises(ConnectionError):
            await a.send_when_possible(b"runt")
        a.close()
        b.close()

    run(main())
