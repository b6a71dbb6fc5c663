"""What `vio guest` asks the daemon: a domain's devices, and devices attached at run time.

`vio guest start` builds QEMU's command line from `domain_devices`, so the
guest is wired to exactly the sockets the daemon serves. An attached device
is a TOML table (`attached_table`) the daemon appends to its config, so it is
checked like a file's entry (types, paths, duplicate names, sockets in use).
"""

from __future__ import annotations

import json
from typing import Any

from ..config.model import Config
from ..errors import ConfigError
from .core import Daemon

#: Kinds QEMU has a device for, and so `vio guest attach` may add.
PLUGGABLE = ("vhost_blk", "vhost_net")
#: What a guest needs to know of each device kind (besides kind, name and socket).
_DEVICE_KEYS = {"vhost_blk": ("queues", "read_only"), "vhost_net": ("mac", "mtu", "queues"), "ldc": ("disks", "vnets", "ds")}


def domain_devices(daemon: Daemon, name: str) -> dict[str, Any]:
    """The domain's running vhost-user devices and whether its DS is up."""
    if name not in {d.name for d in daemon.config.domains}:
        known = ", ".join(d.name for d in daemon.config.domains) or "none"
        raise ConfigError(f"the daemon serves no domain {name!r} (domains: {known})")
    devices = [device_entry(daemon, spec.key) for spec, _ in daemon.services() if spec.domain == name and spec.kind in _DEVICE_KEYS]
    ds_ready = False
    if ("ds", "ds") in {spec.key for spec, _ in daemon.services()}:
        ds_ready = daemon.service("ds", "ds").ready(name)  # type: ignore[attr-defined]
    ds_socket = next((spec.socket for spec, _ in daemon.services() if spec.kind == "ds"), None)  # type: ignore[attr-defined]
    return {"name": name, "state_dir": daemon.config.daemon.state_dir, "devices": devices,
            "ds_ready": ds_ready, "ds_socket": ds_socket}


def device_entry(daemon: Daemon, key: tuple[str, str]) -> dict[str, Any]:
    spec = next(spec for spec, _ in daemon.services() if spec.key == key)
    entry: dict[str, Any] = {"kind": spec.kind, "name": spec.name, "socket": spec.sockets()["socket"]}
    for field_name in _DEVICE_KEYS[spec.kind]:
        value = getattr(spec, field_name)
        entry[field_name] = list(value) if isinstance(value, tuple) else value
    return entry


def attached_table(config: Config, request: dict[str, Any]) -> tuple[tuple[str, str], str]:
    """((kind, name), TOML text) for an `attach` request; ConfigError when it cannot be one."""
    kind, domain, values = request.get("kind"), request.get("domain"), request.get("values")
    if kind not in PLUGGABLE:
        raise ConfigError(f"cannot attach a {kind!r}: a guest takes {' or '.join(PLUGGABLE)} devices")
    if not isinstance(values, dict) or not isinstance(values.get("name"), str):
        raise ConfigError("attach needs values with at least a name")
    if domain not in {d.name for d in config.domains}:
        raise ConfigError(f"the daemon serves no domain {domain!r}")
    if config.service(kind, values["name"]) is not None:
        raise ConfigError(f"a {kind} named {values['name']!r} already exists; choose another name")
    lines = [f"[[{kind}]]", f"domain = {_toml(domain)}"]
    lines += [f"{key} = {_toml(value)}" for key, value in values.items() if key != "domain"]
    return (kind, values["name"]), "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    """A TOML value for the scalars and arrays a device table holds (JSON strings are TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    raise ConfigError(f"a device value must be a string, number, boolean or array, not {type(value).__name__}")
