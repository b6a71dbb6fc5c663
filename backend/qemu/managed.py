"""Guests that outlive the command that started them: `vio guest start/stop/attach/detach`.

QEMU runs daemonized; everything needed to find it again lives in one
directory per domain under the daemon's state directory: the QMP socket
(QEMU listens), the serial console socket (QEMU listens, and logs every byte
to console.log), the pid file and guest.json (architecture, binary, which
PCI slots hot-plugged devices took).

Guest devices come from the daemon's answer to `domain` (backend/daemon/
guests.py): each vhost_blk becomes a vhost-user-blk-pci, each vhost_net a
virtio-net-pci on a vhost-user netdev, named after the daemon's service, so
`vio guest detach DOMAIN NAME` means the same device on both sides.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .arch import ArchProfile, arch_profile
from .devices import Device, VhostUserBlk, VhostUserNet
from .errors import GuestTimeoutError, QemuError, QemuNotFoundError
from .images import REPO, GuestImage
from .machine import GuestSpec
from .options import command_line

#: Where scripts/build-qemu-sparc64 leaves its binary (one directory per source version and script).
PATCHED_SPARC64 = REPO / ".cache" / "qemu-sparc64"
ENV_SPARC64 = "VIO_QEMU_SPARC64"
UNPLUG_TIMEOUT = 30.0
#: QEMU's words for a binary configured without the vhost_net meson option (`-netdev help` still lists
#: vhost-user there: it checks CONFIG_VHOST_USER, the netdev needs CONFIG_VHOST_NET_USER).
NO_VHOST_NET = "network backend 'vhost-user' is not compiled into this binary"
NO_VHOST_NET_HINT = ("\nThis QEMU was configured without vhost-user networking (meson option vhost_net, which "
                     "--without-default-features turns off): rebuild it with --enable-vhost-net, or start the guest "
                     "without its NICs (vio guest start --without NAME).")


def patched_sparc64_qemu() -> str:
    """The qemu-system-sparc64 whose sun4u RAM can be a shared memfd (needed for any vhost-user device)."""
    explicit = os.environ.get(ENV_SPARC64)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise QemuNotFoundError(f"{ENV_SPARC64}={explicit} is not an executable file")
        return explicit
    built = sorted(PATCHED_SPARC64.glob("*/qemu-system-sparc64"), key=lambda p: p.stat().st_mtime)
    if not built:
        raise QemuNotFoundError(
            "stock qemu-system-sparc64 (QEMU 7.2) cannot give sun4u guest RAM to a vhost-user back-end; "
            "build the patched one with scripts/build-qemu-sparc64 (about 10 minutes, cached), "
            f"or point {ENV_SPARC64} at one (docs/sparc64-vhost-user.md says why)")
    return str(built[-1])


def guest_devices(domain: dict[str, Any]) -> tuple[list[Device], list[str]]:
    """QEMU devices for the daemon's devices of a domain, and notes on those QEMU has no device for."""
    devices: list[Device] = []
    notes = []
    for entry in domain["devices"]:
        device = to_device(entry)
        if device is None:
            notes.append(f"{entry['kind']} {entry['name']} ({entry['socket']}) is an LDC device for sun4v guests "
                         "(vio guest-sim --socket ...); QEMU has no device model for it")
        else:
            devices.append(device)
    return devices, notes


def to_device(entry: dict[str, Any]) -> VhostUserBlk | VhostUserNet | None:
    if entry["kind"] == "vhost_blk":
        return VhostUserBlk(entry["name"], entry["socket"], entry["queues"])
    if entry["kind"] == "vhost_net":
        return VhostUserNet(entry["name"], entry["socket"], entry["mac"], vectors=0)
    return None


@dataclass(frozen=True)
class GuestFiles:
    """The run-time files of one domain's QEMU."""

    folder: Path

    @classmethod
    def of(cls, state_dir: str, domain: str) -> GuestFiles:
        return cls(Path(state_dir) / "guests" / domain)

    qmp = property(lambda self: self.folder / "qmp.sock")
    console = property(lambda self: self.folder / "console.sock")
    log = property(lambda self: self.folder / "console.log")
    pidfile = property(lambda self: self.folder / "qemu.pid")
    meta = property(lambda self: self.folder / "guest.json")

    def pid(self) -> int | None:
        """QEMU's pid while it runs, else None."""
        try:
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def read_meta(self) -> dict[str, Any]:
        try:
            return json.loads(self.meta.read_text())
        except (OSError, ValueError):
            raise ConfigError(f"no guest started by vio guest start in {self.folder}") from None

    def write_meta(self, meta: dict[str, Any]) -> None:
        tmp = self.meta.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(self.meta)

    def clean(self) -> None:
        for path in (self.qmp, self.console, self.pidfile, self.meta):
            path.unlink(missing_ok=True)


def launch(files: GuestFiles, spec: GuestSpec) -> int:
    """Start QEMU daemonized for `spec`; returns its pid. QEMU's own complaint is the error if it fails."""
    if files.pid() is not None:
        raise QemuError(f"a guest already runs from {files.folder} (pid {files.pid()}): vio guest stop it first")
    files.folder.mkdir(parents=True, exist_ok=True)
    files.clean()
    files.log.unlink(missing_ok=True)
    argv = [spec.arch.binary, "-nodefaults", "-display", "none", "-no-reboot", "-daemonize",
            "-pidfile", str(files.pidfile), "-qmp", f"unix:{files.qmp},server=on,wait=off",
            "-chardev", f"socket,id=console,path={files.console},server=on,wait=off,logfile={files.log}",
            "-serial", "chardev:console", *command_line(spec.groups())]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise QemuNotFoundError(f"{spec.arch.binary} not found: install the Debian package "
                                f"{spec.arch.debian_package} (scripts/setup-env does)") from None
    pid = files.pid()
    if done.returncode != 0 or pid is None:
        files.clean()
        hint = NO_VHOST_NET_HINT if NO_VHOST_NET in done.stderr else ""
        raise QemuError(f"QEMU did not start (exit {done.returncode}): {done.stderr.strip()}{hint}\ncommand: {' '.join(argv)}")
    files.write_meta({"arch": spec.arch.name, "binary": spec.arch.binary, "pid": pid, "plugged": {},
                      "devices": [d.id for d in spec.devices], "argv": argv})
    return pid


