"""Guest devices, described once: the option groups that create them when QEMU starts
and the QMP commands that plug them into (and out of) a running guest.

Every device is a PCI function on the bus the caller picks. Names of the QEMU objects
behind a device derive from its id: `<id>-drive`, `<id>-sock` (chardev), `<id>-net`.
Unplugging is always: device_del, wait for DEVICE_DELETED, then `after_unplug()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .options import OptionGroup

QmpCommand = tuple[str, dict]


class Device(Protocol):
    id: str

    def backends(self) -> list[OptionGroup]:
        """What the device needs before it exists (drive, chardev, netdev), as start options."""

    def device(self, bus: str | None, extra: dict[str, str | int | bool]) -> OptionGroup:
        """The PCI device itself."""

    def plug_backends(self) -> list[QmpCommand]:
        """QMP commands that create backends() on a running QEMU."""

    def after_unplug(self) -> list[QmpCommand]:
        """QMP commands that remove backends() once the device is gone."""


def _pci_device(driver: str, id: str, bus: str | None, props: dict, extra: dict) -> OptionGroup:
    return OptionGroup.of("device", id, {"driver": driver, "bus": bus} | props | extra)


def _unix_chardev(id: str, path: str, reconnect: int | None = None) -> OptionGroup:
    return OptionGroup.of("chardev", id, {"backend": "socket", "path": path, "reconnect": reconnect})


def _chardev_add(id: str, path: str) -> QmpCommand:
    socket = {"addr": {"type": "unix", "data": {"path": path}}, "server": False}
    return ("chardev-add", {"id": id, "backend": {"type": "socket", "data": socket}})


@dataclass(frozen=True)
class FileDisk:
    """virtio-blk served by QEMU itself from a raw file (the reference the tests compare with)."""

    id: str
    path: str
    readonly: bool = False

    @property
    def node(self) -> str:
        return f"{self.id}-drive"

    def backends(self) -> list[OptionGroup]:
        return [OptionGroup.of("drive", self.node, {"file": self.path, "if": "none", "format": "raw",
                                                    "readonly": self.readonly or None})]

    def device(self, bus: str | None, extra: dict) -> OptionGroup:
        return _pci_device("virtio-blk-pci", self.id, bus, {"drive": self.node}, extra)

    def plug_backends(self) -> list[QmpCommand]:
        file = {"driver": "file", "filename": self.path}
        return [("blockdev-add", {"driver": "raw", "node-name": self.node, "file": file, "read-only": self.readonly})]

    def after_unplug(self) -> list[QmpCommand]:
        return [("blockdev-del", {"node-name": self.node})]


@dataclass(frozen=True)
class VhostUserBlk:
    """virtio-blk served by a vhost-user back-end listening on `socket`."""

    id: str
    socket: str
    num_queues: int = 1
    #: seconds between QEMU's attempts to reconnect to a back-end that went away (None: never);
    #: with inflight tracking the device resumes where the dead back-end left it
    reconnect: int | None = None

    @property
    def chardev(self) -> str:
        return f"{self.id}-sock"

    def backends(self) -> list[OptionGroup]:
        return [_unix_chardev(self.chardev, self.socket, self.reconnect)]

    def device(self, bus: str | None, extra: dict) -> OptionGroup:
        return _pci_device("vhost-user-blk-pci", self.id, bus,
                           {"chardev": self.chardev, "num-queues": self.num_queues}, extra)

    def plug_backends(self) -> list[QmpCommand]:
        return [_chardev_add(self.chardev, self.socket)]

    def after_unplug(self) -> list[QmpCommand]:
        return [("chardev-remove", {"id": self.chardev})]


@dataclass(frozen=True)
class VhostUserNet:
    """virtio-net served by a vhost-user back-end listening on `socket`."""

    id: str
    socket: str
    mac: str
    #: MSI-X vectors (None: QEMU's default). 0 = INTx: QEMU 7.2 under TCG crashes in its
    #: MSI-X vector-notifier path when a vhost-user virtio-net starts (docs/vhost-net.md).
    vectors: int | None = None

    @property
    def chardev(self) -> str:
        return f"{self.id}-sock"

    @property
    def netdev(self) -> str:
        return f"{self.id}-net"

    def backends(self) -> list[OptionGroup]:
        return [_unix_chardev(self.chardev, self.socket),
                OptionGroup.of("netdev", self.netdev, {"type": "vhost-user", "chardev": self.chardev})]

    def device(self, bus: str | None, extra: dict) -> OptionGroup:
        return _pci_device("virtio-net-pci", self.id, bus,
                           {"netdev": self.netdev, "mac": self.mac, "vectors": self.vectors}, extra)

    def plug_backends(self) -> list[QmpCommand]:
        return [_chardev_add(self.chardev, self.socket),
                ("netdev_add", {"type": "vhost-user", "id": self.netdev, "chardev": self.chardev})]

    def after_unplug(self) -> list[QmpCommand]:
        # QEMU's vhost-user netdev deletes its chardev with itself (QEMU 7.2: "Chardev not found" after)
        return [("netdev_del", {"id": self.netdev})]


@dataclass(frozen=True)
class TapNet:
    """virtio-net on QEMU's own tap back-end (the reference path for network tests)."""

    id: str
    ifname: str
    mac: str

    @property
    def netdev(self) -> str:
        return f"{self.id}-net"

    def backends(self) -> list[OptionGroup]:
        return [OptionGroup.of("netdev", self.netdev, {"type": "tap", "ifname": self.ifname,
                                                       "script": "no", "downscript": "no"})]

    def device(self, bus: str | None, extra: dict) -> OptionGroup:
        return _pci_device("virtio-net-pci", self.id, bus, {"netdev": self.netdev, "mac": self.mac}, extra)

    def plug_backends(self) -> list[QmpCommand]:
        return [("netdev_add", self.backends()[0].as_qmp())]

    def after_unplug(self) -> list[QmpCommand]:
        return [("netdev_del", {"id": self.netdev})]
