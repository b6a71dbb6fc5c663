"""The data-path loops written in C (cffi, API mode), compiled once per source change.

Why C: the hot loops of the LDoms data paths (descriptor-ring walks, frame
forwarding, packet batches) cost tens of microseconds of Python per request or
frame; the issues' speed targets need a few. Everything else (protocol state,
decisions, errors, logging) stays in Python.

Layout: each component is `<name>.c` plus `<name>.cdef` (the declarations cffi
exposes) in this directory; all of them become one extension module. `lib()`
returns it, building it first when no build of exactly these sources exists
(under `.cache/native/` of the checkout, or `$VIO_NATIVE_CACHE`). The build
needs gcc and the Python headers, which scripts/setup-env installs; it runs at
set-up time (`python -m backend.native`) so that tests and the daemon find it.
"""

from __future__ import annotations

from typing import Any

from .build import load

_loaded: tuple[Any, Any] | None = None


def native() -> tuple[Any, Any]:
    """(ffi, lib) of the compiled extension, built on first use."""
    global _loaded
    if _loaded is None:
        _loaded = load()
    return _loaded
