"""virtio-net over vhost-user as a switch port, driven by our front-end (no QEMU)."""

from __future__ import annotations

import asyncio
import time

import pytest

from backend.vhost.constants import (
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    DeviceStatus,
)
from backend.vhost.devices import net
from backend.vhost.devices.net import NetDevice
from backend.vswitch.offload import GSO_TCPV4
from backend.vswitch.packets import arp, icmp_echo, parse_arp, parse_icmp
from backend.vswitch.port import PortConfig
from backend.vswitch.switch import Switch
from backend.vswitch.vnet_hdr import VIRTIO_NET_HDR_F_NEEDS_CSUM, VirtioNetHdr
from backend.vswitch.vnet_port import SwitchServer, VnetClient

from .net_driver import LoopThread, NetGuest
from .net_packets import TCP_ACK, gso_header, parse_tcp, tcp_frame

ALL = (1 << 64) - 1
NO_OFFLOADS = ALL & ~(net.F_CSUM | net.F_GUEST_CSUM | net.F_HOST_TSO4 | net.F_HOST_TSO6 | net.F_GUEST_TSO4 | net.F_GUEST_TSO6)
SWITCH_MAC = bytes.fromhex("0200000000f1")


def mac(n: int) -> bytes:
    return bytes.fromhex(f"0200000001{n:02x}")


class World:
    """One switch in a loop thread, with virtio-net ports and vnet clients on it."""

    def __init__(self, tmp_path, mtu: int = 1500) -> None:
        self.tmp = tmp_path
        self.mtu = mtu
        self.lt = LoopThread()
        self.switch = Switch("sw0")
        self.devices: list[NetDevice] = []
        self.guests: list[NetGuest] = []
        self.servers = []
        self.vnets: list[VnetClient] = []

    def virtio(self, n: int, features: int = ALL, **driver) -> tuple[NetDevice, NetGuest]:
        path = str(self.tmp / f"net{n}.sock")
        device = self.lt.call(lambda: NetDevice(self.switch, PortConfig(f"vnet-{n}", mtu=self.mtu), mac(n)))
        self.servers.append(self.lt.serve(path, device))
        guest = NetGuest(path, features, **driver)
        self.devices.append(device)
        self.guests.append(guest)
        return device, guest

    def vnet(self, n: int) -> VnetClient:
        path = str(self.tmp / f"vsw{n}.sock")

        async def connect() -> VnetClient:
            server = SwitchServer(self.switch, path, SWITCH_MAC, mtu=self.mtu)
            await server.start()
            self.servers.append(server)
            return await VnetClient.connect(path, mac(n))

        client = self.lt.run(connect())
        self.vnets.append(client)
        return client

    def vnet_send(self, client: VnetClient, frame: bytes) -> None:
        self.lt.run(client.send_when_possible(frame))

    def vnet_receive(self, client: VnetClient, predicate=lambda f: True, timeout: float = 5.0) -> bytes:
        async def matching() -> bytes:
            deadline = time.monotonic() + timeout
            while True:
                frame = await client.receive(max(0.01, deadline - time.monotonic()))
                if predicate(frame):
                    return frame

        return self.lt.run(matching())

    def close(self) -> None:
        for guest in self.guests:
            guest.close()

        async def stop() -> None:
            for client in self.vnets:
                client.close()
            for server in self.servers:
                server.close()
            await asyncio.sleep(0.05)

        self.lt.run(stop())
        self.lt.close()


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.close()


def is_icmp(kind: int):
    return lambda f: (parse_icmp(f) or (99,))[0] == kind


def test_features_and_config_space(world: World) -> None:
    device, guest = world.virtio(1)
    need = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | net.F_MAC | net.F_MTU | net.F_STATUS | net.F_MRG_RXBUF | net.F_HOST_TSO4 | net.F_GUEST_TSO6
    assert guest.features & need == need
    assert not guest.features & net.F_MQ  # one pair: no MQ
    mac_, status, pairs, mtu, _, _ = net.CONFIG.unpack(guest.guest.read_config(0, net.CONFIG.size))
    assert (mac_, status, pairs, mtu) == (mac(1), net.S_LINK_UP, 1, 1500)
    world.lt.call(lambda: device.set_link(False))
    assert net.CONFIG.unpack(guest.guest.read_config(0, net.CONFIG.size))[1] == 0


