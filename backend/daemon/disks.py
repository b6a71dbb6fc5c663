"""The `[[disk]]` kind: a backing store exported to vDisk clients (vds) on a Unix LDC socket.

The disk engine does not count I/O, so the daemon opens stores through
`MeteredDiskEngine`, a DiskEngine that counts operations and bytes as they
pass; every front-end on the engine (vds today, virtio-blk later) is counted
the same way.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config.fields import (
    Dirs,
    Field,
    boolean,
    choice,
    file_path,
    name,
    size,
    socket_path,
)
from ..config.load import CheckEnv
from ..config.model import ServiceSpec, Where
from ..vdisk.engine import DiskEngine
from .registry import Context, Sample
from .sockets import remove_socket

BLOCK = 512


@dataclass(frozen=True, kw_only=True)
class DiskSpec(ServiceSpec):
    kind = "disk"
    path: str
    #: Create a sparse file of this many bytes when `path` does not exist.
    create_size: int | None
    read_only: bool
    #: "writeback" (writes may wait in the page cache until FLUSH) or "writethrough".
    cache: str
    #: "disk" (a whole disk, with its label) or "slice" (a single slice, no label).
    export: str
    offset: int
    length: int | None
    socket: str

    def sockets(self) -> dict[str, str]:
        return {"socket": self.socket}


class DiskKind:
    section = "disk"
    group = "disks"
    many = True
    fields = (
        Field("name", name, required=True, doc="the export's name"),
        Field("domain", name, doc="the guest it is for"),
        Field("path", file_path, required=True, doc="backing file or block device"),
        Field("size", size, doc="create a sparse file of this size if path does not exist"),
        Field("read_only", boolean, default=False),
        Field("cache", choice("writeback", "writethrough"), default="writeback"),
        Field("export", choice("disk", "slice"), default="disk"),
        Field("offset", size, default=0, doc="first byte of the exported window"),
        Field("length", size, doc="bytes in the exported window (default: to the end)"),
        Field("socket", socket_path, doc="vds socket (default: disk-NAME.sock in the state directory)"),
    )

    def build(self, values: dict[str, Any], where: Where, dirs: Dirs) -> DiskSpec:
        sock = values["socket"] or socket_path(f"disk-{values['name']}.sock", dirs)
        return DiskSpec(
            name=values["name"], domain=values["domain"], where=where, path=values["path"],
            create_size=values["size"], read_only=values["read_only"], cache=values["cache"],
            export=values["export"], offset=values["offset"], length=values["length"], socket=sock,
        )

    def check(self, spec: DiskSpec, env: CheckEnv) -> None:
        where = spec.where
        total = check_store(spec, env)
        if total is None:
            return
        for key in ("offset", "length"):
            value = getattr(spec, key)
            if value is not None and value % BLOCK:
                env.problems.append(where.child(key).problem(f"{value} is not a multiple of {BLOCK} bytes"))
        length = spec.length if spec.length is not None else total - spec.offset
        if spec.offset + length > total or length <= 0:
            env.problems.append(where.child("length" if spec.length is not None else "offset").problem(
                f"window of {length} bytes at offset {spec.offset} does not fit in {spec.path} ({total} bytes)"))

    async def start(self, spec: DiskSpec, ctx: Context) -> DiskService:
        from ..vdisk.devid import device_id_for
        from ..vdisk.protocol import DiskType
        from ..vdisk.serve import DiskServer
        from ..vdisk.server import Export

        engine = MeteredDiskEngine(spec.path, read_only=spec.read_only, create_size=spec.create_size,
                                   write_cache=spec.cache == "writeback")
        try:
            export = Export(engine, device_id_for(spec.path), DiskType.SLICE if spec.export == "slice" else DiskType.DISK,
                            start=spec.offset, length=spec.length)
            server = DiskServer(export, spec.socket)
            await server.start()
        except BaseException:
            engine.close()
            remove_socket(spec.socket)
            raise
        return DiskService(spec, engine, server)


def check_store(spec: Any, env: CheckEnv) -> int | None:
    """The backing store's size in bytes, or None after adding the problem with it.

    `spec` has path, create_size and read_only (a [[disk]] or a [[vhost_blk]]).
    """
    problem = _store_problem(spec, env)
    if problem:
        env.problems.append(spec.where.child(problem[0]).problem(problem[1]))
        return None
    try:
        return _store_size(spec.path) if os.path.exists(spec.path) else spec.create_size
    except OSError as exc:
        env.problems.append(spec.where.child("path").problem(str(exc)))
        return None


def _store_problem(spec: Any, env: CheckEnv) -> tuple[str, str] | None:
    """(key, message) if the backing store cannot be used."""
    if os.path.exists(spec.path):
        mode = os.stat(spec.path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            return "path", f"{spec.path} is neither a regular file nor a block device"
        if not os.access(spec.path, os.R_OK if spec.read_only else os.R_OK | os.W_OK):
            return "path", f"{spec.path} is not {'readable' if spec.read_only else 'readable and writable'} by this user"
        return None
    if spec.create_size is None:
        return "path", f"{spec.path} does not exist; create it, or add size = \"64M\" (for example) to create a sparse file"
    if spec.create_size < BLOCK:
        return "size", f"a new disk needs at least {BLOCK} bytes, not {spec.create_size}"
    parent = os.path.dirname(spec.path)
    if not os.path.isdir(parent) and not env.in_state_dir(spec.path):
        return "path", f"directory {parent} does not exist, so {spec.path} cannot be created"
    return None


def _store_size(path: str) -> int:
    with DiskEngine(path, read_only=True) as engine:
        return engine.size_bytes


class MeteredDiskEngine(DiskEngine):
    """A DiskEngine that counts what passes through it (thread-safe: I/O runs in worker threads)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counts = {"reads": 0, "writes": 0, "read_bytes": 0, "written_bytes": 0, "flushes": 0, "errors": 0}
        self._count_lock = threading.Lock()

    def _count(self, **deltas: int) -> None:
        with self._count_lock:
            for key, delta in deltas.items():
                self.counts[key] += delta

    def read_into(self, offset: int, buffers: Sequence[memoryview]) -> int:
        try:
            done = super().read_into(offset, buffers)
        except OSError:
            self._count(errors=1)
            raise
        self._count(reads=1, read_bytes=done)
        return done

    def try_read_into(self, offset: int, buffers: Sequence[memoryview]) -> int:
        """The cached-read fast path counts as a read; "would block" is not an error."""
        try:
            done = super().try_read_into(offset, buffers)  # type: ignore[misc]
        except BlockingIOError:
            raise
        except OSError:
            self._count(errors=1)
            raise
        self._count(reads=1, read_bytes=done)
        return done

    def reads_served(self, count: int, nbytes: int) -> None:
        """Reads the vds's C walk step served from the page cache itself."""
        self._count(reads=count, read_bytes=nbytes)

    def write_from(self, offset: int, buffers: Sequence[memoryview]) -> int:
        try:
            done = super().write_from(offset, buffers)
        except OSError:
            self._count(errors=1)
            raise
        self._count(writes=1, written_bytes=done)
        return done

    def flush(self) -> None:
        super().flush()
        self._count(flushes=1)

    def snapshot(self) -> dict[str, int]:
        with self._count_lock:
            return dict(self.counts)


