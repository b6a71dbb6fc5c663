"""pcap files of switch ports, read back by the real tcpdump (Debian package tcpdump)."""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess

import pytest

from backend.errors import ConfigError
from backend.vswitch.frames import BROADCAST, build
from backend.vswitch.pcap import PcapWriter, capture
from backend.vswitch.port import PortConfig
from backend.vswitch.switch import Switch

T0 = 1_700_000_000.0
# A well-formed IPv4/UDP packet so tcpdump decodes past the Ethernet header.
UDP = bytes.fromhex("4500001c00010000401100000a0000010a000002" "303900350008 0000")


def mac(n: int) -> bytes:
    return bytes([0x02, 0, 0, 0, 0, n])


GROUP = bytes.fromhex("01005e000001")


class Nic:
    def __init__(self, name: str, **kw) -> None:
        self.config = PortConfig(name, **kw)
        self.sent: list[bytes] = []

    def transmit(self, frame: bytes) -> None:
        self.sent.append(frame)


def tcpdump(path, *extra: str) -> list[str]:
    """`tcpdump -r path -nn -e` (plus extra flags); fails the test when tcpdump is missing."""
    exe = shutil.which("tcpdump") or next(
        (p for p in ("/usr/bin/tcpdump", "/usr/sbin/tcpdump") if os.access(p, os.X_OK)), None
    )
    if exe is None:
        pytest.fail("tcpdump is not installed: apt-get install tcpdump (Debian package tcpdump)")
    result = subprocess.run(
        [exe, "-r", str(path), "-nn", "-e", *extra],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "TZ": "UTC"},
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "link-type EN10MB (Ethernet), snapshot length 65535" in result.stderr
    return result.stdout.splitlines()


def records(path) -> tuple[tuple, list[tuple[int, int, int, int, bytes]]]:
    with open(path, "rb") as f:
        data = f.read()
    header = struct.unpack_from("<IHHiIII", data)
    out, pos = [], 24
    while pos < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, pos)
        out.append((sec, usec, incl, orig, data[pos + 16 : pos + 16 + incl]))
        pos += 16 + incl
    return header, out


