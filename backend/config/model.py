"""The typed result of loading a config file, and the places problems point at."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import ConfigError
from .positions import Path, Positions


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file, and where."""

    file: str
    line: int
    column: int
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: {self.message}" if self.key else f"{self.file}:{self.line}: {self.message}"


class ConfigProblems(ConfigError):
    """Everything wrong with a config file (raised only when the list is not empty)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.column, p.key))
        count = len(self.problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in the configuration:\n" + "\n".join(f"  {p}" for p in self.problems))


@dataclass(frozen=True)
class Where:
    """A key path inside one file: turns messages into `Problem`s with line numbers."""

    file: str
    positions: Positions = field(compare=False, repr=False)
    path: Path = ()

    def child(self, key: str | int) -> Where:
        return Where(self.file, self.positions, self.path + (key,))

    def problem(self, message: str) -> Problem:
        line, column = self.positions.locate(self.path)
        return Problem(self.file, line, column, format_path(self.path), message)

    @property
    def line(self) -> int:
        return self.positions.line(self.path)


def format_path(path: Path) -> str:
    """("disk", 1, "path") -> "disk[1].path"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


@dataclass(frozen=True, kw_only=True)
class ServiceSpec:
    """One configured service. Kinds subclass it with their own fields.

    Equality ignores where the entry sits in the file: a reload restarts a
    service only when what it does changed.
    """

    kind: ClassVar[str]
    name: str
    domain: str | None = None
    where: Where = field(compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.name

    def sockets(self) -> dict[str, str]:
        """Config key -> Unix socket path this service listens on."""
        return {}

    def needs(self) -> tuple[tuple[str, str], ...]:
        """(kind, name) of the services this one runs on top of (started first, stopped after)."""
        return ()


@dataclass(frozen=True)
class DaemonSettings:
    state_dir: str
    control_socket: str
    log_format: str
    log_level: str


@dataclass(frozen=True)
class Domain:
    """A guest the service domain serves; services name it with `domain = "..."`."""

    name: str
    description: str = ""
    where: Where | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Config:
    source: str
    daemon: DaemonSettings
    domains: tuple[Domain, ...]
    services: tuple[ServiceSpec, ...]

    def service(self, kind: str, name: str) -> ServiceSpec | None:
        return next((s for s in self.services if s.key == (kind, name)), None)

    def sockets(self) -> set[str]:
        return {self.daemon.control_socket} | {path for s in self.services for path in s.sockets().values()}
