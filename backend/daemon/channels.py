"""What `vio status` says about one VIO-over-LDC connection."""

from __future__ import annotations

from typing import Any

from ..vio.aio import VioEndpoint


def describe_channel(endpoint: VioEndpoint) -> dict[str, Any]:
    """LDC link state and version, VIO phase and negotiated version."""
    channel = endpoint.ldc.channel
    ldc_version = getattr(channel, "version", None)
    state = getattr(channel, "state", None)
    session = endpoint.session
    return {
        "ldc_state": "closed" if endpoint.ldc.closed else (state.value if state is not None else "raw"),
        "ldc_version": format_version(ldc_version),
        "vio_phase": session.phase.name.lower(),
        "vio_version": format_version(session.version),
        "last_reset": endpoint.ldc.last_reset,
    }


def format_version(version: tuple[int, int] | None) -> str | None:
    return None if version is None else f"{version[0]}.{version[1]}"
