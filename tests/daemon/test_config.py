"""Config checking: every kind of bad input is reported, all at once, with file, line and key."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from backend.config import ConfigProblems, Owned, load_config, parse_config
from backend.config.default import DEFAULT_CONFIG
from backend.daemon.disks import DiskSpec
from backend.daemon.registry import kinds
from backend.daemon.switches import SwitchSpec, derived_mac
from backend.daemon.vnet import VnetSpec
from backend.metrics import MetricsSpec
from backend.vswitch.netns import unique_name
from backend.vswitch.tap import link_info, netlink

KINDS = kinds()


def write(tmp_path, text: str) -> str:
    path = tmp_path / "vio.toml"
    path.write_text(textwrap.dedent(text).replace("STATE", str(tmp_path / "state")))
    return str(path)


def problems(tmp_path, text: str) -> list[tuple[int, str, str]]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigProblems) as caught:
        load_config(path, KINDS)
    for problem in caught.value.problems:
        assert problem.file == path
    return [(p.line, p.key, p.message) for p in caught.value.problems]


def only(found: list[tuple[int, str, str]]) -> tuple[int, str, str]:
    assert len(found) == 1, found
    return found[0]


# -- a good file -------------------------------------------------------------------------


def test_a_good_file_gives_typed_settings_with_paths_resolved(tmp_path) -> None:
    (tmp_path / "disk.img").write_bytes(bytes(1 << 20))
    config = load_config(write(tmp_path, '''
        [daemon]
        state_dir = "STATE"
        log_format = "text"

        [[domain]]
        name = "ldg1"

        [[disk]]
        name = "root"
        domain = "ldg1"
        path = "disk.img"
        read_only = true
        cache = "writethrough"
        export = "slice"
        offset = "512K"

        [[switch]]
        name = "vsw0"
        mtu = 9000
        vlans = [10, 20]

        [[vnet]]
        name = "net0"
        switch = "vsw0"
        domain = "ldg1"
        pvid = 10

        [metrics]
        port = 0
    '''), KINDS)
    state = str(tmp_path / "state")
    assert config.daemon.state_dir == state and config.daemon.control_socket == f"{state}/control.sock"
    assert config.daemon.log_format == "text" and [d.name for d in config.domains] == ["ldg1"]
    assert [s.kind for s in config.services] == ["switch", "vnet", "disk", "metrics"]  # registry order
    switch, vnet, disk, metrics = config.services
    assert isinstance(disk, DiskSpec) and disk.path == str(tmp_path / "disk.img") and disk.socket == f"{state}/disk-root.sock"
    assert (disk.read_only, disk.cache, disk.export, disk.offset, disk.length, disk.create_size) == (True, "writethrough", "slice", 512 << 10, None, None)
    assert isinstance(switch, SwitchSpec) and switch.vlans == frozenset({10, 20}) and switch.mac == derived_mac("vsw0")
    assert switch.uplink is None and switch.mtu == 9000 and switch.ageing == 300.0
    assert isinstance(vnet, VnetSpec) and vnet.needs() == (("switch", "vsw0"),) and vnet.pvid == 10
    assert isinstance(metrics, MetricsSpec) and metrics.port == 0


def test_the_embedded_default_config_is_valid(tmp_path) -> None:
    config = parse_config(DEFAULT_CONFIG, "<default>", KINDS, state_dir=str(tmp_path))
    assert {s.key for s in config.services} == {("ds", "ds"), ("switch", "vsw0"), ("vhost_blk", "disk0"), ("vhost_net", "net0")}
    disk = config.service("vhost_blk", "disk0")
    assert disk.path == str(tmp_path / "ldg1-disk0.img") and disk.create_size == 64 << 20 and disk.domain == "ldg1"


# -- one problem at a time, with its line ---------------------------------------------------


def test_toml_syntax_error_has_its_line(tmp_path) -> None:
    line, _, message = only(problems(tmp_path, '''
        [daemon]
        state_dir = "STATE"
        log_format = json
    '''))
    assert line == 4 and "TOML syntax" in message and "Invalid value" in message


def test_unknown_section_and_unknown_key_with_a_suggestion(tmp_path) -> None:
    found = problems(tmp_path, '''
        [daemon]
        state_dir = "STATE"

        [[disks]]
        name = "a"

        [[switch]]
        name = "s"
        mut = 1500
    ''')
    assert found == [
        (5, "disks", "unknown section; known sections: daemon, domain, switch, ds, vnet, disk, vhost_blk, vhost_net, ldc, metrics"),
        (10, "switch[0].mut", "unknown key (did you mean 'mtu'?); known keys: name, mac, mtu, uplink, bridge, create_bridge, pvid, vlans, capture, ageing, max_fdb"),
    ]


def test_wrong_types_and_ranges(tmp_path) -> None:
    found = problems(tmp_path, '''
        [daemon]
        state_dir = "STATE"
        [[switch]]
        name = "s"
        mtu = "1500"
        vlans = [10, 4095]
        ageing = -1
        mac = "01:00:5e:00:00:01"
        [[switch]]
        name = 7
        pvid = 0
        create_bridge = "yes"
        [metrics]
        port = 70000
    ''')
    assert found == [
        (6, "switch[0].mtu", "expected an integer, got a string"),
        (7, "switch[0].vlans", "element 1: 4095 is out of range 1..4094"),
        (8, "switch[0].ageing", "-1 seconds cannot be negative"),
        (9, "switch[0].mac", "01:00:5e:00:00:01 is a multicast address; a station needs a unicast one"),
        (11, "switch[1].name", "expected a string, got an integer"),
        (12, "switch[1].pvid", "0 is out of range 1..4094"),
        (13, "switch[1].create_bridge", "expected true or false, got a string"),
        (15, "metrics.port", "70000 is out of range 0..65535"),
    ]


def test_missing_required_key_points_at_the_table(tmp_path) -> None:
    line, key, message = only(problems(tmp_path, '''
        [daemon]
        state_dir = "STATE"

        [[disk]]
        name = "a"
    '''))
    assert (line, key) == (5, "disk[0]") and message.startswith("missing required key 'path'")


def test_a_section_of_the_wrong_shape(tmp_path) -> None:
    found = problems(tmp_path, '''
        [daemon]
        state_dir = "STATE"
        [disk]
        name = "a"
        [[metrics]]
        port = 1
    ''')
    assert found == [
        (4, "disk", "expected an array of tables ([[disk]]), got a single table"),
        (6, "metrics", "expected a table, got an array"),
    ]


def test_inline_tables_report_the_key_inside_them(tmp_path) -> None:
    found = problems(tmp_path, '''
        disk = [
          { name = "a", path = "a.img", size = "1M" },
          { name = "b", pth = "b.img" },
        ]
        [daemon]
        state_dir = "STATE"
    ''')
    assert (4, "disk[1]") == found[0][:2] and "missing required key 'path'" in found[0][2]
    assert (4, "disk[1].pth") == found[1][:2] and found[1][2].startswith("unknown key (did you mean 'path'?)")


def test_paths_that_do_not_exist(tmp_path) -> None:
    (tmp_path / "fifo").mkdir()
    found = problems(tmp_path, f'''
        [daemon]
        state_dir = "STATE"
        [[disk]]
        name = "a"
        path = "missing.img"
        [[disk]]
        name = "b"
        path = "no/such/dir/b.img"
        size = "1M"
        [[disk]]
        name = "c"
        path = "{tmp_path}"
        [[switch]]
        name = "s"
        uplink = "{unique_name("vt")}"
        capture = "nowhere/x.pcap"
    ''')
    assert found == [
        (6, "disk[0].path", f"{tmp_path}/missing.img does not exist; create it, or add size = \"64M\" (for example) to create a sparse file"),
        (9, "disk[1].path", f"directory {tmp_path}/no/such/dir does not exist, so {tmp_path}/no/such/dir/b.img cannot be created"),
        (13, "disk[2].path", f"{tmp_path} is neither a regular file nor a block device"),
        (17, "switch[0].capture", f"directory {tmp_path}/nowhere does not exist"),
    ]


def test_export_windows_must_fit_the_disk(tmp_path) -> None:
    (tmp_path / "d.img").write_bytes(bytes(1 << 20))
    found = problems(tmp_path, '''
        [daemon]
        state_dir = "STATE"
        [[disk]]
        name = "a"
        path = "d.img"
        offset = 1000
        [[disk]]
        name = "b"
        path = "d.img"
        offset = "512K"
        length = "1M"
        [[disk]]
        name = "c"
        path = "new.img"
        size = 100
    ''')
    assert found == [
        (7, "disk[0].offset", "1000 is not a multiple of 512 bytes"),
        (12, "disk[1].length", f"window of 1048576 bytes at offset 524288 does not fit in {tmp_path}/d.img (1048576 bytes)"),
        (16, "disk[2].size", "a new disk needs at least 512 bytes, not 100"),
    ]


def test_duplicate_names_and_dangling_references(tmp_path) -> None:
    found = problems(tmp_path, '''
        [daemon]
        state_dir = "STATE"
        [[domain]]
        name = "g"
        [[domain]]
        name = "g"
        [[switch]]
        name = "s"
        [[switch]]
        name = "s"
        [[vnet]]
        name = "p"
        switch = "nope"
        domain = "h"
    ''')
    assert found == [
        (7, "domain[1].name", "duplicate domain name 'g' (first at line 4)"),
        (11, "switch[1].name", "duplicate switch name 's' (first at line 8)"),
        (14, "vnet[0].switch", "no [[switch]] named 'nope'"),
        (15, "vnet[0].domain", "no [[domain]] named 'h'; add one or fix the name"),
    ]


def test_socket_paths_used_twice_too_long_or_not_a_socket(tmp_path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "plain").write_text("not a socket")
    found = problems(tmp_path, f'''
        [daemon]
        state_dir = "STATE"
        [[switch]]
        name = "s"
        [[vnet]]
        name = "p"
        switch = "s"
        socket = "x.sock"
        [[vnet]]
        name = "q"
        switch = "s"
        socket = "x.sock"
        [[vnet]]
        name = "r"
        switch = "s"
        socket = "plain"
        [[vnet]]
        name = "t"
        switch = "s"
        socket = "{"y" * 120}"
        [[vnet]]
        name = "u"
        switch = "s"
        socket = "/no/such/dir/u.sock"
    ''')
    state = tmp_path / "state"
    assert found == [
        (13, "vnet[1].socket", f"socket {state}/x.sock is already used by vnet[0].socket (line 9)"),
        (17, "vnet[2].socket", f"{state}/plain exists and is not a socket; remove it or choose another path"),
        (21, "vnet[3].socket", f"socket path {state}/{'y' * 120} is longer than 107 bytes; use a shorter state_dir or name"),
        (25, "vnet[4].socket", "directory /no/such/dir does not exist; create it or put the socket in the state directory"),
    ]


def test_a_socket_someone_listens_on_is_in_use_unless_it_is_ours(tmp_path) -> None:
    (tmp_path / "state").mkdir()
    busy = tmp_path / "state" / "busy.sock"
    stale = tmp_path / "state" / "stale.sock"
    text = '''
        [daemon]
        state_dir = "STATE"
        [[switch]]
        name = "s"
        [[vnet]]
        name = "p"
        switch = "s"
        socket = "busy.sock"
        [[vnet]]
        name = "q"
        switch = "s"
        socket = "stale.sock"
    '''
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        listener.bind(str(busy))
        listener.listen()
        dead.bind(str(stale))  # bound, never listening: what a crashed daemon leaves
        assert problems(tmp_path, text) == [
            (9, "vnet[0].socket", f"socket {busy} is in use by another process (another vio serve?); stop it or choose another path"),
        ]
        load_config(write(tmp_path, text), KINDS, owned=Owned(sockets=frozenset({str(busy)})))  # a reload of our own


def test_every_problem_of_a_file_is_reported_at_once(tmp_path) -> None:
    found = problems(tmp_path, '''
        [daemon]
        state_dir = "STATE"
        log_level = "loud"
        [[disk]]
        name = "a b"
        path = 3
        [[switch]]
        name = "s"
        bridge = "br0"
        [[vnet]]
        name = "p"
        switch = "s"
        vlans = "10"
        [metrics]
    ''')
    assert [(line, key) for line, key, _ in found] == [
        (4, "daemon.log_level"), (6, "disk[0].name"), (7, "disk[0].path"), (10, "switch[0].bridge"),
        (14, "vnet[0].vlans"), (15, "metrics"),
    ]
    assert found[0][2] == "'loud' is not one of 'debug', 'info', 'warning', 'error'"
    assert found[3][2] == 'bridge needs an uplink; add uplink = "tapNAME"'
    assert found[5][2] == 'give port = 9464 (for example), textfile = "PATH", or both'


def test_a_missing_config_file(tmp_path) -> None:
    with pytest.raises(ConfigProblems) as caught:
        load_config(str(tmp_path / "none.toml"), KINDS)
    assert "config file not found" in str(caught.value)


# -- the kernel's side: interfaces and privileges -------------------------------------------


@pytest.fixture
def links():
    made: list[str] = []
    yield made

    def drop(ipr) -> None:
        for name in made:
            info = link_info(ipr, ifname=name)
            if info is not None:
                ipr.link("del", index=info["index"])

    netlink(drop)


def test_interfaces_that_exist_already(tmp_path, links) -> None:
    taken, dummy, peer = unique_name("vt"), unique_name("vd"), unique_name("vd")
    links += [taken, dummy, peer]
    netlink(lambda ipr: ipr.link("add", ifname=taken, kind="bridge"))
    netlink(lambda ipr: ipr.link("add", ifname=dummy, kind="veth", peer=peer))
    text = f'''
        [daemon]
        state_dir = "STATE"
        [[switch]]
        name = "s"
        uplink = "{taken}"
        [[switch]]
        name = "t"
        uplink = "{unique_name("vt")}"
        bridge = "{dummy}"
        [[switch]]
        name = "u"
        uplink = "{unique_name("vt")}"
        bridge = "{unique_name("vb")}"
        create_bridge = false
        [[switch]]
        name = "v"
        uplink = "{taken}"
    '''
    found = problems(tmp_path, text)
    assert [(line, key) for line, key, _ in found] == [(6, "switch[0].uplink"), (10, "switch[1].bridge"),
                                                       (14, "switch[2].bridge"), (18, "switch[3].uplink")]
    assert found[0][2].startswith(f"an interface named {taken} already exists (bridge)")
    assert found[1][2] == f"{dummy} exists but is a veth, not a bridge"
    assert "does not exist; create it" in found[2][2] and "create_bridge = true" in found[2][2]
    assert found[3][2] == f"{taken} is already used by switch 's' (line 4)"


def test_without_privileges_the_message_says_run_as_root(tmp_path) -> None:
    tap = unique_name("vt")
    path = write(tmp_path, f'''
        [daemon]
        state_dir = "{tmp_path}/state"
        [[switch]]
        name = "s"
        uplink = "{tap}"
    ''')
    # root without CAP_NET_ADMIN, as in a container that was not granted it
    result = subprocess.run(["setpriv", "--bounding-set", "-net_admin", sys.executable, "-m", "backend", "serve", path],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result
    assert f"{path}:6: switch[0].uplink: creating tap {tap} needs CAP_NET_ADMIN: run vio serve as root" in result.stderr
    assert not (tmp_path / "state").exists()  # nothing was started


def test_vio_serve_lists_every_problem_and_starts_nothing(tmp_path) -> None:
    path = write(tmp_path, '''
        [daemon]
        state_dir = "STATE"
        [[disk]]
        name = "a"
        path = "nope.img"
        [[vnet]]
        name = "p"
        switch = "missing"
    ''')
    result = subprocess.run([sys.executable, "-m", "backend", "serve", path], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "vio serve: 2 problems in the configuration:" in result.stderr
    assert f"{path}:6: disk[0].path: " in result.stderr and f"{path}:9: vnet[0].switch: no [[switch]] named 'missing'" in result.stderr
    assert not (tmp_path / "state").exists()
    check = subprocess.run([sys.executable, "-m", "backend", "serve", "--check", path], capture_output=True, text=True, timeout=60)
    assert check.returncode == 1 and check.stderr == result.stderr


def test_the_example_in_docs_config_md_only_lacks_its_files(tmp_path) -> None:
    """The annotated example stays in step with the fields: on this machine only its paths are missing."""
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "config.md")) as f:
        doc = f.read()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    with pytest.raises(ConfigProblems) as caught:
        parse_config(example, "config.md", KINDS, config_dir=str(tmp_path), state_dir=str(tmp_path / "state"))
    assert [p.key for p in caught.value.problems] == ["disk[0].path", "disk[1].path", "metrics.textfile"]
    assert all("does not exist" in p.message for p in caught.value.problems)
