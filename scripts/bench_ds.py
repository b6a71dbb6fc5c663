"""DS benchmark: request/response round trips per second through two DS agents.

A provider process on domain ldg1 answers every request (data callback,
ds_send_msg back). A client on domain primary sends 16-byte requests: the
Python API in this process, and the C example client (libds.so) in its own
process. Each request crosses client -> agent -> LDC -> agent -> provider
and back (six process hops). Printed with the window of outstanding
requests (1 = strict ping-pong) and the CPU time per round trip of each
process (client, both agents, provider), which a busy machine disturbs far
less than the rate. References in the same run: the same ping-pong between
two processes over a bare SOCK_SEQPACKET pair, and the DS path's shape with
no DS in it (two asyncio processes relaying records between the client and
an echo process, `relay_chain`).
Run via scripts/bench-ds.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from backend.ds.api import DomainServices  # noqa: E402
from backend.ds.launch import two_domains  # noqa: E402
from procstat import cpu_seconds  # noqa: E402  scripts/procstat.py

SERVICE = "bench-echo"
REQUEST = b"r" * 16


def provider() -> None:
    """Answer every request with the same bytes, from the data callback."""
    with DomainServices() as ds:
        ds.provide(SERVICE, on_data=lambda handle, arg, data: ds.lib.ds_send_msg(handle, data))
        print("providing", flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin


def python_client(count: int, window: int) -> tuple[float, float]:
    """(round trips/s, this process's CPU seconds for them)."""
    with DomainServices() as ds, ds.client(SERVICE) as service:
        handle = service.wait_ready(domain="ldg1")
        cpu = time.process_time()
        start = time.perf_counter()
        for _ in range(min(window, count)):
            service.send(handle, REQUEST)
        for done in range(count):
            if service.receive(handle, timeout=10) != REQUEST:
                raise RuntimeError("wrong reply")
            if done + window < count:
                service.send(handle, REQUEST)
        return count / (time.perf_counter() - start), time.process_time() - cpu


def bare_socket(count: int) -> float:
    """The floor: ping-pong of 16-byte records between two processes, no DS at all."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        ours.close()
        while data := theirs.recv(64):
            theirs.send(data)
        os._exit(0)
    theirs.close()
    start = time.perf_counter()
    for _ in range(count):
        ours.send(REQUEST)
        ours.recv(64)
    elapsed = time.perf_counter() - start
    ours.close()
    os.waitpid(pid, 0)
    return count / elapsed


def relay_chain(count: int, window: int) -> tuple[float, dict[str, float]]:
    """The DS path's shape with nothing but forwarding: client -> relay -> relay -> echo and back.

    Each relay is an asyncio process that drains what is readable and sends it
    on record by record, as an agent does; the echo answers with a blocking
    loop. So this is the floor for four Python processes and seven wake-ups
    per strict round trip. Returns (round trips/s, CPU seconds per process).
    """
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(3)]
    everything = [s for pair in pairs for s in pair]
    pids = {
        "relay A": _spawn(lambda: _relay(pairs[0][1], pairs[1][0]), (pairs[0][1], pairs[1][0]), everything),
        "relay B": _spawn(lambda: _relay(pairs[1][1], pairs[2][0]), (pairs[1][1], pairs[2][0]), everything),
        "echo": _spawn(lambda: _echo(pairs[2][1]), (pairs[2][1],), everything),
    }
    ours = pairs[0][0]
    for sock in everything[1:]:
        sock.close()
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    cpu, start = time.process_time(), time.perf_counter()
    for _ in range(min(window, count)):
        ours.send(REQUEST)
    for done in range(count):
        ours.recv(64)
        if done + window < count:
            ours.send(REQUEST)
    rate = count / (time.perf_counter() - start)
    used = {"client": time.process_time() - cpu, **{name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}}
    ours.close()
    for pid in pids.values():
        os.waitpid(pid, 0)
    return rate, used


def _spawn(body, keep: tuple[socket.socket, ...], everything: list[socket.socket]) -> int:  # type: ignore[no-untyped-def]
    """Fork a child that runs `body`; it keeps only the sockets in `keep` (so a close reaches the peer)."""
    pid = os.fork()
    if pid == 0:
        for sock in everything:
            if sock not in keep:
                sock.close()
        try:
            body()
        finally:
            os._exit(0)
    return pid


def _relay(left: socket.socket, right: socket.socket) -> None:
    import asyncio

    loop = asyncio.new_event_loop()

    def forward(source: socket.socket, target: socket.socket) -> None:
        for _ in range(64):
            try:
                data = source.recv(64, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            if not data:
                loop.stop()
                return
            target.send(data)

    loop.add_reader(left.fileno(), forward, left, right)
    loop.add_reader(right.fileno(), forward, right, left)
    loop.run_forever()


def _echo(sock: socket.socket) -> None:
    while data := sock.recv(64):
        sock.send(data)


def c_client(build_dir: str, env: dict[str, str], count: int, window: int) -> tuple[float, float]:
    """(round trips/s, the client's CPU seconds for them), as bench_client prints them."""
    program = os.path.join(build_dir, "bench_client")
    out = subprocess.run([program, SERVICE, str(count), str(window)], env=env, capture_output=True, text=True, timeout=300, check=True)
    words = out.stdout.split()  # "N round trips in S s: R rt/s, C s CPU"
    return float(words[-5]), float(words[-3])


class CpuMeter:
    """CPU microseconds per round trip of the other processes (agents, provider) over one case."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def run(self, count: int, case) -> str:  # type: ignore[no-untyped-def]
        before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        rate, client_cpu = case()
        used = {"client": client_cpu, **{name: cpu_seconds(pid) - before[name] for name, pid in self.pids.items()}}
        return result_line(rate, used, count)


def result_line(rate: float, used: dict[str, float], count: int) -> str:
    """The rate, then each process's CPU microseconds per round trip and their sum."""
    per_trip = "  ".join(f"{name} {seconds * 1e6 / count:5.0f}" for name, seconds in used.items())
    return f"{rate:>14,.0f}   {per_trip}  total {sum(used.values()) * 1e6 / count:5.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--windows", default="1,16,32")
    parser.add_argument("--no-c", action="store_true", help="skip the C client (no gcc/libds build)")
    parser.add_argument("--provider", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.provider:
        provider()
        return
    windows = [int(w) for w in args.windows.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-ds-") as tmp:
        primary, guest = two_domains(tmp)
        server = subprocess.Popen([sys.executable, __file__, "--provider"], env=guest.environment(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            server.stdout.readline()
            os.environ["VIO_DS_SOCKET"] = primary.socket
            assert primary.process is not None and guest.process is not None
            meter = CpuMeter({"agent A": primary.process.pid, "agent B": guest.process.pid, "provider": server.pid})
            print(f"{'case':<40} {'round trips/s':>14}   CPU us per round trip")
            print(f"{'reference: bare SEQPACKET ping-pong':<40} {bare_socket(args.count):>14,.0f}")
            for window in windows:
                rate, used = relay_chain(args.count, window)
                print(f"{f'reference: 2 asyncio relays, window {window}':<40} {result_line(rate, used, args.count)}", flush=True)
            for window in windows:
                line = meter.run(args.count, lambda: python_client(args.count, window))
                print(f"{f'Python client, window {window}':<40} {line}", flush=True)
            if not args.no_c:
                from backend.ds.cbuild import build_examples

                build_dir = build_examples(os.path.join(tmp, "c"))
                for window in windows:
                    line = meter.run(args.count, lambda: c_client(build_dir, primary.environment(), args.count, window))
                    print(f"{f'C client (libds.so), window {window}':<40} {line}", flush=True)
        finally:
            if server.stdin:
                server.stdin.close()
            server.wait(timeout=10)
            guest.stop()
            primary.stop()
    print("target: >= 10,000 round trips/s")


if __name__ == "__main__":
    main()
