"""The README's main command, as a user runs it (without the set-up step): a real sparc64 guest on the daemon."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_boots_the_sparc64_guest_on_the_daemon_and_cleans_up() -> None:
    # The first run builds the patched qemu-system-sparc64 (cached afterwards).
    result = subprocess.run([sys.executable, "-m", "backend", "demo"], capture_output=True, text=True, timeout=3600)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "vhost_blk disk0:" in out and "vhost_net net0:" in out
    assert "sparc64 guest started" in out and "DISK-WRITTEN" in out and "PING-OK" in out
    assert "sector 0: 'hello from the sparc64 guest over vhost-user-blk (sparc64)'" in out
    assert "left behind: nothing" in out
    assert out.rstrip().endswith("everything was shut down cleanly.")
    assert "FAILED" not in out
