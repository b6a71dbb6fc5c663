"""Real processes for the guest simulator tests: the LDC back-end (`vio ldc-vhost`) and `vio guest-sim`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Process:
    """A `vio` subcommand that prints one line once it is ready."""

    def __init__(self, *args: str, ready: str) -> None:
        self.popen = subprocess.Popen([sys.executable, "-m", "backend", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
        assert self.popen.stdout is not None
        self.line = self.popen.stdout.readline()
        if ready not in self.line:
            self.stop()
            raise RuntimeError(f"vio {args[0]} did not start: {self.line!r} {self.popen.stderr.read() if self.popen.stderr else ''}")

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


@contextmanager
def running(*args: str, ready: str) -> Iterator[Process]:
    process = Process(*args, ready=ready)
    try:
        yield process
    finally:
        process.stop()


def backend(*args: str):
    return running("ldc-vhost", *args, ready="serving on")


def guest(*args: str):
    return running("guest-sim", *args, ready="ready")
