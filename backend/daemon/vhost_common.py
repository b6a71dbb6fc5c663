"""What the vhost-user kinds share: a guest's socket, what `vio status` says about it, and the domain rule.

A vhost-user socket belongs to one QEMU (one front-end at a time), so every
vhost-user service names the domain it is for; `vio guest start` finds a
domain's devices by that name.
"""

from __future__ import annotations

from typing import Any

from ..config.load import CheckEnv
from ..config.model import ServiceSpec


def check_domain(spec: ServiceSpec, env: CheckEnv) -> None:
    """vhost-user devices are wired into one guest: `domain` is required."""
    if spec.domain is None:
        env.problems.append(spec.where.problem(
            f"missing required key 'domain' (the guest whose QEMU connects to this {spec.kind} socket)"))


def describe_connection(server: Any) -> dict[str, Any]:
    """Front-end connected or not, and the virtio/vhost-user features it negotiated."""
    connection = server.connection
    if connection is None or connection.closed:
        return {"connected": False, "features": None, "protocol_features": None}
    protocol = connection.protocol
    return {"connected": True, "features": f"{protocol.features:#x}",
            "protocol_features": f"{int(protocol.protocol_features):#x}"}
