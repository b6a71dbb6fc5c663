"""The LDC channel: a sans-I/O state machine for one end of a channel.

Theory of operation
-------------------
A `Channel` is fed 64-byte packets (`receive`) and link signals from its
transport (`peer_reset`), and is asked to `open` the link and `send`
messages. It never touches a socket: whatever it wants to put on the wire
waits in `take_output()` (packets, and `RESET` when the transport must tell
the peer that this end reset), and what happened waits in `take_events()`.

Both ends run the same machine; neither is configured as "the client".
The end that receives a VERS ACK sends RTS; the end that receives RTS
answers RTR; the end that receives RTR sends RDX and is up; the end that
receives RDX is up. If both ends open at once, both ACK each other's VERS,
both send RTS and both answer RTR, and each accepts the peer's RDX once
after going up. The legal (state, control packet) pairs are the table
`_HANDSHAKE`; anything else is a protocol error.

Sequence numbers: every packet after RTS/RTR takes the next seqid of its
direction (data, data ACK/NACK and RDX alike); both ends start at 0, as
Linux does, so RDX carries seqid 1. A receiver checks seqid == last + 1.

While the link is not up, DATA packets are stale (sent before the peer
learnt of a reset) and handshake packets that do not fit the current state
are leftovers of an abandoned attempt: both are dropped and counted
(`dropped_packets`), as illumos does, not treated as errors.

Errors: a packet that breaks the protocol is NACKed when the link is up
(DATA/NACK, ackid = last good seqid); then this end resets: partial
messages are dropped, sequence state is cleared, the peer is told (RESET)
and the user gets a `LinkReset` event. Exactly one end restarts the
handshake after a reset, so two restarts never cross: the end that was
told (peer_reset) sends a new VERS if it was opened; the end that reset
waits for it. An end that receives a NACK resets quietly, knowing the
RESET that follows will restart it. A VERS INFO at any time restarts the
handshake, as the seed says.

Reliable mode (0x03) acknowledges data: the receiver sends DATA/ACK with
the last in-order seqid after every batch of packets the transport hands
it and every `ack_interval` data packets; the sender keeps at most `window` data packets
unacknowledged and holds the rest back until ACKs arrive.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Union
from collections.abc import Callable

from .constants import (
    CTRL_MASK,
    ENV_LENGTH_MASK,
    ENV_START,
    ENV_STOP,
    HEADER_SIZE,
    PACKET_SIZE,
    PAYLOAD_SIZE,
    SUPPORTED_VERSIONS,
    Control,
    Mode,
    PacketType,
    SubType,
)
from .packet import CONTROL_ACKID, HEADER, RELIABLE_HEADER, Packet, PacketError, control, decode, encode, version_payload
from ..errors import LinkDownError
from ..outbox import Outbox as BaseOutbox

SEQ_MASK = 0xFFFF_FFFF
# Plain ints for the hot paths (enum arithmetic costs a function call each).
_DATA, _INFO = int(PacketType.DATA), int(SubType.INFO)
_START, _STOP, _LEN = ENV_START, ENV_STOP, ENV_LENGTH_MASK
DEFAULT_MAX_MESSAGE = 4 << 20


class State(Enum):
    DOWN = "down"  # closed, or reset and waiting for a VERS
    VERS_SENT = "vers-sent"  # we offered a version
    GOT_VERS = "got-vers"  # a version is agreed; RTS not yet exchanged
    RTS_SENT = "rts-sent"  # we asked to send; waiting for RTR
    RTR_SENT = "rtr-sent"  # we answered RTS; waiting for RDX
    UP = "up"


class _ResetSignal:
    """Output marker: the transport must tell the peer this end reset."""

    def __repr__(self) -> str:
        return "RESET"


RESET = _ResetSignal()
Output = Union[bytes, _ResetSignal]


@dataclass(frozen=True, slots=True)
class LinkUp:
    version: tuple[int, int]
    mode: Mode


@dataclass(frozen=True, slots=True)
class LinkReset:
    """The link went down; `by_peer` tells who reset it."""

    reason: str
    by_peer: bool


@dataclass(frozen=True, slots=True)
class MessageReceived:
    data: bytes


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer broke the protocol; a LinkReset follows."""

    reason: str


