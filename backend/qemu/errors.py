"""Errors of the QEMU layer; each carries what a user needs to act (console tail, stderr)."""

from ..errors import BackendError, ConfigError


class QemuNotFoundError(ConfigError):
    """The QEMU system emulator for a guest architecture is not installed."""


class QemuError(BackendError):
    """QEMU refused to start, exited early, or rejected a QMP command."""


class GuestTimeoutError(BackendError):
    """The guest did not print what we waited for in time."""
