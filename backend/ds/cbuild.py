"""Build libds.so and install ds.h (cffi embedding): `vio ds build-libds` or build(out_dir).

The shared library embeds this interpreter; its start-up code puts this
checkout and the interpreter's import path first, then defines every ds_*
symbol through cabi.install. A C program needs only ds.h and -lds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
C_DIR = os.path.join(HERE, "c")
ROOT = os.path.dirname(os.path.dirname(HERE))
EXAMPLES = ("provider", "client", "bench_client")


def _declarations() -> tuple[str, str]:
    """ds.h split for cffi: the types (cdef) and the functions (embedding_api)."""
    with open(os.path.join(C_DIR, "ds.h")) as header:
        text = re.sub(r"/\*.*?\*/", "", header.read(), flags=re.S)
    body = text[text.index("typedef enum") : text.index('#ifdef __cplusplus\n}')]
    body = re.sub(r"^#.*$", "", body, flags=re.M)
    split = body.index("extern int ds_init")
    types = body[:split].replace("(0)", "0")
    return types, body[split:].replace("extern ", "")


def build(out_dir: str) -> str:
    """Compile libds.so into out_dir (with ds.h beside it); returns the library's path."""
    import cffi

    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    types, functions = _declarations()
    ffi = cffi.FFI()
    ffi.cdef(types)
    ffi.embedding_api(functions)
    ffi.set_source("_libds_cffi", '#include "ds.h"', include_dirs=[C_DIR],
                   extra_link_args=[f"-Wl,-rpath,{sysconfig.get_config_var('LIBDIR')}"])
    paths = [ROOT] + [p for p in sys.path if p and os.path.isdir(p)]
    ffi.embedding_init_code(
        f"import sys\nsys.path[:0] = [p for p in {paths!r} if p not in sys.path]\n"
        "from _libds_cffi import ffi\nfrom backend.ds.cabi import install\ninstall(ffi)\n"
    )
    with tempfile.TemporaryDirectory(prefix="libds-build-") as tmp:
        built = ffi.compile(tmpdir=tmp, target="libds.*", verbose=False)
        library = os.path.join(out_dir, "libds.so")
        shutil.copy(built, library)
    shutil.copy(os.path.join(C_DIR, "ds.h"), out_dir)
    return library


def build_examples(out_dir: str) -> str:
    """libds.so plus the C examples (provider, client, bench_client) in out_dir; returns out_dir."""
    build(out_dir)
    out_dir = os.path.abspath(out_dir)
    for name in EXAMPLES:
        subprocess.run(
            ["gcc", "-Wall", "-Werror", "-O2", "-o", os.path.join(out_dir, name), os.path.join(C_DIR, f"{name}.c"),
             f"-I{out_dir}", f"-L{out_dir}", "-lds", f"-Wl,-rpath,{out_dir}"],
            check=True,
        )
    return out_dir
