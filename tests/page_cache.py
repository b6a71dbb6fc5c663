"""Evicting a file from the page cache, for tests of the cached and uncached read paths."""

from __future__ import annotations

import os
import subprocess
import time


def drop_from_page_cache(path: str) -> None:
    """Evict the file's pages (fincore, from util-linux, confirms: DONTNEED is only advice)."""
    for _ in range(50):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        resident = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path],
                                  capture_output=True, text=True, check=True).stdout.strip()
        if resident == "0":
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} stays in the page cache ({resident} bytes)")
