"""The tap uplink against the real kernel: taps, bridges and namespaces made (and removed) here.

Every interface and namespace has a random name and is registered with the
`sweep` fixture before it can exist, so a failing test still leaves nothing
behind. The "remote host" is a network namespace behind a bridge in our own
namespace; the kernel in it answers our hand-built ARP and ICMP.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import random
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from pyroute2 import IPRoute, netns

from backend.errors import ConfigError
from backend.vswitch.netns import NetnsHost, add_netns_host, unique_name
from backend.vswitch.port import Port, PortConfig
from backend.vswitch.tap import TapDevice, TapPort, link_info, netlink
from backend.vswitch.vnet_hdr import VIRTIO_NET_HDR_F_NEEDS_CSUM, VirtioNetHdr

IFF_UP = 0x1
OUR_MAC = "02:00:5e:10:00:01"


def _free_subnet() -> str:
    """A /24 with no address of ours in it: our own stack answers ARP for its addresses on any
    interface, the test bridge included, and would answer in the namespace's place."""
    local = {a.get("address") for a in netlink(lambda ipr: ipr.get_addr(family=socket.AF_INET))}
    for third in random.sample(range(256), 256):
        prefix = f"198.18.{third}."
        if not any(a and a.startswith(prefix) for a in local):
            return prefix
    raise RuntimeError("no free 198.18.x.0/24 to test in")


SUBNET = _free_subnet()
OUR_IP = SUBNET + "1"
HOST_IP = SUBNET + "2"


# --- clean-up -------------------------------------------------------------------------------


class Sweep:
    """Names this test may create; whatever still exists at the end is removed."""

    def __init__(self) -> None:
        self.links: list[str] = []
        self.namespaces: list[str] = []

    def link(self, prefix: str = "vt") -> str:
        name = unique_name(prefix)
        self.links.append(name)
        return name

    def host(self, bridge: str, address: str = f"{HOST_IP}/24") -> NetnsHost:
        name, veth = unique_name("ns"), self.link("vh")
        self.namespaces.append(name)
        return add_netns_host(bridge, address, name=name, host_ifname=veth)

    def clean(self) -> None:
        for name in self.namespaces:
            if name in netns.listnetns():
                netns.remove(name)

        def drop(ipr: IPRoute) -> None:
            for name in self.links:
                info = link_info(ipr, ifname=name)
                if info is not None:
                    ipr.link("del", index=info["index"])

        netlink(drop)


@pytest.fixture
def sweep() -> Iterator[Sweep]:
    s = Sweep()
    try:
        yield s
    finally:
        s.clean()


def info(name: str) -> dict | None:
    return netlink(lambda ipr: link_info(ipr, ifname=name))


def make_bridge(name: str) -> int:
    def add(ipr: IPRoute) -> int:
        ipr.link("add", ifname=name, kind="bridge")
        index = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=index, state="up")
        return index

    return netlink(add)


def set_link(name: str, **attrs: object) -> None:
    netlink(lambda ipr: ipr.link("set", index=ipr.link_lookup(ifname=name)[0], **attrs))


# --- frames, by hand ------------------------------------------------------------------------


def mac(s: str) -> bytes:
    return bytes.fromhex(s.replace(":", ""))


def inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def arp_request(src_mac: str, src_ip: str, target_ip: str) -> bytes:
    eth = mac("ff:ff:ff:ff:ff:ff") + mac(src_mac) + b"\x08\x06"
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)  # Ethernet, IPv4, request
    arp += mac(src_mac) + socket.inet_aton(src_ip) + bytes(6) + socket.inet_aton(target_ip)
    return eth + arp


def is_arp_reply(frame: bytes, *, to_mac: str, from_ip: str) -> bool:
    return (
        len(frame) >= 42
        and frame[0:6] == mac(to_mac)
        and frame[12:14] == b"\x08\x06"
        and struct.unpack("!H", frame[20:22])[0] == 2
        and frame[28:32] == socket.inet_aton(from_ip)
        and frame[32:38] == mac(to_mac)
    )


