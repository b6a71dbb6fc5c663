"""The daemon's core: bring the running services in line with a config.

Theory of operation. A service is known by (kind, name). `apply(target)`
compares the target specs with the running ones: a service whose spec is
unchanged keeps running, untouched (its connections too); one that is gone
is stopped; one whose spec changed is stopped and started again, and so is
everything that `needs()` it (a vnet port of a restarted switch). Stops go
in reverse start order, starts in dependency order. If a start fails, the
services started by this `apply` are stopped again before the error goes
up; `reload` then applies the previous specs, so the daemon ends where it
was. Nothing outside this module starts or stops services.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config.load import Owned
from ..config.model import Config, ServiceSpec
from .registry import Service, ServiceKind

log = logging.getLogger("backend.daemon")

Key = tuple[str, str]


@dataclass
class Changes:
    started: list[Key] = field(default_factory=list)
    stopped: list[Key] = field(default_factory=list)

    def summary(self) -> dict[str, list[str]]:
        started, stopped = set(self.started), set(self.stopped)
        name = "{0[0]}:{0[1]}".format
        return {
            "added": sorted(name(k) for k in started - stopped),
            "removed": sorted(name(k) for k in stopped - started),
            "restarted": sorted(name(k) for k in started & stopped),
        }


class Daemon:
    """Running services of one config; also the `Context` services start in."""

    def __init__(self, kinds: Sequence[ServiceKind], config: Config) -> None:
        self.kinds = {kind.section: kind for kind in kinds}
        self._order = {kind.section: index for index, kind in enumerate(kinds)}
        self.config = config
        self.started_at = time.time()
        self._running: dict[Key, tuple[ServiceSpec, Service]] = {}

    # -- Context ---------------------------------------------------------------

    def service(self, kind: str, name: str) -> Service:
        return self._running[(kind, name)][1]

    def services(self) -> list[tuple[ServiceSpec, Service]]:
        return list(self._running.values())

    def owned(self) -> Owned:
        links = set().union(*(service.links() for _, service in self._running.values()))
        return Owned(frozenset(self.config.sockets()), frozenset(links))

    # -- lifetime --------------------------------------------------------------

    async def start(self) -> None:
        """Start every service of the config, or none."""
        await self.apply(self.config.services)

    async def reload(self, config: Config) -> Changes:
        """Move to `config`; on failure, back to the services of the current one."""
        previous = [spec for spec, _ in self._running.values()]
        try:
            changes = await self.apply(config.services)
        except BaseException:
            await self.apply(previous)
            raise
        self.config = config
        return changes

    async def stop(self) -> None:
        await self.apply(())

    async def apply(self, target: Sequence[ServiceSpec]) -> Changes:
        wanted = {spec.key: spec for spec in self.ordered(target)}
        affected = {key for key, (spec, _) in self._running.items() if wanted.get(key) != spec}
        grew = True
        while grew:  # whatever stands on an affected service is affected too
            dependents = {key for key, (spec, _) in self._running.items() if set(spec.needs()) & affected}
            grew = not dependents <= affected
            affected |= dependents
        changes = Changes()
        for key in reversed(list(self._running)):
            if key in affected:
                await self._stop(key)
                changes.stopped.append(key)
        kept = set(self._running)
        try:
            for key, spec in wanted.items():
                if key not in self._running:
                    await self._start(spec)
        except BaseException:
            for key in reversed(list(self._running)):
                if key not in kept:
                    await self._stop(key)
            raise
        fresh = [key for key in self._running if key not in kept]
        # Keep the running table in start order, so stops go in reverse of it.
        order = list(wanted)
        self._running = dict(sorted(self._running.items(), key=lambda item: order.index(item[0])))
        changes.started.extend(fresh)
        return changes

    def ordered(self, specs: Sequence[ServiceSpec]) -> list[ServiceSpec]:
        """Dependencies first; otherwise kinds in registry order, then file order."""
        by_key = {spec.key: spec for spec in specs}
        ranked = sorted(specs, key=lambda s: self._order.get(s.kind, len(self._order)))
        out: list[ServiceSpec] = []
        placed: set[Key] = set()

        def place(spec: ServiceSpec, path: tuple[Key, ...]) -> None:
            if spec.key in placed:
                return
            if spec.key in path:
                raise ValueError(f"services need each other in a loop: {' -> '.join(map(str, path))}")
            for need in spec.needs():
                if need in by_key:
                    place(by_key[need], path + (spec.key,))
            placed.add(spec.key)
            out.append(spec)

        for spec in ranked:
            place(spec, ())
        return out

    async def _start(self, spec: ServiceSpec) -> None:
        kind = self.kinds[spec.kind]
        try:
            service = await kind.start(spec, self)
        except BaseException as exc:
            log.error("service failed to start", extra={"event": "start_failed", "kind": spec.kind, "service": spec.name, "error": str(exc)})
            raise
        self._running[spec.key] = (spec, service)
        log.info("service started", extra={"event": "started", "kind": spec.kind, "service": spec.name})

    async def _stop(self, key: Key) -> None:
        spec, service = self._running.pop(key)
        try:
            await service.stop()
        except Exception as exc:  # one service's trouble must not keep the others running
            log.exception("service failed to stop cleanly", extra={"event": "stop_failed", "kind": key[0], "service": key[1], "error": str(exc)})
            return
        log.info("service stopped", extra={"event": "stopped", "kind": spec.kind, "service": spec.name})

    # -- status ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What `vio status` shows: the daemon, domains with their channels, services by group."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for spec, service in self._running.values():
            entry = {"kind": spec.kind, "name": spec.name, "domain": spec.domain, **service.status()}
            groups.setdefault(self.kinds[spec.kind].group, []).append(entry)
        domains = []
        for domain in self.config.domains:
            channels = []
            for spec, service in self._running.values():
                if spec.domain == domain.name:
                    for channel in service.status().get("channels", []):
                        channels.append({"kind": spec.kind, "service": spec.name, **channel})
            domains.append({"name": domain.name, "description": domain.description,
                            "services": [f"{s.kind}:{s.name}" for s, _ in self._running.values() if s.domain == domain.name],
                            "channels": channels})
        daemon = self.config.daemon
        return {
            "daemon": {"pid": os.getpid(), "config": self.config.source, "state_dir": daemon.state_dir,
                       "control_socket": daemon.control_socket, "uptime": round(time.time() - self.started_at, 1)},
            "domains": domains,
            "services": groups,
        }