def test_virtio_net_and_a_vnet_client_ping_each_other(world: World) -> None:
    device, guest = world.virtio(1)
    client = world.vnet(2)
    guest.send(arp(1, mac(1), "10.1.0.1", bytes(6), "10.1.0.2"))
    request = world.vnet_receive(client, lambda f: (parse_arp(f) or (0,))[0] == 1)
    assert parse_arp(request)[1:] == (mac(1), "10.1.0.1", "10.1.0.2")
    world.vnet_send(client, arp(2, mac(2), "10.1.0.2", mac(1), "10.1.0.1"))
    hdr, reply = guest.receive_matching(lambda f: (parse_arp(f) or (0,))[0] == 2)
    assert parse_arp(reply)[1] == mac(2) and hdr == VirtioNetHdr(num_buffers=1)
    guest.send(icmp_echo(mac(1), "10.1.0.1", mac(2), "10.1.0.2", seq=3))
    echo = world.vnet_receive(client, is_icmp(8))
    world.vnet_send(client, icmp_echo(mac(2), "10.1.0.2", mac(1), "10.1.0.1", reply=True, seq=parse_icmp(echo)[4]))
    _, answer = guest.receive_matching(is_icmp(0))
    assert parse_icmp(answer)[1:] == ("10.1.0.2", "10.1.0.1", 7, 3)
    assert device.counters.tx_frames == 2 and device.counters.rx_frames >= 2
    counters = world.switch.counters(device.port)
    assert counters.forwarded == 2 and counters.tx_frames >= 2


def test_two_virtio_net_ports_and_a_jumbo_frame_across_mergeable_buffers(tmp_path) -> None:
    world = World(tmp_path, mtu=9000)
    try:
        _, a = world.virtio(1)
        b_device, b = world.virtio(2, buffer_size=1024)
        a.send(icmp_echo(mac(1), "10.2.0.1", mac(2), "10.2.0.2", seq=1))  # flooded, teaches the switch mac(1)
        b.receive_matching(is_icmp(8))
        big = icmp_echo(mac(2), "10.2.0.2", mac(1), "10.2.0.1", reply=True, seq=1, payload=bytes(range(256)) * 32)
        b.send(big)
        hdr, got = a.receive_matching(is_icmp(0))
        assert got == big and hdr.num_buffers == 5  # 8242 bytes + header in 2 KiB buffers
        jumbo = icmp_echo(mac(1), "10.2.0.1", mac(2), "10.2.0.2", seq=2, payload=bytes(8900))
        a.send(jumbo)
        hdr, got = b.receive_matching(is_icmp(8))
        assert got == jumbo and hdr.num_buffers == 9 and b_device.counters.rx_frames >= 2
    finally:
        world.close()


def test_tso_frame_between_two_guests_arrives_whole_with_its_gso_header(world: World) -> None:
    _, a = world.virtio(1)
    b_device, b = world.virtio(2)
    b.send(arp(1, mac(2), "10.3.0.2", bytes(6), "10.3.0.1"))  # the switch learns mac(2)
    a.receive_matching(lambda f: parse_arp(f) is not None)
    payload = bytes(i % 253 for i in range(60000))
    frame = tcp_frame(mac(1), mac(2), "10.3.0.1", "10.3.0.2", 3000, 80, 1, 1, TCP_ACK, payload, partial=True)
    a.send(frame, gso_header(frame, 1448))
    hdr, got = b.receive_matching(lambda f: parse_tcp(f) is not None)
    assert got == frame and hdr.gso_type == GSO_TCPV4 and hdr.gso_size == 1448 and hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM
    assert hdr.num_buffers == 30
    assert world.switch.counters(b_device.port).tx_frames == 1  # one frame in the switch's eyes (judged by its first segment)


def test_tso_frame_to_a_guest_without_receive_offloads_is_segmented(world: World) -> None:
    _, a = world.virtio(1)
    _, b = world.virtio(2, features=NO_OFFLOADS)
    b.send(arp(1, mac(2), "10.3.0.2", bytes(6), "10.3.0.1"))
    a.receive_matching(lambda f: parse_arp(f) is not None)
    payload = bytes(i % 253 for i in range(10000))
    frame = tcp_frame(mac(1), mac(2), "10.3.0.1", "10.3.0.2", 3000, 80, 7, 1, TCP_ACK, payload, partial=True)
    a.send(frame, gso_header(frame, 1460))
    parts = [b.receive_matching(lambda f: parse_tcp(f) is not None) for _ in range(7)]
    assert all(hdr.gso_type == 0 and hdr.flags == 0 for hdr, _ in parts)
    parsed = [parse_tcp(f) for _, f in parts]
    assert all(p["ok"] for p in parsed) and b"".join(p["payload"] for p in parsed) == payload


