"""The service domain's config file: typed fields, positions for messages, and the loader."""

from .default import DEFAULT_CONFIG
from .load import CheckEnv, Owned, SectionKind, load_config, parse_config
from .model import (
    Config,
    ConfigProblems,
    DaemonSettings,
    Domain,
    Problem,
    ServiceSpec,
    Where,
)

__all__ = [
    "DEFAULT_CONFIG", "CheckEnv", "Config", "ConfigProblems", "DaemonSettings", "Domain", "Owned", "Problem",
    "SectionKind", "ServiceSpec", "Where", "load_config", "parse_config",
]
