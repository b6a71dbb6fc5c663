"""Read a config file, check all of it, and return typed settings or every problem at once.

Order of checks: TOML syntax (nothing else can be judged without it), then
each table on its own (unknown keys, types, ranges), then what needs the whole
file (duplicate names, references between sections, one socket path used
twice), then the outside world (files that must exist, sockets someone else
listens on, interfaces and privileges). A problem in an entry skips that
entry's later checks, never the other entries'.

`owned` lists what the running daemon already holds (its sockets and
interfaces), so a reload does not call its own resources "in use".
"""

from __future__ import annotations

import errno
import os
import socket
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .fields import Dirs, Field, choice, read_table, socket_path, string
from .fields import name as name_field
from .model import (
    Config,
    ConfigProblems,
    DaemonSettings,
    Domain,
    Problem,
    ServiceSpec,
    Where,
)
from .positions import Positions

DEFAULT_STATE_DIR = "/run/vio"
#: sun_path is 108 bytes with the terminating NUL.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class Owned:
    """Resources of a running daemon that its own reload may reuse."""

    sockets: frozenset[str] = frozenset()
    links: frozenset[str] = frozenset()


@dataclass
class CheckEnv:
    """What a kind's `check` may consult besides its own spec."""

    config: Config
    owned: Owned
    problems: list[Problem] = field(default_factory=list)

    def in_state_dir(self, path: str) -> bool:
        return os.path.dirname(path) == self.config.daemon.state_dir


class SectionKind(Protocol):
    """The config half of a service kind (the daemon half adds `start`)."""

    #: Top-level TOML section: `[[section]]` when `many`, else `[section]`.
    section: str
    many: bool
    fields: tuple[Field, ...]

    def build(self, values: dict[str, Any], where: Where, dirs: Dirs) -> ServiceSpec:
        """A spec from checked values; may add defaults that depend on other values."""
        ...

    def check(self, spec: ServiceSpec, env: CheckEnv) -> None:
        """Judge the spec against the rest of the config and the machine; append to env.problems."""
        ...


DAEMON_FIELDS = (
    Field("state_dir", string, default=DEFAULT_STATE_DIR, doc="sockets and runtime files; created if missing"),
    Field("control_socket", socket_path, default=None, doc="Unix socket of `vio status/reload/stop`"),
    Field("log_format", choice("json", "text"), default="json"),
    Field("log_level", choice("debug", "info", "warning", "error"), default="info"),
)
DOMAIN_FIELDS = (
    Field("name", name_field, required=True, doc="the guest's name"),
    Field("description", string, default=""),
)


def load_config(path: str, kinds: Sequence[SectionKind], *, owned: Owned = Owned()) -> Config:
    """Load and check `path`; raises ConfigProblems listing everything wrong."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        raise ConfigProblems([Problem(path, 0, 0, "", "config file not found (check the path)")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigProblems([Problem(path, 0, 0, "", f"cannot read the config file: {exc}")]) from None
    return parse_config(text, path, kinds, owned=owned, config_dir=os.path.dirname(os.path.abspath(path)))


def parse_config(text: str, source: str, kinds: Sequence[SectionKind], *, owned: Owned = Owned(),
                 config_dir: str | None = None, state_dir: str | None = None) -> Config:
    """Check config text; `state_dir` overrides the file's [daemon] state_dir."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigProblems([_syntax_problem(source, exc)]) from None
    positions = Positions(text)
    root = Where(source, positions)
    problems: list[Problem] = []
    by_section = {kind.section: kind for kind in kinds}
    known = ["daemon", "domain", *by_section]
    for key in data:
        if key not in known:
            problems.append(root.child(key).problem(f"unknown section; known sections: {', '.join(known)}"))

    settings = _daemon_settings(data.get("daemon", {}), root.child("daemon"), problems, state_dir, config_dir)
    dirs = Dirs(config_dir or settings.state_dir, settings.state_dir)
    domains = _domains(data.get("domain", []), root.child("domain"), dirs, problems)
    services: list[ServiceSpec] = []
    for kind in kinds:
        if kind.section not in data:
            continue
        where = root.child(kind.section)
        value = data[kind.section]
        if kind.many:
            if not isinstance(value, list):
                problems.append(where.problem(f"expected an array of tables ([[{kind.section}]]), got a single table"))
                continue
            entries = [(item, where.child(index)) for index, item in enumerate(value)]
        else:
            entries = [(value, where)]
        for table, place in entries:
            values = read_table(table, kind.fields, place, dirs, problems)
            if values is not None:
                services.append(kind.build(values, place, dirs))

    config = Config(source, settings, tuple(domains), tuple(services))
    _check_whole(config, problems)
    env = CheckEnv(config, owned, problems)
    for spec in config.services:
        by_section[spec.kind].check(spec, env)
    _check_needs(config, problems)
    _check_sockets(config, root, owned, problems)
    if problems:
        raise ConfigProblems(problems)
    return config


