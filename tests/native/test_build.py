"""The native build: compiles a component, reuses the build, rebuilds on change, reports failures."""

from __future__ import annotations

import os

import pytest

from backend.native.build import NativeBuildError, build, load


def _component(directory: str, body: str) -> None:
    with open(os.path.join(directory, "sums.h"), "w") as header:
        header.write("#include <stddef.h>\n#include <stdint.h>\nuint64_t sum_bytes(const uint8_t *data, size_t n);\n")
    with open(os.path.join(directory, "sums.cdef"), "w") as cdef:
        cdef.write("uint64_t sum_bytes(const uint8_t *data, size_t n);\n")
    with open(os.path.join(directory, "sums.c"), "w") as source:
        source.write('#include "sums.h"\n' + body)


SUM = "uint64_t sum_bytes(const uint8_t *data, size_t n) { uint64_t s = 0; for (size_t i = 0; i < n; i++) s += data[i]; return s; }\n"


@pytest.fixture
def sources(tmp_path, monkeypatch):
    monkeypatch.setenv("VIO_NATIVE_CACHE", str(tmp_path / "cache"))
    directory = tmp_path / "src"
    directory.mkdir()
    return str(directory)


def test_builds_and_calls_a_component(sources):
    _component(sources, SUM)
    ffi, lib = load(sources)
    data = bytes(range(200))
    assert lib.sum_bytes(ffi.from_buffer(data), len(data)) == sum(data)


def test_reuses_a_build_and_rebuilds_when_a_source_changes(sources):
    _component(sources, SUM)
    first = build(sources)
    stamp = os.stat(first).st_mtime_ns
    assert build(sources) == first and os.stat(first).st_mtime_ns == stamp
    _component(sources, SUM.replace("s += data[i]", "s += 2u * data[i]"))
    second = build(sources)
    assert second != first
    _, lib = load(sources)
    assert lib.sum_bytes(b"\x01\x02", 2) == 6


def test_a_compile_error_is_reported(sources):
    _component(sources, "this is not C;\n")
    with pytest.raises(NativeBuildError, match="sums.c"):
        build(sources)
