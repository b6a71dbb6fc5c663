"""virtio-net behind the switch's tap uplink, with the kernel in a test namespace on the other side.

The Python driver plays the guest's IP stack by hand (ARP, ICMP, a few TCP
segments); the namespace side is the real Linux stack: ping, and TCP
sockets that receive a 64 KiB TSO frame as a stream or send us large
GSO frames.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import textwrap
import time

import pytest

from backend.vswitch import offload
from backend.vswitch.netns import add_netns_host, unique_name
from backend.vswitch.offload import ALL
from backend.vswitch.packets import arp, icmp_echo, parse_arp, parse_icmp
from backend.vswitch.port import PortConfig
from backend.vswitch.tap import TapDevice, TapPort
from backend.vswitch.vnet_hdr import VIRTIO_NET_HDR_SIZE

from .net_driver import NetGuest
from .net_packets import TCP_ACK, TCP_PSH, TCP_SYN, gso_header, parse_tcp, tcp_frame
from .test_net import World, mac

GUEST_IP, HOST_IP = "198.19.81.1", "198.19.81.2"
MSS_OPTION = b"\x02\x04\x05\xb4"  # MSS 1460
WSCALE_OPTION = b"\x01\x03\x03\x07"  # NOP, window scale 7


@pytest.fixture
def uplinked(tmp_path):
    """A switch with a virtio-net guest and an offloading tap uplink on a bridge, a namespace host behind it."""
    world = World(tmp_path)
    bridge = unique_name("vbr")
    tap = world.lt.call(lambda: TapDevice(unique_name("vtap"), bridge=bridge, create_bridge=True, vnet_hdr=True,
                                          vnet_hdr_size=VIRTIO_NET_HDR_SIZE))
    port: TapPort | None = None
    host = None
    try:
        port = TapPort(tap, PortConfig(tap.name), offloads=ALL)

        def attach() -> None:
            world.switch.attach(port, uplink=True)
            assert port is not None
            port.attach(world.lt.loop, lambda frame, hdr=None: world.switch.receive(port, frame, time.monotonic(), hdr))

        world.lt.call(attach)
        host = add_netns_host(bridge, f"{HOST_IP}/24")
        device, guest = world.virtio(1)
        yield world, port, host, device, guest
    finally:
        if host is not None:
            host.close()
        world.lt.call(port.close if port is not None else tap.close)  # the tap takes the bridge it created along
        world.close()


def answer(guest: NetGuest, predicate, timeout: float = 10.0):
    """Play the guest's ARP: answer requests for GUEST_IP until a frame matching `predicate` arrives."""
    deadline = time.monotonic() + timeout
    while True:
        hdr, frame = guest.receive(max(0.1, deadline - time.monotonic()))
        request = parse_arp(frame)
        if request and request[0] == 1 and request[3] == GUEST_IP:
            guest.send(arp(2, mac(1), GUEST_IP, request[1], request[2]))
            continue
        if predicate(frame):
            return hdr, frame


def resolve_host(guest: NetGuest) -> bytes:
    guest.send(arp(1, mac(1), GUEST_IP, bytes(6), HOST_IP))
    _, reply = answer(guest, lambda f: (parse_arp(f) or (0,))[0] == 2)
    return parse_arp(reply)[1]


