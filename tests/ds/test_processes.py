"""libds end to end: separate processes, two DS agents joined by LDC (Unix transport), Python and C.

Domain primary (dhdl 0) and domain ldg1 (dhdl 5) each run `vio ds agent`;
providers run on ldg1, clients on primary, unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from backend.ds import control, libds
from backend.ds.api import DomainServices
from backend.ds.cbuild import build_examples
from backend.ds.launch import two_domains

PEER = os.path.join(os.path.dirname(__file__), "peer.py")


@pytest.fixture(scope="module")
def cbuild(tmp_path_factory) -> str:
    return build_examples(str(tmp_path_factory.mktemp("libds")))


@pytest.fixture
def domains(tmp_path):
    primary, guest = two_domains(str(tmp_path))
    yield primary, guest
    guest.stop()
    primary.stop()


class Provider:
    """tests/ds/peer.py provider in its own process on a domain."""

    def __init__(self, agent, svc_id: str, versions: str = "1.0") -> None:
        self.process = subprocess.Popen([sys.executable, PEER, "provider", svc_id, versions], env=agent.environment(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.line() == "svc_reg 0"

    def line(self) -> str:
        return self.process.stdout.readline().strip()

    def stop(self) -> list[str]:
        out, _ = self.process.communicate(timeout=20)
        return out.split("\n")


def _poll(lib: libds.LibDs, svc_id: str, is_client: bool) -> int:
    """The seed's polling style: ds_hdl_lookup, then ds_isready."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        result, handles = lib.ds_hdl_lookup(svc_id, is_client, 1)
        if result == 0 and handles and lib.ds_isready(handles[0]) == (0, True):
            return handles[0]
        time.sleep(0.01)
    raise TimeoutError(svc_id)


def test_python_client_and_provider_callbacks_polling_efbig_and_version(domains) -> None:
    primary, guest = domains
    provider = Provider(guest, "test-echo", "2.0,1.3")
    lib = libds.LibDs(primary.socket)
    events: list = []
    done = threading.Event()
    ops = libds.Ops(lambda *a: (events.append(("reg", a)), done.set()), lambda *a: events.append(("unreg", a)), None, "arg")
    assert lib.ds_clnt_reg(libds.Capability("test-echo", [(1, 1)]), ops) == 0
    assert lib.ds_clnt_reg(libds.Capability("test-echo", [(1, 1)]), ops) == errno.EALREADY
    assert done.wait(20)
    (_, (hdl, arg, version, dhdl)), = events
    assert arg == "arg" and version == (1, 1) and dhdl == 5  # provider fell back from 2.0 to 1.x
    assert provider.line().endswith(" 1.1 0")  # its reg callback: version 1.1, peer domain 0
    assert _poll(lib, "test-echo", True) == hdl
    assert lib.ds_domain_lookup(hdl) == (0, 5)
    assert lib.ds_dom_hdl_to_name(5, 3) == (0, "ld") and lib.ds_dom_name_to_handle("primary") == (0, 0)
    assert lib.ds_recv_msg(hdl, 0) == (errno.EFBIG, None, 0)  # nothing pending: no wait
    assert lib.ds_send_msg(hdl, b"hello") == 0
    for _ in range(200):
        result, _, size = lib.ds_recv_msg(hdl, 0)
        if size:
            break
        threading.Event().wait(0.01)
    assert (result, size) == (errno.EFBIG, 11)
    assert lib.ds_recv_msg(hdl, 4) == (errno.EFBIG, None, 11)  # still queued
    assert lib.ds_recv_msg(hdl, 64) == (0, b"echo: hello", 11)
    assert lib.ds_unreg_hdl(hdl) == 0
    assert ("unreg", (hdl, "arg")) in events
    lib.ds_fini()
    provider.stop()


def test_bursts_are_answered_in_order(domains) -> None:
    """300 requests before the first reply: the agents and libds pass them on in batches, none lost or reordered."""
    primary, guest = domains
    provider = Provider(guest, "burst-echo")
    with DomainServices(primary.socket) as ds, ds.client("burst-echo") as service:
        handle = service.wait_ready(20, domain="ldg1")
        for i in range(300):
            service.send(handle, b"%d" % i)
        assert [service.receive(handle, timeout=20) for _ in range(300)] == [b"echo: %d" % i for i in range(300)]
    provider.stop()


