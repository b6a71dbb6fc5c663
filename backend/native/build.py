"""Compile backend/native/*.c into one cffi extension, cached by a hash of the sources."""

from __future__ import annotations

import fcntl
import glob
import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import sysconfig
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODULE = "_vio_native"
FLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-fno-strict-aliasing"]


class NativeBuildError(RuntimeError):
    """The C data path could not be compiled (no gcc or Python headers?)."""


def _files(source_dir: str, pattern: str) -> list[str]:
    return sorted(glob.glob(os.path.join(source_dir, pattern)))


def _fingerprint(source_dir: str) -> str:
    digest = hashlib.sha256(sys.version.encode() + " ".join(FLAGS).encode())
    for path in _files(source_dir, "*.c") + _files(source_dir, "*.cdef") + _files(source_dir, "*.h"):
        digest.update(os.path.basename(path).encode())
        with open(path, "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()[:16]


def cache_dir() -> str:
    return os.environ.get("VIO_NATIVE_CACHE") or os.path.join(ROOT, ".cache", "native")


def _compile(source_dir: str, out_dir: str) -> str:
    import cffi

    sources = _files(source_dir, "*.c")
    ffi = cffi.FFI()
    for path in _files(source_dir, "*.cdef"):
        with open(path) as handle:
            ffi.cdef(handle.read())
    includes = "".join(f'#include "{os.path.basename(p)[:-2]}.h"\n' for p in sources)
    ffi.set_source(MODULE, includes, sources=sources, include_dirs=[source_dir], extra_compile_args=FLAGS)
    with tempfile.TemporaryDirectory(prefix="vio-native-") as tmp:
        try:
            built = ffi.compile(tmpdir=tmp, verbose=False)
        except Exception as exc:  # distutils/setuptools raise several kinds
            raise NativeBuildError(f"compiling {', '.join(map(os.path.basename, sources))} failed: {exc}") from exc
        target = os.path.join(out_dir, os.path.basename(built))
        os.replace(built, target + ".tmp")
        os.replace(target + ".tmp", target)
        return target


def build(source_dir: str = HERE) -> str:
    """The path of the extension for the current sources, compiling it if needed."""
    out_dir = os.path.join(cache_dir(), _fingerprint(source_dir))
    os.makedirs(out_dir, exist_ok=True)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    target = os.path.join(out_dir, MODULE + suffix)
    if os.path.exists(target):
        return target
    with open(os.path.join(out_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same sources
        if not os.path.exists(target):
            _compile(source_dir, out_dir)
    return target


def load(source_dir: str = HERE) -> tuple[Any, Any]:
    path = build(source_dir)
    spec = importlib.util.spec_from_file_location(MODULE, path, loader=importlib.machinery.ExtensionFileLoader(MODULE, path))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ffi, module.lib
