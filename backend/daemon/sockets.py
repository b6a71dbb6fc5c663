"""Socket files and listeners the daemon opens are its own to close and remove."""

from __future__ import annotations

import contextlib
import os
import stat


def remove_socket(path: str) -> None:
    """Unlink `path` if it is (still) a socket; anything else there is not ours."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
