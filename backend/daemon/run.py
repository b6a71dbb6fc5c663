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
from dataclasses import dataclass
from typing import Any

from ..config import (
    DEFAULT_CONFIG,
    Config,
    ConfigProblems,
    Owned,
    load_config,
    parse_config,
)
from ..control import ControlServer
from ..errors import ConfigError
from . import logs
from .core import Daemon
from .registry import ServiceKind, kinds

log = logging.getLogger("backend.daemon")


@dataclass(frozen=True)
class ConfigSource:
    """Where the config comes from: a file, or the embedded default."""

    path: str | None
    state_dir: str | None = None

    def load(self, registry: list[ServiceKind], owned: Owned | None = None) -> Config:
        owned = owned or Owned()
        if self.path is None:
            return parse_config(DEFAULT_CONFIG, "<default config>", registry, owned=owned, state_dir=self.state_dir)
        if self.state_dir is None:
            return load_config(self.path, registry, owned=owned)
        with open(self.path, encoding="utf-8") as f:
            text = f.read()
        return parse_config(text, self.path, registry, owned=owned,
                            config_dir=os.path.dirname(os.path.abspath(self.path)), state_dir=self.state_dir)


class Runner:
    """One `vio serve` process: the daemon, its control socket and its signals."""

    def __init__(self, source: ConfigSource, config: Config, registry: list[ServiceKind]) -> None:
        self.source = source
        self.registry = registry
        self.daemon = Daemon(registry, config)
        self.control = ControlServer(config.daemon.control_socket, {
            "status": self._status, "reload": self._reload, "stop": self._stop,
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