class ServedDisk:
    """What every running disk export shares: counters as samples, flush-then-close on stop."""

    clients_help = "clients connected"

    def __init__(self, spec: Any, engine: MeteredDiskEngine, server: Any) -> None:
        self.spec, self.engine, self.server = spec, engine, server

    def client_count(self) -> int:
        raise NotImplementedError

    def exported_bytes(self) -> int:
        raise NotImplementedError

    def samples(self) -> Iterable[Sample]:
        labels = {"disk": self.spec.name, "domain": self.spec.domain or ""}
        for key, value in self.engine.snapshot().items():
            yield Sample(f"disk_{key}", f"disk {key.replace('_', ' ')} since the export started", value, labels)
        yield Sample("disk_clients", self.clients_help, self.client_count(), labels, counter=False)
        yield Sample("disk_size_bytes", "bytes exported", self.exported_bytes(), labels, counter=False)

    def links(self) -> set[str]:
        return set()

    async def stop(self) -> None:
        self.server.close()
        self.engine.close()  # flushes first
        remove_socket(self.spec.socket)


class DiskService(ServedDisk):
    clients_help = "vDisk clients connected"

    def client_count(self) -> int:
        return len(self.server.clients)

    def exported_bytes(self) -> int:
        return self.server.export.length

    def status(self) -> dict[str, Any]:
        from .channels import describe_channel

        spec = self.spec
        return {
            "path": spec.path, "socket": spec.socket, "size_bytes": self.server.export.length,
            "read_only": spec.read_only, "cache": "writeback" if self.engine.write_cache else "writethrough",
            "export": spec.export, "counters": self.engine.snapshot(),
            "channels": [describe_channel(endpoint) for endpoint in self.server.clients],
        }


KIND = DiskKind()
