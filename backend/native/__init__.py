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


def pin(view: memoryview) -> tuple[Any, Any]:
    """A C pointer to the bytes of `view`, and the object that keeps them alive.

    The C buffer holds the object under the view (an mmap or bytearray), not
    the view itself: a view exported to C and caught in a garbage cycle makes
    the collector fail ("memoryview has 1 exported buffer") when it clears the
    view first."""
    ffi, _ = native()
    base = ffi.from_buffer("uint8_t[]", view.obj)
    with ffi.from_buffer("uint8_t[]", view) as probe:
        offset = int(ffi.cast("uintptr_t", probe)) - int(ffi.cast("uintptr_t", base))
    if not view.contiguous or not 0 <= offset <= len(base) - view.nbytes:
        raise ValueError("memory not inside its own buffer")
    return base, base + offset
