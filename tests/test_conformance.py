"""Wire-format conformance: our vectors plus any named in $VIO_CONFORMANCE_VECTORS.

Vectors from other implementations are checked without code changes by pointing
the environment variable at their files (':'-separated). Vectors for messages we
do not implement yet are counted and reported, never silently skipped; in our
own files there must be none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from backend.conformance import FORMAT, VectorFileError, implemented, load_vectors, run_vector

ROOT = Path(__file__).resolve().parent.parent
OWN_FILES = sorted((ROOT / "tests" / "vectors").glob("*.json"))
ENV = "VIO_CONFORMANCE_VECTORS"
EXTRA_FILES = [Path(p) for p in os.environ.get(ENV, "").split(":") if p]


def _collect() -> tuple[list[Any], list[Any], dict[Path, str], list[tuple[Path, str]]]:
    """Load every file once at collection: vectors to run, file errors, not-implemented ones."""
    runnable, files, errors, missing = [], [], {}, []
    for path in OWN_FILES + EXTRA_FILES:
        files.append(pytest.param(path, id=str(path)))
        try:
            vectors = load_vectors(path)
        except VectorFileError as exc:
            errors[path] = str(exc)
            continue
        for vector in vectors:
            if implemented(vector):
                runnable.append(pytest.param(vector, id=vector["name"]))
            else:
                missing.append((path, f"{vector['name']} ({vector['message']})"))
    return runnable, files, errors, missing


RUNNABLE, FILES, FILE_ERRORS, NOT_IMPLEMENTED = _collect()


@pytest.mark.parametrize("path", FILES)
def test_vector_file_loads(path: Path) -> None:
    """A file in an unknown format (or unreadable) is an error, not an empty file."""
    if path in FILE_ERRORS:
        pytest.fail(FILE_ERRORS[path], pytrace=False)


@pytest.mark.parametrize("vector", RUNNABLE)
def test_vector(vector: dict[str, Any]) -> None:
    problems = run_vector(vector)
    if problems:
        pytest.fail(f"{vector['name']}:\n  " + "\n  ".join(problems), pytrace=False)


def test_not_implemented_are_reported() -> None:
    """Show which vectors we could not check; our own files must have none."""
    if NOT_IMPLEMENTED:
        names = "\n  ".join(f"{path}: {name}" for path, name in NOT_IMPLEMENTED)
        report = f"{len(NOT_IMPLEMENTED)} conformance vector(s) not implemented:\n  {names}"
        print(report)
        warnings.warn(report, UserWarning, stacklevel=1)
    own = [name for path, name in NOT_IMPLEMENTED if path in OWN_FILES]
    assert not own, f"our own vectors name messages we do not implement: {own}"


def test_unknown_format_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"format": "sun4v-wire-vectors/2", "vectors": []}))
    with pytest.raises(VectorFileError, match="unknown vectors format"):
        load_vectors(path)


# --- the environment variable really runs: a child pytest over an extra file ----------

GOOD = {
    "name": "extra: ctrl info rts env=unreliable",
    "message": "ldc.packet",
    "fields": {"mode": 1, "type": 1, "stype": 1, "ctrl": 2, "env": 1, "seqid": 7},
    "hex": "0101020100000007" + "00" * 56,
}


CHILD = "VIO_CONFORMANCE_CHILD"
child_only_in_parent = pytest.mark.skipif(CHILD in os.environ, reason="inside a child run: no grandchildren")


def _run_child(tmp_path: Path, doc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "extra.json"
    path.write_text(json.dumps(doc))
    env = {**os.environ, ENV: str(path), CHILD: "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_conformance.py", "-v", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


@child_only_in_parent
def test_child_run_fails_on_wrong_hex(tmp_path: Path) -> None:
    bad = {**GOOD, "name": "extra: wrong hex", "hex": "0101020100000008" + "00" * 56}
    result = _run_child(tmp_path, {"format": FORMAT, "vectors": [bad]})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "extra: wrong hex" in result.stdout and "1 failed" in result.stdout, result.stdout


@child_only_in_parent
def test_child_run_passes_on_correct_extra_vector(tmp_path: Path) -> None:
    result = _run_child(tmp_path, {"format": FORMAT, "vectors": [GOOD]})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[extra: ctrl info rts env=unreliable] PASSED" in result.stdout, result.stdout


@child_only_in_parent
def test_child_run_fails_on_unknown_format(tmp_path: Path) -> None:
    result = _run_child(tmp_path, {"format": "something-else/1", "vectors": [GOOD]})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "unknown vectors format" in result.stdout, result.stdout


@child_only_in_parent
def test_child_run_reports_not_implemented(tmp_path: Path) -> None:
    other = {"name": "extra: unknown", "message": "ds.no_such_message", "fields": {}, "hex": "00" * 64}
    result = _run_child(tmp_path, {"format": FORMAT, "vectors": [GOOD, other]})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 conformance vector(s) not implemented" in result.stdout, result.stdout
    assert "extra: unknown (ds.no_such_message)" in result.stdout, result.stdout
