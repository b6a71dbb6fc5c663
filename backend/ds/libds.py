"""libds: the user-level Domain Services API (the seed's functions, errno results).

Each `LibDs` is one instance, as one open of illumos's vlds device is: it
connects to the domain's DS agent (socket path from $VIO_DS_SOCKET), owns
the handles it registers, and loses them all when it finishes or the
process exits. The module-level functions (`ds_init`, `ds_svc_reg`, ...)
act on one process-wide instance, like the C library.

Threads: a library-owned reader thread takes everything the agent sends:
replies wake the caller waiting for them, events update the local table
and queue messages for ds_recv_msg, and callbacks run on it, one at a
time, with no lock held. A callback may call any libds function: a call
made on the reader thread reads the socket itself until its answer comes
(events met meanwhile are acted on, their callbacks run afterwards).

ds_send_msg does not wait for the agent when the local table already says
the handle is ours and ready (the hot path): the agent then puts it on the
channel in order. Anything else is asked of the agent, which gives the
errno. Such sends made by callbacks are held until the callbacks of the
record being handled have run, and then leave in one record (every record
wakes the agent; a provider answering a burst of requests wakes it once).

Results: every int function returns 0 or an errno value. Out-parameters
of the C API come back as the second element of a tuple.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from . import control
from .agent import ENV_SOCKET
from .control import MAX_RECORD, Op

log = logging.getLogger(__name__)

DS_INVALID_HDL = 0
DEFAULT_SOCKET = "/run/vio-ds.sock"
MAX_QUEUED = 1024  # messages waiting for ds_recv_msg per handle; more are dropped (vlds: ENOSPC)

RegCb = Callable[[int, Any, tuple[int, int], int], None]
UnregCb = Callable[[int, Any], None]
DataCb = Callable[[int, Any, bytes], None]


@dataclass(frozen=True)
class Capability:
    """ds_capability_t: a service id and its versions, highest first."""

    svc_id: str | None
    vers: Sequence[tuple[int, int]] | None


@dataclass(frozen=True)
class Ops:
    """ds_ops_t: each callback may be None; cb_arg comes back to every one."""

    reg_cb: RegCb | None = None
    unreg_cb: UnregCb | None = None
    data_cb: DataCb | None = None
    cb_arg: Any = None


@dataclass(eq=False)
class _Registration:
    svc_id: str
    is_client: bool
    ops: Ops


@dataclass(eq=False)
class _Handle:
    registration: _Registration
    ready: bool = False
    queue: collections.deque[bytes] = field(default_factory=collections.deque)


class _Call:
    __slots__ = ("done", "reply", "on_reply")

    def __init__(self, on_reply: Callable[[control.Reply], None] | None) -> None:
        self.done = threading.Event()
        self.reply = control.Reply(0, errno.ECONNRESET)
        self.on_reply = on_reply


class LibDs:
    """One libds instance."""

    def __init__(self, path: str | None = None) -> None:
        self._path = path
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # ds_recv_msg waits here
        self._send_lock = threading.Lock()
        self._held: list[bytes] = []  # ds_send_msg records of running callbacks, sent after them
        self._holding = False  # the reader thread is running callbacks
        self._seq = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        self._registrations: dict[int, _Registration] = {}  # by the handle's upper 32 bits
        self._handles: dict[int, _Handle] = {}
        self._due: collections.deque[tuple[Callable, tuple]] = collections.deque()  # callbacks to run
        self._reader: int | None = None  # the reader thread's ident

    # ---- ds_init / ds_fini -------------------------------------------------------------------

    def ds_init(self) -> int:
        with self._lock:
            if self._sock is not None:
                return 0
            path = self._path or os.environ.get(ENV_SOCKET, DEFAULT_SOCKET)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                sock.connect(path)
            except OSError as exc:
                sock.close()
                return exc.errno or errno.ENOENT
            self._sock = sock
            reader = threading.Thread(target=self._read, args=(sock,), name="libds-reader", daemon=True)
            reader.start()
            self._reader = reader.ident
            return 0

    def ds_fini(self) -> None:
        """Close the instance: the agent unregisters every handle it owns; callbacks stop."""
        with self._lock:
            sock, self._sock = self._sock, None
            if sock is None:
                return
            self._registrations.clear()
            self._handles.clear()
            self._due.clear()
            self._arrived.notify_all()
        with self._send_lock:
            self._held.clear()  # callbacks' sends of the closed instance
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    # ---- registration ------------------------------------------------------------------------

    def ds_svc_reg(self, cap: Capability | None, ops: Ops | None) -> int:
        return self._register(cap, ops, is_client=False)

    def ds_clnt_reg(self, cap: Capability | None, ops: Ops | None) -> int:
        return self._register(cap, ops, is_client=True)

    def _register(self, cap: Capability | None, ops: Ops | None, is_client: bool) -> int:
        if cap is None or ops is None or cap.svc_id is None or not cap.vers:
            return errno.EINVAL
        versions = tuple((int(major), int(minor)) for major, minor in cap.vers)
        if not control.check_service_id(cap.svc_id) or not control.check_versions(versions):
            return errno.EINVAL
        with self._lock:
            if any(r.svc_id == cap.svc_id and r.is_client == is_client for r in self._registrations.values()):
                return errno.EALREADY
        result = self.ds_init()
        if result:
            return result
        registration = _Registration(cap.svc_id, is_client, ops)

        def registered(reply: control.Reply) -> None:  # on the reader thread, before any event for it
            if reply.errno == 0:
                (handle,) = control.U64.unpack_from(reply.body, 0)
                self._registrations[handle >> 32] = registration
                self._handles[handle] = _Handle(registration)

        return self._call(control.Register(0, is_client, versions, cap.svc_id), registered).errno

    def ds_unreg_hdl(self, hdl: int) -> int:
        """Unregister what `hdl` names: ENXIO unknown, EACCES another instance's (the seed's errors).

        illumos's library ignores the driver's answer and returns 0; we give the
        caller the errors the seed documents (docs/ds-libds.md).
        """
        reply = self._handle_call(Op.UNREGISTER, hdl)
        if not reply.errno and reply.body[:1] == b"\1":
            with self._lock:  # the whole registration went
                registration = self._registrations.pop(hdl >> 32, None)
                for value in [v for v, h in self._handles.items() if h.registration is registration]:
                    del self._handles[value]
                self._arrived.notify_all()
        return reply.errno

    def ds_unreg_svc(self, service: str, is_client: bool) -> None:
        """Unregister every handle of (service, role), connected or not."""
        while True:
            result, handles = self.ds_hdl_lookup(service, is_client, 64)
            if result or not handles:
                return
            for handle in handles:
                self.ds_unreg_hdl(handle)

    # ---- lookups -------------------------------------------------------------------------------

    def ds_hdl_lookup(self, service: str | None, is_client: bool, maxhdls: int) -> tuple[int, list[int]]:
        if self._sock is None:
            return errno.EBADF, []
        if service is None or maxhdls <= 0:
            return errno.EINVAL, []
        reply = self._call(control.Lookup(0, is_client, min(maxhdls, 0xFFFF_FFFF), service))
        return reply.errno, [control.U64.unpack_from(reply.body, i)[0] for i in range(0, len(reply.body), 8)]

    def ds_domain_lookup(self, hdl: int) -> tuple[int, int]:
        reply = self._handle_call(Op.DOMAIN, hdl)
        return reply.errno, control.U64.unpack(reply.body)[0] if not reply.errno else 0

    def ds_isready(self, hdl: int) -> tuple[int, bool]:
        reply = self._handle_call(Op.READY, hdl)
        return reply.errno, bool(not reply.errno and reply.body[0])

    def ds_dom_name_to_hdl(self, domain_name: str | None) -> tuple[int, int]:
        if self._sock is None:
            return errno.EBADF, 0
        if domain_name is None:
            return errno.ENXIO, 0
        reply = self._call(control.NameToDhdl(0, domain_name))
        return reply.errno, control.U64.unpack(reply.body)[0] if not reply.errno else 0

    ds_dom_name_to_handle = ds_dom_name_to_hdl  # the seed's spelling

    def ds_dom_hdl_to_name(self, dhdl: int, maxnamlen: int) -> tuple[int, str]:
        """The domain's name, cut to maxnamlen - 1 characters (the C caller's buffer keeps a NUL)."""
        if maxnamlen <= 0:
            return (errno.EBADF if self._sock is None else errno.EINVAL), ""
        reply = self._handle_call(Op.DHDL_TO_NAME, dhdl)
        return reply.errno, reply.body.decode()[: maxnamlen - 1]

    # ---- data ------------------------------------------------------------------------------------

    def ds_send_msg(self, hdl: int, buf: bytes) -> int:
        """Send one DATA message; returns once the agent has put it on the channel."""
        sock = self._sock
        if sock is None:
            return errno.EBADF
        if not 0 < len(buf) <= control.MAX_SEND:
            return errno.EINVAL
        entry = self._handles.get(hdl)
        if entry is not None and entry.ready:
            try:
                self._post(sock, control.encode_send(0, hdl, bytes(buf)), hold=True)  # seq 0: no reply wanted
            except OSError:
                return errno.ECONNRESET
            return 0
        call = _Call(None)
        seq = self._next_seq(call)
        return self._transmit(seq, call, control.encode_send(seq, hdl, bytes(buf))).errno

    def ds_recv_msg(self, hdl: int, buflen: int, timeout: float | None = None) -> tuple[int, bytes | None, int]:
        """(0, message, its length), or (EFBIG, None, pending length) when buflen is too small.

        Blocks until a message is queued, except with buflen 0 (then EFBIG with
        the pending length, 0 when none). Only for registrations without a data
        callback. `timeout` (seconds, a Python extension) gives ETIMEDOUT.
        """
        with self._lock:
            if self._sock is None:
                return errno.EBADF, None, 0
            entry = self._handles.get(hdl)
        if entry is None:
            reply = self._handle_call(Op.ACCESS, hdl)
            return (reply.errno or errno.ENXIO), None, 0
        if entry.registration.ops.data_cb is not None:
            return errno.EINVAL, None, 0
        with self._lock:
            if not entry.ready:
                return errno.ENXIO, None, 0
            while not entry.queue and buflen:
                if self._sock is None:
                    return errno.EBADF, None, 0
                if self._handles.get(hdl) is not entry:
                    return errno.EINVAL, None, 0  # unregistered while we waited
                if not self._wait(timeout):
                    return errno.ETIMEDOUT, None, 0
            if not entry.queue:
                return errno.EFBIG, None, 0
            size = len(entry.queue[0])
            if size > buflen:
                return errno.EFBIG, None, size
            return 0, entry.queue.popleft(), size

    # ---- talking to the agent -----------------------------------------------------------------

    def _handle_call(self, op: Op, hdl: int) -> control.Reply:
        if self._sock is None:
            return control.Reply(0, errno.EBADF)
        return self._call(control.HandleRequest(op, 0, hdl))

    def _call(self, request: control.Request, on_reply: Callable[[control.Reply], None] | None = None) -> control.Reply:
        call = _Call(on_reply)
        seq = self._next_seq(call)
        return self._transmit(seq, call, control.encode(_with_seq(request, seq)))

    def _next_seq(self, call: _Call) -> int:
        seq = next(self._seq) & 0xFFFF_FFFF or next(self._seq)
        self._calls[seq] = call
        return seq

    def _wait(self, timeout: float | None) -> bool:
        """With the lock held: wait for something from the agent (reading it ourselves on the reader thread)."""
        if threading.get_ident() != self._reader:
            return self._arrived.wait(timeout)
        self._lock.release()
        try:
            return self._pump_one()
        finally:
            self._lock.acquire()

    def _pump_one(self) -> bool:
        """On the reader thread (inside a callback): read and act on one record; False when the agent is gone.

        Held records go first: what the callback waits for may be the answer to one.
        """
        sock = self._sock
        try:
            if sock is not None and self._held:
                with self._send_lock:
                    self._send_held(sock)
            record = sock.recv(MAX_RECORD) if sock is not None else b""
            if record:
                self._dispatch_record(record)
                return True
        except (OSError, control.ControlError):
            pass
        return False

    def _post(self, sock: socket.socket, record: bytes, *, hold: bool = False) -> None:
        """Send a record, after any held ones; with `hold`, a callback's record waits for the others."""
        with self._send_lock:
            if hold and self._holding and threading.get_ident() == self._reader:
                self._held.append(record)
                return
            if self._held:
                self._send_held(sock)
            sock.send(record)

    def _send_held(self, sock: socket.socket) -> None:
        """With the send lock held: the callbacks' records, as few as batching allows."""
        held, self._held = self._held, []
        for record in control.pack(held):
            sock.send(record)

    def _run_callbacks(self, sock: socket.socket) -> None:
        """On the reader thread: the callbacks due, then what they sent, in one record if it fits."""
        self._holding = True
        try:
            while self._due:
                function, args = self._due.popleft()
                try:
                    function(*args)
                except Exception:  # a user's callback must not stop the others
                    log.exception("libds: callback %r failed", function)
        finally:
            self._holding = False
            with self._send_lock:
                if self._held:
                    self._send_held(sock)

    def _transmit(self, seq: int, call: _Call, record: bytes) -> control.Reply:
        sock = self._sock
        try:
            if sock is None:
                raise OSError(errno.EBADF, "libds is not initialised")
            self._post(sock, record)
        except OSError as exc:
            self._calls.pop(seq, None)
            return control.Reply(seq, exc.errno if exc.errno in (errno.EBADF,) else errno.ECONNRESET)
        if threading.get_ident() == self._reader:
            while not call.done.is_set() and self._pump_one():
                pass
        call.done.wait()
        return call.reply

    def _read(self, sock: socket.socket) -> None:
        """The reader thread: replies to their callers, events to the table and the callback thread."""
        try:
            while True:
                record = sock.recv(MAX_RECORD)
                if not record:
                    break
                self._dispatch_record(record)
                self._run_callbacks(sock)
        except (OSError, control.ControlError) as exc:
            log.info("libds: connection to the DS agent lost: %s", exc)
        with self._lock:
            calls, self._calls = self._calls, {}
            if self._sock is sock:
                self._handles.clear()
            self._arrived.notify_all()
        for call in calls.values():
            call.done.set()  # with its default reply: ECONNRESET
        if self._sock is None:  # ds_fini: nothing more to call back
            self._due.clear()

    def _dispatch_record(self, record: bytes) -> None:
        for message in control.unpack(record):
            self._dispatch(control.decode_agent_message(message))

    def _dispatch(self, message: control.AgentMessage) -> None:
        if isinstance(message, control.DataEvent):
            self._on_data(message.handle, message.payload)
        elif isinstance(message, control.Reply):
            call = self._calls.pop(message.seq, None)
            if call is not None:
                call.reply = message
                if call.on_reply is not None:
                    with self._lock:
                        call.on_reply(message)
                call.done.set()
        elif isinstance(message, control.Registered):
            with self._lock:
                registration = self._registrations.get(message.handle >> 32)
                if registration is None:
                    return
                entry = self._handles.setdefault(message.handle, _Handle(registration))
                entry.ready = True
            if registration.ops.reg_cb is not None:
                self._queue_callback(registration.ops.reg_cb, message.handle, registration.ops.cb_arg, message.version, message.dhdl)
        else:
            with self._lock:
                entry = self._handles.pop(message.handle, None)
                self._arrived.notify_all()
            if entry is not None and entry.registration.ops.unreg_cb is not None:
                self._queue_callback(entry.registration.ops.unreg_cb, message.handle, entry.registration.ops.cb_arg)

    def _on_data(self, hdl: int, payload: bytes) -> None:
        entry = self._handles.get(hdl)
        if entry is None:
            return
        ops = entry.registration.ops
        if ops.data_cb is not None:
            self._queue_callback(ops.data_cb, hdl, ops.cb_arg, payload)
            return
        with self._lock:
            if len(entry.queue) >= MAX_QUEUED:
                log.warning("libds: handle 0x%x has %d unread messages; dropping one", hdl, MAX_QUEUED)
                return
            entry.queue.append(payload)
            self._arrived.notify_all()

    def _queue_callback(self, function: Callable, *args: Any) -> None:
        self._due.append((function, args))


