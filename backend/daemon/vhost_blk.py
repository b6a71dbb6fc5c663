"""The `[[vhost_blk]]` kind: a disk exported to one guest's QEMU as vhost-user-blk (virtio-blk).

The store is opened through the same counting engine as `[[disk]]`, so
`vio status` and Prometheus show this disk's I/O the same way; the device is
backend/vhost/devices/blk.py on a VhostUserServer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.fields import (
    Dirs,
    Field,
    boolean,
    choice,
    file_path,
    integer,
    name,
    size,
    socket_path,
)
from ..config.load import CheckEnv
from ..config.model import ServiceSpec, Where
from .disks import MeteredDiskEngine, ServedDisk, check_store
from .registry import Context
from .sockets import remove_socket
from .vhost_common import check_domain, describe_connection


@dataclass(frozen=True, kw_only=True)
class VhostBlkSpec(ServiceSpec):
    kind = "vhost_blk"
    path: str
    create_size: int | None
    read_only: bool
    cache: str
    queues: int
    queue_size: int
    socket: str

    def sockets(self) -> dict[str, str]:
        return {"socket": self.socket}


def _power_of_two(value: Any, dirs: Dirs) -> int:
    from ..config.fields import Invalid

    number = integer(2, 32768)(value, dirs)
    if number & (number - 1):
        raise Invalid(f"{number} is not a power of two")
    return number


class VhostBlkKind:
    section = "vhost_blk"
    group = "disks"
    many = True
    fields = (
        Field("name", name, required=True, doc="the export's name (also the QEMU device id)"),
        Field("domain", name, doc="the guest whose QEMU uses it (required)"),
        Field("path", file_path, required=True, doc="backing file or block device"),
        Field("size", size, doc="create a sparse file of this size if path does not exist"),
        Field("read_only", boolean, default=False, doc="VIRTIO_BLK_F_RO"),
        Field("cache", choice("writeback", "writethrough"), default="writeback",
              doc="initial write cache; the guest may toggle it (VIRTIO_BLK_F_CONFIG_WCE)"),
        Field("queues", integer(1, 64), default=1, doc="request queues"),
        Field("queue_size", _power_of_two, default=256, doc="largest ring the driver may use"),
        Field("socket", socket_path, doc="vhost-user socket (default: vhost-blk-NAME.sock in the state directory)"),
    )

    def build(self, values: dict[str, Any], where: Where, dirs: Dirs) -> VhostBlkSpec:
        sock = values["socket"] or socket_path(f"vhost-blk-{values['name']}.sock", dirs)
        return VhostBlkSpec(
            name=values["name"], domain=values["domain"], where=where, path=values["path"], create_size=values["size"],
            read_only=values["read_only"], cache=values["cache"], queues=values["queues"],
            queue_size=values["queue_size"], socket=sock,
        )

    def check(self, spec: VhostBlkSpec, env: CheckEnv) -> None:
        check_domain(spec, env)
        check_store(spec, env)

    async def start(self, spec: VhostBlkSpec, ctx: Context) -> VhostBlkService:
        from ..vdisk.devid import device_id_for
        from ..vhost.aio import VhostUserServer
        from ..vhost.devices.blk import BlockDevice

        engine = MeteredDiskEngine(spec.path, read_only=spec.read_only, create_size=spec.create_size,
                                   write_cache=spec.cache == "writeback")
        try:
            device = BlockDevice(engine, device_id_for(spec.path), num_queues=spec.queues, queue_size=spec.queue_size)
            server = VhostUserServer(spec.socket, device)
            await server.start()
        except BaseException:
            engine.close()
            remove_socket(spec.socket)
            raise
        return VhostBlkService(spec, engine, server)


class VhostBlkService(ServedDisk):
    clients_help = "front-ends connected"

    def client_count(self) -> int:
        return int(describe_connection(self.server)["connected"])

    def exported_bytes(self) -> int:
        return self.engine.size_bytes

    def status(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "transport": "vhost-user-blk", "path": spec.path, "socket": spec.socket,
            "size_bytes": self.engine.size_bytes, "read_only": spec.read_only,
            "cache": "writeback" if self.engine.write_cache else "writethrough", "export": "disk",
            "queues": spec.queues, "counters": self.engine.snapshot(), "channels": [],
            **describe_connection(self.server),
        }


KIND = VhostBlkKind()