def icmp_echo(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, ident: int, seq: int, payload: bytes) -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", inet_checksum(icmp)) + icmp[4:]
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0x1234, 0x4000, 64, 1, 0,
        socket.inet_aton(src_ip), socket.inet_aton(dst_ip),
    )  # fmt: skip
    ip = ip[:10] + struct.pack("!H", inet_checksum(ip)) + ip[12:]
    return mac(dst_mac) + mac(src_mac) + b"\x08\x00" + ip + icmp


def is_echo_reply(frame: bytes, *, ident: int, seq: int) -> bool:
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 1:
        return False
    icmp_type, _, _, got_ident, got_seq = struct.unpack("!BBHHH", frame[34:42])
    return icmp_type == 0 and (got_ident, got_seq) == (ident, seq)


async def next_frame(queue: asyncio.Queue[bytes], match: Callable[[bytes], bool], timeout: float = 5.0) -> bytes:
    """The first queued frame that matches (IPv6 chatter and the like are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
        if match(frame):
            return frame


# --- (a) creation, configuration, removal ---------------------------------------------------


def test_tap_has_the_mtu_mac_and_up_state_asked_for_and_is_removed_on_close(sweep: Sweep) -> None:
    name = sweep.link("vt")
    dev = TapDevice(name, mtu=1400, mac="02:12:34:56:78:9a")
    seen = info(name)
    assert seen is not None
    assert seen["kind"] == "tun" and seen["index"] == dev.index
    assert seen["mtu"] == 1400 and dev.mtu == 1400
    assert seen["flags"] & IFF_UP
    assert seen["address"] == dev.mac == "02:12:34:56:78:9a"
    assert dev.vnet_hdr_size == 0 and not dev.created_bridge
    assert not os.get_blocking(dev.fileno())
    # Non-blocking: draining what is queued (IPv6 chatter, if anything) ends in None, not a hang.
    assert any(dev.read() is None for _ in range(100))
    dev.close()
    assert info(name) is None
    dev.close()  # idempotent


def test_kernel_chooses_the_name_when_none_is_given() -> None:
    with TapDevice() as dev:
        assert dev.name.startswith("tap")
        assert info(dev.name)["index"] == dev.index
    # By index: a test running beside us may already own the next "tap0".
    assert netlink(lambda ipr: link_info(ipr, index=dev.index)) is None


def test_tap_created_and_closed_inside_a_running_event_loop(sweep: Sweep) -> None:
    name = sweep.link("vt")

    async def main() -> None:
        dev = TapDevice(name, mtu=9000)
        assert info(name)["mtu"] == 9000
        dev.close()

    asyncio.run(main())
    assert info(name) is None


# --- (b) refusals -----------------------------------------------------------------------------


def test_a_name_taken_by_a_foreign_interface_is_refused_and_left_alone(sweep: Sweep) -> None:
    name = sweep.link("vt")
    index = make_bridge(name)
    with pytest.raises(ConfigError, match="taken by an existing bridge"):
        TapDevice(name)
    assert info(name)["index"] == index


def test_a_name_taken_by_another_tap_is_refused(sweep: Sweep) -> None:
    name = sweep.link("vt")
    with TapDevice(name) as first:
        with pytest.raises(ConfigError, match="taken by an existing tun"):
            TapDevice(name)
        assert info(name)["index"] == first.index


@pytest.mark.parametrize("bad", ["", "x" * 16, "a/b", "a b", "a:b", ".."])
def test_names_the_kernel_would_refuse_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        TapDevice(bad)
    with pytest.raises(ConfigError):
        TapDevice(None, bridge=bad, create_bridge=True)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="10 or 12"):
        TapDevice(vnet_hdr=True, vnet_hdr_size=11)
    with pytest.raises(ConfigError, match="needs a bridge"):
        TapDevice(create_bridge=True)
    with pytest.raises(ConfigError, match="sndbuf"):
        TapDevice(sndbuf=0)


def test_an_impossible_mtu_is_refused_and_the_tap_removed(sweep: Sweep) -> None:
    name = sweep.link("vt")
    with pytest.raises(ConfigError, match="MTU 70000"):
        TapDevice(name, mtu=70000)
    assert info(name) is None


_NO_NET_ADMIN = """
import sys
from backend.errors import ConfigError
from backend.vswitch.tap import TapDevice
try:
    TapDevice(sys.argv[1])