def test_a_callback_waiting_for_the_answer_to_its_own_send_gets_it(domains) -> None:
    """Sends from callbacks are held until the callbacks are done, but never while one waits for an answer."""
    primary, _ = domains
    inner_provider, middle, outer_client = (libds.LibDs(primary.socket) for _ in range(3))
    echo = libds.Ops(data_cb=lambda hdl, arg, data: inner_provider.ds_send_msg(hdl, b"echo: " + data))
    assert inner_provider.ds_svc_reg(libds.Capability("inner", [(1, 0)]), echo) == 0
    assert middle.ds_clnt_reg(libds.Capability("inner", [(1, 0)]), libds.Ops()) == 0
    inner = _poll(middle, "inner", True)

    def relay(hdl: int, arg: object, data: bytes) -> None:  # on middle's reader thread
        assert middle.ds_send_msg(inner, data) == 0
        result, answer, _ = middle.ds_recv_msg(inner, 64, timeout=10)
        middle.ds_send_msg(hdl, answer if result == 0 else b"error %d" % result)

    assert middle.ds_svc_reg(libds.Capability("outer", [(1, 0)]), libds.Ops(data_cb=relay)) == 0
    assert outer_client.ds_clnt_reg(libds.Capability("outer", [(1, 0)]), libds.Ops()) == 0
    outer = _poll(outer_client, "outer", True)
    assert outer_client.ds_send_msg(outer, b"ping") == 0
    assert outer_client.ds_recv_msg(outer, 64, timeout=20) == (0, b"echo: ping", 10)
    for lib in (outer_client, middle, inner_provider):
        lib.ds_fini()


def test_a_batch_of_requests_gets_every_reply_and_a_lying_batch_drops_the_connection(domains) -> None:
    primary, _ = domains
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.connect(primary.socket)
        sock.settimeout(20)
        sock.send(control.pack([control.encode(control.NameToDhdl(1, "ldg1")), control.encode(control.NameToDhdl(2, "nope"))])[0])
        replies = []
        while len(replies) < 2:
            replies += [control.decode_agent_message(m) for m in control.unpack(sock.recv(control.MAX_RECORD))]
        assert [(r.seq, r.errno) for r in replies] == [(1, 0), (2, errno.ENXIO)]
        sock.send(bytes([control.Op.BATCH]) + b"\x00\x00\x00\x09\x07")
        assert sock.recv(control.MAX_RECORD) == b""  # the agent hung up


def test_c_provider_and_c_client(domains, cbuild) -> None:
    primary, guest = domains
    provider = subprocess.Popen([os.path.join(cbuild, "provider"), "c-echo", "1"], env=guest.environment(), stdout=subprocess.PIPE, text=True)
    assert provider.stdout.readline().strip() == "providing c-echo"
    client = subprocess.run([os.path.join(cbuild, "client"), "c-echo", "from C"], env=primary.environment(), capture_output=True, text=True, timeout=60)
    assert client.returncode == 0, client.stderr
    assert "to domain ldg1" in client.stdout and "EFBIG: reply is 12 bytes" in client.stdout and "reply: echo: from C" in client.stdout
    out, _ = provider.communicate(timeout=20)
    assert "version 1.0 domain primary (0x0)" in out and "served 1 requests" in out


def test_c_client_against_the_python_provider(domains, cbuild) -> None:
    primary, guest = domains
    provider = Provider(guest, "py-echo")
    client = subprocess.run([os.path.join(cbuild, "client"), "py-echo", "to Python"], env=primary.environment(), capture_output=True, text=True, timeout=60)
    assert client.returncode == 0, client.stderr
    assert "reply: echo: to Python" in client.stdout
    provider.stop()


def test_python_client_against_the_c_provider(domains, cbuild) -> None:
    primary, guest = domains
    provider = subprocess.Popen([os.path.join(cbuild, "provider"), "c-echo", "2"], env=guest.environment(), stdout=subprocess.PIPE, text=True)
    assert provider.stdout.readline().strip() == "providing c-echo"
    with DomainServices(primary.socket) as ds, ds.client("c-echo") as service:
        handle = service.wait_ready(20, domain="ldg1")
        assert service.request(handle, b"one") == b"echo: one"
        assert asyncio.run(service.arequest(handle, b"two")) == b"echo: two"
    assert "served 2 requests" in provider.communicate(timeout=20)[0]


def test_reregistration_gives_a_new_handle_and_the_old_one_is_stale(domains) -> None:
    primary, guest = domains
    lib = libds.LibDs(primary.socket)
    assert lib.ds_clnt_reg(libds.Capability("svc", [(1, 0)]), libds.Ops()) == 0
    first = Provider(guest, "svc")
    old = _poll(lib, "svc", True)
    first.stop()  # the provider's process ends: its registration goes, the peer sees UNREG
    deadline = time.monotonic() + 20
    while lib.ds_isready(old) != (errno.ENXIO, False):  # the UNREG crosses two agents and LDC
        assert time.monotonic() < deadline, "the old handle never went stale"
        time.sleep(0.01)
    second = Provider(guest, "svc")
    new = _poll(lib, "svc", True)
    assert new != old
    assert lib.ds_send_msg(old, b"x") == errno.ENXIO
    assert lib.ds_send_msg(new, b"x") == 0
    second.stop()
    lib.ds_fini()


