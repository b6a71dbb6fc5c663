"""Error types shared by every layer: raised where detected, handled at the edge."""


class BackendError(Exception):
    """Base of every error this package raises on purpose."""


class ProtocolError(BackendError):
    """A peer (or its bytes) broke a wire protocol: malformed, unexpected, out of order."""


class GuestError(BackendError):
    """A guest or peer asked for memory or resources it has no right to."""


class ConfigError(BackendError):
    """A configuration file or command line is wrong; says where."""


class LinkDownError(BackendError):
    """An operation needs an established link and the link is not up."""
