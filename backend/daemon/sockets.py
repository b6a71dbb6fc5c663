"""Socket files the daemon listens on are its own to remove."""

from __future__ import annotations

import contextlib
import os
import stat


def remove_socket(path: str) -> None:
    """Unlink `path` if it is (still) a socket; anything else there is not ours."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
