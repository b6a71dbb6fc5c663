"""An [[ldc]] device on the daemon with a real guest simulator process: channels up, DS shutdown through vio guest stop."""

from __future__ import annotations

import subprocess
import sys
import time

from backend.control import request
from backend.qemu.images import REPO
from tests.daemon.helpers import Served, sockets_in, write_config


def test_guest_sim_channels_come_up_and_vio_guest_stop_uses_ds(tmp_path) -> None:
    config = write_config(tmp_path / "vio.toml", f'''
[daemon]
state_dir = "{tmp_path}/run"

[[domain]]
name = "g2"

[ds]

[[switch]]
name = "vsw1"

[[disk]]
name = "vd0"
domain = "g2"
path = "{tmp_path}/vd0.img"
size = "8M"

[[ldc]]
name = "ldc0"
domain = "g2"
disks = ["vd0"]
vnets = ["vsw1"]
ds = true
dhdl = 7
''')
    served = Served(config, str(tmp_path / "run" / "control.sock"), tmp_path / "daemon.log")
    sim = subprocess.Popen([sys.executable, "-m", "backend", "guest-sim", "--socket", str(tmp_path / "run" / "ldc-ldc0.sock"),
                            "--domain", "g2", "--dhdl", "7", "--ds-socket", str(tmp_path / "guest-ds.sock"),
                            "--nbd", str(tmp_path / "nbd.sock")],  # runs the guest's vdc (no vnet client: no --tap)
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while True:
            status = served.status()
            (ds,) = status["services"]["ds"]
            channels = status["domains"][0]["channels"]
            vio_up = all(c["vio_phase"] == "established" for c in channels if c["carries"] == "vdisk")
            if ds["ports"] and ds["ports"][0]["state"] == "ready" and all(c["ldc_state"] == "up" for c in channels) and vio_up:
                break
            assert time.monotonic() < deadline, ([(c["carries"], c["ldc_state"], c["vio_phase"]) for c in channels], sim.poll())
            time.sleep(0.3)
        assert {(c["service"], c["carries"]) for c in channels} == {("ldc0/vd0", "vdisk"), ("ldc0/ldc0-vnet0", "vnet"), ("ldc0/ds", "ds")}
        assert ds["ports"][0]["peer"] == "g2" and ds["ports"][0]["version"] == "1.0"
        versions = {c["carries"]: c["vio_version"] for c in channels}
        assert versions == {"vdisk": "1.1", "vnet": None, "ds": None}  # the vdc's session; no vnet client runs
        assert request(served.control, "domain", name="g2")["ds_ready"] is True

        stopped = subprocess.run([sys.executable, "-m", "backend", "guest", "stop", "g2", "--control", served.control],
                                 capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
        assert stopped.returncode == 0, stopped.stderr
        assert "g2: DS domain-shutdown accepted (result 0)" in stopped.stdout
        assert sim.wait(30) == 0  # the simulated guest shut down when asked
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
        assert served.stop() == 0
    assert sockets_in(str(tmp_path / "run")) == []
