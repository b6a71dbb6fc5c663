"""Switch.receive_batch decides exactly what Switch.receive decides frame by frame.

Two switches with the same ports and history get the same traffic: one frame
by frame, one in batches (the C grouping, one decision per station pair).
Every port must get the same frames (in the same order per station pair), and
every counter, the FDB and the switch statistics must match.
"""

from __future__ import annotations

from collections import defaultdict

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from backend.native import native
from backend.vswitch.batch import MAX_GROUPS, FrameBatch, PairGroups
from backend.vswitch.frames import BROADCAST, build
from backend.vswitch.port import PortConfig
from backend.vswitch.switch import Switch

ffi, lib = native()
GROUP = bytes.fromhex("01005e000001")


def mac(n: int) -> bytes:
    return bytes([0x02, 0, 0, 0, 0, n])


class Nic:
    """A port that keeps what the switch sends it."""

    def __init__(self, config: PortConfig) -> None:
        self.config = config
        self.sent: list[bytes] = []

    def transmit(self, frame: bytes) -> None:
        self.sent.append(frame)


class BatchNic(Nic):
    """A port that also takes whole groups of a batch, as a vnet does."""

    batched = 0  # frames that came through transmit_groups

    def transmit_groups(self, batch: FrameBatch, groups: PairGroups, selected: bytearray) -> None:
        frames = [batch.frame(i) for i in range(batch.count) if groups.of[i] >= 0 and selected[groups.of[i]]]
        self.sent.extend(frames)
        self.batched += len(frames)


PORTS = [  # name, pvid, vlans, tagged, mtu, takes batches
    ("a", 1, (), False, 1500, True),
    ("b", 1, (), False, 1500, True),
    ("c", 1, (), False, 100, True),  # a smaller MTU: frames from a/b may not fit
    ("d", 2, (1,), True, 1500, True),  # a trunk: VLAN 1 tagged
    ("e", 1, (), False, 1500, False),  # no batch transmit (like a tap)
    ("f", 2, (), False, 1500, True),  # another VLAN
]


def _switch(taps: list[str]) -> tuple[Switch, dict[str, Nic], list[tuple[str, str, bytes]]]:
    switch = Switch("sw", ageing=50.0, max_fdb=14)
    ports: dict[str, Nic] = {}
    tapped: list[tuple[str, str, bytes]] = []
    for name, pvid, vlans, tagged, mtu, batches in PORTS:
        port = (BatchNic if batches else Nic)(PortConfig(name, mtu=mtu, pvid=pvid, vlans=frozenset(vlans), tagged=tagged))
        switch.attach(port)
        ports[name] = port
        if name in taps:
            switch.add_tap(port, lambda direction, frame, now, name=name: tapped.append((name, direction, frame)))
    return switch, ports, tapped


def _frame_of(dst: bytes, src: bytes, vlan: int | None, size: int) -> bytes:
    tag = b"" if vlan is None else b"\x81\x00" + vlan.to_bytes(2, "big")  # 4095 too, which build() refuses
    return dst + src + tag + b"\x08\x00" + bytes(size)


NAMES = [p[0] for p in PORTS]
STATIONS = range(1, 13)  # station n lives behind port NAMES[n % 6], now and then it shows up elsewhere


@st.composite
def _run(draw):
    """What one ring walk hands in: the ingress port, its frames, and how much later it is."""
    ingress = draw(st.sampled_from(NAMES))
    home = [mac(n) for n in STATIONS if NAMES[n % len(NAMES)] == ingress]
    stations = st.sampled_from([mac(n) for n in STATIONS])
    src = st.one_of(*[st.sampled_from(home)] * 12, stations, st.sampled_from([GROUP, bytes(6)]))
    dst = st.one_of(*[stations] * 12, st.sampled_from([BROADCAST, GROUP]))
    vlan = st.one_of(*[st.none()] * 16, st.sampled_from([0, 1, 2, 4095]))
    size = st.one_of(*[st.just(46)] * 8, st.sampled_from([0, 60, 86, 87, 1486, 1500, 1501]))
    frame = st.builds(_frame_of, dst, src, vlan, size)
    return ingress, draw(st.lists(frame, min_size=1, max_size=24)), draw(st.sampled_from([0, 0, 0, 1, 2, 20, 60]))


