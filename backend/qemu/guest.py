"""A running QEMU guest: the process, its QMP session and its serial console.

QEMU connects to our QMP socket as a client (we listen first), so there is no polling
for a socket file; if QEMU dies first, its stderr is the error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path

from qemu.qmp import EventListener, ExecuteError, QMPClient

from .devices import Device, VhostUserBlk, VhostUserNet
from .console import Console
from .errors import GuestTimeoutError, QemuError, QemuNotFoundError
from .machine import GuestSpec

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
UNPLUG_TIMEOUT = 60.0


class Guest:
    """Use as `async with Guest(spec) as guest:`; leaving the block stops QEMU for sure."""

    def __init__(self, spec: GuestSpec, name: str | None = None) -> None:
        self.spec = spec
        self.name = name or f"{spec.arch.name}-guest"
        self.process: asyncio.subprocess.Process | None = None
        self.console: Console | None = None
        self.qmp = QMPClient(self.name)
        self._stderr = b""
        self._stderr_task: asyncio.Task | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="vio-qemu-")
        self.plugged: dict[str, tuple[Device, int | None]] = {}  # id -> device, PCI slot

    async def __aenter__(self) -> Guest:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def stderr(self) -> str:
        return self._stderr.decode(errors="replace")

    async def start(self) -> None:
        self.spec = _with_vhost_user_qemu(self.spec)
        binary = self.spec.arch.binary
        if shutil.which(binary) is None:
            raise QemuNotFoundError(f"{binary} not found: install the Debian package "
                                    f"{self.spec.arch.debian_package} (scripts/setup-env does)")
        qmp_socket = str(Path(self._dir.name) / "qmp.sock")
        await self.qmp.start_server(qmp_socket)
        argv = self.spec.argv(qmp_socket)
        log.info("starting %s: %s", self.name, " ".join(argv))
        self.process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self._stderr_task = asyncio.create_task(self._collect_stderr())
        self.console = Console(self.process.stdout, self.process.stdin, self.name)
        accept = asyncio.create_task(self.qmp.accept())
        exited = asyncio.create_task(self.process.wait())
        done, _ = await asyncio.wait({accept, exited}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if accept not in done:
            accept.cancel()
            exited.cancel()
            await self._kill()
            await self._stderr_task
            reason = "exited" if exited in done else f"did not connect to QMP within {START_TIMEOUT:.0f} s"
            raise QemuError(f"{self.name}: QEMU {reason}:\n{self.stderr.strip()}\ncommand: {' '.join(argv)}")
        exited.cancel()
        accept.result()

    async def _collect_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while data := await self.process.stderr.read(4096):
            self._stderr += data

    async def expect(self, pattern: str, timeout: float) -> str:
        """Wait for a console line (regex); returns the first group, or the whole match."""
        assert self.console is not None
        match = await self.console.expect(pattern, timeout)
        return match.group(1) if match.groups() else match.group(0)

    async def ready(self, timeout: float = 120.0) -> list[str]:
        """Wait for the /init's GUEST-READY line; returns the guest's block devices."""
        return (await self.expect(r"GUEST-READY \S+ ?(.*)$", timeout)).split()

    async def command_exit(self, timeout: float = 120.0) -> int:
        """Wait for the guest.cmd64 script to finish; returns its exit status."""
        return int(await self.expect(r"GUEST-CMD-EXIT (\d+)", timeout))

    async def run(self, script: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run a script in the console shell of a guest started without a command."""
        assert self.console is not None
        return await self.console.run(script, timeout)

    async def execute(self, command: str, arguments: dict | None = None) -> object:
        try:
            return await self.qmp.execute(command, arguments)
        except ExecuteError as error:
            raise QemuError(f"{self.name}: QMP {command} {arguments or {}} failed: {error}") from None

    async def plug(self, device: Device) -> None:
        """Hot-plug: create the device's backends, then the device on the hot-plug bus."""
        if device.id in self.plugged:
            raise QemuError(f"{self.name}: a device {device.id!r} is already plugged")
        for command, arguments in device.plug_backends():
            await self.execute(command, arguments)
        extra = dict(self.spec.device_props)
        slot = self._free_slot()
        if slot is not None:
            extra["addr"] = f"{slot:#x}.0"
        group = device.device(self.spec.arch.hotplug_bus, extra)
        await self.execute("device_add", group.as_qmp())
        self.plugged[device.id] = (device, slot)

    def _free_slot(self) -> int | None:
        first = self.spec.arch.hotplug_first_slot
        if first is None:
            return None
        used = {slot for _, slot in self.plugged.values()}
        return next(slot for slot in range(first, 32) if slot not in used)

    async def unplug(self, device: Device, timeout: float = UNPLUG_TIMEOUT) -> None:
        """device_del asks the guest to let go; QEMU says DEVICE_DELETED when it did."""
        with self.qmp.listener("DEVICE_DELETED") as listener:
            await self.execute("device_del", {"id": device.id})
            await self._deleted(listener, device.id, timeout)
        for command, arguments in device.after_unplug():
            await self.execute(command, arguments)
        self.plugged.pop(device.id, None)

    async def _deleted(self, listener: EventListener, device_id: str, timeout: float) -> None:
        async def wait() -> None:
            async for event in listener:
                if event.get("data", {}).get("device") == device_id:
                    return

        try:
            await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise GuestTimeoutError(f"{self.name}: no DEVICE_DELETED for {device_id!r} within {timeout:.0f} s "
                                    "(the guest did not release it)") from None

    async def wait_exit(self, timeout: float) -> int:
        """Wait for QEMU to end on its own (the guest powered off); returns its exit code."""
        assert self.process is not None
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            tail = self.console.log.tail() if self.console else ""
            raise GuestTimeoutError(f"{self.name}: QEMU still running after {timeout:.0f} s; "
                                    f"last console lines:\n{tail}") from None

    async def power_down(self, timeout: float = 30.0) -> bool:
        """Ask the guest to power off: the power button (system_powerdown) where the machine
        has one, else `poweroff -f` typed into its console shell; `quit` if it does not.
        Returns True when the guest powered itself off."""
        assert self.process is not None and self.console is not None
        if self.process.returncode is not None:
            return True
        if self.spec.arch.power_button:
            await self.execute("system_powerdown")
        else:
            await self.console.type("sync; poweroff -f\n")
        try:
            await self.wait_exit(timeout)
            return True
        except GuestTimeoutError:
            log.warning("%s: did not power off within %.0f s; quitting QEMU", self.name, timeout)
            await self.quit()
            return False

    async def quit(self) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            try:
                await self.qmp.execute("quit")
            except Exception as error:  # QEMU may close the socket before answering
                log.debug("%s: quit: %s", self.name, error)
            try:
                await asyncio.wait_for(self.process.wait(), 10.0)
            except asyncio.TimeoutError:
                await self._kill()

    async def _kill(self) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def stop(self) -> None:
        """Make sure QEMU is gone and everything we opened is closed."""
        if self.process is not None:
            if self.process.returncode is None and self.qmp.runstate.name == "RUNNING":
                await self.quit()
            await self._kill()
            if self._stderr_task is not None:
                await self._stderr_task
            if self.console is not None:
                await self.console.closed()
        try:
            await self.qmp.disconnect()
        except EOFError:  # QEMU closed QMP first (it exited); qemu.qmp re-raises that here
            pass
        self._dir.cleanup()


def _with_vhost_user_qemu(spec: GuestSpec) -> GuestSpec:
    """sun4u guests started with vhost-user devices need the QEMU built by scripts/build-qemu-sparc64:
    stock 7.2 never shares sun4u RAM (docs/sparc64-vhost-user.md). (Hot-plugging one into a guest
    started without: give that guest the patched binary in its ArchProfile.)"""
    from .managed import patched_sparc64_qemu

    vhost_user = any(isinstance(device, (VhostUserBlk, VhostUserNet)) for device in spec.devices)
    if spec.arch.name != "sparc64" or not vhost_user or spec.arch.binary != "qemu-system-sparc64":
        return spec
    return dataclasses.replace(spec, arch=dataclasses.replace(spec.arch, binary=patched_sparc64_qemu()))
