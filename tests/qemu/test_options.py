"""Option groups, specs and command lines: no QEMU needed."""

import asyncio
import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from backend.errors import ConfigError
from backend.qemu import (SPARC64, X86_64, FileDisk, Guest, GuestImage, GuestSpec, OptionGroup, QemuNotFoundError,
                          TapNet, VhostUserBlk, VhostUserNet, parse_readconfig, render_readconfig)
from backend.qemu.machine import encode_command

IMAGE = GuestImage("x86_64", Path("/k"), Path("/i"))


def test_argv_puts_type_first_then_id_and_doubles_commas():
    group = OptionGroup.of("drive", "d0", {"file": "/tmp/a,b.img", "if": "none", "readonly": True, "cache": None})
    assert group.argv() == ["-drive", "file=/tmp/a,,b.img,id=d0,if=none,readonly=on"]


def test_unknown_group_is_refused():
    with pytest.raises(ConfigError, match="unknown QEMU option group"):
        OptionGroup.of("bogus", None, {})


def test_readconfig_round_trip():
    groups = GuestSpec(SPARC64, IMAGE, devices=[VhostUserBlk("b", "/s"), VhostUserNet("n", "/t", "52:54:00:00:00:01"),
                                                TapNet("t", "tap0", "52:54:00:00:00:02"), FileDisk("f", "/d", True)],
                       hotplug=True).groups()
    assert parse_readconfig(render_readconfig(groups, "header\nlines")) == groups


@given(st.text(max_size=300))
def test_parse_readconfig_takes_any_text(text):
    try:
        parse_readconfig(text)
    except ConfigError as error:
        assert "<config>:" in str(error) or "option group" in str(error)


def test_parse_readconfig_names_the_line():
    with pytest.raises(ConfigError, match=r"x.cfg:2: expected"):
        parse_readconfig('[device "a"]\n  driver = virtio\n', "x.cfg")


def test_sparc64_devices_go_on_pciB_and_hotplug_bridge_only_when_asked():
    spec = GuestSpec(SPARC64, IMAGE, devices=[FileDisk("d0", "/d")])
    devices = [g for g in spec.groups() if g.group == "device"]
    assert [dict(g.props)["bus"] for g in devices] == ["pciB"]
    spec.hotplug = True
    assert any(g.id == "hotplug0" for g in spec.groups())


def test_x86_guest_command_line():
    spec = GuestSpec(X86_64, IMAGE, memory_mb=384, devices=[VhostUserBlk("b", "/s")], command="echo hi", ip="10.0.0.2/24")
    argv = spec.argv("/q.sock")
    assert argv[0] == "qemu-system-x86_64"
    assert "qom-type=memory-backend-memfd,id=mem,size=384M,share=on" in argv
    machine = argv[argv.index("-machine") + 1]
    assert machine.startswith("type=pc,accel=tcg,memory-backend=mem,kernel=/k,initrd=/i,append=console=ttyS0 ")
    assert f"guest.cmd64={encode_command('echo hi')}" in machine and "guest.ip=10.0.0.2/24" in machine
    assert "driver=vhost-user-blk-pci,id=b,chardev=b-sock,num-queues=1" in argv
    assert "backend=socket,id=b-sock,path=/s" in argv


def test_spec_errors_are_clear():
    with pytest.raises(ConfigError, match="duplicate device ids"):
        GuestSpec(X86_64, IMAGE, devices=[FileDisk("d", "/a"), FileDisk("d", "/b")]).groups()
    with pytest.raises(ConfigError, match="too long for the kernel command line"):
        GuestSpec(X86_64, IMAGE, command="x" * 2000).kernel_args()
    with pytest.raises(ConfigError, match="too small"):
        GuestSpec(X86_64, IMAGE, memory_mb=16).groups()


def test_hotplug_commands_mirror_start_options():
    net = VhostUserNet("n0", "/n.sock", "52:54:00:00:00:01")
    assert [c for c, _ in net.plug_backends()] == ["chardev-add", "netdev_add"]
    # QEMU 7.2 removes a vhost-user netdev's chardev together with the netdev
    assert [c for c, _ in net.after_unplug()] == ["netdev_del"]
    disk = FileDisk("d0", "/d.img", readonly=True)
    assert disk.plug_backends()[0][1]["read-only"] is True
    assert disk.after_unplug() == [("blockdev-del", {"node-name": "d0-drive"})]
    tap = TapNet("t0", "tap9", "52:54:00:00:00:02")
    assert tap.plug_backends() == [("netdev_add", {"id": "t0-net", "type": "tap", "ifname": "tap9",
                                                   "script": "no", "downscript": "no"})]


def test_missing_qemu_is_a_clear_error():
    missing = dataclasses.replace(X86_64, binary="qemu-system-none-such", debian_package="qemu-system-none")
    guest = Guest(GuestSpec(missing, IMAGE))
    with pytest.raises(QemuNotFoundError, match="qemu-system-none-such not found: install the Debian package qemu-system-none"):
        asyncio.run(guest.start())
