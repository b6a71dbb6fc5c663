"""Random transmit chains (header + frame bytes) from a driver: counted, switched or dropped, never a crash."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.vhost.constants import DeviceStatus
from backend.vswitch.offload import GSO_ECN, GSO_TCPV4, GSO_TCPV6
from backend.vswitch.vnet_hdr import VirtioNetHdr

from .net_packets import TCP_ACK, tcp_frame
from .test_net import World, mac


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory):
    world = World(tmp_path_factory.mktemp("fuzz"))
    device, guest = world.virtio(1)
    _, other = world.virtio(2)
    other.send(bytes(mac(1)) + mac(2) + b"\x08\x00" + bytes(46))  # the switch learns the second guest
    yield world, device, guest
    world.close()


headers = st.builds(VirtioNetHdr, st.sampled_from([0, 1, 2, 3, 0x80]), st.sampled_from([0, GSO_TCPV4, GSO_TCPV6, 3, 5, GSO_TCPV4 | GSO_ECN, 0xFF]),
                    st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 200), st.integers(0, 40))
frames = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda n, cut: tcp_frame(mac(1), mac(2), "10.0.0.1", "10.0.0.2", 1, 2, 0, 0, TCP_ACK, bytes(n), partial=True)[:cut],
              st.integers(0, 6000), st.integers(0, 6100)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(hdr=headers, frame=frames)
def test_any_header_and_frame_is_switched_or_counted(fuzz_world, hdr: VirtioNetHdr, frame: bytes) -> None:
    _, device, guest = fuzz_world
    before = (device.counters.tx_frames, device.counters.tx_bad_header)
    guest.send(frame, hdr)
    after = (device.counters.tx_frames, device.counters.tx_bad_header)
    assert sum(after) - sum(before) == 1
    assert not guest.guest.status() & DeviceStatus.NEEDS_RESET
