"""A guest described as data (sans-I/O): architecture, memory, devices, the command
its /init runs. Renders the QEMU command line and the readconfig groups.

Guest memory is always a shared memfd (memory-backend-memfd, share=on): a vhost-user
back-end maps the guest's RAM from the fd QEMU sends, which private RAM cannot give.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from ..errors import ConfigError
from .arch import ArchProfile
from .devices import Device
from .images import GuestImage
from .options import OptionGroup, command_line

# Linux's COMMAND_LINE_SIZE is 2048 on both x86_64 and sparc64; keep a margin.
MAX_KERNEL_ARGS = 2000
MEMORY_ID = "mem"


def encode_command(script: str) -> str:
    """guest.cmd64= value: the /init decodes it into /tmp/cmd.sh and runs it with sh."""
    return base64.b64encode(script.encode()).decode()


@dataclass
class GuestSpec:
    arch: ArchProfile
    image: GuestImage
    memory_mb: int = 256
    cpus: int = 1
    devices: list[Device] = field(default_factory=list)
    command: str | None = None      # shell script run by /init; None: a shell on the console
    ip: str | None = None           # guest.ip=ADDR/LEN for eth0
    hotplug: bool = False           # give the machine a bus that takes hot-plugged devices
    device_props: dict[str, str | int | bool] = field(default_factory=dict)  # on every PCI device

    def kernel_args(self) -> str:
        args = [f"console={self.arch.console}"]
        if self.ip:
            args.append(f"guest.ip={self.ip}")
        if self.command is not None:
            args.append(f"guest.cmd64={encode_command(self.command)}")
        text = " ".join(args)
        if len(text) > MAX_KERNEL_ARGS:
            raise ConfigError(f"guest command too long for the kernel command line ({len(text)} > {MAX_KERNEL_ARGS} "
                              "bytes): pass data through a disk instead")
        return text

    def machine_groups(self) -> list[OptionGroup]:
        """Memory, CPUs, machine type and boot files: the part every config file shares."""
        if self.memory_mb < 64:
            raise ConfigError(f"guest memory {self.memory_mb} MiB is too small (at least 64)")
        size = f"{self.memory_mb}M"
        machine = self.arch.machine_group(MEMORY_ID)
        boot = (("kernel", str(self.image.kernel)), ("initrd", str(self.image.initrd)),
                ("append", self.kernel_args()))
        return [
            OptionGroup.of("object", MEMORY_ID, {"qom-type": "memory-backend-memfd", "size": size, "share": True}),
            OptionGroup(machine.group, machine.id, machine.props + boot),
            OptionGroup.of("memory", None, {"size": size}),
            OptionGroup.of("smp-opts", None, {"cpus": self.cpus}),
        ]

    def device_groups(self, device: Device) -> list[OptionGroup]:
        return device.backends() + [device.device(self.arch.boot_bus, self.device_props)]

    def groups(self) -> list[OptionGroup]:
        ids = [device.id for device in self.devices]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"duplicate device ids: {ids}")
        groups = self.machine_groups()
        if self.hotplug and self.arch.hotplug_bridge is not None:
            groups.append(self.arch.hotplug_bridge)
        for device in self.devices:
            groups += self.device_groups(device)
        return groups

    def argv(self, qmp_socket: str) -> list[str]:
        """The whole command line: serial console on stdio, QMP as a client of our socket."""
        harness = ["-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio",
                   "-chardev", f"socket,id=qmp,path={qmp_socket}", "-mon", "chardev=qmp,mode=control"]
        return [self.arch.binary, *harness, *command_line(self.groups())]