def test_the_namespace_pings_the_guest_through_the_tap(uplinked) -> None:
    _, port, host, _, guest = uplinked
    ping = subprocess.Popen(["ip", "netns", "exec", host.netns, "busybox", "ping", "-c", "2", "-W", "5", GUEST_IP],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(2):
            _, echo = answer(guest, lambda f: (parse_icmp(f) or (99,))[0] == 8)
            _, src, dst, ident, seq = parse_icmp(echo)
            assert (src, dst) == (HOST_IP, GUEST_IP)
            ihl = (echo[14] & 0xF) * 4
            payload = echo[14 + ihl + 8 : 14 + int.from_bytes(echo[16:18], "big")]
            guest.send(icmp_echo(mac(1), GUEST_IP, echo[6:12], HOST_IP, reply=True, ident=ident, seq=seq, payload=payload))
        assert ping.wait(15) == 0, ping.stdout.read()
    finally:
        ping.kill()
    assert port.counters.rx_frames >= 2 and port.counters.tx_frames >= 2


RECEIVER = textwrap.dedent("""
    import hashlib, socket, sys
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], 5001)); s.listen(1)
    print("listening", flush=True)
    c, _ = s.accept(); c.settimeout(10)
    want, got = int(sys.argv[2]), bytearray()
    while len(got) < want:
        chunk = c.recv(65536)
        if not chunk:
            break
        got += chunk
    print(len(got), hashlib.sha256(got).hexdigest(), flush=True)
""")


def test_a_64k_tso_frame_from_the_guest_reaches_a_namespace_socket_as_a_stream(uplinked) -> None:
    _, port, host, device, guest = uplinked
    host_mac = resolve_host(guest)
    want = 60000
    receiver = subprocess.Popen(["ip", "netns", "exec", host.netns, "python3", "-c", RECEIVER, HOST_IP, str(want)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "listening"
        isn = 1000
        guest.send(tcp_frame(mac(1), host_mac, GUEST_IP, HOST_IP, 40000, 5001, isn, 0, TCP_SYN, options=MSS_OPTION))
        hdr, synack = answer(guest, lambda f: (parse_tcp(f) or {}).get("sport") == 5001)
        syn = parse_tcp(offload.finish(synack, hdr)[0])  # the kernel left the checksum to us (GUEST_CSUM)
        assert syn["flags"] & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK and syn["ack"] == isn + 1 and syn["ok"]
        assert syn["window"] >= want, syn["window"]
        peer = (syn["seq"] + 1) & 0xFFFFFFFF
        guest.send(tcp_frame(mac(1), host_mac, GUEST_IP, HOST_IP, 40000, 5001, isn + 1, peer, TCP_ACK))
        payload = os.urandom(want)
        frame = tcp_frame(mac(1), host_mac, GUEST_IP, HOST_IP, 40000, 5001, isn + 1, peer, TCP_ACK | TCP_PSH, payload, partial=True)
        guest.send(frame, gso_header(frame, 1448))
        out, err = receiver.communicate(timeout=20)
        assert out.split() == [str(want), hashlib.sha256(payload).hexdigest()], err
    finally:
        receiver.kill()
    assert device.counters.tx_gso == 1 and port.counters.tx_gso == 1  # one 60 KB write into the kernel


SENDER = textwrap.dedent("""
    import socket, sys
    c = socket.create_connection((sys.argv[1], 5002), timeout=10)
    c.sendall(bytes(range(256)) * 400)
    c.close()
""")


def test_large_frames_from_the_host_reach_the_guest_with_gso_and_csum_offload(uplinked) -> None:
    _, port, host, device, guest = uplinked
    host_mac = resolve_host(guest)
    sender = subprocess.Popen(["ip", "netns", "exec", host.netns, "python3", "-c", SENDER, GUEST_IP],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, syn_frame = answer(guest, lambda f: (parse_tcp(f) or {}).get("dport") == 5002)
        syn = parse_tcp(syn_frame)
        isn = 5000
        guest.send(tcp_frame(mac(1), host_mac, GUEST_IP, HOST_IP, 5002, syn["sport"], isn, syn["seq"] + 1, TCP_SYN | TCP_ACK,
                             window=65535, options=MSS_OPTION + WSCALE_OPTION))
        hdr, data = answer(guest, lambda f: len((parse_tcp(f) or {}).get("payload", b"")) > 1460)
    finally:
        sender.kill()
    assert hdr.gso_type & ~offload.GSO_ECN == offload.GSO_TCPV4 and hdr.gso_size <= 1460
    segments = [parse_tcp(s) for s in offload.finish(data, hdr)]  # the checksum was left to us (GUEST_CSUM)
    assert all(s["ok"] for s in segments)
    start = (segments[0]["seq"] - syn["seq"] - 1) & 0xFFFFFFFF
    stream = (bytes(range(256)) * 400)[start:]
    assert b"".join(s["payload"] for s in segments) == stream[: len(data) - 54]
    assert port.counters.rx_gso >= 1 and device.counters.rx_gso >= 1
