"""config -> vio serve -> vio guest (real QEMU) -> disk I/O and ping -> hot-plug -> reload -> shutdown.

Each guest test boots one short-lived TCG guest; the bad-input tests boot none.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.control import request
from backend.qemu.images import REPO
from backend.vswitch.netns import unique_name
from tests.daemon.helpers import Served, link_exists, sockets_in, write_config

PATTERN = b"vio-daemon-pattern\n" * 3449  # 65531 bytes
HOST_IPS = {"x86_64": "198.18.81.1", "sparc64": "198.18.82.1"}


def vio(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env)


def guest_config(tmp_path: Path, tap: str | None, bridge: str | None) -> str:
    uplink = f'uplink = "{tap}"\nbridge = "{bridge}"\n' if tap else ""
    return write_config(tmp_path / "vio.toml", f'''
[daemon]
state_dir = "{tmp_path}/run"
log_format = "json"

[[domain]]
name = "g1"

[ds]

[[switch]]
name = "vsw0"
{uplink}
[[vhost_blk]]
name = "disk0"
domain = "g1"
path = "{tmp_path}/disk0.img"
size = "16M"

[[vhost_net]]
name = "net0"
domain = "g1"
switch = "vsw0"
''')


def sparc64_qemu() -> str:
    from backend.qemu.managed import patched_sparc64_qemu

    try:
        return patched_sparc64_qemu()
    except Exception:
        done = subprocess.run([str(REPO / "scripts" / "build-qemu-sparc64")], capture_output=True, text=True, timeout=3600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["x86_64", "sparc64"])
def test_guest_on_the_daemon_writes_pings_hotplugs_and_shuts_down(tmp_path, arch) -> None:
    qemu = ["--qemu", sparc64_qemu()] if arch == "sparc64" else []
    tap, bridge = unique_name("vt"), unique_name("vb")
    config = guest_config(tmp_path, tap, bridge)
    served = Served(config, str(tmp_path / "run" / "control.sock"), tmp_path / "daemon.log")
    control = ["--control", served.control]
    host_ip = HOST_IPS[arch]
    try:
        subprocess.run(["ip", "addr", "add", f"{host_ip}/24", "dev", bridge], check=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        script = (f"yes vio-daemon-pattern | head -c 65531 | dd of=/dev/vda bs=65531 conv=fsync 2>/dev/null && echo WROTE\n"
                  f"ping -c 2 -W 5 {host_ip} && echo PING-OK || echo PING-FAILED\n"
                  # then run what is typed on the console (sun4u has no power button: `vio guest stop`
                  # types poweroff there)
                  "echo CMD-DONE; while read -r line; do eval \"$line\"; done\n")
        started = vio("guest", "start", "g1", "--arch", arch, *control, *qemu, "--ip", f"{host_ip[:-1]}2/24",
                      "--command", script, "--wait", "CMD-DONE", "--timeout", "240")
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr
        assert "WROTE" in started.stdout and "PING-OK" in started.stdout, started.stdout[-3000:]
        with open(tmp_path / "disk0.img", "rb") as f:
            assert f.read(len(PATTERN)) == PATTERN

        status = served.status()
        disk = next(d for d in status["services"]["disks"] if d["name"] == "disk0")
        assert disk["connected"] and disk["counters"]["writes"] >= 1 and disk["counters"]["written_bytes"] >= len(PATTERN)
        switch = status["services"]["switches"][0]
        port = next(p for p in switch["ports"] if p["name"] == "net0")
        net = next(p for p in status["services"]["ports"] if p["name"] == "net0")
        assert port["counters"]["rx_frames"] >= 2 and net["mac"] in {e["mac"] for e in port["fdb"]}

        attached = vio("guest", "attach", "g1", *control, "--disk", f"disk1={tmp_path}/disk1.img,size=8M")
        assert attached.returncode == 0, attached.stderr
        assert os.path.exists(tmp_path / "run" / "vhost-blk-disk1.sock")
        if arch == "x86_64":  # the sun4u kernel does not rescan the SHPC bridge by itself
            log = tmp_path / "run" / "guests" / "g1" / "console.log"
            from backend.qemu.managed import GuestFiles, follow

            follow(GuestFiles(log.parent), r"\[vdb\]", 60)
        detached = vio("guest", "detach", "g1", "disk1", *control)
        assert detached.returncode == 0, detached.stderr
        assert not os.path.exists(tmp_path / "run" / "vhost-blk-disk1.sock")

        with open(config, "a") as f:
            f.write('\n[[vhost_blk]]\nname = "disk2"\ndomain = "g1"\npath = "disk2.img"\nsize = "1M"\n')
        assert request(served.control, "reload") == {"added": ["vhost_blk:disk2"], "removed": [], "restarted": []}
        status = served.status()
        assert next(p for p in status["services"]["ports"] if p["name"] == "net0")["connected"]  # undisturbed

        stopped = vio("guest", "stop", "g1", *control)
        assert stopped.returncode == 0, stopped.stderr
        assert "powered off" in stopped.stdout
        expected = "QMP system_powerdown" if arch == "x86_64" else "poweroff on the console"
        assert expected in stopped.stdout
    finally:
        vio("guest", "stop", "g1", *control, timeout=60)
        assert served.stop() == 0
    assert not link_exists(tap) and not link_exists(bridge)
    assert sockets_in(str(tmp_path / "run")) == []


@pytest.fixture
def plain_daemon(tmp_path):
    served = Served(guest_config(tmp_path, None, None), str(tmp_path / "run" / "control.sock"), tmp_path / "daemon.log")
    yield served
    assert served.stop() == 0


def test_qemu_missing_is_named_and_nothing_is_left(tmp_path, plain_daemon) -> None:
    done = vio("guest", "start", "g1", "--arch", "x86_64", "--control", plain_daemon.control, "--qemu", "/nonexistent/qemu")
    assert done.returncode == 1
    assert "/nonexistent/qemu not found: install the Debian package qemu-system-x86" in done.stderr
    assert not (tmp_path / "run" / "guests" / "g1" / "qemu.pid").exists()


def test_sparc64_without_the_patched_qemu_says_how_to_get_it(tmp_path, plain_daemon) -> None:
    env = {**os.environ, "VIO_QEMU_SPARC64": "/nonexistent/qemu-system-sparc64"}
    done = vio("guest", "start", "g1", "--arch", "sparc64", "--control", plain_daemon.control, env=env)
    assert done.returncode == 1
    assert "VIO_QEMU_SPARC64=/nonexistent/qemu-system-sparc64 is not an executable file" in done.stderr


def test_unknown_domain_and_no_daemon(tmp_path, plain_daemon) -> None:
    done = vio("guest", "start", "nope", "--control", plain_daemon.control)
    assert done.returncode == 1 and "the daemon serves no domain 'nope' (domains: g1)" in done.stderr
    done = vio("guest", "stop", "g1", "--control", str(tmp_path / "none.sock"))
    assert done.returncode == 1 and "is vio serve running?" in done.stderr


def test_attach_refuses_bad_devices_and_leaves_nothing(tmp_path, plain_daemon) -> None:
    control = plain_daemon.control
    before = sockets_in(str(tmp_path / "run"))
    # no guest runs
    done = vio("guest", "attach", "g1", "--control", control, "--disk", f"d9={tmp_path}/d9.img,size=1M")
    assert done.returncode == 1 and "no guest of g1 is running: vio guest start g1 first" in done.stderr
    # the daemon's own checks, through the control socket
    for values, message in (({"name": "d9", "path": f"{tmp_path}/missing/d9.img"}, "does not exist"),
                            ({"name": "disk0", "path": f"{tmp_path}/x.img", "size": "1M"}, "a vhost_blk named 'disk0' already exists"),
                            ({"name": "d9", "path": f"{tmp_path}/x.img", "size": "1M", "queues": "many"}, "expected an integer")):
        with pytest.raises(Exception, match=message):
            request(control, "attach", domain="g1", kind="vhost_blk", values=values)
    with pytest.raises(Exception, match="was not attached by vio guest attach"):
        request(control, "detach", kind="vhost_blk", name="disk0")
    assert sockets_in(str(tmp_path / "run")) == before
    assert {d["name"] for d in request(control, "domain", name="g1")["devices"]} == {"disk0", "net0"}