Event = Union[LinkUp, LinkReset, MessageReceived, ProtocolViolation]


class _Violation(Exception):
    """Internal: abort processing of the current packet and reset."""


class Outbox(BaseOutbox[Output, Event]):
    """An LDC end's outbox: bytes of whole packets (each item one or more) and
    RESET signals, in order; and link events."""


_HANDSHAKE: dict[tuple[State, int, int], str] = {
    # (state, control, subtype) -> handler name.  VERS INFO is legal anywhere.
    **{(state, Control.VERS, SubType.INFO): "_on_vers_info" for state in State},
    (State.VERS_SENT, Control.VERS, SubType.ACK): "_on_vers_ack",
    (State.GOT_VERS, Control.VERS, SubType.ACK): "_on_vers_ack",  # both ends opened at once
    (State.VERS_SENT, Control.VERS, SubType.NACK): "_on_vers_nack",
    (State.GOT_VERS, Control.RTS, SubType.INFO): "_on_rts",
    (State.RTS_SENT, Control.RTS, SubType.INFO): "_on_rts",  # both ends sent RTS
    (State.RTS_SENT, Control.RTR, SubType.INFO): "_on_rtr",
    (State.RTR_SENT, Control.RDX, SubType.INFO): "_on_rdx",
    (State.UP, Control.RDX, SubType.INFO): "_on_rdx",  # the peer's RDX after ours
}


