"""The README's main command, as a user runs it (without the set-up step)."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_every_layer_end_to_end() -> None:
    result = subprocess.run([sys.executable, "-m", "backend", "demo"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("shared memory 1048576 bytes") == 2
    assert "read back 1 MiB through the ring" in out and ": match" in out
    assert "Disklabel type: sun" in out
    assert out.count("echo reply from 198.19.99.2") == 3
    assert "removed" in out and out.rstrip().endswith("==> done")
