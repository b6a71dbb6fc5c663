"""The `vio vds` and `vio disk` commands, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys

from .test_two_process import MiB, Server


def vio(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend", *args], capture_output=True, text=True, timeout=60)


def test_disk_commands_against_a_server(tmp_path) -> None:
    server = Server(tmp_path, f"d0={tmp_path}/d0.img,size={16 * MiB}")
    try:
        sock = server.socket("d0")
        info = vio("disk", "--socket", sock, "info")
        assert info.returncode == 0, info.stderr
        assert "32768 blocks (16777216 bytes)" in info.stdout and "device id type 3" in info.stdout
        pattern = tmp_path / "pattern"
        pattern.write_bytes(os.urandom(8192))
        assert vio("disk", "--socket", sock, "write", "65536", str(pattern)).returncode == 0
        back = tmp_path / "back"
        assert vio("disk", "--socket", sock, "--inband", "read", "65536", "8192", "--output", str(back)).returncode == 0
        assert back.read_bytes() == pattern.read_bytes()
        assert "no label" in vio("disk", "--socket", sock, "label").stdout
        labelled = vio("disk", "--socket", sock, "label", "--init", "sun")
        assert labelled.returncode == 0 and "slice 2: tag 5" in labelled.stdout
    finally:
        assert server.stop() == 0
    listing = subprocess.run(["fdisk", "-l", str(tmp_path / "d0.img")], capture_output=True, text=True, check=True).stdout
    assert "Disklabel type: sun" in listing


def test_bad_command_lines_give_clear_errors(tmp_path) -> None:
    result = vio("vds", "--disk", "nopath", "--socket-dir", str(tmp_path))
    assert result.returncode == 2 and "NAME=PATH" in result.stderr
    result = vio("vds", "--disk", "d=/nonexistent/dir/x.img", "--socket-dir", str(tmp_path))
    assert result.returncode == 1 and "cannot open backing store" in result.stderr
    result = vio("disk", "--socket", str(tmp_path / "missing.sock"), "info")
    assert result.returncode == 1 and "vio disk:" in result.stderr
    result = vio("vds", "--disk", "d=x.img,bogus", "--socket-dir", str(tmp_path))
    assert result.returncode == 2 and "unknown disk option" in result.stderr
