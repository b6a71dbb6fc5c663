"""Running `vio serve` as a real process, and the clients the tests drive through it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

from backend.control import ControlError, request
from backend.vswitch.packets import arp, icmp_echo, parse_arp, parse_icmp
from backend.vswitch.tap import link_info, netlink


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


class Served:
    """A `vio serve CONFIG` process; its JSON log lines end up in `log`."""

    def __init__(self, config: str, control: str, log) -> None:
        self.control = control
        self.log = log
        self._log_file = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "backend", "serve", config],
                                        stdout=subprocess.DEVNULL, stderr=self._log_file)
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"vio serve exited with {self.process.returncode}: {self.log.read_text()}")
            try:
                self.status()
                return
            except ControlError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def status(self) -> dict:
        return request(self.control, "status")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._log_file.close()


def link_exists(name: str) -> bool:
    return netlink(lambda ipr: link_info(ipr, ifname=name)) is not None


def sockets_in(directory: str) -> list[str]:
    import stat

    return sorted(n for n in os.listdir(directory) if stat.S_ISSOCK(os.lstat(os.path.join(directory, n)).st_mode))


async def receive_matching(client, predicate, timeout: float = 5.0) -> bytes:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        frame = await client.receive(max(0.01, deadline - asyncio.get_running_loop().time()))
        if predicate(frame):
            return frame


async def ping_host(client, our_ip: str, host_ip: str, seq: int) -> bytes:
    """ARP for the host behind the uplink, then ping it; returns its MAC. The host's kernel answers."""
    client.send(arp(1, client.mac, our_ip, bytes(6), host_ip))
    reply = await receive_matching(client, lambda f: (parse_arp(f) or (0,))[0] == 2 and parse_arp(f)[2] == host_ip)
    host_mac = parse_arp(reply)[1]
    client.send(icmp_echo(client.mac, our_ip, host_mac, host_ip, seq=seq))
    echo = await receive_matching(client, lambda f: (parse_icmp(f) or (99,))[0] == 0 and parse_icmp(f)[4] == seq)
    assert parse_icmp(echo)[1:3] == (host_ip, our_ip)
    return host_mac
