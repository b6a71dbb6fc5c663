"""`vio demo`: the service domain serving a real sparc64 guest, end to end, with progress for every step.

1. the sparc64 guest (prebuilt, or built from Debian packages) and the patched
   qemu-system-sparc64 (scripts/build-qemu-sparc64: stock QEMU 7.2 cannot give
   sun4u RAM to a vhost-user back-end, docs/sparc64-vhost-user.md);
2. `vio serve --default`: a 64 MiB disk (vhost-user-blk) and a NIC
   (vhost-user-net) for domain ldg1 on switch vsw0, whose tap uplink is on
   bridge vio-br0, which gets the host's demo address;
3. `vio guest start ldg1`: the guest writes a line to its disk and pings the
   host through the switch; the host reads the line back from the image;
4. `vio guest stop`, `vio stop`: the tap, the bridge and the sockets are gone.

Every check is reported as it is: a failed step says what failed and the demo
exits non-zero after cleaning up.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .qemu.images import REPO

HOST_IP, GUEST_IP, PREFIX = "198.18.99.1", "198.18.99.2", 24
DOMAIN = "ldg1"
BRIDGE, TAP = "vio-br0", "vio-tap0"
MARKER = "hello from the sparc64 guest over vhost-user-blk"
#: What the guest runs: a line onto its disk (flushed), its view of the devices, a ping of the host.
GUEST_SCRIPT = f"""\
printf '%s\\n' "{MARKER} ($(uname -m))" | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null && echo DISK-WRITTEN
cat /sys/class/net/eth0/address 2>/dev/null
ping -c 3 -W 5 {HOST_IP} && echo PING-OK || echo PING-FAILED
"""


class Step:
    """`with Step("text"):` prints the step, then how long it took (or that it failed)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __enter__(self) -> Step:
        print(f"==> {self.text}", flush=True)
        self.started = time.monotonic()
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        took = time.monotonic() - self.started
        print(f"    {'done' if kind is None else 'FAILED'} ({took:.1f} s)", flush=True)


def vio(*args: str) -> list[str]:
    return [sys.executable, "-m", "backend", *args]


