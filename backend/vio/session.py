"""The VIO session: handshake and data transfer over one LDC channel (sans-I/O).

Theory of operation
-------------------
A `Session` is fed whole VIO messages (`receive`, one LDC message each) and
link events (`link_up`, `link_down`); what it wants sent waits in
`take_output()` (messages for the LDC channel) and what happened in
`take_events()`. A `Device` (device.py) plugs in the device class.

Handshake, the only place it lives (seed section 1.1.3):

    VER_INFO  ->  ATTR_INFO  ->  DRING_REG (each ring)  ->  RDX  ->  established

- The initiator (a client: vdc, vnet) sends VER_INFO with a fresh session id
  on link up; the responder (a server: vds, vsw) answers. The session id of
  the accepted VER_INFO is the session's: both ends send it on every later
  message, and a message with another id is rejected (dropped, reported).
- A VER_INFO/INFO at any time resets the session and starts it again.
- Version: same major -> ACK (minor lowered to ours if needed, all else
  unchanged); otherwise NACK with our highest version below the peer's
  major, or 0.0; an unknown device class is NACKed unchanged and fails.
- Attributes: each end that has attributes sends ATTR_INFO once a version
  is agreed; the device class checks the peer's and answers ACK/NACK.
- Rings: once attributes are settled, each end registers the rings its
  device names; the receiver checks the geometry, maps the memory and ACKs
  with a fresh dring_ident. A NACK is fatal: the session resets.
- RDX: an end that sends RDX does so when its attributes and rings are
  settled; the receiver ACKs (RDX is never NACKed). The session is
  established when the RDX exchanges the device class asks for are done
  (simplex: one direction; duplex: both).

Anything out of that order resets the session, like Linux's
handshake_failure. The initiator then starts again, at most
`MAX_RESTARTS` times in a row without reaching established, so two
disagreeing peers cannot loop forever.

Data (seed sections 1.1.4): descriptor rings (DRING_DATA), in-band
descriptors (DESC_DATA), packet mode (PKT_DATA) and DDS requests. INFO data
messages carry a sequence number per stream starting at 1; a gap is NACKed
and that stream stops until the next handshake. What the processor NACKs:
an unknown ring, indices out of range, a range overlapping entries still in
progress, entries not READY. What resets the session instead: an entry that
changes state behind our back (the ring cannot be trusted any more), and a
NACK of our own DRING_DATA (the peer gave up on our ring).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, Union

from ..errors import BackendError
from ..outbox import Outbox
from ..ldc.memory import PERM_RW, Export, PeerMemory, Segment, TransportCookie
from .constants import (
    DESC_HEADER_SIZE,
    END_OPEN,
    MAX_DESCRIPTOR_SIZE,
    MAX_DESCRIPTORS,
    DescState,
    Env,
    MsgType,
    ProcState,
    SubType,
)
from .device import Device, RingSpec
from .dring import ImportedRing, OwnedRing, RingError, RingMemory, Walk
from .messages import (
    AttrInfo,
    DdsInfo,
    DescData,
    DeviceMessage,
    DringData,
    DringReg,
    DringUnreg,
    Message,
    MessageError,
    PktData,
    Rdx,
    Tag,
    VerInfo,
    decode,
)

MAX_RESTARTS = 3
PAGE = 8192


class SessionMemory(Protocol):
    """What the session needs of LDC shared memory (LdcEndpoint provides it)."""

    def allocate_segment(self, size: int) -> Segment: ...
    def export(self, segment: Segment, offset: int, length: int, perms: int, page_code: int = 0) -> Export: ...
    def unmap(self, export: Export) -> None: ...
    @property
    def peer_memory(self) -> PeerMemory: ...


class Phase(Enum):
    IDLE = "idle"  # link down, or waiting for the peer's VER_INFO
    VERSION = "version"  # our VER_INFO is out
    ATTRIBUTES = "attributes"
    RINGS = "rings"
    RDX = "rdx"
    ESTABLISHED = "established"
    FAILED = "failed"  # gave up; restart() or a peer VER_INFO starts again


@dataclass(frozen=True, slots=True)
class Established:
    version: tuple[int, int]


@dataclass(frozen=True, slots=True)
class SessionReset:
    reason: str


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message we dropped or NACKed, and why (the session goes on)."""

    reason: str


Event = Union[Established, SessionReset, HandshakeFailed, Rejected]


class _Reset(Exception):
    """Internal: the current message breaks the protocol; reset the session."""


class _Refused(Exception):
    """Internal: a request we answer with a NACK (the session goes on)."""


