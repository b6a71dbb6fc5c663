"""QEMU option groups: one description of a guest, rendered both as a command line
and as a `-readconfig` file, so the two never drift apart.

A group is what QEMU calls a QemuOpts group (`machine`, `object`, `drive`, `chardev`,
`netdev`, `device`, ...): a name, an optional id and ordered properties. QEMU 7.2
accepts every group we use both as `-<flag> key=value,...` and as an INI section
`[group "id"]` with `key = "value"` lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError

# command-line flag of each group (the readconfig section name is the group name)
FLAGS = {
    "object": "-object",
    "machine": "-machine",
    "memory": "-m",
    "smp-opts": "-smp",
    "drive": "-drive",
    "chardev": "-chardev",
    "netdev": "-netdev",
    "device": "-device",
}


@dataclass(frozen=True)
class OptionGroup:
    group: str
    id: str | None
    props: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        if self.group not in FLAGS:
            raise ConfigError(f"unknown QEMU option group {self.group!r} (known: {', '.join(FLAGS)})")

    @classmethod
    def of(cls, group: str, id: str | None, props: dict[str, str | int | bool | None]) -> OptionGroup:
        """Properties in QEMU's spelling and order; None leaves a property out, bools become on/off."""
        return cls(group, id, tuple((key, _text(value)) for key, value in props.items() if value is not None))

    def as_qmp(self) -> dict[str, str]:
        """device_add/netdev_add arguments (QEMU 7.2 accepts the command-line strings there)."""
        return ({"id": self.id} if self.id is not None else {}) | dict(self.props)

    def argv(self) -> list[str]:
        fields = [f"{key}={_escape(value)}" for key, value in self.props]
        if self.id is not None:
            # after the type-like first property (driver=, qom-type=, backend=), for readability
            fields.insert(min(1, len(fields)), f"id={self.id}")
        return [FLAGS[self.group], ",".join(fields)]


def _text(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _escape(value: str) -> str:
    """QemuOpts doubles a comma inside a value."""
    return value.replace(",", ",,")


def command_line(groups: list[OptionGroup]) -> list[str]:
    return [arg for group in groups for arg in group.argv()]


def render_readconfig(groups: list[OptionGroup], header: str = "") -> str:
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for group in groups:
        if lines:
            lines.append("")
        lines.append(f'[{group.group} "{group.id}"]' if group.id is not None else f"[{group.group}]")
        lines.extend(f'  {key} = "{_quote(value)}"' for key, value in group.props)
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    if '"' in value or "\n" in value:
        raise ConfigError(f"a readconfig value cannot hold quotes or newlines: {value!r}")
    return value


_SECTION = re.compile(r'^\[(?P<group>[a-z-]+)(?: "(?P<id>[^"]*)")?\]$')
_PROPERTY = re.compile(r'^(?P<key>[A-Za-z0-9_.-]+)\s*=\s*"(?P<value>[^"]*)"$')


def parse_readconfig(text: str, source: str = "<config>") -> list[OptionGroup]:
    """The subset of QEMU's readconfig syntax that render_readconfig writes."""
    groups: list[OptionGroup] = []
    current: tuple[str, str | None, list[tuple[str, str]]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        section = _SECTION.match(line)
        if section:
            if current:
                groups.append(OptionGroup(current[0], current[1], tuple(current[2])))
            current = (section["group"], section["id"], [])
            continue
        prop = _PROPERTY.match(line)
        if prop is None or current is None:
            raise ConfigError(f"{source}:{number}: expected [group \"id\"] or key = \"value\", got {raw!r}")
        current[2].append((prop["key"], prop["value"]))
    if current:
        groups.append(OptionGroup(current[0], current[1], tuple(current[2])))
    return groups