def test_tso_frame_toward_a_vnet_port_is_segmented_in_software(world: World) -> None:
    device, guest = world.virtio(1)
    client = world.vnet(2)
    world.vnet_send(client, arp(1, mac(2), "10.4.0.2", bytes(6), "10.4.0.1"))  # the switch learns the vnet
    guest.receive_matching(lambda f: parse_arp(f) is not None)
    payload = bytes(i % 249 for i in range(65000))
    frame = tcp_frame(mac(1), mac(2), "10.4.0.1", "10.4.0.2", 3000, 80, 100, 1, TCP_ACK, payload, partial=True)
    guest.send(frame, gso_header(frame, 1400))  # segments of 1454 bytes: a vnet 1.3+ port carries 1496-byte packets
    segments = [parse_tcp(world.vnet_receive(client, lambda f: parse_tcp(f) is not None)) for _ in range(47)]
    assert all(s["ok"] for s in segments) and b"".join(s["payload"] for s in segments) == payload
    assert device.counters.tx_gso == 1 and world.switch.counters(device.port).rx_frames == 1  # switched once
    assert world.switch.counters(world.switch.ports[1]).tx_frames == 47  # one per segment the vnet was sent


def test_mtu_rules_judge_a_gso_frame_by_its_segment_size(world: World) -> None:
    device, a = world.virtio(1)
    _, b = world.virtio(2)
    b.send(arp(1, mac(2), "10.5.0.2", bytes(6), "10.5.0.1"))
    a.receive_matching(lambda f: parse_arp(f) is not None)
    frame = tcp_frame(mac(1), mac(2), "10.5.0.1", "10.5.0.2", 1, 2, 0, 0, TCP_ACK, bytes(20000), partial=True)
    a.send(frame, gso_header(frame, 1460))  # 1514-byte segments: fits a 1500 MTU
    a.send(frame, gso_header(frame, 1461))  # one byte over
    hdr, got = b.receive_matching(lambda f: parse_tcp(f) is not None)
    assert hdr.gso_size == 1460 and got == frame
    assert b.nothing_received()
    assert world.switch.counters(device.port).drops["oversize"] == 1


def test_bad_input_short_header_marks_the_device_broken(world: World) -> None:
    device, guest = world.virtio(1)
    guest.guest.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK)
    short = guest.guest.buffer(bytes(8))  # less than the 12-byte header
    guest.tx.add([short])
    guest.guest.kick(1)
    deadline = time.monotonic() + 5
    while not guest.guest.status() & DeviceStatus.NEEDS_RESET:
        assert time.monotonic() < deadline, "the device was not marked NEEDS_RESET"
        time.sleep(0.05)
    assert device.counters.tx_frames == 0


def test_bad_input_offloads_not_negotiated_or_not_fitting_are_dropped_and_counted(world: World) -> None:
    device, guest = world.virtio(1, features=NO_OFFLOADS)
    client = world.vnet(2)
    frame = tcp_frame(mac(1), mac(2), "10.6.0.1", "10.6.0.2", 1, 2, 0, 0, TCP_ACK, bytes(3000), partial=True)
    guest.send(frame, gso_header(frame, 1000))  # TSO without HOST_TSO4
    guest.send(frame[:60], VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start=50, csum_offset=16))  # without CSUM
    assert device.counters.tx_bad_header == 2
    _, guest2 = world.virtio(3)
    device2 = world.devices[-1]
    guest2.send(frame[:100], VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start=90, csum_offset=16))  # past the end
    guest2.send(frame, VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, GSO_TCPV4, 54, 0, 34, 16))  # gso_size 0
    assert device2.counters.tx_bad_header == 2
    guest.send(icmp_echo(mac(1), "10.6.0.1", mac(2), "10.6.0.2"))  # both keep working
    assert parse_icmp(world.vnet_receive(client, is_icmp(8)))[1] == "10.6.0.1"