def _env_name(env: int) -> str:
    try:
        return Env(env).name
    except ValueError:
        return f"envelope 0x{env:04x}"


class Session(Outbox[bytes, Event]):
    """One end of a VIO session, in either role."""

    def __init__(self, device: Device, memory: SessionMemory, *, sid_source: Callable[[], int] | None = None) -> None:
        self.device = device
        self.memory = memory
        self._new_sid = sid_source or (lambda: random.getrandbits(32))
        super().__init__()
        self._spare_segments: dict[int, list[Segment]] = {}
        self._failures = 0
        self._link_up = False
        self._next_ident = 1  # never reused, so a late completion cannot hit a new ring
        self._walking = False
        self._generation = 0  # bumped when rings go away, to stop a walk in progress
        self.walk_budget = 256  # descriptors per walk step (see _walk)
        self.phase = Phase.IDLE
        self._clear()

    # ---- state ---------------------------------------------------------------------

    def _clear(self) -> None:
        self.version: tuple[int, int] | None = None
        self.sid: int | None = None  # the session id every message carries
        self._offered: tuple[int, int] | None = None  # our pending VER_INFO
        self._offered_sid = 0
        self._attr_sent = self._attr_acked = self._attr_received = False
        self._own_rings: list[OwnedRing] = []
        self._own_exports: list[tuple[Export, Segment]] = []
        self._unacked_regs: list[OwnedRing] = []
        self._peer_rings: dict[int, ImportedRing] = {}
        self._rdx_sent = self._rdx_acked = self._rdx_received = False
        self._tx_seq = {"desc": 0, "pkt": 0}
        self._rx_seq = {"desc": 0, "pkt": 0}
        self._rx_stopped: set[str] = set()
        self._next_handle = 1
        self._inband_pending: dict[int, int] = {}  # handle -> seq
        self._inband_owed: dict[int, int] = {}  # peer handle -> seq
        self._paused: set[int] = set()  # ring idents whose walk waits for resume()
        self._dds_pending: dict[int, DdsInfo] = {}
        self._next_req_id = 1

    @property
    def established(self) -> bool:
        return self.phase is Phase.ESTABLISHED

    @property
    def own_rings(self) -> list[OwnedRing]:
        return list(self._own_rings)

    def peer_ring(self, ident: int) -> ImportedRing | None:
        return self._peer_rings.get(ident)

    # ---- link events -----------------------------------------------------------------

    def link_up(self) -> None:
        """The LDC link is up: an initiator starts the handshake."""
        self._link_up = True
        self._failures = 0
        if self.device.initiator:
            self._start()

    def link_down(self, reason: str = "LDC link went down") -> None:
        self._link_up = False
        self._reset(reason, restart=False)
        self.phase = Phase.IDLE

    def restart(self) -> None:
        """Start again after a failure (an initiator sends a new VER_INFO)."""
        self._failures = 0
        self._reset("restart requested", restart=True)

    # ---- receiving -------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """One VIO message from the LDC channel."""
        try:
            message = decode(data)
        except MessageError as exc:
            self._fail(f"malformed message: {exc}")
            return
        tag = message.tag
        try:
            if isinstance(message, VerInfo) and tag.stype == SubType.INFO:
                self._on_ver_info(message)
                return
            if isinstance(message, VerInfo):
                self._on_ver_reply(message)
                return
            if self.sid is None or tag.sid != self.sid:
                self._events.append(Rejected(f"{_env_name(tag.stype_env)} with session id 0x{tag.sid:08x}, expected {self._sid_text()}"))
                return
            self._dispatch(message)
        except _Reset as exc:
            self._fail(str(exc))
        except RingError as exc:
            self._fail(f"descriptor ring: {exc}")

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, AttrInfo):
            self._on_attr(message)
        elif isinstance(message, DringReg):
            self._on_dring_reg(message)
        elif isinstance(message, DringUnreg):
            self._on_dring_unreg(message)
        elif isinstance(message, Rdx):
            self._on_rdx(message)
        elif isinstance(message, DdsInfo):
            self._on_dds(message)
        elif isinstance(message, DringData):
            self._on_dring_data(message)
        elif isinstance(message, DescData):
            self._on_desc_data(message)
        elif isinstance(message, PktData):
            self._on_pkt_data(message)
        elif isinstance(message, DeviceMessage):
            if not self.device.on_device_message(self, message):
                raise _Reset(f"device message 0x{message.tag.stype_env:04x} not understood")

    # ---- version ---------------------------------------------------------------------

    def _start(self) -> None:
        self._offer(self.device.versions[0])

    def _offer(self, version: tuple[int, int]) -> None:
        self._offered = version
        self._offered_sid = self._new_sid() & 0xFFFF_FFFF
        tag = Tag(MsgType.CTRL, SubType.INFO, Env.VER_INFO, self._offered_sid)
        self._send(VerInfo(tag, version[0], version[1], self.device.dev_class))
        self.phase = Phase.VERSION

    def _on_ver_info(self, message: VerInfo) -> None:
        if self.phase is not Phase.IDLE or self.version is not None:
            self._reset("peer restarted the handshake (VER_INFO)", restart=False)
        if message.dev_class not in self.device.peer_classes:
            self._send(VerInfo(message.tag.reply(SubType.NACK), message.major, message.minor, message.dev_class))
            self.phase = Phase.FAILED
            self._events.append(HandshakeFailed(f"peer device class 0x{message.dev_class:02x} is not one we serve"))
            return
        best = self._best_version(message.major)
        if best is None or best[0] != message.major:
            major, minor = best if best is not None else (0, 0)
            self._send(VerInfo(message.tag.reply(SubType.NACK), major, minor, message.dev_class))
            if self.device.initiator and best is not None:
                self._offer(best)  # the peer's offer failed; ours may not
            return
        self.version = (message.major, min(message.minor, best[1]))
        self.sid = message.tag.sid
        self._send(VerInfo(message.tag.reply(SubType.ACK), self.version[0], self.version[1], message.dev_class))
        self._version_agreed()

    def _on_ver_reply(self, message: VerInfo) -> None:
        if self.phase is not Phase.VERSION or message.tag.sid != self._offered_sid or self._offered is None:
            self._events.append(Rejected(f"VER_INFO reply for no version we offered (sid 0x{message.tag.sid:08x})"))
            return
        offered = self._offered
        if message.tag.stype == SubType.ACK:
            if message.major != offered[0] or message.minor > offered[1]:
                raise _Reset(f"peer ACKed version {message.major}.{message.minor}, we offered {offered[0]}.{offered[1]}")
            self.version = (message.major, message.minor)
            self.sid = message.tag.sid
            self._version_agreed()
            return
        best = self._best_version(message.major) if (message.major, message.minor) != (0, 0) else None
        if best is None or best >= offered:
            self._give_up(f"no common VIO version (peer suggested {message.major}.{message.minor})")
            return
        self._offer(best)

    def _best_version(self, major: int) -> tuple[int, int] | None:
        return next((v for v in self.device.versions if v[0] <= major), None)

    def _version_agreed(self) -> None:
        self.phase = Phase.ATTRIBUTES
        assert self.version is not None
        payload = self.device.attr_payload(self.version)
        if payload is not None:
            self._send(AttrInfo(self._tag(MsgType.CTRL, SubType.INFO, Env.ATTR_INFO), payload))
            self._attr_sent = True
        self._advance()

    # ---- attributes --------------------------------------------------------------------

    def _on_attr(self, message: AttrInfo) -> None:
        if self.version is None or self.phase not in (Phase.ATTRIBUTES, Phase.RINGS, Phase.RDX):
            raise _Reset(f"ATTR_INFO in phase {self.phase.value}")
        stype = message.tag.stype
        if stype == SubType.INFO:
            reply = self.device.on_attr_info(message.payload, self.version)
            self._send(AttrInfo(message.tag.reply(SubType.ACK if reply.ack else SubType.NACK), reply.payload))
            if reply.ack:
                self._attr_received = True
                self._advance()
            else:
                self._events.append(Rejected("NACKed the peer's attributes"))
            return
        if not self._attr_sent or self._attr_acked:
            raise _Reset("ATTR_INFO reply to no attributes we sent")
        if stype == SubType.NACK:
            raise _Reset("peer NACKed our attributes")
        if not self.device.on_attr_ack(message.payload, self.version):
            raise _Reset("the attributes the peer ACKed do not suit us")
        self._attr_acked = True
        self._advance()

    def _attributes_settled(self) -> bool:
        assert self.version is not None
        return (self._attr_acked or not self._attr_sent) and (
            self._attr_received or not self.device.expects_attr(self.version)
        )

    # ---- rings -------------------------------------------------------------------------

    def _register_rings(self) -> None:
        assert self.version is not None
        for spec in self.device.rings(self.version):
            ring, cookies = self._new_ring(spec)
            self._own_rings.append(ring)
            self._unacked_regs.append(ring)
            tag = self._tag(MsgType.CTRL, SubType.INFO, Env.DRING_REG)
            self._send(DringReg(tag, 0, spec.count, spec.size, spec.options, cookies))

    def _new_ring(self, spec: RingSpec) -> tuple[OwnedRing, tuple[TransportCookie, ...]]:
        nbytes = spec.count * spec.size
        size = max(PAGE, -(-nbytes // PAGE) * PAGE)
        spares = self._spare_segments.get(size)
        segment = spares.pop() if spares else self.memory.allocate_segment(size)
        export = self.memory.export(segment, 0, nbytes, PERM_RW)
        self._own_exports.append((export, segment))
        ring = OwnedRing(RingMemory([segment.view[:nbytes]]), spec.count, spec.size, spec.options,
                         ack_each=spec.ack_each, open_ended=spec.open_ended)
        return ring, export.cookies

    def _on_dring_reg(self, message: DringReg) -> None:
        stype = message.tag.stype
        if stype == SubType.INFO:
            self._peer_registers(message)
            return
        if not self._unacked_regs:
            raise _Reset("DRING_REG reply to no ring we registered")
        ring = self._unacked_regs.pop(0)
        if stype == SubType.NACK:
            raise _Reset("peer NACKed our descriptor ring (fatal)")
        if message.dring_ident in {r.ident for r in self._own_rings}:
            raise _Reset(f"peer gave dring_ident {message.dring_ident} twice")
        ring.ident = message.dring_ident
        self._advance()

    def _peer_registers(self, message: DringReg) -> None:
        try:
            ring = self._import_ring(message)
        except _Refused as exc:
            self._send(DringReg(message.tag.reply(SubType.NACK), 0, message.num_descr, message.descr_size, message.options, message.cookies))
            self._events.append(Rejected(f"NACKed a descriptor ring: {exc}"))
            return
        self._next_ident += 1
        self._peer_rings[ring.ident] = ring
        self._send(DringReg(message.tag.reply(SubType.ACK), ring.ident, message.num_descr, message.descr_size, message.options, message.cookies))
        self._advance()

    def _import_ring(self, message: DringReg) -> ImportedRing:
        problem = self._ring_problem(message)
        if problem is not None:
            raise _Refused(problem)
        nbytes = message.num_descr * message.descr_size
        try:
            views = self.memory.peer_memory.map(message.cookies, nbytes, writable=True)
        except BackendError as exc:
            raise _Refused(f"its memory is not usable: {exc}") from None
        return ImportedRing(RingMemory(views), message.num_descr, message.descr_size, self._next_ident)

    def _ring_problem(self, message: DringReg) -> str | None:
        assert self.version is not None
        if self.phase not in (Phase.RINGS, Phase.RDX, Phase.ESTABLISHED):
            return f"registration in phase {self.phase.value}"
        if not 0 < message.num_descr <= MAX_DESCRIPTORS:
            return f"{message.num_descr} descriptors (1..{MAX_DESCRIPTORS})"
        if not DESC_HEADER_SIZE <= message.descr_size <= MAX_DESCRIPTOR_SIZE or message.descr_size % 8:
            return f"descriptor size {message.descr_size} (8..{MAX_DESCRIPTOR_SIZE}, a multiple of 8)"
        if not message.cookies:
            return "no cookies"
        if sum(c.size for c in message.cookies) < message.num_descr * message.descr_size:
            return "cookies cover less than the ring"
        if not self.device.accepts_ring(message, self.version):
            return "the device class does not take this ring"
        return None

    def _on_dring_unreg(self, message: DringUnreg) -> None:
        stype = message.tag.stype
        if stype == SubType.INFO:
            self._generation += 1
            if self._peer_rings.pop(message.dring_ident, None) is None:
                self._send(DringUnreg(message.tag.reply(SubType.NACK), message.dring_ident))
                self._events.append(Rejected(f"NACKed unregistration of unknown ring {message.dring_ident}"))
            else:
                self._send(DringUnreg(message.tag.reply(SubType.ACK), message.dring_ident))
            return
        ring = next((r for r in self._own_rings if r.ident == message.dring_ident), None)
        if ring is None or not ring.unregistering:
            self._events.append(Rejected(f"DRING_UNREG reply for ring {message.dring_ident} we are not unregistering"))
            return
        if stype == SubType.ACK:
            self._own_rings.remove(ring)
        else:
            ring.unregistering = False
            self._events.append(Rejected(f"peer NACKed unregistration of ring {message.dring_ident}"))

    def unregister_ring(self, ring: OwnedRing) -> None:
        """Ask the peer to forget one of our rings; data for it is NACKed from then on."""
        if ring not in self._own_rings or ring.ident is None:
            raise ValueError("not a registered ring of this session")
        ring.unregistering = True
        self._send(DringUnreg(self._tag(MsgType.CTRL, SubType.INFO, Env.DRING_UNREG), ring.ident))

    def _rings_settled(self) -> bool:
        if self._unacked_regs:
            return False
        return bool(self._peer_rings) or not self.device.expects_peer_ring

    # ---- RDX and progress ---------------------------------------------------------------

    def _advance(self) -> None:
        """Move through the phases as far as what we have allows."""
        if self.phase is Phase.ATTRIBUTES and self._attributes_settled():
            self.phase = Phase.RINGS
            self._register_rings()
        if self.phase is Phase.RINGS and self._rings_settled():
            self.phase = Phase.RDX
            if self.device.sends_rdx and not self._rdx_sent:
                self._send(Rdx(self._tag(MsgType.CTRL, SubType.INFO, Env.RDX)))
                self._rdx_sent = True
        if self.phase is Phase.RDX:
            done_ours = self._rdx_acked or not self.device.sends_rdx
            done_theirs = self._rdx_received or not self.device.expects_rdx
            if done_ours and done_theirs:
                self.phase = Phase.ESTABLISHED
                self._failures = 0
                for ring in self._own_rings:
                    ring.seq = 0
                assert self.version is not None
                self._events.append(Established(self.version))
                self.device.on_established(self)

    def _on_rdx(self, message: Rdx) -> None:
        if message.tag.stype == SubType.INFO:
            if self.phase not in (Phase.RDX, Phase.ESTABLISHED) and not (self.phase is Phase.RINGS and self._rings_settled()):
                raise _Reset(f"RDX in phase {self.phase.value}")
            self._send(Rdx(message.tag.reply(SubType.ACK)))
            self._rdx_received = True
        elif message.tag.stype == SubType.ACK and self._rdx_sent and not self._rdx_acked:
            self._rdx_acked = True
        else:
            raise _Reset("RDX NACK, or an ACK for no RDX of ours")
        self._advance()

    # ---- data: descriptor rings (requester side) ---------------------------------------

    def submit(self, ring: OwnedRing, payload: bytes, *, ack: bool | None = None) -> int:
        """Queue one descriptor on our ring and tell the processor; returns its index."""
        self._check_own_ring(ring)
        index = ring.queue(payload, ring.ack_each if ack is None else ack)
        if ring.open_ended:
            if not ring.processor_active:
                self._kick(ring, index, END_OPEN)
        else:
            self._kick(ring, index, index)
        return index

    def submit_many(self, ring: OwnedRing, payloads: list[bytes], *, ack_every: int) -> list[int]:
        """Queue a burst of descriptors and tell the processor once; returns their indices.

        Only every `ack_every`-th descriptor of the burst and its last ask for an
        ACK: an ACK of entry N completes every entry up to N, so a burst needs
        one ACK message per `ack_every` descriptors instead of one each (the
        processor still ACKs every descriptor that asks, as Linux's vdc needs).
        """
        self._check_own_ring(ring)
        if not payloads:
            return []
        first = ring.queue_many(payloads, ack_every)
        indices = [(first + n) % ring.count for n in range(len(payloads))]
        last = indices[-1]
        if ring.open_ended:
            if not ring.processor_active:
                self._kick(ring, first, END_OPEN)
        else:
            self._kick(ring, first, last)
        return indices

    def _check_own_ring(self, ring: OwnedRing) -> None:
        if not self.established or ring.ident is None or ring not in self._own_rings:
            raise BackendError("session not established or ring not registered")

    def _kick(self, ring: OwnedRing, start: int, end: int) -> None:
        assert ring.ident is not None
        ring.seq += 1
        ring.processor_active = end == END_OPEN
        tag = self._tag(MsgType.DATA, SubType.INFO, Env.DRING_DATA)
        self._send(DringData(tag, ring.seq, ring.ident, start, end, 0))

    def _on_ring_reply(self, message: DringData) -> None:
        ring = next((r for r in self._own_rings if r.ident == message.dring_ident), None)
        if ring is None:
            self._events.append(Rejected(f"DRING_DATA reply for unknown ring {message.dring_ident}"))
            return
        if message.tag.stype == SubType.NACK:
            raise _Reset(f"peer NACKed our DRING_DATA (ring {ring.ident}, {message.start_idx}..{message.end_idx})")
        if self.device.reads_done_payloads:
            on_done, ident = self.device.on_descriptor_done, message.dring_ident
            for index, payload in ring.reap(message.end_idx):
                on_done(ident, index, payload)
        elif ring.release(message.end_idx):
            self.device.on_descriptors_done(message.dring_ident)
        if message.state == ProcState.STOPPED:
            ring.processor_active = False
            again = ring.ready_after(message.end_idx)
            if again is not None:
                self._kick(ring, again, END_OPEN)

    # ---- data: descriptor rings (processor side) ----------------------------------------

    def _on_dring_data(self, message: DringData) -> None:
        if message.tag.stype != SubType.INFO:
            self._on_ring_reply(message)
            return
        ring = self._peer_rings.get(message.dring_ident)
        if ring is None or not self.established:
            self._nack_dring(message, f"DRING_DATA for unregistered ring {message.dring_ident}")
            return
        if ring.stopped:
            self._nack_dring(message, f"ring {ring.ident} stopped after a sequence gap")
            return
        if message.seq != ring.seq + 1:
            ring.stopped = True
            self._nack_dring(message, f"DRING_DATA seq {message.seq}, expected {ring.seq + 1}: ring {ring.ident} stopped")
            return
        ring.seq = message.seq
        problem = self._range_problem(ring, message.start_idx, message.end_idx)
        if problem:
            self._nack_dring(message, problem)
            return
        ring.walk = Walk(message.seq, message.start_idx, message.end_idx)
        self._walk(ring)

    def _range_problem(self, ring: ImportedRing, start: int, end: int) -> str | None:
        if start >= ring.count or (end != END_OPEN and end >= ring.count):
            return f"range {start}..{end} outside a ring of {ring.count}"
        if ring.walk is not None and not ring.walk.finished:
            return f"range {start}..{end} while {ring.walk.start}..{ring.walk.end} is still being walked"
        n = 1 if end == END_OPEN else (end - start) % ring.count + 1  # open: the first must be READY
        for first, length in ring.runs(start, n):
            states = ring.states(first, length)
            for offset, state in enumerate(states):
                index = first + offset
                if ring.busy(index):
                    return f"range {start}..{end} overlaps entry {index}, still in progress"
                if state != DescState.READY:
                    return f"entry {index} is in state {state}, not READY"
        return None

    def _walk(self, ring: ImportedRing) -> None:
        """Accept READY entries of the current request, in runs, and hand them to the device.

        At most `walk_budget` entries per call: then the walk waits in
        `has_pending_work` for `resume()`, so the I/O edge can send the ACKs
        so far (the requester refills meanwhile) and serve other channels.
        """
        walk = ring.walk
        assert walk is not None
        count = ring.count
        budget = self.walk_budget
        self._walking = True
        try:
            while not walk.finished:
                index = walk.start if walk.last is None else ring.next(walk.last)
                if walk.end == END_OPEN:
                    limit = count if walk.last is None else (walk.start - index) % count
                else:
                    limit = (walk.end - index) % count + 1
                if budget <= 0:
                    if limit and ring.state(index) == DescState.READY:
                        self._paused.add(ring.ident)  # more to do: resume() goes on after the edge sent this step's ACKs
                    else:
                        walk.finished = True  # nothing more now: end the step (and maybe the walk) without a resume
                    break
                if limit and not ring.order:
                    served, acks = self.device.serve_in_place(self, ring, index, min(limit, budget, count - index))
                    if served:
                        budget -= served
                        walk.last = index + served - 1
                        self._ack(ring, walk.seq, acks)
                        if walk.last == walk.end or ring.next(walk.last) == walk.start:
                            walk.finished = True
                        continue
                batch = ring.accept_run(index, min(limit, budget)) if limit else []
                if not batch:
                    walk.finished = True
                    break
                budget -= len(batch)
                generation = self._generation
                walk.last = batch[-1][0]
                self.device.on_descriptors(self, ring.ident, batch)
                if self._generation != generation:
                    return  # the device's work reset or unregistered rings meanwhile
                if walk.last == walk.end or ring.next(walk.last) == walk.start:
                    walk.finished = True
        except RingError as exc:
            self._fail(f"descriptor ring: {exc}")
            return
        finally:
            self._walking = False
        self._settle(ring)

    @property
    def has_pending_work(self) -> bool:
        """A walk paused on its budget: call resume() soon."""
        return bool(self._paused)

    def resume(self) -> None:
        """Continue paused walks, one budget each."""
        paused, self._paused = self._paused, set()
        for ident in paused:
            ring = self._peer_rings.get(ident)
            if ring is not None and ring.walk is not None:
                self._walk(ring)

    def complete(self, ring_ident: int, index: int, payload: bytes | None) -> None:
        """The device finished a descriptor (payload: what to write back, or None)."""
        ring = self._peer_rings.get(ring_ident)
        if ring is None:
            return  # unregistered or reset meanwhile: the work is dropped
        ring.finish(index, payload)
        if not self._walking:  # during a walk, _walk settles once at its end
            self._settle(ring)

    def complete_many(self, ring_ident: int, indices: list[int]) -> None:
        """The device finished several descriptors, leaving their payloads as they were."""
        ring = self._peer_rings.get(ring_ident)
        if ring is None:
            return
        for index in indices:
            ring.finish(index, None)
        if not self._walking:
            self._settle(ring)

    def _settle(self, ring: ImportedRing) -> None:
        """Publish finished descriptors; end the walk when all is done."""
        tag = self._tag(MsgType.DATA, SubType.ACK, Env.DRING_DATA)
        walk = ring.walk
        try:
            acks = ring.flush()
        except RingError as exc:
            self._fail(f"descriptor ring: {exc}")
            return
        self._ack(ring, walk.seq if walk else ring.seq, acks)
        if walk is None or not walk.finished or ring.order:
            return
        if walk.end == END_OPEN and walk.last is not None:
            following = ring.next(walk.last)
            if following != walk.start and not ring.busy(following) and ring.state(following) == DescState.READY:
                walk.finished = False  # more arrived while we worked: keep walking
                self._walk(ring)
                return
        ring.walk = None
        if walk.end == END_OPEN:
            last = walk.last if walk.last is not None else walk.start
            self._send(DringData(tag, walk.seq, ring.ident, walk.start, last, ProcState.STOPPED))

    def _ack(self, ring: ImportedRing, seq: int, indices: list[int]) -> None:
        """One DRING_DATA ACK per finished entry that asked for one (start == end, as Linux's vdc wants)."""
        if indices:
            tag = self._tag(MsgType.DATA, SubType.ACK, Env.DRING_DATA)
            for index in indices:
                self._send(DringData(tag, seq, ring.ident, index, index, ProcState.ACTIVE))

    def _nack_dring(self, message: DringData, reason: str) -> None:
        self._send(DringData(message.tag.reply(SubType.NACK), message.seq, message.dring_ident, message.start_idx, message.end_idx, ProcState.STOPPED))
        self._events.append(Rejected(reason))

    # ---- data: in-band descriptors, packets -------------------------------------------

    def send_inband(self, payload: bytes) -> int:
        """Send a descriptor in-band (DESC_DATA); returns its handle."""
        self._require_established()
        handle = self._next_handle
        self._next_handle += 1
        seq = self._next_seq("desc")
        self._inband_pending[handle] = seq
        self._send(DescData(self._tag(MsgType.DATA, SubType.INFO, Env.DESC_DATA), seq, handle, payload))
        return handle

    def complete_inband(self, handle: int, payload: bytes, ok: bool = True) -> None:
        seq = self._inband_owed.pop(handle, None)
        if seq is None:
            return  # reset meanwhile
        stype = SubType.ACK if ok else SubType.NACK
        self._send(DescData(self._tag(MsgType.DATA, stype, Env.DESC_DATA), seq, handle, payload))

    def _on_desc_data(self, message: DescData) -> None:
        if message.tag.stype == SubType.INFO:
            if self._check_rx_seq("desc", message.seq, "DESC_DATA"):
                if message.desc_handle in self._inband_owed:
                    self._send(DescData(message.tag.reply(SubType.NACK), message.seq, message.desc_handle, message.payload))
                    self._events.append(Rejected(f"in-band descriptor handle {message.desc_handle} already in progress"))
                    return
                self._inband_owed[message.desc_handle] = message.seq
                self.device.on_inband(self, message.desc_handle, message.payload)
            else:
                self._send(DescData(message.tag.reply(SubType.NACK), message.seq, message.desc_handle, message.payload))
            return
        if self._inband_pending.pop(message.desc_handle, None) is None:
            self._events.append(Rejected(f"DESC_DATA reply for unknown handle {message.desc_handle}"))
            return
        self.device.on_inband_done(message.desc_handle, message.payload, message.tag.stype == SubType.ACK)

    def send_packet(self, data: bytes) -> None:
        """Packet-mode data (PKT_DATA); big payloads ride LDC fragmentation."""
        self._require_established()
        self._send(PktData(self._tag(MsgType.DATA, SubType.INFO, Env.PKT_DATA), self._next_seq("pkt"), data))

    def _on_pkt_data(self, message: PktData) -> None:
        if message.tag.stype != SubType.INFO:
            self._events.append(Rejected("peer NACKed our packet-mode data") if message.tag.stype == SubType.NACK else Rejected("unexpected PKT_DATA ACK"))
            return
        if self._check_rx_seq("pkt", message.seq, "PKT_DATA"):
            self.device.on_packet(message.data)
        else:
            self._send(PktData(message.tag.reply(SubType.NACK), message.seq, b""))

    def _next_seq(self, stream: str) -> int:
        self._tx_seq[stream] += 1
        return self._tx_seq[stream]

    def _check_rx_seq(self, stream: str, seq: int, what: str) -> bool:
        """Sequence check for a data stream; a gap stops the stream for this session."""
        if not self.established or stream in self._rx_stopped:
            self._events.append(Rejected(f"{what} while the stream is stopped or the session not established"))
            return False
        expected = self._rx_seq[stream] + 1
        if seq != expected:
            self._rx_stopped.add(stream)
            self._events.append(Rejected(f"{what} seq {seq}, expected {expected}: stream stopped"))
            return False
        self._rx_seq[stream] = seq
        return True

    # ---- device-class messages -------------------------------------------------------------

    def send_device_message(self, stype_env: int, payload: bytes) -> None:
        """An INFO of a device-class envelope (0x0100 and up, e.g. VNET_MCAST_INFO)."""
        self._require_established()
        self._send(DeviceMessage(self._tag(MsgType.CTRL, SubType.INFO, stype_env), payload))

    def reply_device_message(self, request: DeviceMessage, *, ack: bool, payload: bytes | None = None) -> None:
        tag = request.tag.reply(SubType.ACK if ack else SubType.NACK)
        self._send(DeviceMessage(tag, request.payload if payload is None else payload))

    # ---- DDS ---------------------------------------------------------------------------

    def send_dds(self, dds_class: int, subclass: int, body: bytes = b"") -> int:
        """Send a DDS request; returns its request id (the reply carries it back)."""
        self._require_established()
        req_id = self._next_req_id
        self._next_req_id = (self._next_req_id + 1) & 0xFFFF_FFFF or 1
        message = DdsInfo(self._tag(MsgType.CTRL, SubType.INFO, Env.DDS_INFO), dds_class, subclass, req_id, body)
        self._dds_pending[req_id] = message
        self._send(message)
        return req_id

    def _on_dds(self, message: DdsInfo) -> None:
        if message.tag.stype == SubType.INFO:
            ack, body = self.device.on_dds(message)
            reply_tag = message.tag.reply(SubType.ACK if ack else SubType.NACK)
            self._send(DdsInfo(reply_tag, message.dds_class, message.dds_subclass, message.dds_req_id, body))
            return
        request = self._dds_pending.pop(message.dds_req_id, None)
        if request is None or (request.dds_class, request.dds_subclass) != (message.dds_class, message.dds_subclass):
            self._events.append(Rejected(f"DDS reply for unknown request {message.dds_req_id}"))
            return
        self.device.on_dds_reply(request, message)

    # ---- plumbing ----------------------------------------------------------------------

    def _tag(self, mtype: int, stype: int, env: int) -> Tag:
        assert self.sid is not None
        return Tag(mtype, stype, env, self.sid)

    def _send(self, message: Message) -> None:
        self._output.append(message.encode())

    def _require_established(self) -> None:
        if not self.established:
            raise BackendError(f"VIO session is {self.phase.value}, not established")

    def _sid_text(self) -> str:
        return "none (no session)" if self.sid is None else f"0x{self.sid:08x}"

    def _fail(self, reason: str) -> None:
        """A protocol error: reset, and let an initiator try again (boundedly)."""
        self._failures += 1
        if self._failures > MAX_RESTARTS:
            self._give_up(f"{reason} (after {MAX_RESTARTS} restarts)")
            return
        self._reset(reason, restart=True)

    def _give_up(self, reason: str) -> None:
        self._reset(reason, restart=False)
        self.phase = Phase.FAILED
        self._events.append(HandshakeFailed(reason))

    def _reset(self, reason: str, *, restart: bool) -> None:
        self._generation += 1
        was = self.phase
        for export, segment in self._own_exports:
            self.memory.unmap(export)
            self._spare_segments.setdefault(segment.size, []).append(segment)
        self._clear()
        self.phase = Phase.IDLE
        if was is not Phase.IDLE:
            self._events.append(SessionReset(reason))
            self.device.on_reset(reason)
        if restart and self.device.initiator and self._link_up:
            self._start()


