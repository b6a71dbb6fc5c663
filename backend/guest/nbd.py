"""The NBD server protocol (fixed newstyle handshake, simple replies) as a sans-I/O state machine.

Theory of operation
-------------------
`NbdServer` is fed the client's bytes (`receive`) and emits bytes
(`take_output`) and events (`take_events`). It greets at construction,
takes the client flags, then options: INFO and GO describe the one export
(size, transmission flags, block sizes); GO and EXPORT_NAME enter
transmission; LIST names the export; ABORT ends; anything else is answered
ERR_UNSUP, as the protocol asks. In transmission every request becomes a
`Request` event (WRITE with its payload); the caller answers each with
`reply(handle, error, data)`, in any order. DISC, or a malformed request,
ends the session (`Closed`): an NBD stream cannot be resynchronised.

Layouts (big-endian): option {IHAVEOPT u64, option u32, length u32, data};
option reply {REPLY_MAGIC u64, option u32, type u32, length u32, data};
request {REQUEST_MAGIC u32, flags u16, type u16, handle u64, offset u64,
length u32}; simple reply {SIMPLE_REPLY_MAGIC u32, error u32, handle u64}.
"""

from __future__ import annotations

import collections
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from ..errors import ProtocolError
from ..outbox import Outbox

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

GREETING = struct.Struct(">QQH")
OPTION = struct.Struct(">QII")
OPTION_REPLY = struct.Struct(">QIII")
REQUEST = struct.Struct(">IHHQQI")
SIMPLE_REPLY = struct.Struct(">IIQ")

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1

MAX_OPTION = 64 << 10  # longer option data is garbage
MAX_PAYLOAD = 32 << 20  # largest READ/WRITE we take (we advertise less)


class Option(IntEnum):
    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    INFO = 6
    GO = 7


class Reply(IntEnum):
    ACK = 1
    SERVER = 2
    INFO = 3
    ERR_UNSUP = (1 << 31) + 1
    ERR_INVALID = (1 << 31) + 3
    ERR_UNKNOWN = (1 << 31) + 6


class Info(IntEnum):
    EXPORT = 0
    NAME = 1
    BLOCK_SIZE = 3


class Command(IntEnum):
    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    WRITE_ZEROES = 6


class TxFlag(IntEnum):
    HAS_FLAGS = 1 << 0
    READ_ONLY = 1 << 1
    SEND_FLUSH = 1 << 2
    SEND_FUA = 1 << 3
    SEND_TRIM = 1 << 5
    SEND_WRITE_ZEROES = 1 << 6


CMD_FLAG_FUA = 1 << 0
# errno values NBD carries (the protocol fixes them, whatever the host's are)
EPERM, EIO, ENOMEM, EINVAL, ENOSPC, ENOTSUP = 1, 5, 12, 22, 28, 95


@dataclass(frozen=True)
class Export:
    name: str
    size: int
    block_size: int  # minimum and preferred
    max_block: int
    read_only: bool = False

    @property
    def flags(self) -> int:
        flags = TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH | TxFlag.SEND_FUA | TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES
        return flags | (TxFlag.READ_ONLY if self.read_only else 0)


class Request(NamedTuple):
    """One transmission request (a tuple: made once per request, and a frozen
    dataclass costs a setattr call per field)."""

    handle: int
    command: int
    flags: int
    offset: int
    length: int
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Ready:
    """Transmission begins (after GO or EXPORT_NAME)."""


@dataclass(frozen=True, slots=True)
class Closed:
    reason: str


Event = Request | Ready | Closed


class _Input:
    """The client's bytes as received, joined only when a unit is taken: a 1 MiB
    WRITE arriving in many reads is copied once, not once per read."""

    def __init__(self) -> None:
        self._chunks: collections.deque[memoryview] = collections.deque()
        self.available = 0

    def add(self, data: bytes) -> None:
        if data:
            self._chunks.append(memoryview(data))
            self.available += len(data)

    def peek(self, n: int) -> bytes | memoryview:
        """The first n bytes (n <= available), left in place; a view of the first
        chunk when it holds them (valid until the input is next consumed)."""
        first = self._chunks[0]
        if len(first) >= n:
            return first
        return self._join(n, consume=False)

    def skip(self, n: int) -> None:
        """Drop the first n bytes (n <= available) without copying them."""
        first = self._chunks[0]
        if len(first) > n:
            self._chunks[0] = first[n:]
            self.available -= n
        elif len(first) == n:
            self._chunks.popleft()
            self.available -= n
        else:
            self.take(n)

    def take(self, n: int) -> bytes:
        """The first n bytes (n <= available), removed."""
        data = self._join(n, consume=True)
        self.available -= n
        return data

    def clear(self) -> None:
        self._chunks.clear()
        self.available = 0

    def _join(self, n: int, consume: bool) -> bytes:
        pieces, need = [], n
        for index, chunk in enumerate(self._chunks):
            if need <= 0:
                break
            piece = chunk[:need]
            pieces.append(piece)
            need -= len(piece)
            if consume:
                self._chunks[index] = chunk[len(piece):]
        if consume:
            while self._chunks and not len(self._chunks[0]):
                self._chunks.popleft()
        return b"".join(pieces)