def _flows(frames: list[bytes]) -> dict[bytes, list[bytes]]:
    flows: dict[bytes, list[bytes]] = defaultdict(list)
    for frame in frames:
        flows[frame[:12]].append(frame)
    return dict(flows)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(_run(), min_size=1, max_size=16), st.lists(st.sampled_from(["a", "b", "e"]), max_size=1))
def test_batches_forward_exactly_as_frame_by_frame(runs, taps) -> None:
    one, one_ports, one_taps = _switch(taps)
    many, many_ports, many_taps = _switch(taps)
    for switch, ports in ((one, one_ports), (many, many_ports)):
        for n in STATIONS:  # every station has spoken once from its home
            switch.receive(ports[NAMES[n % len(NAMES)]], _frame_of(BROADCAST, mac(n), None, 46), 0.0)
    now = 0.0
    for ingress, frames, step in runs:
        now += step
        for frame in frames:
            one.receive(one_ports[ingress], frame, now)
        many.receive_batch(many_ports[ingress], FrameBatch.of(frames), now)
    for name in one_ports:
        got, expected = many_ports[name].sent, one_ports[name].sent
        assert _flows(got) == _flows(expected), name
        assert sorted(got) == sorted(expected), name
        assert many.counters(many_ports[name]) == one.counters(one_ports[name]), name
    assert many.stats == one.stats
    assert {k: (e.port.config.name, e.seen) for k, e in many.fdb.items()} == {k: (e.port.config.name, e.seen) for k, e in one.fdb.items()}
    assert sorted(many_taps) == sorted(one_taps)
    forwarded = sum(one.counters(p).forwarded for p in one_ports.values())
    batched = sum(getattr(port, "batched", 0) for port in many_ports.values())
    event(f"frames forwarded: {min(forwarded, 1)}, flooded: {min(one.stats.flooded, 1)}, in groups: {min(batched, 1)} (0/1)")


def test_one_group_per_station_pair_in_order_of_appearance() -> None:
    frames = [build(mac(2), mac(1), 0x0800, bytes(50)), build(mac(3), mac(1), 0x0800, bytes(10)),
              build(mac(2), mac(1), 0x0800, bytes(20)), build(BROADCAST, mac(1), 0x0806, bytes(28)),
              build(mac(2), mac(1), 0x0800, bytes(60), vlan=1), build(mac(2), mac(1), 0x88A8, bytes(60)),
              build(mac(3), mac(1), 0x0800, bytes(2000))]
    groups = PairGroups(FrameBatch.of(frames), 1514)
    assert groups.groups == 2
    assert list(groups.of[0:7]) == [0, 1, 0, lib.VSW_SLOW, lib.VSW_SLOW, lib.VSW_SLOW, lib.VSW_SLOW]
    assert (list(groups.first[0:2]), list(groups.count[0:2]), list(groups.bytes[0:2])) == ([0, 1], [2, 1], [64 + 34, 24])


def test_pairs_beyond_the_group_table_take_the_frame_path() -> None:
    frames = [build(mac(n), mac(100), 0x0800, bytes(46)) for n in range(1, MAX_GROUPS + 3)]
    groups = PairGroups(FrameBatch.of(frames), 1514)
    assert groups.groups == MAX_GROUPS
    assert list(groups.of[0 : len(frames)]) == list(range(MAX_GROUPS)) + [lib.VSW_SLOW] * 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=40), st.integers(-1, 100))
def test_classify_any_bytes(frames, max_len) -> None:
    groups = PairGroups(FrameBatch.of(frames), max_len)
    seen: list[bytes] = []
    for i, frame in enumerate(frames):
        plain = len(frame) >= 14 and len(frame) <= max_len and not frame[0] & 1 and frame[12:14] not in (
            b"\x81\x00", b"\x88\xa8", b"\x91\x00", b"\x92\x00", b"\x93\x00")
        if plain and (frame[:12] in seen or len(seen) < MAX_GROUPS):
            if frame[:12] not in seen:
                seen.append(frame[:12])
            assert groups.of[i] == seen.index(frame[:12])
        else:
            assert groups.of[i] == lib.VSW_SLOW
    assert groups.groups == len(seen)