def test_bad_input_rx_queue_empty_drops_and_counts_without_stalling_tx(world: World) -> None:
    device, guest = world.virtio(1, rx_buffers=0)
    client = world.vnet(2)
    guest.send(arp(1, mac(1), "10.7.0.1", bytes(6), "10.7.0.2"))  # the switch learns the guest
    world.vnet_receive(client, lambda f: parse_arp(f) is not None)
    for seq in range(net.RX_BACKLOG + 40):
        world.vnet_send(client, icmp_echo(mac(2), "10.7.0.2", mac(1), "10.7.0.1", seq=seq))
    deadline = time.monotonic() + 10
    while device.counters.rx_no_buffers < 40:
        assert time.monotonic() < deadline, device.counters
        time.sleep(0.05)
    guest.send(icmp_echo(mac(1), "10.7.0.1", mac(2), "10.7.0.2", seq=999))  # tx still flows
    assert parse_icmp(world.vnet_receive(client, lambda f: (parse_icmp(f) or (0,) * 5)[4] == 999))[4] == 999
    guest.post(64)  # buffers at last: the backlog drains in order
    seqs = [parse_icmp(guest.receive()[1])[4] for _ in range(20)]
    assert seqs == list(range(20))


def test_bad_input_a_receive_chain_too_small_without_mergeable_buffers(world: World) -> None:
    device, guest = world.virtio(1, features=NO_OFFLOADS & ~net.F_MRG_RXBUF, buffer_size=100)
    client = world.vnet(2)
    guest.send(arp(1, mac(1), "10.8.0.1", bytes(6), "10.8.0.2"))
    world.vnet_receive(client, lambda f: parse_arp(f) is not None)
    world.vnet_send(client, icmp_echo(mac(2), "10.8.0.2", mac(1), "10.8.0.1", payload=bytes(500)))
    world.vnet_send(client, icmp_echo(mac(2), "10.8.0.2", mac(1), "10.8.0.1", seq=2))
    _, small = guest.receive()
    assert parse_icmp(small)[4] == 2 and device.counters.rx_too_big == 1


def test_link_down_drops_both_ways(world: World) -> None:
    device, guest = world.virtio(1)
    client = world.vnet(2)
    world.lt.call(lambda: device.set_link(False))
    guest.send(arp(1, mac(1), "10.9.0.1", bytes(6), "10.9.0.2"))
    world.vnet_send(client, arp(1, mac(2), "10.9.0.2", bytes(6), "10.9.0.1"))
    assert guest.nothing_received()
    assert device.counters.tx_link_down == 1 and device.counters.rx_link_down == 1
    world.lt.call(lambda: device.set_link(True))
    world.vnet_send(client, arp(1, mac(2), "10.9.0.2", bytes(6), "10.9.0.1"))
    assert parse_arp(guest.receive()[1])[1] == mac(2)


def test_two_queue_pairs_carry_frames_on_either_pair(world: World) -> None:
    device = world.lt.call(lambda: NetDevice(world.switch, PortConfig("mq", mtu=1500), mac(5), queue_pairs=2))
    path = str(world.tmp / "mq.sock")
    world.servers.append(world.lt.serve(path, device))
    guest = NetGuest(path, ALL)
    world.guests.append(guest)
    assert guest.features & net.F_MQ and guest.guest.queue_count() == 4
    assert net.CONFIG.unpack(guest.guest.read_config(0, net.CONFIG.size))[2] == 2
    rx1, tx1 = guest.guest.start_queue(2, 256), guest.guest.start_queue(3, 256)
    client = world.vnet(6)
    frame = arp(1, mac(5), "10.10.0.5", bytes(6), "10.10.0.6")
    data = guest.guest.buffer(bytes(12) + frame)
    tx1.add([data])
    guest.guest.kick(3)
    guest.guest.wait_used(3)
    assert parse_arp(world.vnet_receive(client, lambda f: parse_arp(f) is not None))[2] == "10.10.0.5"
    buffers = [guest.guest.buffer(2048) for _ in range(8)]
    for buffer in buffers:
        rx1.add([], [buffer])
    guest.guest.kick(2)
    for seq in range(8):  # several flows: both receive queues are in use
        world.vnet_send(client, icmp_echo(mac(6), f"10.10.0.{10 + seq}", mac(5), "10.10.0.5", seq=seq))
    deadline = time.monotonic() + 5
    while device.counters.rx_frames < 8:
        assert time.monotonic() < deadline, device.counters
        time.sleep(0.05)
    assert rx1.pending_used() and guest.rx.pending_used()
