"""Start and control QEMU guests (x86_64 and sparc64) over QMP."""

from .backends import BackendProcess, storage_daemon_argv, vio_vhost_blk_argv
from .arch import ARCHES, SPARC64, X86_64, ArchProfile, arch_profile
from .devices import Device, FileDisk, TapNet, VhostUserBlk, VhostUserNet
from .errors import GuestTimeoutError, QemuError, QemuNotFoundError
from .guest import Guest
from .images import GuestImage, guest_image
from .machine import GuestSpec
from .options import OptionGroup, command_line, parse_readconfig, render_readconfig

__all__ = [
    "BackendProcess", "storage_daemon_argv", "vio_vhost_blk_argv",
    "ARCHES", "SPARC64", "X86_64", "ArchProfile", "arch_profile",
    "Device", "FileDisk", "TapNet", "VhostUserBlk", "VhostUserNet",
    "GuestTimeoutError", "QemuError", "QemuNotFoundError",
    "Guest", "GuestImage", "guest_image", "GuestSpec",
    "OptionGroup", "command_line", "parse_readconfig", "render_readconfig",
]