def run_streamed(argv: list[str], prefix: str, keep: Callable[[str], bool] = lambda line: True) -> str:
    """Run argv, echoing its output lines (those `keep` accepts); returns the last line; raises on failure."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    assert process.stdout is not None
    last = ""
    seen = []
    for line in process.stdout:
        line = line.rstrip()
        last = line or last
        seen.append(line)
        if keep(line):
            print(f"    {prefix}{line}", flush=True)
    if process.wait() != 0:
        raise RuntimeError(f"{' '.join(argv[3:6])} failed (exit {process.returncode}): " + "\n".join(seen[-20:]))
    return last


def main() -> int:
    if os.geteuid() != 0:
        print("vio demo: the demo creates a tap device and a bridge: run it as root (sudo scripts/demo)", file=sys.stderr)
        return 1
    for tool in ("ip",):
        if shutil.which(tool) is None:
            print(f"vio demo: {tool} is missing: install iproute2 (scripts/setup-env does)", file=sys.stderr)
            return 1
    state = tempfile.mkdtemp(prefix="vio-demo-")
    control = os.path.join(state, "control.sock")
    daemon: subprocess.Popen | None = None
    failures: list[str] = []
    try:
        with Step("sparc64 guest kernel and initramfs (prebuilt, or built from Debian packages)"):
            from .qemu.images import guest_image

            image = guest_image("sparc64")
            print(f"    {image.kernel}")
        with Step("qemu-system-sparc64 with shareable sun4u RAM (scripts/build-qemu-sparc64; ~10 min the first time)"):
            qemu = run_streamed([str(REPO / "scripts" / "build-qemu-sparc64")], "")
        with Step(f"vio serve --default (state in {state})"):
            log = open(os.path.join(state, "daemon.log"), "w")  # noqa: SIM115 - the daemon's stderr, kept to the end
            daemon = subprocess.Popen(vio("serve", "--default", "--state-dir", state), stderr=log, cwd=REPO)
            wait_for_daemon(daemon, control, os.path.join(state, "daemon.log"))
            subprocess.run(["ip", "addr", "add", f"{HOST_IP}/{PREFIX}", "dev", BRIDGE], check=True)
            subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
            print(f"    switch vsw0: uplink {TAP} on bridge {BRIDGE} ({HOST_IP}/{PREFIX} on the host)")
            for device in domain(control)["devices"]:
                print(f"    {device['kind']} {device['name']}: {device['socket']}")
        start = vio("guest", "start", DOMAIN, "--arch", "sparc64", "--control", control, "--qemu", qemu,
                    "--ip", f"{GUEST_IP}/{PREFIX}", "--command", GUEST_SCRIPT, "--wait", "GUEST-CMD-EXIT", "--timeout", "240")
        guest_output = lambda line: line.strip() not in ("", "[ldg1]") and not line.lstrip().startswith("[ldg1] [ ")  # noqa: E731 - the guest's lines, not its kernel's
        with Step(f"boot the sparc64 guest on those sockets; it writes to its disk and pings {HOST_IP}"):
            run_streamed(start, "", keep=guest_output)
        lines = Path(state, "guests", DOMAIN, "console.log").read_text(errors="replace")
        if "PING-OK" not in lines and not failures:
            failures.append("the guest did not ping the host through vsw0 (see the console above)")
        with Step("read the guest's line back from the disk image on the host"):
            with open(os.path.join(state, "ldg1-disk0.img"), "rb") as f:
                first = f.read(512).rstrip(b"\0").decode(errors="replace").strip()  # one line, padded by dd conv=sync
            print(f"    sector 0: {first!r}")
            if MARKER not in first:
                failures.append("the disk image does not hold the guest's line")
        with Step("vio status"):
            status = subprocess.run(vio("status", "--control", control), capture_output=True, text=True, cwd=REPO)
            for line in status.stdout.splitlines():
                print(f"    {line}")
        with Step("vio guest stop (if it has not powered off by itself)"):
            run_streamed(vio("guest", "stop", DOMAIN, "--control", control), "")
    except Exception as exc:  # the demo reports and cleans up whatever failed
        failures.append(str(exc))
    finally:
        if daemon is not None:
            # Stop first, print after: with stdout gone (a closed pipe) the cleanup must still happen.
            started = time.monotonic()
            problems, left = stop_daemon(daemon, control, state)
            failures += problems
            with contextlib.suppress(OSError):
                print("==> vio stop: the daemon removes its tap, bridge and sockets", flush=True)
                print(f"    left behind: {', '.join(left) or 'nothing'}")
                print(f"    done ({time.monotonic() - started:.1f} s)", flush=True)
        shutil.rmtree(state, ignore_errors=True)
    if failures:
        print("\nDEMO FAILED:\n" + "\n".join(f"  - {f}" for f in failures))
        return 1
    print("\nDemo OK: a sparc64 guest wrote to a vhost-user disk (checked on the host) and pinged the host "
          "through the vSwitch; everything was shut down cleanly.")
    return 0


def stop_daemon(daemon: subprocess.Popen, control: str, state: str) -> tuple[list[str], list[str]]:
    """Ask the daemon to stop (it removes its tap, bridge and sockets); (problems, what is left)."""
    problems = []
    subprocess.run(vio("stop", "--control", control), capture_output=True, cwd=REPO)
    try:
        daemon.wait(30)
    except subprocess.TimeoutExpired:
        daemon.kill()
        problems.append("the daemon did not stop within 30 s")
    left = [name for name in (TAP, BRIDGE) if Path("/sys/class/net", name).exists()]
    left += [p.name for p in Path(state).glob("*.sock")]
    if left:
        problems.append(f"left behind: {left}")
    return problems, left


def wait_for_daemon(daemon: subprocess.Popen, control: str, log: str, timeout: float = 30.0) -> None:
    from .control import ControlError, request

    deadline = time.monotonic() + timeout
    while True:
        if daemon.poll() is not None:
            raise RuntimeError(f"vio serve exited ({daemon.returncode}): {Path(log).read_text()[-2000:]}")
        try:
            request(control, "status")
            return
        except ControlError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def domain(control: str) -> dict:
    from .control import request

    return json.loads(json.dumps(request(control, "domain", name=DOMAIN)))