def build_spec(arch_name: str, image: GuestImage, devices: list[Device], *, memory_mb: int, ip: str | None,
               command: str | None, binary: str | None) -> GuestSpec:
    """A guest with a hot-plug bus; sparc64 with vhost-user devices runs on the patched QEMU."""
    arch: ArchProfile = arch_profile(arch_name)
    if binary is None and arch.name == "sparc64":
        binary = patched_sparc64_qemu()
    if binary is not None:
        arch = dataclasses.replace(arch, binary=binary)
    return GuestSpec(arch, image, memory_mb=memory_mb, devices=devices, command=command, ip=ip, hotplug=True)


def follow(files: GuestFiles, pattern: str, timeout: float, echo: Any = None) -> re.Match[str]:
    """Wait for a console line matching `pattern` (lines go to `echo` as they come)."""
    wanted = re.compile(pattern)
    deadline = time.monotonic() + timeout
    seen = 0
    lines: list[str] = []
    while True:
        try:
            text = files.log.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        complete = text[:text.rfind("\n") + 1]
        for line in complete[seen:].splitlines():
            line = line.rstrip("\r")
            lines.append(line)
            if echo is not None:
                echo(line)
            if match := wanted.search(line):
                return match
        seen = len(complete)
        if files.pid() is None:
            raise QemuError(f"the guest ended before printing /{pattern}/; last console lines:\n" + "\n".join(lines[-15:]))
        if time.monotonic() > deadline:
            raise GuestTimeoutError(f"no console line matching /{pattern}/ within {timeout:.0f} s; last lines:\n"
                                    + "\n".join(lines[-15:]))
        time.sleep(0.2)


async def qmp_session(files: GuestFiles) -> Any:
    from qemu.qmp import QMPClient

    client = QMPClient(files.folder.name)
    try:
        await client.connect(str(files.qmp))
    except Exception as exc:
        raise QemuError(f"cannot reach the guest's QMP socket {files.qmp}: {exc} (is it running?)") from None
    return client


async def _execute(client: Any, command: str, arguments: dict | None = None) -> Any:
    from qemu.qmp import ExecuteError

    try:
        return await client.execute(command, arguments)
    except ExecuteError as exc:
        raise QemuError(f"QMP {command} {arguments or {}} failed: {exc}") from None


async def plug(files: GuestFiles, device: Device) -> int | None:
    """Hot-plug `device` (its back-end is already served); returns the PCI slot chosen."""
    meta = files.read_meta()
    arch = arch_profile(meta["arch"])
    extra: dict[str, str | int | bool] = {}
    slot = None
    if arch.hotplug_first_slot is not None:
        used = set(meta["plugged"].values())
        slot = next(s for s in range(arch.hotplug_first_slot, 32) if s not in used)
        extra["addr"] = f"{slot:#x}.0"
    client = await qmp_session(files)
    try:
        for command, arguments in device.plug_backends():
            await _execute(client, command, arguments)
        try:
            await _execute(client, "device_add", device.device(arch.hotplug_bus, extra).as_qmp())
        except QemuError:
            for command, arguments in device.after_unplug():
                await _execute(client, command, arguments)
            raise
    finally:
        await client.disconnect()
    meta["plugged"][device.id] = slot
    files.write_meta(meta)
    return slot


async def unplug(files: GuestFiles, device: Device, timeout: float = UNPLUG_TIMEOUT) -> None:
    """device_del, wait until the guest let go (DEVICE_DELETED), then remove the chardev/netdev."""
    import asyncio

    meta = files.read_meta()
    client = await qmp_session(files)
    try:
        with client.listener("DEVICE_DELETED") as listener:
            await _execute(client, "device_del", {"id": device.id})

            async def deleted() -> None:
                async for event in listener:
                    if event.get("data", {}).get("device") == device.id:
                        return

            try:
                await asyncio.wait_for(deleted(), timeout)
            except TimeoutError:
                raise GuestTimeoutError(f"the guest did not release {device.id!r} within {timeout:.0f} s") from None
        for command, arguments in device.after_unplug():
            await _execute(client, command, arguments)
    finally:
        await client.disconnect()
    meta["plugged"].pop(device.id, None)
    files.write_meta(meta)


def type_on_console(files: GuestFiles, text: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(files.console))
        sock.sendall(text.encode())
        time.sleep(0.5)  # let QEMU read it before we hang up


async def power_button(files: GuestFiles) -> None:
    client = await qmp_session(files)
    try:
        await _execute(client, "system_powerdown")
    finally:
        await client.disconnect()


async def quit_qemu(files: GuestFiles) -> None:
    client = await qmp_session(files)
    try:
        await client.execute("quit")
    except Exception:  # QEMU may hang up before answering
        pass
    finally:
        try:
            await client.disconnect()
        except Exception:
            pass


def wait_gone(files: GuestFiles, pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