def test_file_header_and_records(tmp_path) -> None:
    path = tmp_path / "w.pcap"
    frame = build(BROADCAST, mac(1), 0x0800, UDP)
    with PcapWriter(path) as w:
        w.write(frame, T0 + 0.25)
        w.write(frame, T0 + 0.9999996)  # rounds up into the next second
        assert w.frames == 2
    header, recs = records(path)
    assert header == (0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    assert records(path)[1] and (tmp_path / "w.pcap").read_bytes()[:4] == bytes.fromhex("d4c3b2a1")
    assert recs == [
        (int(T0), 250000, len(frame), len(frame), frame),
        (int(T0) + 1, 0, len(frame), len(frame), frame),
    ]
    lines = tcpdump(path, "-tt")
    assert lines[0].startswith("1700000000.250000 02:00:00:00:00:01 > ff:ff:ff:ff:ff:ff, ethertype IPv4 (0x0800)")
    assert lines[1].startswith("1700000001.000000 ")
    assert "10.0.0.1.12345 > 10.0.0.2.53" in lines[0]


def test_snaplen_and_bad_timestamps(tmp_path) -> None:
    path = tmp_path / "s.pcap"
    frame = build(mac(2), mac(1), 0x0800, UDP + bytes(100))
    with PcapWriter(path, snaplen=64) as w:
        w.write(frame, T0)
        with pytest.raises(ValueError):
            w.write(frame, -1.0)
        with pytest.raises(ValueError):
            w.write(frame, 2.0**33)
    header, recs = records(path)
    assert header[5] == 64
    assert recs == [(int(T0), 0, 64, len(frame), frame[:64])]
    with pytest.raises(ConfigError):
        PcapWriter(tmp_path / "x.pcap", snaplen=0)


def test_writer_on_an_open_file() -> None:
    buf = io.BytesIO()
    w = PcapWriter(buf)
    w.write(b"\x00" * 14, 1.5)
    w.close()
    assert len(buf.getvalue()) == 24 + 16 + 14 and not buf.closed


def test_capture_on_a_trunk_shows_tags(tmp_path) -> None:
    trunk = Nic("trunk", pvid=1, vlans=frozenset({10, 20}), tagged=True)
    acc10, acc20 = Nic("acc10", pvid=10), Nic("acc20", pvid=20)
    sw = Switch("vsw0")
    for p in (trunk, acc10, acc20):
        sw.attach(p)
    path = tmp_path / "trunk.pcap"
    with capture(sw, trunk, path, offset=T0):
        sw.receive(acc10, build(BROADCAST, mac(1), 0x0800, UDP), now=1.0)  # tx on trunk, tagged 10
        sw.receive(trunk, build(mac(1), mac(2), 0x0800, UDP, vlan=10, pcp=5), now=2.0)  # rx, unicast to acc10
        sw.receive(acc20, build(GROUP, mac(3), 0x0800, UDP), now=3.0)  # multicast, trunk not a member: not sent
        sw.receive(trunk, build(mac(3), mac(4), 0x0800, UDP, vlan=30), now=4.0)  # dropped (bad_vlan), still captured
    sw.receive(trunk, build(mac(1), mac(2), 0x0800, UDP, vlan=10), now=5.0)  # after close: not captured
    assert sw.counters(trunk).drops["bad_vlan"] == 1

    lines = tcpdump(path, "-tt")
    assert len(lines) == 3, lines
    assert lines[0].startswith(
        "1700000001.000000 02:00:00:00:00:01 > ff:ff:ff:ff:ff:ff, ethertype 802.1Q (0x8100), length 46: "
        "vlan 10, p 0, ethertype IPv4 (0x0800), 10.0.0.1.12345 > 10.0.0.2.53"
    )
    assert lines[1].startswith(
        "1700000002.000000 02:00:00:00:00:02 > 02:00:00:00:00:01, ethertype 802.1Q (0x8100), length 46: "
        "vlan 10, p 5, ethertype IPv4"
    )
    assert lines[2].startswith("1700000004.000000 02:00:00:00:00:04 > 02:00:00:00:00:03, ethertype 802.1Q")
    assert "vlan 30, p 0" in lines[2]

    # The plain invocation shows the same addresses and tags (times in UTC).
    plain = tcpdump(path)
    assert re.match(r"22:13:21\.000000 02:00:00:00:00:01 > ff:ff:ff:ff:ff:ff, .*vlan 10, p 0,", plain[0])
    assert [re.sub(r"^\S+ ", "", a) for a in plain] == [re.sub(r"^\S+ ", "", b) for b in lines]


def test_capture_on_an_access_port_is_untagged(tmp_path) -> None:
    trunk = Nic("trunk", pvid=1, vlans=frozenset({10}), tagged=True)
    acc10 = Nic("acc10", pvid=10)
    sw = Switch("vsw0")
    sw.attach(trunk, uplink=True)
    sw.attach(acc10)
    sw.join(acc10, GROUP, 10)
    path = tmp_path / "acc.pcap"
    cap = capture(sw, acc10, path, offset=T0)
    sw.receive(trunk, build(GROUP, mac(9), 0x0800, UDP, vlan=10, pcp=3), now=0.5)
    sw.receive(acc10, build(mac(9), mac(1), 0x0800, UDP), now=0.75)
    sw.receive(acc10, b"\x01\x02\x03", now=1.0)  # a runt: recorded as received
    cap.close()
    assert trunk.sent == [build(mac(9), mac(1), 0x0800, UDP, vlan=10)]

    lines = tcpdump(path, "-tt")
    assert len(lines) == 3, lines
    assert lines[0].startswith(
        "1700000000.500000 02:00:00:00:00:09 > 01:00:5e:00:00:01, ethertype IPv4 (0x0800), length 42: 10.0.0.1"
    )
    assert lines[1].startswith(
        "1700000000.750000 02:00:00:00:00:01 > 02:00:00:00:00:09, ethertype IPv4 (0x0800), length 42:"
    )
    assert "vlan" not in lines[0] + lines[1]
    assert lines[2] == "1700000001.000000  [|ether]"  # too short to decode


def test_capture_one_direction(tmp_path) -> None:
    a, b = Nic("a"), Nic("b")
    sw = Switch("vsw0")
    sw.attach(a)
    sw.attach(b)
    rx, tx = tmp_path / "rx.pcap", tmp_path / "tx.pcap"
    with capture(sw, a, rx, directions="rx", offset=T0), capture(sw, a, tx, directions="tx", offset=T0):
        sw.receive(a, build(BROADCAST, mac(1), 0x0800, UDP), now=1.0)
        sw.receive(b, build(mac(1), mac(2), 0x0800, UDP), now=2.0)
    (rx_line,) = tcpdump(rx)
    (tx_line,) = tcpdump(tx)
    assert "02:00:00:00:00:01 > ff:ff:ff:ff:ff:ff" in rx_line
    assert "02:00:00:00:00:02 > 02:00:00:00:00:01" in tx_line
    with pytest.raises(ConfigError):
        capture(sw, a, tmp_path / "bad.pcap", directions="sideways")
