"""Config checks of the vhost-user, LDC and DS kinds, one bad input at a time, with its line."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile

from backend.qemu.images import REPO
from tests.daemon.test_config import only, problems

HEAD = '''
    [daemon]
    state_dir = "STATE"

    [[domain]]
    name = "g1"
'''


def test_unknown_key_in_a_vhost_blk_table(tmp_path) -> None:
    assert only(problems(tmp_path, HEAD + '''
    [[vhost_blk]]
    name = "d0"
    domain = "g1"
    path = "d0.img"
    size = "1M"
    queus = 2
    ''')) == (13, "vhost_blk[0].queus", "unknown key (did you mean 'queues'?); known keys: name, domain, path, size, "
              "read_only, cache, queues, queue_size, socket")


def test_wrong_types_and_ranges(tmp_path) -> None:
    found = problems(tmp_path, HEAD + '''
    [[vhost_blk]]
    name = "d0"
    domain = "g1"
    path = "d0.img"
    size = "1M"
    queues = "two"
    queue_size = 100

    [[switch]]
    name = "s"

    [[vhost_net]]
    name = "n0"
    domain = "g1"
    switch = "s"
    mac = "01:00:00:00:00:01"
    ''')
    assert found == [
        (13, "vhost_blk[0].queues", "expected an integer, got a string"),
        (14, "vhost_blk[0].queue_size", "100 is not a power of two"),
        (23, "vhost_net[0].mac", "01:00:00:00:00:01 is a multicast address; a station needs a unicast one"),
    ]


def test_a_missing_disk_file_says_how_to_fix_it(tmp_path) -> None:
    line, key, message = only(problems(tmp_path, HEAD + '''
    [[vhost_blk]]
    name = "d0"
    domain = "g1"
    path = "nowhere/d0.img"
    '''))
    assert (line, key) == (11, "vhost_blk[0].path")
    assert "does not exist; create it, or add size" in message


def test_duplicate_names_and_a_missing_domain(tmp_path) -> None:
    found = problems(tmp_path, HEAD + '''
    [[vhost_blk]]
    name = "d0"
    domain = "g1"
    path = "a.img"
    size = "1M"

    [[vhost_blk]]
    name = "d0"
    path = "b.img"
    size = "1M"
    ''')
    assert found == [
        (14, "vhost_blk[1]", "missing required key 'domain' (the guest whose QEMU connects to this vhost_blk socket)"),
        (14, "vhost_blk[1].socket", f"socket {tmp_path}/state/vhost-blk-d0.sock is already used by vhost_blk[0].socket (line 8)"),
        (15, "vhost_blk[1].name", "duplicate vhost_blk name 'd0' (first at line 8)"),
    ]


def test_a_socket_another_process_listens_on(tmp_path) -> None:
    (tmp_path / "state").mkdir()
    taken = tmp_path / "state" / "vhost-blk-d0.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(taken))
        listener.listen(1)
        line, key, message = only(problems(tmp_path, HEAD + '''
        [[vhost_blk]]
        name = "d0"
        domain = "g1"
        path = "a.img"
        size = "1M"
        '''))
    assert (line, key) == (8, "vhost_blk[0].socket")
    assert message == f"socket {taken} is in use by another process (another vio serve?); stop it or choose another path"


def test_ldc_references_must_exist(tmp_path) -> None:
    found = problems(tmp_path, HEAD + '''
    [[ldc]]
    name = "l0"
    domain = "g1"
    disks = ["nope"]
    ds = true
    ''')
    assert found == [(11, "ldc[0].disks", "element 0: no [[disk]] named 'nope'"),
                     (12, "ldc[0].ds", "there is no [ds] section: add one (an empty [ds] will do)")]


def test_the_same_mac_twice(tmp_path) -> None:
    found = problems(tmp_path, HEAD + '''
    [[switch]]
    name = "s"

    [[vhost_net]]
    name = "n0"
    domain = "g1"
    switch = "s"
    mac = "52:54:00:00:00:01"

    [[vhost_net]]
    name = "n1"
    domain = "g1"
    switch = "s"
    mac = "52:54:00:00:00:01"
    ''')
    assert found == [(21, "vhost_net[1].mac", "MAC 52:54:00:00:00:01 is already the MAC of vhost_net 'n0' (line 11)")]


def test_without_net_admin_the_tap_uplink_is_refused_and_nothing_starts() -> None:
    folder = tempfile.mkdtemp(prefix="vio-nopriv-")  # pytest's tmp_path is root's alone
    try:
        os.chmod(folder, 0o777)
        config = os.path.join(folder, "vio.toml")
        with open(config, "w") as f:
            f.write(f'[daemon]\nstate_dir = "{folder}/state"\n\n[[switch]]\nname = "s"\nuplink = "viotest-tap9"\n')
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                               sys.executable, "-m", "backend", "serve", config],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
        assert done.returncode == 1, done.stderr
        assert "switch[0].uplink: creating tap viotest-tap9 needs CAP_NET_ADMIN: run vio serve as root" in done.stderr
        assert not os.path.exists(os.path.join(folder, "state"))
    finally:
        shutil.rmtree(folder)
