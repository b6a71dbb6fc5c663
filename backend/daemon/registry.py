"""Service kinds: how a config section becomes running services, one module per kind.

A kind is one object with the config half (`section`, `many`, `fields`,
`build`, `check`: see backend/config/load.py) and the running half (`start`).
`start` returns a `Service`; the daemon owns its lifetime and asks it for its
status and metrics. The daemon core knows no kind by name: it imports the
modules listed in KIND_MODULES and takes each module's `KIND`. A package adds
its own kind by writing such a module and adding one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config.load import SectionKind
from ..config.model import ServiceSpec

#: Modules with a `KIND`; start order follows `needs()`, then this order, then the file.
KIND_MODULES: list[str] = [
    "backend.daemon.switches",
    "backend.daemon.ds",
    "backend.daemon.vnet",
    "backend.daemon.disks",
    "backend.daemon.vhost_blk",
    "backend.daemon.vhost_net",
    "backend.daemon.ldc",
    "backend.metrics",
]


@dataclass(frozen=True)
class Sample:
    """One metric value, exported as `vio_<name>` (counters get `_total`)."""

    name: str
    help: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)
    counter: bool = True


class Service(Protocol):
    def status(self) -> dict[str, Any]:
        """JSON-able state for `vio status` (connections, versions, counters)."""
        ...

    def samples(self) -> Iterable[Sample]:
        """Current counters and gauges for Prometheus."""
        ...

    def links(self) -> set[str]:
        """Network interfaces this service created (a reload may reuse their names)."""
        ...

    async def stop(self) -> None:
        """Release everything: connections, files (flushed), interfaces, sockets."""
        ...


class Context(Protocol):
    """What a starting service may ask the daemon for."""

    def service(self, kind: str, name: str) -> Service:
        """A running service this one `needs()`."""
        ...

    def services(self) -> list[tuple[ServiceSpec, Service]]:
        """Every running service, in start order."""
        ...


class ServiceKind(SectionKind, Protocol):
    #: Heading of its services in `vio status` ("disks", "switches", "ports", "ds", ...).
    group: str

    async def start(self, spec: Any, ctx: Context) -> Service:
        """Start the service; on failure, leave nothing behind and raise."""
        ...


def kinds() -> list[ServiceKind]:
    return [importlib.import_module(name).KIND for name in KIND_MODULES]
