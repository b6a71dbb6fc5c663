"""vhost-user back-end processes a guest connects to: ours (`vio vhost-blk`) and
qemu-storage-daemon's vhost-user-blk export (the reference implementation)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

from .errors import QemuError, QemuNotFoundError

READY_TIMEOUT = 20.0


def storage_daemon_argv(socket: str, disk: str, readonly: bool = False) -> list[str]:
    """qemu-storage-daemon exporting a raw file as vhost-user-blk on a Unix socket."""
    if shutil.which("qemu-storage-daemon") is None:
        raise QemuNotFoundError("qemu-storage-daemon not found: install the Debian package qemu-system-common")
    return ["qemu-storage-daemon",
            "--blockdev", f"driver=file,node-name=file0,filename={disk},cache.direct=off",
            "--export", f"type=vhost-user-blk,id=export0,node-name=file0,addr.type=unix,addr.path={socket},"
                        f"writable={'off' if readonly else 'on'}"]


def vio_vhost_blk_argv(socket: str, disk: str, readonly: bool = False) -> list[str]:
    """Our back-end (backend/vhost) serving a disk file."""
    return [sys.executable, "-m", "backend", "vhost-blk", "--socket", socket, "--disk", disk] + (
        ["--ro"] if readonly else [])


class BackendProcess:
    """A back-end process that is ready once its listening socket exists.

    `async with BackendProcess(argv, socket):` - stopped with SIGTERM (SIGKILL after 10 s).
    Its stderr goes to SOCKET.log (a pipe nobody reads could fill up and stall it)."""

    def __init__(self, argv: list[str], socket: str) -> None:
        self.argv = argv
        self.socket = Path(socket)
        self.log = Path(f"{socket}.log")
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> BackendProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        repo = Path(__file__).resolve().parents[2]
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, stdout=asyncio.subprocess.DEVNULL, stderr=log,
                cwd=repo, env=os.environ | {"PYTHONPATH": str(repo)})
        deadline = asyncio.get_running_loop().time() + READY_TIMEOUT
        while not self.socket.exists():
            if self.process.returncode is not None or asyncio.get_running_loop().time() > deadline:
                await self.stop()
                error = self.log.read_text(errors="replace").strip()[-2000:]
                raise QemuError(f"back-end {' '.join(self.argv)} did not listen on {self.socket}: {error}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 10.0)
        except asyncio.TimeoutError:
            self.process.kill()
            await self.process.wait()
