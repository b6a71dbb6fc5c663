"""The vocabulary of config tables: typed fields and the converters that check them.

A section kind declares its keys as `Field`s; `read_table` turns one TOML
table into checked Python values, or into one problem per bad key (unknown,
missing, wrong type, out of range). Converters raise `Invalid` with a message
that says what was expected; the loader adds the place.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .model import Problem, Where

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class Invalid(ValueError):
    """A value does not fit its field; the message says what would."""


@dataclass(frozen=True)
class Dirs:
    """What relative paths are relative to."""

    #: Directory of the config file (disk images, capture files).
    config: str
    #: The daemon's state directory (sockets).
    state: str


Converter = Callable[[Any, Dirs], Any]


@dataclass(frozen=True)
class Field:
    key: str
    convert: Converter
    required: bool = False
    default: Any = None
    doc: str = ""


def read_table(table: Any, fields: tuple[Field, ...], where: Where, dirs: Dirs, problems: list[Problem]) -> dict[str, Any] | None:
    """Checked values of every field (defaults filled in), or None after adding problems."""
    if not isinstance(table, Mapping):
        problems.append(where.problem(f"expected a table, got {type_name(table)}"))
        return None
    known = {f.key: f for f in fields}
    values: dict[str, Any] = {}
    ok = True
    for key in table:
        if key not in known:
            hint = _closest(key, known)
            problems.append(where.child(key).problem(f"unknown key{hint}; known keys: {', '.join(known)}"))
            ok = False
    for f in fields:
        if f.key not in table:
            if f.required:
                problems.append(where.problem(f"missing required key {f.key!r}" + (f" ({f.doc})" if f.doc else "")))
                ok = False
            values[f.key] = f.default
            continue
        try:
            values[f.key] = f.convert(table[f.key], dirs)
        except Invalid as exc:
            problems.append(where.child(f.key).problem(str(exc)))
            ok = False
    return values if ok else None


def _closest(key: str, known: Mapping[str, Field]) -> str:
    import difflib

    match = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return type(value).__name__


# -- converters ----------------------------------------------------------------------


def string(value: Any, dirs: Dirs) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {type_name(value)}")
    return value


def name(value: Any, dirs: Dirs) -> str:
    text = string(value, dirs)
    if not _NAME.match(text):
        raise Invalid(f"{text!r} is not a name: use 1-63 letters, digits, '_', '.', '-', starting with a letter or digit")
    return text


def boolean(value: Any, dirs: Dirs) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {type_name(value)}")
    return value


def integer(low: int, high: int) -> Converter:
    def convert(value: Any, dirs: Dirs) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an integer, got {type_name(value)}")
        if not low <= value <= high:
            raise Invalid(f"{value} is out of range {low}..{high}")
        return value

    return convert


def seconds(value: Any, dirs: Dirs) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(f"expected a number of seconds, got {type_name(value)}")
    if value < 0:
        raise Invalid(f"{value} seconds cannot be negative")
    return float(value)


def size(value: Any, dirs: Dirs) -> int:
    """Bytes: an integer, or a string like "64M" / "2GiB" (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        number = int(match.group(1)) * _UNITS[match.group(2).upper()]
    else:
        raise Invalid(f"expected a size in bytes (an integer or a string like \"64M\"), got {value!r}")
    if number < 0:
        raise Invalid(f"a size cannot be negative: {number}")
    return number


def choice(*options: str) -> Converter:
    def convert(value: Any, dirs: Dirs) -> str:
        text = string(value, dirs)
        if text not in options:
            raise Invalid(f"{text!r} is not one of {', '.join(repr(o) for o in options)}")
        return text

    return convert


def vlan_id(value: Any, dirs: Dirs) -> int:
    return integer(1, 4094)(value, dirs)


def vlan_ids(value: Any, dirs: Dirs) -> frozenset[int]:
    if not isinstance(value, list):
        raise Invalid(f"expected an array of VLAN ids (1..4094), got {type_name(value)}")
    out = set()
    for index, item in enumerate(value):
        try:
            out.add(vlan_id(item, dirs))
        except Invalid as exc:
            raise Invalid(f"element {index}: {exc}") from None
    return frozenset(out)


def mac(value: Any, dirs: Dirs) -> str:
    text = string(value, dirs)
    if not _MAC.match(text):
        raise Invalid(f"{text!r} is not a MAC address like 02:00:00:00:00:01")
    if int(text[:2], 16) & 1:
        raise Invalid(f"{text} is a multicast address; a station needs a unicast one")
    return text.lower()


def ifname(value: Any, dirs: Dirs) -> str:
    from ..errors import ConfigError
    from ..vswitch.tap import check_ifname

    text = string(value, dirs)
    try:
        check_ifname(text)
    except ConfigError as exc:
        raise Invalid(str(exc)) from None
    return text


def file_path(value: Any, dirs: Dirs) -> str:
    """A path; relative ones are relative to the config file's directory."""
    text = string(value, dirs)
    if not text or "\0" in text:
        raise Invalid("expected a non-empty path")
    return os.path.normpath(os.path.join(dirs.config, os.path.expanduser(text)))


def socket_path(value: Any, dirs: Dirs) -> str:
    """A Unix socket path; relative ones are inside the state directory."""
    text = string(value, dirs)
    if not text or "\0" in text:
        raise Invalid("expected a non-empty socket path")
    return os.path.normpath(os.path.join(dirs.state, text))
