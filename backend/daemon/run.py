"""`vio serve`: check the config, start everything, then live on signals and the control socket.

SIGHUP and `vio reload` re-read the file and apply it (a file with problems
changes nothing: the problems are logged and returned); SIGTERM, SIGINT and
`vio stop` shut down: control socket first, then services in reverse start
order (disks flushed, taps and bridges we made removed, sockets unlinked).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from ..config import (
    DEFAULT_CONFIG,
    Config,
    ConfigProblems,
    Owned,
    Problem,
    load_config,
    parse_config,
)
from ..control import ControlServer
from ..errors import ConfigError
from . import guests, logs
from .core import Daemon
from .registry import ServiceKind, kinds

log = logging.getLogger("backend.daemon")


@dataclass
class ConfigSource:
    """Where the config comes from: a file, or the embedded default, plus what `vio guest attach` added.

    Attached devices are TOML tables appended to the text, so they pass every
    check a file's own entries pass and survive reloads until detached.
    """

    path: str | None
    state_dir: str | None = None
    attached: dict[tuple[str, str], str] = field(default_factory=dict)

    def load(self, registry: list[ServiceKind], owned: Owned | None = None) -> Config:
        owned = owned or Owned()
        if self.path is None:
            return parse_config(self._with_attached(DEFAULT_CONFIG), "<default config>", registry, owned=owned,
                                state_dir=self.state_dir)
        if self.state_dir is None and not self.attached:
            return load_config(self.path, registry, owned=owned)
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigProblems([Problem(self.path, 0, 0, "", f"cannot read the config file: {exc}")]) from None
        return parse_config(self._with_attached(text), self.path, registry, owned=owned,
                            config_dir=os.path.dirname(os.path.abspath(self.path)), state_dir=self.state_dir)

    def _with_attached(self, text: str) -> str:
        return "\n".join([text, *self.attached.values()]) if self.attached else text


class Runner:
    """One `vio serve` process: the daemon, its control socket and its signals."""

    def __init__(self, source: ConfigSource, config: Config, registry: list[ServiceKind]) -> None:
        self.source = source
        self.registry = registry
        self.daemon = Daemon(registry, config)
        self.control = ControlServer(config.daemon.control_socket, {
            "status": self._status, "reload": self._reload, "stop": self._stop,
            "domain": self._domain, "attach": self._attach, "detach": self._detach,
        })
        self.stopping = asyncio.Event()
        self._reload_lock = asyncio.Lock()

    async def run(self) -> None:
        config = self.daemon.config
        os.makedirs(config.daemon.state_dir, mode=0o755, exist_ok=True)
        await self.daemon.start()
        try:
            await self.control.start()
        except BaseException:
            await self.daemon.stop()
            raise
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload_logged()))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        log.info("ready", extra={"event": "ready", "config": config.source, "services": len(self.daemon.services()),
                                 "control_socket": config.daemon.control_socket})
        await self.stopping.wait()
        log.info("shutting down", extra={"event": "shutdown"})
        self.control.close()
        await self.daemon.stop()
        log.info("stopped", extra={"event": "exit"})

    async def reload(self) -> dict[str, Any]:
        async with self._reload_lock:
            config = self.source.load(self.registry, self.daemon.owned())
            if config.daemon.control_socket != self.daemon.config.daemon.control_socket or \
                    config.daemon.state_dir != self.daemon.config.daemon.state_dir:
                raise ConfigError("state_dir and control_socket change only with a restart of vio serve")
            changes = await self.daemon.reload(config)
            logs.configure(config.daemon.log_format, config.daemon.log_level)
            summary = changes.summary()
            log.info("reloaded", extra={"event": "reloaded", **summary})
            return summary

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except ConfigProblems as exc:
            for problem in exc.problems:
                log.error("reload refused", extra={"event": "reload_refused", "problem": str(problem)})
        except (ConfigError, OSError) as exc:
            log.error("reload failed; previous services kept", extra={"event": "reload_failed", "error": str(exc)})

    async def _status(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.daemon.status()

    async def _reload(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.reload()
        except OSError as exc:
            raise ConfigError(f"reload failed, previous services kept: {exc}") from exc

    async def _domain(self, request: dict[str, Any]) -> dict[str, Any]:
        return guests.domain_devices(self.daemon, str(request.get("name")))

    async def _attach(self, request: dict[str, Any]) -> dict[str, Any]:
        """Add a device for a domain (a [[vhost_blk]] or [[vhost_net]] table) and start it."""
        key, table = guests.attached_table(self.daemon.config, request)
        async with self._reload_lock:
            self.source.attached[key] = table
            try:
                await self._apply_source()
            except BaseException:
                del self.source.attached[key]
                raise
        return guests.device_entry(self.daemon, key)

    async def _detach(self, request: dict[str, Any]) -> dict[str, Any]:
        """Stop and forget a device `attach` added (file entries change by editing the file)."""
        key = (str(request.get("kind")), str(request.get("name")))
        async with self._reload_lock:
            table = self.source.attached.pop(key, None)
            if table is None:
                raise ConfigError(f"{key[0]} {key[1]!r} was not attached by vio guest attach; "
                                  "remove it from the config file and reload instead")
            try:
                await self._apply_source()
            except BaseException:
                self.source.attached[key] = table
                raise
        return {"detached": f"{key[0]}:{key[1]}"}

    async def _apply_source(self) -> None:
        config = self.source.load(self.registry, self.daemon.owned())
        changes = await self.daemon.reload(config)
        log.info("devices changed", extra={"event": "devices_changed", **changes.summary()})

    async def _stop(self, request: dict[str, Any]) -> dict[str, Any]:
        asyncio.get_running_loop().call_soon(self.stopping.set)  # after this reply has gone
        return {"stopping": True}


def serve(source: ConfigSource) -> None:
    """Check and run; raises ConfigProblems (nothing started) or the start error (nothing left)."""
    registry = kinds()
    config = source.load(registry)
    logs.configure(config.daemon.log_format, config.daemon.log_level)

    async def main() -> None:
        await Runner(source, config, registry).run()

    asyncio.run(main())
