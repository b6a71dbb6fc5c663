"""Start DS agents as processes: two domains joined by one LDC channel (tests, benchmark, demos)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class AgentProcess:
    """`vio ds agent` in its own process; `socket` is what VIO_DS_SOCKET should name."""

    domain: str
    dhdl: int
    socket: str
    ports: tuple[str, ...]  # ID:PEER:DHDL:listen|connect:PATH
    process: subprocess.Popen | None = None

    def start(self) -> AgentProcess:
        command = [sys.executable, "-m", "backend", "ds", "agent", "--socket", self.socket, "--domain", self.domain, "--dhdl", str(self.dhdl)]
        for port in self.ports:
            command += ["--port", port]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # printed once the control socket listens
        if "ds agent" not in line:
            self.stop()
            raise RuntimeError(f"DS agent {self.domain} did not start: {line!r}")
        return self

    def environment(self) -> dict[str, str]:
        return {**os.environ, "VIO_DS_SOCKET": self.socket, "PYTHONPATH": ROOT}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def two_domains(directory: str, control: str = "primary", guest: str = "ldg1", guest_dhdl: int = 5) -> tuple[AgentProcess, AgentProcess]:
    """A control domain (dhdl 0, the DS responder) and a guest (the initiator) over one LDC channel."""
    ldc = os.path.join(directory, "ds-ldc.sock")
    primary = AgentProcess(control, 0, os.path.join(directory, f"{control}.sock"), (f"1:{guest}:{guest_dhdl}:listen:{ldc}",)).start()
    try:
        other = AgentProcess(guest, guest_dhdl, os.path.join(directory, f"{guest}.sock"), (f"1:{control}:0:connect:{ldc}",)).start()
    except BaseException:
        primary.stop()
        raise
    return primary, other