def _with_seq(request: control.Request, seq: int) -> control.Request:
    return replace(request, seq=seq)


# ---- the process-wide instance, as in C --------------------------------------------------------

_default = LibDs()


def ds_init() -> int:
    return _default.ds_init()


def ds_fini() -> None:
    _default.ds_fini()


def ds_svc_reg(cap: Capability | None, ops: Ops | None) -> int:
    return _default.ds_svc_reg(cap, ops)


def ds_clnt_reg(cap: Capability | None, ops: Ops | None) -> int:
    return _default.ds_clnt_reg(cap, ops)


def ds_unreg_hdl(hdl: int) -> int:
    return _default.ds_unreg_hdl(hdl)


def ds_unreg_svc(service: str, is_client: bool) -> None:
    _default.ds_unreg_svc(service, is_client)


def ds_hdl_lookup(service: str | None, is_client: bool, maxhdls: int) -> tuple[int, list[int]]:
    return _default.ds_hdl_lookup(service, is_client, maxhdls)


def ds_domain_lookup(hdl: int) -> tuple[int, int]:
    return _default.ds_domain_lookup(hdl)


def ds_isready(hdl: int) -> tuple[int, bool]:
    return _default.ds_isready(hdl)


def ds_send_msg(hdl: int, buf: bytes) -> int:
    return _default.ds_send_msg(hdl, buf)


def ds_recv_msg(hdl: int, buflen: int) -> tuple[int, bytes | None, int]:
    return _default.ds_recv_msg(hdl, buflen)


def ds_dom_hdl_to_name(dhdl: int, maxnamlen: int) -> tuple[int, str]:
    return _default.ds_dom_hdl_to_name(dhdl, maxnamlen)


def ds_dom_name_to_hdl(domain_name: str | None) -> tuple[int, int]:
    return _default.ds_dom_name_to_hdl(domain_name)


ds_dom_name_to_handle = ds_dom_name_to_hdl