def test_channel_loss_fires_unregister_and_makes_handles_stale(domains) -> None:
    primary, guest = domains
    provider = Provider(guest, "svc")
    gone = threading.Event()
    lib = libds.LibDs(primary.socket)
    assert lib.ds_clnt_reg(libds.Capability("svc", [(1, 0)]), libds.Ops(unreg_cb=lambda hdl, arg: gone.set())) == 0
    handle = _poll(lib, "svc", True)
    guest.stop()  # the guest's agent dies: its LDC channel goes with it
    assert gone.wait(20)
    assert lib.ds_isready(handle) == (errno.ENXIO, False)
    assert lib.ds_send_msg(handle, b"x") == errno.ENXIO
    provider.process.kill()
    provider.process.wait()
    lib.ds_fini()


def test_another_processs_handle_is_eacces(domains) -> None:
    primary, _ = domains
    with DomainServices(primary.socket) as ds:
        ds.provide("mine")
        (handle,) = ds.lib.ds_hdl_lookup("mine", False, 4)[1]
        out = subprocess.run([sys.executable, PEER, "send", hex(handle)], env=primary.environment(), capture_output=True, text=True, timeout=30)
        assert out.stdout.split() == [str(errno.EACCES), str(errno.EACCES)]


def test_calls_before_registration_are_ebadf_and_no_agent_is_enoent(tmp_path) -> None:
    lib = libds.LibDs(str(tmp_path / "none.sock"))
    assert lib.ds_hdl_lookup("x", True, 1) == (errno.EBADF, [])
    assert lib.ds_isready(1)[0] == lib.ds_domain_lookup(1)[0] == lib.ds_send_msg(1, b"x") == errno.EBADF
    assert lib.ds_recv_msg(1, 10)[0] == lib.ds_dom_name_to_hdl("x")[0] == lib.ds_unreg_hdl(1) == errno.EBADF
    assert lib.ds_init() == errno.ENOENT
    assert lib.ds_svc_reg(libds.Capability("x", [(1, 0)]), libds.Ops()) == errno.ENOENT
    assert lib.ds_svc_reg(libds.Capability("", [(1, 0)]), libds.Ops()) == errno.EINVAL
    assert lib.ds_svc_reg(libds.Capability("x", []), libds.Ops()) == errno.EINVAL
    assert lib.ds_svc_reg(None, libds.Ops()) == errno.EINVAL


def test_well_known_services_through_the_cli(domains, tmp_path) -> None:
    primary, guest = domains
    marker = tmp_path / "shut-down"
    vio = [sys.executable, "-m", "backend", "ds"]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    guest_side = subprocess.Popen(vio + ["guest-services", "--on-shutdown", f"touch {marker}", "--count", "2"], env=guest.environment(), cwd=root, stdout=subprocess.PIPE, text=True)
    assert "guest services" in guest_side.stdout.readline()
    update = subprocess.run(vio + ["md-update", "ldg1"], env=primary.environment(), cwd=root, capture_output=True, text=True, timeout=60)
    assert update.returncode == 0 and "md-update result 0" in update.stdout, update.stderr
    shutdown = subprocess.run(vio + ["shutdown", "ldg1", "--delay", "100"], env=primary.environment(), cwd=root, capture_output=True, text=True, timeout=60)
    assert shutdown.returncode == 0 and "ldg1: shutdown accepted" in shutdown.stdout, shutdown.stderr
    guest_side.wait(timeout=20)
    assert marker.exists()
    store = tmp_path / "vars.json"
    control_side = subprocess.Popen(vio + ["var-config", "--store", str(store), "--count", "1"], env=primary.environment(), cwd=root, stdout=subprocess.PIPE, text=True)
    assert "var-config" in control_side.stdout.readline()
    setvar = subprocess.run(vio + ["setvar", "auto-boot?", "false"], env=guest.environment(), cwd=root, capture_output=True, text=True, timeout=60)
    assert setvar.returncode == 0 and "SUCCESS" in setvar.stdout, setvar.stderr
    control_side.wait(timeout=20)
    assert store.read_text().strip().startswith("{") and '"auto-boot?": "false"' in store.read_text()