class NbdServer(Outbox[bytes, Event]):
    """One client connection's protocol state, for one export."""

    def __init__(self, export: Export) -> None:
        super().__init__()
        self.export = export
        self._input = _Input()
        self._state = "flags"
        self._broken = False  # a malformed stream: nothing more goes out
        self._no_zeroes = False
        self._output.append(GREETING.pack(NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    def receive(self, data: bytes) -> None:
        if self.closed:
            return
        self._input.add(data)
        try:
            while not self.closed and self._step():
                pass
        except ProtocolError as exc:
            self._close(str(exc), broken=True)

    def reply(self, handle: int, error: int = 0, data: bytes | memoryview = b"") -> None:
        """Answer a request (data only for a successful READ).

        The data is queued as it is, not copied: a memoryview must stay valid
        until the output is taken (a large read is sent straight from the
        buffer the disk filled).
        """
        if not self._broken:  # after DISC the requests still in flight are answered
            self._output.append(SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, handle))
            if data and not error:
                self._output.append(data)

    # ---- parsing ----------------------------------------------------------------------------

    def _step(self) -> bool:
        """Handle one unit if it is complete; False when more bytes are needed."""
        source = self._input
        if self._state == "flags":
            if source.available < 4:
                return False
            flags = int.from_bytes(source.take(4), "big")
            if not flags & FLAG_FIXED_NEWSTYLE or flags & ~(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES):
                raise ProtocolError(f"client flags 0x{flags:x}: fixed newstyle is required")
            self._no_zeroes = bool(flags & FLAG_NO_ZEROES)
            self._state = "options"
            return True
        if self._state == "options":
            if source.available < OPTION.size:
                return False
            magic, option, length = OPTION.unpack_from(source.peek(OPTION.size))
            if magic != IHAVEOPT or length > MAX_OPTION:
                raise ProtocolError(f"bad option header (magic 0x{magic:x}, {length} bytes)")
            if source.available < OPTION.size + length:
                return False
            source.take(OPTION.size)
            self._option(option, source.take(length))
            return True
        if source.available < REQUEST.size:
            return False
        magic, flags, command, handle, offset, length = REQUEST.unpack_from(source.peek(REQUEST.size))
        if magic != REQUEST_MAGIC:
            raise ProtocolError(f"bad request magic 0x{magic:x}")
        payload = length if command == Command.WRITE else 0
        if payload > MAX_PAYLOAD:
            raise ProtocolError(f"WRITE of {length} bytes exceeds {MAX_PAYLOAD}")
        if source.available < REQUEST.size + payload:
            return False
        source.skip(REQUEST.size)
        data = source.take(payload) if payload else b""
        if command == Command.DISC:
            self._close("client disconnected")
            return False
        self._events.append(Request(handle, command, flags, offset, length, data))
        return True

    # ---- options ------------------------------------------------------------------------------

    def _option(self, option: int, data: bytes) -> None:
        if option == Option.EXPORT_NAME:
            if not self._name_matches(data):
                raise ProtocolError(f"no export named {data!r}")  # EXPORT_NAME has no error reply
            info = struct.pack(">QH", self.export.size, self.export.flags)
            self._output.append(info + (b"" if self._no_zeroes else bytes(124)))
            self._enter_transmission()
        elif option == Option.ABORT:
            self._option_reply(option, Reply.ACK)
            self._close("client aborted")
        elif option == Option.LIST:
            if data:
                self._option_reply(option, Reply.ERR_INVALID, b"LIST takes no data")
                return
            name = self.export.name.encode()
            self._option_reply(option, Reply.SERVER, struct.pack(">I", len(name)) + name)
            self._option_reply(option, Reply.ACK)
        elif option in (Option.INFO, Option.GO):
            self._info(option, data)
        else:
            self._option_reply(option, Reply.ERR_UNSUP, f"option {option} is not supported".encode())

    def _info(self, option: int, data: bytes) -> None:
        if len(data) < 4:
            self._option_reply(option, Reply.ERR_INVALID, b"truncated")
            return
        name_length = int.from_bytes(data[:4], "big")
        if len(data) < 4 + name_length + 2:
            self._option_reply(option, Reply.ERR_INVALID, b"truncated")
            return
        name = data[4 : 4 + name_length]
        count = int.from_bytes(data[4 + name_length : 6 + name_length], "big")
        if len(data) != 6 + name_length + 2 * count:
            self._option_reply(option, Reply.ERR_INVALID, b"information request count does not match")
            return
        if not self._name_matches(name):
            self._option_reply(option, Reply.ERR_UNKNOWN, f"no export named {name!r}".encode())
            return
        export = self.export
        self._option_reply(option, Reply.INFO, struct.pack(">HQH", Info.EXPORT, export.size, export.flags))
        self._option_reply(option, Reply.INFO, struct.pack(">HIII", Info.BLOCK_SIZE, export.block_size, export.block_size, export.max_block))
        self._option_reply(option, Reply.ACK)
        if option == Option.GO:
            self._enter_transmission()

    def _name_matches(self, name: bytes) -> bool:
        return name in (b"", self.export.name.encode())

    def _option_reply(self, option: int, kind: int, data: bytes = b"") -> None:
        self._output.append(OPTION_REPLY.pack(REPLY_MAGIC, option, kind, len(data)) + data)

    def _enter_transmission(self) -> None:
        self._state = "transmission"
        self._events.append(Ready())

    def _close(self, reason: str, *, broken: bool = False) -> None:
        self._state = "closed"
        self._broken = broken
        self._input.clear()
        self._events.append(Closed(reason))
