"""The `[metrics]` kind: every service's counters in the Prometheus text format.

Nothing is counted twice: at each scrape a collector asks the running
services for their `samples()` (the same counters `vio status` shows) and
prometheus-client renders them. The HTTP endpoint is a few lines of asyncio
on the daemon's loop, so a scrape reads the counters from the thread that
changes them. A textfile (for node_exporter's textfile collector) is
rewritten every `interval` seconds, atomically, and removed on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

from .config.fields import Dirs, Field, file_path, integer, seconds, string
from .config.load import CheckEnv
from .config.model import ServiceSpec, Where
from .daemon.registry import Context, Sample, Service

log = logging.getLogger(__name__)

PREFIX = "vio_"
MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0


@dataclass(frozen=True, kw_only=True)
class MetricsSpec(ServiceSpec):
    kind = "metrics"
    address: str
    port: int | None
    textfile: str | None
    interval: float


class MetricsKind:
    section = "metrics"
    group = "metrics"
    many = False
    fields = (
        Field("address", string, default="127.0.0.1", doc="address the HTTP endpoint listens on"),
        Field("port", integer(0, 65535), doc="serve /metrics over HTTP on this port (0: any free port)"),
        Field("textfile", file_path, doc="also write the metrics to this file (node_exporter textfile collector)"),
        Field("interval", seconds, default=15.0, doc="seconds between textfile rewrites"),
    )

    def build(self, values: dict[str, Any], where: Where, dirs: Dirs) -> MetricsSpec:
        return MetricsSpec(name="metrics", where=where, address=values["address"], port=values["port"],
                           textfile=values["textfile"], interval=values["interval"])

    def check(self, spec: MetricsSpec, env: CheckEnv) -> None:
        if spec.port is None and spec.textfile is None:
            env.problems.append(spec.where.problem("give port = 9464 (for example), textfile = \"PATH\", or both"))
        if spec.textfile is not None and not os.path.isdir(os.path.dirname(spec.textfile)) and not env.in_state_dir(spec.textfile):
            env.problems.append(spec.where.child("textfile").problem(f"directory {os.path.dirname(spec.textfile)} does not exist"))
        if spec.interval < 1:
            env.problems.append(spec.where.child("interval").problem("rewrite the textfile at most once a second"))

    async def start(self, spec: MetricsSpec, ctx: Context) -> MetricsService:
        service = MetricsService(spec, ctx.services)
        try:
            await service.start()
        except OSError as exc:
            await service.stop()
            raise OSError(exc.errno, f"metrics: cannot listen on {spec.address}:{spec.port}: {exc.strerror}") from None
        return service


class DaemonCollector:
    """A prometheus-client collector over the daemon's running services."""

    def __init__(self, services: Callable[[], list[tuple[ServiceSpec, Service]]]) -> None:
        self._services = services

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        running = self._services()
        for spec, _ in running:
            self._add(families, Sample("service_up", "1 for each running service", 1, {"kind": spec.kind, "name": spec.name}, counter=False))
        for _, service in running:
            for sample in service.samples():
                self._add(families, sample)
        return iter(families.values())

    @staticmethod
    def _add(families: dict[str, Metric], sample: Sample) -> None:
        name = PREFIX + sample.name
        family = families.get(name)
        if family is None:
            family = families[name] = Metric(name, sample.help, "counter" if sample.counter else "gauge")
        family.add_sample(name + ("_total" if sample.counter else ""), dict(sample.labels), sample.value)


def registry_for(services: Callable[[], list[tuple[ServiceSpec, Service]]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(services))  # type: ignore[arg-type]
    return registry


class MetricsService:
    def __init__(self, spec: MetricsSpec, services: Callable[[], list[tuple[ServiceSpec, Service]]]) -> None:
        self.spec = spec
        self.registry = registry_for(services)
        self.server: asyncio.Server | None = None
        self.bound: tuple[str, int] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.scrapes = 0

    async def start(self) -> None:
        spec = self.spec
        if spec.port is not None:
            self.server = await asyncio.start_server(self._handle, spec.address, spec.port, limit=MAX_REQUEST)
            self.bound = self.server.sockets[0].getsockname()[:2]
            log.info("metrics endpoint listening", extra={"event": "metrics", "address": self.bound[0], "port": self.bound[1]})
        if spec.textfile is not None:
            write_to_textfile(spec.textfile, self.registry)
            self._writer = asyncio.get_running_loop().create_task(self._rewrite(spec.textfile))

    async def _rewrite(self, path: str) -> None:
        while True:
            await asyncio.sleep(self.spec.interval)
            try:
                write_to_textfile(path, self.registry)
            except OSError as exc:
                log.warning("cannot write the metrics textfile", extra={"event": "metrics_error", "error": str(exc)})

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            method, target = _request_line(head)
            if method != "GET":
                await _respond(writer, 405, b"only GET\n")
            elif target.split("?")[0] not in ("/metrics", "/"):
                await _respond(writer, 404, b"try /metrics\n")
            else:
                self.scrapes += 1
                await _respond(writer, 200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            with contextlib.suppress(OSError):
                await _respond(writer, 400, b"bad request\n")
        except OSError:
            pass
        finally:
            writer.close()

    def status(self) -> dict[str, Any]:
        address = f"http://{self.bound[0]}:{self.bound[1]}/metrics" if self.bound else None
        return {"url": address, "textfile": self.spec.textfile, "scrapes": self.scrapes}

    def samples(self) -> Iterable[Sample]:
        yield Sample("metrics_scrapes", "HTTP scrapes answered", self.scrapes)

    def links(self) -> set[str]:
        return set()

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self.spec.textfile is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.spec.textfile)


def _request_line(head: bytes) -> tuple[str, str]:
    if len(head) > MAX_REQUEST:
        raise ValueError("request too large")
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError("not an HTTP request line")
    return parts[0], parts[1]


async def _respond(writer: asyncio.StreamWriter, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}[code]
    writer.write(f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                 "Connection: close\r\n\r\n".encode() + body)
    await writer.drain()


KIND = MetricsKind()
