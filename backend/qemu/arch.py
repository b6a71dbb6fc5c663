"""What differs between the guest architectures we boot: QEMU binary, machine, PCI buses.

Facts measured with QEMU 7.2 (docs/qemu.md):
- x86_64 runs under TCG (KVM guests hang on this host); the `pc` machine's root bus
  pci.0 takes ACPI hot-plug, which Debian's kernel handles (HOTPLUG_PCI_ACPI=y).
- sun4u has no free slot on its default bus: PCI devices go on the simba bridge
  `pciB`, which refuses hot-plug ("Bus 'pciB' does not support hotplugging"), so a
  `pci-bridge` (SHPC) placed on pciB at start is where hot-plugged devices go.
- system_powerdown does nothing on sun4u (no powerdown notifier in the machine).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .options import OptionGroup


@dataclass(frozen=True)
class ArchProfile:
    name: str                     # uname -m in the guest
    binary: str                   # QEMU system emulator
    debian_package: str           # where the binary comes from
    machine: tuple[tuple[str, str], ...]
    boot_bus: str | None          # bus for devices present at start (None: QEMU's default)
    hotplug_bus: str              # bus for devices added on a running guest
    hotplug_bridge: OptionGroup | None  # a device that creates hotplug_bus, if the machine lacks one
    hotplug_first_slot: int | None  # pick addresses from here (None: QEMU picks)
    console: str                  # kernel console= argument
    power_button: bool            # system_powerdown reaches the guest

    def machine_group(self, memory_backend: str | None) -> OptionGroup:
        props = self.machine + ((("memory-backend", memory_backend),) if memory_backend else ())
        return OptionGroup("machine", None, props)


X86_64 = ArchProfile(
    name="x86_64",
    binary="qemu-system-x86_64",
    debian_package="qemu-system-x86",
    machine=(("type", "pc"), ("accel", "tcg")),
    boot_bus=None,
    hotplug_bus="pci.0",
    hotplug_bridge=None,
    hotplug_first_slot=None,
    console="ttyS0",
    power_button=True,  # ACPI; our /init powers off on its input event
)

SPARC64 = ArchProfile(
    name="sparc64",
    binary="qemu-system-sparc64",
    debian_package="qemu-system-sparc",
    machine=(("type", "sun4u"), ("accel", "tcg")),
    boot_bus="pciB",
    hotplug_bus="hotplug0",
    hotplug_bridge=OptionGroup.of(
        "device", "hotplug0", {"driver": "pci-bridge", "bus": "pciB", "chassis_nr": 1, "shpc": True}
    ),
    hotplug_first_slot=1,  # QEMU's SHPC takes slots 1..31, and would pick slot 0 itself
    console="ttyS0",
    power_button=False,  # QEMU's sun4u power device only takes the guest's own power-off write
)

ARCHES = {profile.name: profile for profile in (X86_64, SPARC64)}


def arch_profile(name: str) -> ArchProfile:
    try:
        return ARCHES[name]
    except KeyError:
        raise ConfigError(f"unknown guest architecture {name!r} (known: {', '.join(ARCHES)})") from None