except ConfigError as e:
    print(e)
    sys.exit(3)
"""


def test_without_cap_net_admin_creation_is_refused(sweep: Sweep) -> None:
    name = sweep.link("vt")
    libc = ctypes.CDLL(None, use_errno=True)
    PR_CAPBSET_DROP, CAP_NET_ADMIN = 24, 12

    def drop_net_admin() -> None:  # out of the bounding set: root's exec'd child never gets it
        if libc.prctl(PR_CAPBSET_DROP, CAP_NET_ADMIN, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")

    done = subprocess.run(
        [sys.executable, "-c", _NO_NET_ADMIN, name],
        check=False, preexec_fn=drop_net_admin, capture_output=True, text=True, timeout=60,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "CAP_NET_ADMIN" in done.stdout
    assert info(name) is None


# --- (c) the kernel answers ---------------------------------------------------------------------


def test_the_kernel_answers_arp_and_ping_through_the_tap(sweep: Sweep) -> None:
    bridge, name = sweep.link("vb"), sweep.link("vt")

    async def main() -> None:
        port = TapPort(TapDevice(name, bridge=bridge, create_bridge=True))
        host = sweep.host(bridge)
        frames: asyncio.Queue[bytes] = asyncio.Queue()
        port.attach(asyncio.get_running_loop(), frames.put_nowait)
        try:
            port.transmit(arp_request(OUR_MAC, OUR_IP, host.ip))
            reply = await next_frame(frames, lambda f: is_arp_reply(f, to_mac=OUR_MAC, from_ip=host.ip))
            assert reply[6:12] == mac(host.mac) and reply[22:28] == mac(host.mac)  # eth source, ARP sender

            payload = bytes(range(48))
            port.transmit(icmp_echo(OUR_MAC, host.mac, OUR_IP, host.ip, 0xBEEF, 7, payload))
            echo = await next_frame(frames, lambda f: is_echo_reply(f, ident=0xBEEF, seq=7))
            assert echo[0:6] == mac(OUR_MAC) and echo[6:12] == mac(host.mac)
            ip_header = echo[14:34]
            assert inet_checksum(ip_header) == 0
            assert ip_header[12:16] == socket.inet_aton(host.ip) and ip_header[16:20] == socket.inet_aton(OUR_IP)
            total_len = struct.unpack("!H", ip_header[2:4])[0]
            icmp = echo[34 : 14 + total_len]
            assert inet_checksum(icmp) == 0 and icmp[8:] == payload

            c = port.counters
            assert c.tx_frames == 2 and c.tx_dropped == 0 and c.errors == 0
            assert c.rx_frames >= 2 and c.rx_bytes >= len(reply) + len(echo)
        finally:
            port.close()
            host.close()

    asyncio.run(main())
    assert info(name) is None and info(bridge) is None


@pytest.mark.parametrize("hdr_size", [10, 12])
def test_arp_through_a_tap_with_a_virtio_net_hdr(sweep: Sweep, hdr_size: int) -> None:
    bridge, name = sweep.link("vb"), sweep.link("vt")
    dev = TapDevice(name, bridge=bridge, create_bridge=True, vnet_hdr=True, vnet_hdr_size=hdr_size)
    try:
        assert dev.vnet_hdr_size == hdr_size
        host = sweep.host(bridge)
        # The device passes the header through: we write it, the kernel must strip exactly that much.
        dev.write(VirtioNetHdr().pack(hdr_size) + arp_request(OUR_MAC, OUR_IP, host.ip))
        deadline = time.monotonic() + 5
        while True:
            assert time.monotonic() < deadline, "no ARP reply"
            select.select([dev], [], [], 0.2)
            data = dev.read()
            if data is not None and is_arp_reply(data[hdr_size:], to_mac=OUR_MAC, from_ip=host.ip):
                break
        hdr = VirtioNetHdr.unpack(data, hdr_size)
        assert hdr.is_plain and hdr == VirtioNetHdr()

        # And the port hides the header from the switch both ways.
        async def through_port() -> None:
            port = TapPort(dev)
            frames: asyncio.Queue[bytes] = asyncio.Queue()
            port.attach(asyncio.get_running_loop(), frames.put_nowait)
            port.transmit(arp_request(OUR_MAC, OUR_IP, host.ip))
            reply = await next_frame(frames, lambda f: is_arp_reply(f, to_mac=OUR_MAC, from_ip=host.ip))
            assert reply[12:14] == b"\x08\x06" and port.counters.errors == 0
            port.detach()

        asyncio.run(through_port())
        host.close()
    finally:
        dev.close()
    assert info(name) is None and info(bridge) is None


def test_virtio_net_hdr_codec_is_little_endian_with_optional_num_buffers() -> None:
    hdr = VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 1, 54, 1448, 34, 16, num_buffers=3)
    assert hdr.pack(12) == bytes([1, 1, 54, 0, 0xA8, 0x05, 34, 0, 16, 0, 3, 0])
    assert hdr.pack(10) == hdr.pack(12)[:10]
    assert VirtioNetHdr.unpack(hdr.pack(12), 12) == hdr
    assert VirtioNetHdr.unpack(hdr.pack(10), 10).num_buffers == 0
    assert not hdr.is_plain and VirtioNetHdr().is_plain
    with pytest.raises(ValueError):
        VirtioNetHdr.unpack(bytes(9))


# --- (d) bridges ------------------------------------------------------------------------------------


def test_a_bridge_we_create_is_up_holds_the_tap_and_goes_away_with_it(sweep: Sweep) -> None:
    bridge, name = sweep.link("vb"), sweep.link("vt")
    dev = TapDevice(name, bridge=bridge, create_bridge=True)
    br = info(bridge)
    assert br is not None and br["kind"] == "bridge" and br["flags"] & IFF_UP
    assert info(name)["master"] == br["index"]
    assert dev.created_bridge and dev.bridge == bridge
    dev.close()
    assert info(name) is None and info(bridge) is None


def test_an_existing_bridge_is_joined_and_kept(sweep: Sweep) -> None:
    bridge, name = sweep.link("vb"), sweep.link("vt")
    index = make_bridge(bridge)
    with TapDevice(name, bridge=bridge, create_bridge=True) as dev:
        assert not dev.created_bridge
        assert info(name)["master"] == index
    assert info(name) is None
    assert info(bridge)["index"] == index


def test_a_bridge_name_that_is_not_a_bridge_is_refused_without_leftovers(sweep: Sweep) -> None:
    other, name = sweep.link("vv"), sweep.link("vt")
    netlink(lambda ipr: ipr.link("add", ifname=other, kind="veth", peer={"ifname": sweep.link("vv")}))
    with pytest.raises(ConfigError, match="is a veth, not a bridge"):
        TapDevice(name, bridge=other, create_bridge=True)
    assert info(name) is None
    assert info(other)["kind"] == "veth"


def test_a_missing_bridge_is_refused_unless_we_may_create_it(sweep: Sweep) -> None:
    bridge, name = sweep.link("vb"), sweep.link("vt")
    with pytest.raises(ConfigError, match="does not exist"):
        TapDevice(name, bridge=bridge)
    assert info(name) is None and info(bridge) is None


# --- (e) transmit never raises ---------------------------------------------------------------------


def test_transmit_to_a_downed_tap_is_a_counted_drop(sweep: Sweep) -> None:
    name = sweep.link("vt")
    port = TapPort(TapDevice(name))
    assert isinstance(port.config, PortConfig) and port.config.name == name
    set_link(name, state="down")
    frame = arp_request(OUR_MAC, OUR_IP, HOST_IP)
    for _ in range(3):
        port.transmit(frame)
    assert (port.counters.tx_dropped, port.counters.tx_frames, port.counters.errors) == (3, 0, 0)
    set_link(name, state="up")
    port.transmit(frame)
    assert port.counters.tx_frames == 1 and port.counters.tx_bytes == len(frame)
    port.close()


def test_transmit_into_a_full_kernel_queue_is_a_counted_drop(sweep: Sweep) -> None:
    bridge, name = sweep.link("vb"), sweep.link("vt")
    # A tiny sndbuf, and a bridge whose only other port holds frames in a (nearly) zero-rate qdisc:
    # frames to an unknown MAC are flooded there and stay charged to our tap until the kernel fills up.
    port = TapPort(TapDevice(name, bridge=bridge, create_bridge=True, sndbuf=8192))
    host = sweep.host(bridge)
    try:
        subprocess.run(
            ["tc", "qdisc", "add", "dev", host.host_ifname, "root", "tbf", "rate", "8bit", "burst", "1600",
             "limit", "1000000"],
            check=True, capture_output=True,
        )  # fmt: skip
        frame = mac("02:00:5e:10:00:99") + mac(OUR_MAC) + b"\x88\xb5" + bytes(500)
        for _ in range(100):
            port.transmit(frame)
        c = port.counters
        assert c.tx_dropped > 0 and c.tx_frames > 0 and c.errors == 0
        assert c.tx_frames + c.tx_dropped == 100
    finally:
        host.close()
        port.close()


def test_transmit_errors_are_counted_not_raised(sweep: Sweep) -> None:
    port: Port = TapPort(TapDevice(sweep.link("vt")))
    assert isinstance(port, TapPort)
    port.transmit(b"\x01\x02\x03")  # shorter than an Ethernet header: the kernel says EINVAL
    assert port.counters.errors == 1 and port.counters.tx_frames == 0
    port.close()
    port.transmit(arp_request(OUR_MAC, OUR_IP, HOST_IP))
    assert port.counters.errors == 2 and port.counters.tx_dropped == 0


def test_a_tap_deleted_under_us_stops_the_reader_without_raising(sweep: Sweep) -> None:
    name = sweep.link("vt")

    async def main() -> None:
        port = TapPort(TapDevice(name))
        got: list[bytes] = []
        port.attach(asyncio.get_running_loop(), got.append)
        with pytest.raises(RuntimeError):
            port.attach(asyncio.get_running_loop(), got.append)
        netlink(lambda ipr: ipr.link("del", index=port.device.index))
        for _ in range(50):
            await asyncio.sleep(0.01)
            if not port.attached:
                break
        assert not port.attached and port.counters.errors == 1
        port.transmit(arp_request(OUR_MAC, OUR_IP, HOST_IP))  # EBADFD: counted
        assert port.counters.errors == 2
        port.close()

    asyncio.run(main())
    assert info(name) is None


def test_a_failing_receiver_is_counted_and_reading_goes_on(sweep: Sweep) -> None:
    bridge, name = sweep.link("vb"), sweep.link("vt")

    async def main() -> None:
        port = TapPort(TapDevice(name, bridge=bridge, create_bridge=True))
        host = sweep.host(bridge)
        frames: asyncio.Queue[bytes] = asyncio.Queue()
        calls = 0

        def flaky(frame: bytes) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ValueError("switch bug")
            frames.put_nowait(frame)

        port.attach(asyncio.get_running_loop(), flaky)
        try:
            # Two requests: whichever frame meets the failing call, an ARP reply still gets through.
            for _ in range(2):
                port.transmit(arp_request(OUR_MAC, OUR_IP, host.ip))
            await next_frame(frames, lambda f: is_arp_reply(f, to_mac=OUR_MAC, from_ip=host.ip))
            assert port.counters.errors == 1
        finally:
            port.close()
            host.close()

    asyncio.run(main())