class Channel(Outbox):
    """One end of an LDC channel in a given mode."""

    # Per-session state, cleared by every reset (_clear_session).
    _snd_nxt: int  # last seqid we sent
    _rcv_nxt: int  # last seqid we accepted
    _expect_rdx: bool
    _offered: tuple[int, int]
    _partial: bytearray | None
    _backlog: deque[list]  # [message view, bytes already packetized]
    _unacked_tx: deque[tuple[int, int]]  # (first seqid, count) of data runs not yet ACKed
    _in_flight: int
    _acked_upto: int
    _unacked_rx: int

    def __init__(
        self,
        mode: Mode = Mode.UNRELIABLE,
        *,
        versions: tuple[tuple[int, int], ...] = SUPPORTED_VERSIONS,
        max_message: int = DEFAULT_MAX_MESSAGE,
        window: int = 4096,
        ack_interval: int = 256,
        on_reset: Callable[[], None] | None = None,
    ) -> None:
        if mode not in (Mode.UNRELIABLE, Mode.RELIABLE):
            raise ValueError(f"{Mode(mode).name} channels have no handshake; use RawChannel")
        if not 0 < ack_interval <= window:
            raise ValueError("need 0 < ack_interval <= window")
        self.mode = Mode(mode)
        self.versions = tuple(sorted(versions, reverse=True))
        self.max_message = max_message
        self.window = window
        self.ack_interval = ack_interval
        self._on_reset = on_reset  # e.g. revoke shared memory
        self._payload = PAYLOAD_SIZE[self.mode]
        self._header = HEADER_SIZE[self.mode]
        self._reliable = self.mode is Mode.RELIABLE
        super().__init__()
        self._opened = False
        self._closed = False
        self.state = State.DOWN
        self.version: tuple[int, int] | None = None
        self.dropped_packets = 0  # stale data received while the link was not up
        self._clear_session()

    # ---- what the user calls -------------------------------------------------

    def open(self) -> None:
        """Bring the link up: offer our highest version (and again after resets)."""
        self._opened = True
        self._closed = False
        if self.state is State.DOWN:
            self._send_vers(self.versions[0])

    def close(self) -> None:
        """Take the link down for good and tell the peer (until open() again)."""
        self._opened = False
        self._closed = True
        self._reset("closed locally", by_peer=False, notify_peer=True, restart=False)

    def set_on_reset(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` whenever the link resets (the transport revokes the session's exports)."""
        self._on_reset = callback

    @property
    def is_up(self) -> bool:
        return self.state is State.UP

    def send(self, message: bytes | bytearray | memoryview) -> None:
        """Queue one message of any size (0 bytes included) for the peer."""
        if self.state is not State.UP:
            raise LinkDownError(f"cannot send: LDC link is {self.state.value}")
        view = memoryview(message).cast("B")
        if len(view) > self.max_message:
            raise ValueError(f"message of {len(view)} bytes exceeds max_message {self.max_message}")
        self._backlog.append([view, 0])
        self._pump()

    @property
    def pending_send(self) -> int:
        """Bytes accepted by send() but held back by the reliable-mode window."""
        return sum(len(view) - pos for view, pos in self._backlog)

    # ---- what the transport calls --------------------------------------------

    def receive(self, data: bytes | bytearray | memoryview) -> None:
        """Feed whole packets (any multiple of 64 bytes) received from the peer."""
        view = memoryview(data).cast("B")
        if self._closed:
            self.dropped_packets += len(view) // PACKET_SIZE  # closed: we take no part in a handshake
            return
        if len(view) % PACKET_SIZE:
            self._violation(f"transport delivered {len(view)} bytes, not a whole number of {PACKET_SIZE}-byte packets")
            return
        offset, end = 0, len(view)
        while offset < end:
            try:
                if self.state is State.UP:
                    offset = self._receive_data_run(view, offset, end)
                    if offset == end:
                        break
                    self._receive_up(view, offset)
                else:
                    self._receive_handshake(decode(view[offset : offset + PACKET_SIZE], self.mode))
            except (PacketError, _Violation) as exc:
                self._violation(str(exc))
            offset += PACKET_SIZE
        if self._reliable and self._unacked_rx:
            # Acknowledge what this batch brought in so the sender's window moves.
            self._send_ack()

    def peer_reset(self, reason: str = "peer reset the channel") -> None:
        """The transport saw the peer reset (or vanish)."""
        self._reset(reason, by_peer=True, notify_peer=False, restart=True)

    def transport_error(self, reason: str) -> None:
        """The transport got something malformed from the peer: reset as for a bad packet."""
        self._violation(reason)

    # ---- handshake -------------------------------------------------------------

    def _receive_handshake(self, packet: Packet) -> None:
        if packet.type == PacketType.ERR:
            raise _Violation("peer sent an ERR packet")
        if packet.type != PacketType.CTRL:
            # Data the peer sent before it learnt of a reset: stale, not an attack.
            self.dropped_packets += 1
            return
        self._dispatch_control(packet)

    def _dispatch_control(self, packet: Packet) -> None:
        handler = _HANDSHAKE.get((self.state, packet.ctrl & CTRL_MASK, packet.stype))
        if handler is not None:
            getattr(self, handler)(packet)
        elif self.state is State.UP:
            raise _Violation(f"unexpected {Control(packet.control).name}/{_stype_name(packet.stype)} on an up link")
        else:
            self.dropped_packets += 1  # a leftover of an abandoned handshake attempt

    def _on_vers_info(self, packet: Packet) -> None:
        if self.state is not State.DOWN:
            self._reset("peer restarted the handshake", by_peer=True, notify_peer=False, restart=False)
        major, minor = packet.version()
        best = self._best_version(major)
        if best is None:
            self._emit(control(SubType.NACK, Control.VERS, payload=version_payload(0, 0)))
        elif best[0] != major:
            self._emit(control(SubType.NACK, Control.VERS, payload=version_payload(*best)))
        else:
            self.version = (major, min(minor, best[1]))
            self._emit(control(SubType.ACK, Control.VERS, payload=version_payload(*self.version)))
            self.state = State.GOT_VERS
            return
        if self._opened:
            # The peer's offer failed, but ours may not: offer our own.
            self._send_vers(self.versions[0])

    def _on_vers_ack(self, packet: Packet) -> None:
        major, minor = packet.version()
        if self.state is State.GOT_VERS and (major, minor) != self.version:
            raise _Violation(f"peer ACKed version {major}.{minor} but {self.version} was agreed")
        best = self._best_version(major)
        if best is None or best[0] != major or minor > best[1]:
            raise _Violation(f"peer ACKed version {major}.{minor}, which we did not offer")
        self.version = (major, minor)
        self._emit(control(SubType.INFO, Control.RTS, env=self.mode, seqid=self._snd_nxt))
        self.state = State.RTS_SENT

    def _on_vers_nack(self, packet: Packet) -> None:
        major, minor = packet.version()
        best = self._best_version(major) if (major, minor) != (0, 0) else None
        if best is None or best >= self._offered:
            self.state = State.DOWN
            self._opened = False  # no common version: retrying cannot help
            self._events.append(LinkReset(f"no common LDC version (peer suggested {major}.{minor})", by_peer=True))
            return
        self._send_vers(best)

    def _on_rts(self, packet: Packet) -> None:
        self._check_mode(packet, "RTS")
        self._rcv_nxt = packet.seqid
        self._emit(control(SubType.INFO, Control.RTR, env=self.mode, seqid=self._snd_nxt))
        self._expect_rdx = True
        if self.state is State.GOT_VERS:
            self.state = State.RTR_SENT

    def _on_rtr(self, packet: Packet) -> None:
        self._check_mode(packet, "RTR")
        self._rcv_nxt = packet.seqid
        self._snd_nxt = (self._snd_nxt + 1) & SEQ_MASK
        self._emit(control(SubType.INFO, Control.RDX, seqid=self._snd_nxt, ackid=self._rcv_nxt))
        self._go_up()

    def _on_rdx(self, packet: Packet) -> None:
        if not self._expect_rdx:
            raise _Violation("RDX without our RTR")
        self._check_seq(packet.seqid)
        self._rcv_nxt = packet.seqid
        self._expect_rdx = False
        if self.state is not State.UP:
            self._go_up()

    def _go_up(self) -> None:
        self.state = State.UP
        assert self.version is not None
        self._events.append(LinkUp(self.version, self.mode))
        self._pump()

    def _check_mode(self, packet: Packet, what: str) -> None:
        if packet.env != self.mode:
            raise _Violation(f"{what} asks for mode 0x{packet.env:02x}, this channel is {self.mode.name}")

    def _best_version(self, major: int) -> tuple[int, int] | None:
        """Our highest version whose major is at most `major`."""
        return next((v for v in self.versions if v[0] <= major), None)

    def _send_vers(self, version: tuple[int, int]) -> None:
        self._offered = version
        self._emit(control(SubType.INFO, Control.VERS, payload=version_payload(*version)))
        self.state = State.VERS_SENT

    # ---- data ------------------------------------------------------------------

    def _receive_data_run(self, view: memoryview, offset: int, end: int) -> int:
        """Take in-order DATA/INFO fragments as fast as Python allows.

        Returns the offset of the first packet that needs the general path
        (`_receive_up`), or `end`. The checks are those of `_receive_up`.
        """
        unpack = HEADER.unpack_from
        header, room, reliable = self._header, self._payload, self._reliable
        expected = (self._rcv_nxt + 1) & SEQ_MASK
        partial = self._partial
        unacked = self._unacked_rx
        events = self._events
        limit = self.max_message
        while offset < end:
            ptype, stype, ctrl, env, seqid = unpack(view, offset)
            length = env & _LEN
            if ptype != _DATA or stype != _INFO or ctrl or seqid != expected or length > room:
                break
            if env & _START:
                if partial is not None:
                    break
                partial = bytearray()
            elif partial is None:
                break
            if len(partial) + length > limit:
                break
            start = offset + header
            partial += view[start : start + length]
            expected = (expected + 1) & SEQ_MASK
            offset += PACKET_SIZE
            if env & _STOP:
                events.append(MessageReceived(bytes(partial)))
                partial = None
            if reliable:
                unacked += 1
                if unacked >= self.ack_interval:
                    self._rcv_nxt = (expected - 1) & SEQ_MASK
                    self._send_ack()
                    unacked = 0
        self._rcv_nxt = (expected - 1) & SEQ_MASK
        self._partial = partial
        self._unacked_rx = unacked
        return offset

    def _receive_up(self, view: memoryview, offset: int) -> None:
        ptype, stype, ctrl, env, seqid = HEADER.unpack_from(view, offset)
        if ptype == PacketType.CTRL and ctrl & CTRL_MASK == Control.VERS and stype == SubType.INFO:
            self._dispatch_control(decode(view[offset : offset + PACKET_SIZE], self.mode))
            return
        if seqid != (self._rcv_nxt + 1) & SEQ_MASK:
            self._nack(ptype, ctrl)
            raise _Violation(f"sequence gap: got seqid {seqid}, expected {(self._rcv_nxt + 1) & SEQ_MASK}")
        if ptype != PacketType.DATA:
            if ptype == PacketType.CTRL:
                self._dispatch_control(decode(view[offset : offset + PACKET_SIZE], self.mode))
                return
            raise _Violation(f"packet type 0x{ptype:02x} on an up link")
        if stype & (SubType.ACK | SubType.NACK):
            if stype & SubType.NACK:
                reason = f"peer NACKed our packets (its last good seqid {self._nack_ackid(view, offset)})"
                self._events.append(ProtocolViolation(reason))
                self._reset(reason, by_peer=True, notify_peer=False, restart=False)  # its RESET restarts us
                return
            self._on_data_ack(self._ackid_of(view, offset))
        self._rcv_nxt = seqid
        if not stype & SubType.INFO:
            return
        if stype & ~(SubType.INFO | SubType.ACK) or ctrl:
            self._nack(ptype, ctrl)
            raise _Violation(f"malformed data packet stype 0x{stype:02x} ctrl 0x{ctrl:02x}")
        length = env & ENV_LENGTH_MASK
        if length > self._payload:
            self._nack(ptype, ctrl)
            raise _Violation(f"data length {length} exceeds the {self._payload}-byte payload")
        if env & ENV_START:
            if self._partial is not None:
                self._nack(ptype, ctrl)
                raise _Violation("START fragment while a message is still open")
            self._partial = bytearray()
        elif self._partial is None:
            self._nack(ptype, ctrl)
            raise _Violation("continuation fragment without a START")
        if len(self._partial) + length > self.max_message:
            self._nack(ptype, ctrl)
            raise _Violation(f"message exceeds max_message {self.max_message} bytes")
        start = offset + self._header
        self._partial += view[start : start + length]
        if self._reliable:
            self._unacked_rx += 1
            if self._unacked_rx >= self.ack_interval:
                self._send_ack()
        if env & ENV_STOP:
            self._events.append(MessageReceived(bytes(self._partial)))
            self._partial = None

    def _ackid_of(self, view: memoryview, offset: int) -> int:
        return RELIABLE_HEADER.unpack_from(view, offset)[6] if self._reliable else 0

    def _nack_ackid(self, view: memoryview, offset: int) -> int:
        return RELIABLE_HEADER.unpack_from(view, offset)[6]  # offset 12 in both modes

    def _on_data_ack(self, ackid: int) -> None:
        if not self._reliable:
            return  # unreliable mode keeps nothing to acknowledge
        if not _seq_le(self._acked_upto, ackid) or not _seq_le(ackid, self._snd_nxt):
            raise _Violation(f"ACK for seqid {ackid}, outside the outstanding {self._acked_upto}..{self._snd_nxt}")
        unacked = self._unacked_tx
        while unacked:
            first, count = unacked[0]
            if _seq_le((first + count - 1) & SEQ_MASK, ackid):
                unacked.popleft()
                self._in_flight -= count
            else:
                if _seq_le(first, ackid):
                    done = ((ackid - first) & SEQ_MASK) + 1
                    unacked[0] = ((ackid + 1) & SEQ_MASK, count - done)
                    self._in_flight -= done
                break
        self._acked_upto = ackid
        self._pump()

    def _pump(self) -> None:
        """Turn queued messages into packets, as far as the window allows.

        The packets of one call go out as one bytes object (a multiple of 64
        bytes), so a large message costs one allocation, not one per packet.
        """
        if self.state is not State.UP or not self._backlog:
            return
        room, reliable = self._payload, self._reliable
        backlog = self._backlog
        budget = self.window - self._in_flight if reliable else -1
        first_seq = (self._snd_nxt + 1) & SEQ_MASK
        pack = RELIABLE_HEADER.pack if reliable else HEADER.pack
        seq, ackid = self._snd_nxt, self._rcv_nxt
        blob = bytearray()
        while backlog and budget != 0:
            entry = backlog[0]
            view, pos = entry
            total = len(view)
            while budget != 0:
                chunk = view[pos : pos + room]
                n = len(chunk)
                env = n | (_START if pos == 0 else 0) | (_STOP if pos + n == total else 0)
                seq = (seq + 1) & SEQ_MASK
                if reliable:
                    blob += pack(_DATA, _INFO, 0, env, seq, 0, ackid)
                    budget -= 1
                else:
                    blob += pack(_DATA, _INFO, 0, env, seq)
                blob += chunk
                if n < room:
                    blob += bytes(room - n)
                pos += n
                if pos >= total:
                    backlog.popleft()
                    break
            else:
                entry[1] = pos
        if blob:
            self._output.append(bytes(blob))
            if reliable:
                sent = (seq - first_seq + 1) & SEQ_MASK
                self._unacked_tx.append((first_seq, sent))
                self._in_flight += sent
        self._snd_nxt = seq

    def _send_ack(self) -> None:
        self._snd_nxt = (self._snd_nxt + 1) & SEQ_MASK
        self._emit(Packet(PacketType.DATA, SubType.ACK, 0, 0, self._snd_nxt, self._rcv_nxt))
        self._unacked_rx = 0

    def _nack(self, ptype: int, ctrl: int) -> None:
        """A NACK naming the last packet we took in order (then we reset)."""
        self._snd_nxt = (self._snd_nxt + 1) & SEQ_MASK
        if ptype == PacketType.CTRL:
            self._emit(control(SubType.NACK, ctrl & CTRL_MASK, seqid=self._snd_nxt, ackid=self._rcv_nxt))
        elif self._reliable:
            self._emit(Packet(PacketType.DATA, SubType.NACK, 0, 0, self._snd_nxt, self._rcv_nxt))
        else:  # the ackid sits at offset 12 as in the reliable layout (Linux does so)
            self._emit(Packet(PacketType.DATA, SubType.NACK, 0, 0, self._snd_nxt, 0, CONTROL_ACKID.pack(self._rcv_nxt)))

    def _check_seq(self, seqid: int) -> None:
        if seqid != (self._rcv_nxt + 1) & SEQ_MASK:
            raise _Violation(f"sequence gap: got seqid {seqid}, expected {(self._rcv_nxt + 1) & SEQ_MASK}")

    # ---- reset -------------------------------------------------------------------

    def _violation(self, reason: str) -> None:
        self._events.append(ProtocolViolation(reason))
        self._reset(f"protocol error: {reason}", by_peer=False, notify_peer=True, restart=False)

    def _reset(self, reason: str, *, by_peer: bool, notify_peer: bool, restart: bool) -> None:
        was = self.state
        self.state = State.DOWN
        self.version = None
        self._clear_session()
        if self._on_reset is not None:
            self._on_reset()
        if notify_peer:
            self._output.append(RESET)
        if was is State.UP:
            self._events.append(LinkReset(reason, by_peer))
        if restart and self._opened:
            self._send_vers(self.versions[0])

    def _clear_session(self) -> None:
        self._snd_nxt = 0
        self._rcv_nxt = 0
        self._expect_rdx = False
        self._offered = (0, 0)
        self._partial = None
        self._backlog = deque()
        self._unacked_tx = deque()
        self._in_flight = 0
        self._acked_upto = 0
        self._unacked_rx = 0

    def _emit(self, packet: Packet) -> None:
        self._output.append(encode(packet, self.mode))


def _seq_le(a: int, b: int) -> bool:
    """a comes no later than b in 32-bit serial-number order."""
    return (b - a) & SEQ_MASK < 1 << 31


def _stype_name(stype: int) -> str:
    try:
        return SubType(stype).name or f"0x{stype:02x}"
    except ValueError:
        return f"0x{stype:02x}"