def _syntax_problem(source: str, exc: tomllib.TOMLDecodeError) -> Problem:
    import re

    text = str(exc)
    match = re.search(r"\(at line (\d+), column (\d+)\)", text)
    line, column = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    message = re.sub(r"\s*\(at line \d+, column \d+\)", "", text) if match else text
    return Problem(source, line, column, "", f"TOML syntax: {message}")


def _daemon_settings(table: Any, where: Where, problems: list[Problem], state_dir: str | None,
                     config_dir: str | None) -> DaemonSettings:
    base = state_dir or DEFAULT_STATE_DIR
    if isinstance(table, dict) and isinstance(table.get("state_dir"), str) and table["state_dir"] and not state_dir:
        base = os.path.normpath(os.path.join(config_dir or os.getcwd(), table["state_dir"]))
    values = read_table(table, DAEMON_FIELDS, where, Dirs(base, base), problems) or {}
    control = values.get("control_socket") or os.path.join(base, "control.sock")
    return DaemonSettings(base, control, values.get("log_format", "json"), values.get("log_level", "info"))


def _domains(value: Any, where: Where, dirs: Dirs, problems: list[Problem]) -> list[Domain]:
    if not isinstance(value, list):
        problems.append(where.problem("expected an array of tables ([[domain]])"))
        return []
    domains = []
    for index, table in enumerate(value):
        values = read_table(table, DOMAIN_FIELDS, where.child(index), dirs, problems)
        if values is not None:
            domains.append(Domain(values["name"], values["description"], where.child(index)))
    return domains


def _check_whole(config: Config, problems: list[Problem]) -> None:
    """Duplicate names, and references to domains and services that are not there."""
    seen: dict[tuple[str, str], Where] = {}
    for domain in config.domains:
        assert domain.where is not None
        first = seen.setdefault(("domain", domain.name), domain.where)
        if first is not domain.where:
            problems.append(domain.where.child("name").problem(f"duplicate domain name {domain.name!r} (first at line {first.line})"))
    for spec in config.services:
        first = seen.setdefault(spec.key, spec.where)
        if first is not spec.where:
            problems.append(spec.where.child("name").problem(f"duplicate {spec.kind} name {spec.name!r} (first at line {first.line})"))
    domains = {d.name for d in config.domains}
    for spec in config.services:
        if spec.domain is not None and spec.domain not in domains:
            problems.append(spec.where.child("domain").problem(f"no [[domain]] named {spec.domain!r}; add one or fix the name"))


def _check_needs(config: Config, problems: list[Problem]) -> None:
    """Services a spec stands on must exist; what a kind's own check said about that key is not repeated."""
    from .model import format_path

    seen = {spec.key for spec in config.services}
    for spec in config.services:
        for kind, name in spec.needs():
            key = format_path(spec.where.child(kind).path)
            if (kind, name) not in seen and not any(p.key.startswith(key) for p in problems):
                problems.append(spec.where.child(kind).problem(f"no [[{kind}]] named {name!r}"))


def _check_sockets(config: Config, root: Where, owned: Owned, problems: list[Problem]) -> None:
    """Each socket path once, short enough, in an existing directory, and not someone else's."""
    claims: list[tuple[str, Where]] = [(config.daemon.control_socket, root.child("daemon").child("control_socket"))]
    for spec in config.services:
        claims.extend((path, spec.where.child(key)) for key, path in spec.sockets().items())
    first: dict[str, Where] = {}
    for path, where in claims:
        if path in first:
            problems.append(where.problem(f"socket {path} is already used by {_describe(first[path])}"))
            continue
        first[path] = where
        problem = socket_problem(path, config.daemon.state_dir, owned)
        if problem:
            problems.append(where.problem(problem))


def _describe(where: Where) -> str:
    from .model import format_path

    return f"{format_path(where.path)} (line {where.line})"


def socket_problem(path: str, state_dir: str, owned: Owned) -> str | None:
    """Why we could not listen on `path`, or None."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        return f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes; use a shorter state_dir or name"
    parent = os.path.dirname(path)
    if parent != state_dir and not os.path.isdir(parent):
        return f"directory {parent} does not exist; create it or put the socket in the state directory"
    if path in owned.sockets or not os.path.lexists(path):
        return None
    import stat

    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        return f"{path} exists and is not a socket; remove it or choose another path"
    if socket_in_use(path):
        return f"socket {path} is in use by another process (another vio serve?); stop it or choose another path"
    return None


def socket_in_use(path: str) -> bool:
    """Someone listens on `path` (a stale socket file refuses connections)."""
    for kind in (socket.SOCK_SEQPACKET, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(path)
                return True
            except OSError as exc:
                if exc.errno == errno.EPROTOTYPE:
                    continue  # a listener of the other type
                return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    return True


def daemon_settings(path: str) -> DaemonSettings:
    """Only the [daemon] table of a config file (where a running daemon's control socket is)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigProblems([Problem(path, 0, 0, "", f"cannot read the config file: {exc}")]) from None
    problems: list[Problem] = []
    settings = _daemon_settings(data.get("daemon", {}), Where(path, Positions(""), ("daemon",)), problems, None,
                                os.path.dirname(os.path.abspath(path)))
    if problems:
        raise ConfigProblems(problems)
    return settings
