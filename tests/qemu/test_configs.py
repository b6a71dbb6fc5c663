"""qemu-configs/ stays in step with backend/qemu, and QEMU boots from the files."""

import asyncio
import subprocess
from pathlib import Path

import pytest

from backend.qemu import BackendProcess, guest_image, parse_readconfig, storage_daemon_argv
from backend.qemu.configs import BLK_SOCKET, config_files

from .helpers import make_disk

CONFIGS = Path(__file__).resolve().parents[2] / "qemu-configs"


@pytest.mark.parametrize("name", sorted(config_files()))
def test_config_file_matches_generated_options(name):
    path = CONFIGS / name
    assert path.is_file(), f"{path} missing: run python -m backend.qemu.configs qemu-configs"
    assert parse_readconfig(path.read_text(), str(path)) == config_files()[name][1], (
        f"{name} drifted from backend/qemu: run python -m backend.qemu.configs qemu-configs")


def test_readme_names_every_config_file():
    readme = (CONFIGS / "README.md").read_text()
    assert all(name in readme for name in config_files())


@pytest.mark.slow
def test_x86_guest_boots_from_the_config_files_with_a_vhost_user_disk(tmp_path):
    """The README's command line, run as written (paths relative to the working directory)."""
    image = guest_image("x86_64")
    (tmp_path / "vmlinuz").symlink_to(image.kernel)
    (tmp_path / "initramfs.cpio.gz").symlink_to(image.initrd)
    make_disk(tmp_path / "disk.img")

    async def boot() -> str:
        socket = str(tmp_path / BLK_SOCKET)
        async with BackendProcess(storage_daemon_argv(socket, str(tmp_path / "disk.img")), socket):
            qemu = await asyncio.create_subprocess_exec(
                "qemu-system-x86_64", "-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio",
                "-readconfig", str(CONFIGS / "x86_64-guest.cfg"),
                "-readconfig", str(CONFIGS / "x86_64-vhost-user-blk.cfg"),
                cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                while line := await asyncio.wait_for(qemu.stdout.readline(), 120):
                    if line.startswith(b"GUEST-READY"):
                        return line.decode()
                return ""
            finally:
                qemu.kill()
                await qemu.wait()

    ready = asyncio.run(boot())
    assert ready.split()[1:] == ["x86_64", "vda"]
