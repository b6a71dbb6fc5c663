"""Where the guest kernels and initramfs images come from.

x86_64: scripts/build-x86-guest (Debian packages only; cached, so a second call is quick).
sparc64: the prebuilt copy in ../shared/guests/sparc64 when present, else the output of
scripts/build-sparc64-guest (a cross build of several minutes, cached).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SHARED_SPARC64 = REPO.parent / "shared" / "guests" / "sparc64"
CACHE = REPO / ".cache" / "guests"


@dataclass(frozen=True)
class GuestImage:
    arch: str
    kernel: Path
    initrd: Path


def guest_image(arch: str, build: bool = True) -> GuestImage:
    """The image for `arch`, built from Debian packages first if `build` and none is cached."""
    if arch == "x86_64":
        return _from_dir(arch, _built("build-x86-guest", CACHE / "x86_64" / "current", build), "vmlinuz")
    if arch == "sparc64":
        if (SHARED_SPARC64 / "vmlinux").is_file():
            return _from_dir(arch, SHARED_SPARC64, "vmlinux")
        return _from_dir(arch, _built("build-sparc64-guest", CACHE / "sparc64" / "current", build), "vmlinux")
    raise ConfigError(f"no guest image for architecture {arch!r} (known: x86_64, sparc64)")


def _built(script: str, cached: Path, build: bool) -> Path:
    if not build:
        if not cached.is_dir():
            raise ConfigError(f"no cached guest in {cached}: run scripts/{script}")
        return cached
    done = subprocess.run([str(REPO / "scripts" / script)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"scripts/{script} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def _from_dir(arch: str, folder: Path, kernel_name: str) -> GuestImage:
    image = GuestImage(arch, folder / kernel_name, folder / "initramfs.cpio.gz")
    for path in (image.kernel, image.initrd):
        if not path.is_file():
            raise ConfigError(f"guest image file missing: {path}")
    return image
