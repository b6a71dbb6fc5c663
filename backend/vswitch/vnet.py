"""vNet over VIO (seed section 1.1.7): attributes, multicast, descriptors, and the device class.

Both roles run the same `VnetDevice`: the switch side of a port (device
class NETWORK_SWITCH, responder) and a vnet client (NETWORK, initiator).
Each side registers its own TX ring; the peer processes it, copying each
frame in through the sender's cookies. Frames sit 6 bytes into their
buffers (Linux VNET_PACKET_SKIP, illumos VNET_IPALIGN) and copies are
rounded up to 8 bytes, as the hypervisor's copy wants.

The per-frame work of the ring (descriptor checks, cookie checks, the
copies, TX descriptors) is C (backend/native/vnet.c), one call per run of
frames: a walk step's descriptors become one `FrameBatch` for `on_frames`,
and a batch of frames goes onto our TX ring in one call. Decisions (errors,
counters, the session's kicks) stay here.

MTU (the attribute counts whole frames): below 1.3 both ends use exactly
1514; at 1.3 exactly 1518 (a VLAN tag fits); from 1.4 the receiver of an
ATTR_INFO ACKs with the lower of its own and the peer's (Linux does this).
VLAN-tagged frames are allowed only from 1.3.

Large Segment Offload (from 1.7; docs/vswitch-lso.md): an end offers it with
cflags LSO_IPV4_CAPAB and its largest LSO frame (ipv4_lso_maxlen, 2048..65535).
The receiver of an ATTR_INFO keeps the flag only when it offers LSO too, and
ACKs with the lower maxlen, clearing the flag below 2048 (Linux
handle_attr_info). LSO is on when both the peer's INFO and its ACK of ours
keep the flag; the lowest maxlen seen is the negotiated `tsolen`. Then a
frame may be up to tsolen bytes (not only the MTU), and a descriptor's
extension (after two cookie slots) marks an LSO frame and carries its MSS.
"""

from __future__ import annotations

import errno
import logging
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BackendError
from ..ldc.memory import PERM_RW, TRANSPORT_COOKIE, Segment
from ..native import native, pin
from ..vio.constants import DevClass, DringOption, SubType
from ..vio.device import AttrReply, Device, RingSpec
from ..vio.dring import OwnedRing
from ..vio.messages import DdsInfo, DeviceMessage, DringReg
from ..vio.session import Session
from ..vio.xfer import Transfer, decode_xfer_mode, encode_xfer_mode
from .batch import FrameBatch, PairGroups
from .lso import gso_from_lso, lso_frames
from .offload import OffloadError
from .vnet_hdr import VirtioNetHdr

log = logging.getLogger(__name__)

VERSIONS = ((1, 8), (1, 7), (1, 6), (1, 5), (1, 4), (1, 3), (1, 2), (1, 1), (1, 0))
MCAST_INFO = 0x0101
ADDR_ETHERMAC = 0x1
FRAME_LEN = 1514  # ETH_FRAME_LEN: a 1500-byte MTU plus the Ethernet header
VLAN_LEN = 4
PACKET_SKIP = 6
MAX_FRAME = 65535 + 14 + 4
MAX_MCAST = 7
ACK_EVERY = 32  # TX descriptors per requested ACK
# TX ring entries: a deep ring rides out the moments a busy peer is not scheduled
# (with 256 entries a switch dropped 20-50% of a burst it could not hand on), as long
# as the frame buffers behind it stay small (one exported buffer per entry).
BIG_RING, SMALL_RING = 1024, 256
BIG_RING_BUFFERS = 3 << 19  # at most 1.5 MiB of frame buffers for the deep ring
# With LSO the ring has 256 entries (a shallower one drops the bursts of small frames a
# busy peer sends) and each entry's buffer holds the largest LSO frame we send, as far as
# `tx_buffers` allows: a switch port's 1.5 MiB (its vhost-user pool) makes 6 KiB buffers,
# a client with memory to spare (LSO_CLIENT_BUFFERS) 64 KiB ones. What we receive is
# bounded by the negotiated tsolen only.
LSO_CLIENT_BUFFERS = SMALL_RING * 65544

ATTR = struct.Struct(">BBHBBxxQQHH20x")  # the 48 bytes after the VIO tag
MCAST = struct.Struct(">BB42s4x")
DESC = struct.Struct(">II")  # size, ncookies (after the 8-byte ring header)
DDS_VNET_NIU = 0x10
DDS_STATUS = struct.Struct(">Q")
DDS_SUCCESS, DDS_FAIL = 0x0, 0x1
LSO_IPV4_CAPAB = 0x1  # cflags: this end takes and sends IPv4 LSO frames
MIN_TSO, MAX_TSO = 2048, 65535  # VNET_MINTSO, VNET_MAXTSO: the bounds of ipv4_lso_maxlen
LSO_VERSION = (1, 7)


@dataclass(frozen=True, slots=True)
class NetAttrs:
    xfer_mode: int
    addr_type: int
    ack_freq: int
    plnk_updt: int
    options: int
    addr: int
    mtu: int
    cflags: int = 0
    ipv4_lso_maxlen: int = 0

    def encode(self) -> bytes:
        return ATTR.pack(self.xfer_mode, self.addr_type, self.ack_freq, self.plnk_updt, self.options,
                         self.addr, self.mtu, self.cflags, self.ipv4_lso_maxlen)

    @classmethod
    def decode(cls, payload: bytes) -> NetAttrs:
        if len(payload) < ATTR.size:
            raise OSError(errno.EINVAL, f"vNet attributes truncated: {len(payload)} bytes")
        return cls(*ATTR.unpack_from(payload, 0))


def mac_to_int(mac: bytes) -> int:
    return int.from_bytes(mac, "big")


def int_to_mac(value: int) -> bytes:
    return (value & 0xFFFF_FFFF_FFFF).to_bytes(6, "big")


@dataclass(frozen=True, slots=True)
class McastInfo:
    set: bool
    addrs: tuple[bytes, ...]

    def encode(self) -> bytes:
        if not 1 <= len(self.addrs) <= MAX_MCAST:
            raise ValueError(f"MCAST_INFO carries 1..{MAX_MCAST} addresses, not {len(self.addrs)}")
        if any(len(addr) != 6 for addr in self.addrs):
            raise ValueError("multicast addresses are 6 bytes each")
        return MCAST.pack(int(self.set), len(self.addrs), b"".join(self.addrs))

    @classmethod
    def decode(cls, payload: bytes) -> McastInfo:
        if len(payload) < MCAST.size - 4:
            raise OSError(errno.EINVAL, "MCAST_INFO truncated")
        flag, count, addrs = MCAST.unpack_from(payload.ljust(MCAST.size, b"\0"), 0)
        if not 1 <= count <= MAX_MCAST or flag not in (0, 1):
            raise OSError(errno.EINVAL, f"MCAST_INFO with set={flag} count={count}")
        return cls(bool(flag), tuple(addrs[i * 6 : i * 6 + 6] for i in range(count)))


def negotiated_mtu(version: tuple[int, int], ours: int, theirs: int) -> int | None:
    """The frame MTU both ends will use, or None when the peer's value is refused."""
    if version < (1, 3):
        return FRAME_LEN if theirs == FRAME_LEN else None
    if version == (1, 3):
        return FRAME_LEN + VLAN_LEN if theirs == FRAME_LEN + VLAN_LEN else None
    return min(ours, theirs) if theirs >= 64 else None


def negotiated_tsolen(version: tuple[int, int], ours: int, cflags: int, theirs: int) -> int:
    """The largest LSO frame both ends accept (0: no LSO), from our offer and the peer's."""
    if version < LSO_VERSION or not ours or not cflags & LSO_IPV4_CAPAB:
        return 0
    tsolen = min(ours, theirs)
    return tsolen if tsolen >= MIN_TSO else 0


def _slot_size(mtu: int) -> int:
    """Bytes of one TX buffer: the frame after PACKET_SKIP, rounded up to 8."""
    return -(-(mtu + PACKET_SKIP) // 8) * 8


def _ring_for(mtu: int, tsolen: int) -> int:
    if tsolen:
        return SMALL_RING
    return BIG_RING if BIG_RING * _slot_size(mtu) <= BIG_RING_BUFFERS else SMALL_RING


def our_mtu(version: tuple[int, int], configured: int) -> int:
    if version < (1, 3):
        return FRAME_LEN
    if version == (1, 3):
        return FRAME_LEN + VLAN_LEN
    return configured


class VnetDevice(Device):
    """One end of a vNet channel (either role)."""

    sends_rdx = True
    expects_rdx = True
    expects_peer_ring = True
    reads_done_payloads = False  # a finished frame only means its TX entry is free again
    versions = VERSIONS

    def __init__(
        self,
        mac: bytes,
        *,
        switch_side: bool,
        mtu: int = FRAME_LEN,
        ring_size: int | None = None,
        on_frame: Callable[[bytes], None] | None = None,
        on_frames: Callable[[FrameBatch], None] | None = None,
        lso_maxlen: int = 0,
        tx_buffers: int = BIG_RING_BUFFERS,
    ) -> None:
        if lso_maxlen and not MIN_TSO <= lso_maxlen <= MAX_TSO:
            raise ValueError(f"LSO maxlen {lso_maxlen} outside {MIN_TSO}..{MAX_TSO}")
        self.mac = mac
        self.switch_side = switch_side
        self.initiator = not switch_side
        self.dev_class = DevClass.NETWORK_SWITCH if switch_side else DevClass.NETWORK
        self.peer_classes = frozenset({DevClass.NETWORK} if switch_side else {DevClass.NETWORK_SWITCH, DevClass.NETWORK})
        self.configured_mtu = mtu
        self.mtu = mtu
        self.lso_maxlen = lso_maxlen  # what we offer (0: no LSO)
        self.tsolen = 0  # the negotiated largest LSO frame while established (0: no LSO)
        self.tx_buffers = tx_buffers  # bytes of TX frame buffers LSO may take
        self._lso_granted = self._lso_acked = 0  # from the peer's INFO and from its ACK of ours
        self._fixed_ring_size = ring_size  # None: sized from the MTU once it is agreed
        self.ring_size = ring_size or SMALL_RING
        self.on_frame = on_frame or (lambda frame: None)
        #: Takes each walk step's frames at once (valid until it returns); default: on_frame per frame.
        self.on_frames = on_frames or self._each_frame
        self.peer_mac: bytes | None = None
        self.version: tuple[int, int] | None = None
        self.multicast: set[bytes] = set()  # groups the peer joined (switch side)
        self.on_multicast: Callable[[bool, bytes], bool] | None = None  # join/leave; False: refused
        self.on_up: Callable[[Session], None] | None = None  # the session is established
        self.on_tx_space: Callable[[], None] | None = None  # TX ring entries came back
        self.counters = dict(rx_frames=0, rx_bytes=0, tx_frames=0, tx_bytes=0, rx_dropped=0, tx_dropped=0, rx_errors=0,
                             rx_lso=0, tx_lso=0)
        self._buffers: Segment | None = None
        self._slot_cookies: list[int] = []  # the cookie of each TX ring entry's frame buffer
        self._tx: Any = None  # struct vnet_tx_ring over our ring and its frame slots, while established
        self._tx_memory: tuple[Any, ...] = ()  # what the C struct points into, kept alive with it
        self._tx_result = native()[0].new("struct vnet_tx_result *")
        self._rx: FrameBatch | None = None
        self._link: Any = None  # struct vnet_link: what the session negotiated, while established
        self._no_peer_memory = native()[0].new("struct ldc_peer_memory *")  # revoked: every cookie fails
        self._session: Session | None = None
        self._ring: OwnedRing | None = None  # our TX ring while the session is established
        self._mcast_pending: list[McastInfo] = []
        self.mcast_replies: list[tuple[McastInfo, bool]] = []  # client side: what the switch said

    # ---- handshake ---------------------------------------------------------------------

    def attr_payload(self, version: tuple[int, int]) -> bytes:
        modes = Transfer.PKT | Transfer.DRING if version >= (1, 2) else Transfer.DRING
        lso = self.lso_maxlen if version >= LSO_VERSION else 0
        return NetAttrs(encode_xfer_mode(version, modes), ADDR_ETHERMAC, 0, 0, DringOption.TX,
                        mac_to_int(self.mac), our_mtu(version, self.configured_mtu),
                        LSO_IPV4_CAPAB if lso else 0, lso).encode()

    def expects_attr(self, version: tuple[int, int]) -> bool:
        return True

    def on_attr_info(self, payload: bytes, version: tuple[int, int]) -> AttrReply:
        try:
            attrs = NetAttrs.decode(payload)
            modes = decode_xfer_mode(version, attrs.xfer_mode)
        except (OSError, BackendError) as exc:
            log.info("vnet: refusing attributes: %s", exc)
            return AttrReply(False, payload)
        mtu = negotiated_mtu(version, our_mtu(version, self.configured_mtu), attrs.mtu)
        peer_mac = int_to_mac(attrs.addr)
        if Transfer.DRING not in modes or attrs.addr_type != ADDR_ETHERMAC or mtu is None or peer_mac[0] & 1:
            return AttrReply(False, payload)
        self.peer_mac, self.mtu, self.version = peer_mac, mtu, version
        tsolen = self._lso_granted = negotiated_tsolen(version, self.lso_maxlen, attrs.cflags, attrs.ipv4_lso_maxlen)
        self.tsolen = min(tsolen, self._lso_acked)
        return AttrReply(True, NetAttrs(attrs.xfer_mode, attrs.addr_type, attrs.ack_freq, 0, attrs.options,
                                        attrs.addr, mtu, LSO_IPV4_CAPAB if tsolen else 0, tsolen).encode())

    def on_attr_ack(self, payload: bytes, version: tuple[int, int]) -> bool:
        attrs = NetAttrs.decode(payload)
        self._lso_acked = negotiated_tsolen(version, self.lso_maxlen, attrs.cflags, attrs.ipv4_lso_maxlen)
        self.tsolen = min(self._lso_granted, self._lso_acked)
        ours = our_mtu(version, self.configured_mtu)
        if version >= (1, 4) and 64 <= attrs.mtu <= ours:
            self.mtu = min(self.mtu, attrs.mtu)  # the peer answered with the lower MTU
            return True
        return attrs.mtu == ours

    def rings(self, version: tuple[int, int]) -> list[RingSpec]:
        self.ring_size = self._fixed_ring_size or _ring_for(self.mtu, self.tsolen)
        return [RingSpec(self.ring_size, 64, DringOption.TX, ack_each=False, open_ended=True)]

    def accepts_ring(self, reg: DringReg, version: tuple[int, int]) -> bool:
        return reg.descr_size >= 8 + DESC.size + TRANSPORT_COOKIE.size

    def on_established(self, session: Session) -> None:
        self._session = session
        self.version = session.version
        self._link = native()[0].new("struct vnet_link *", {
            "mtu": self.mtu, "tsolen": self.tsolen, "allow_tags": self.vlan_tags_allowed, "ext": self.has_extension})
        self._ring = session.own_rings[0]
        self._prepare_buffers(session)
        if self.on_up is not None:
            self.on_up(session)

    def on_reset(self, reason: str) -> None:
        self._session = None
        self.tsolen = self._lso_granted = self._lso_acked = 0
        self._rx = None  # sized for the old session's largest frame
        self._ring = None
        self._tx = None
        self._tx_memory = ()
        if self.switch_side and self.on_multicast is not None:
            for group in list(self.multicast):
                self.on_multicast(False, group)
        self.multicast.clear()

    def tx_free(self) -> int:
        """TX ring entries free for frames (0 when the link is down)."""
        ring = self._ring
        return ring.free_entries() if ring is not None and self.is_up else 0

    @property
    def is_up(self) -> bool:
        return self._session is not None and self._session.established

    @property
    def vlan_tags_allowed(self) -> bool:
        return self.version is not None and self.version >= (1, 3)

    @property
    def has_extension(self) -> bool:
        """Descriptors carry the 8-byte extension (flags, LSO MSS) after two cookie slots."""
        return self.version is not None and self.version >= LSO_VERSION

    @property
    def tx_lso_max(self) -> int:
        """The largest LSO frame we send (within tsolen, as our TX buffers allow; 0: no LSO)."""
        return min(self.tsolen, self._tx_slot() - PACKET_SKIP) if self.tsolen else 0

    def _tx_slot(self) -> int:
        slot = _slot_size(self.mtu)
        if self.tsolen:
            slot = max(slot, min(_slot_size(self.tsolen), self.tx_buffers // self.ring_size // 8 * 8))
        return slot

    @property
    def largest_frame(self) -> int:
        """The largest frame either way: the MTU, or the LSO maxlen when that is larger."""
        return max(self.mtu, self.tsolen)

    # ---- frames out ----------------------------------------------------------------------

    def _prepare_buffers(self, session: Session) -> None:
        """One buffer per ring entry, exported for the session (Linux maps per frame; a fixed
        slot per entry saves the map-table work on every frame)."""
        slot = self._tx_slot()
        size = max(8192, -(-(slot * self.ring_size) // 8192) * 8192)
        memory = session.memory
        if self._buffers is None or self._buffers.size < size:
            self._buffers = memory.allocate_segment(size)
        self._slot_cookies = [memory.export(self._buffers, i * slot, slot, PERM_RW).cookies[0].addr for i in range(self.ring_size)]
        ring = self._ring
        assert ring is not None and ring.memory.single is not None  # our own ring: one segment
        ffi, _ = native()
        ring_keep, ring_memory = pin(ring.memory.single)
        buffers_keep, buffers = pin(self._buffers.view)
        slot_cookies = ffi.new("uint64_t[]", self._slot_cookies)
        self._tx_memory = (ring_keep, buffers_keep, slot_cookies)
        self._tx = ffi.new("struct vnet_tx_ring *", {
            "ring": ring_memory, "ring_size": ring.memory.size, "count": ring.count, "desc_size": ring.size,
            "buffers": buffers, "buffers_size": self._buffers.size, "slot_size": slot, "slot_cookies": slot_cookies,
            "link": self._link[0], "ack_every": ACK_EVERY})

    def _queue(self, batch: FrameBatch, group_of: Any = None, selected: Any = None, ngroups: int = 0) -> tuple[int, int, int]:
        """Frames of `batch` (those of the selected groups, if given) onto our TX ring, in order,
        while it has room: (queued, frames looked at, refused for size or tag, counted as dropped)."""
        session, ring, tx = self._session, self._ring, self._tx
        if session is None or ring is None or tx is None or not session.established:
            return 0, 0, 0
        ffi, lib = native()
        result = self._tx_result
        lib.vnet_tx(tx, ring.prod, ring.free_entries(), ring.pending, batch.struct,
                    ffi.NULL if group_of is None else group_of, ffi.NULL if selected is None else selected, ngroups, result)
        queued = result.queued
        if queued:
            # The first entry goes through the session, which kicks the peer when it is not
            # walking our ring; C already published the others behind it.
            # Now and then an entry asks for an ACK: under steady traffic the peer keeps
            # walking our ring and would otherwise only answer (STOPPED) when it runs dry.
            session.submit(ring, ffi.buffer(result.first_desc)[: result.first_len], ack=bool(result.first_ack))
            ring.pending += queued - 1
        counters = self.counters
        counters["tx_frames"] += queued
        counters["tx_bytes"] += result.bytes
        counters["tx_dropped"] += result.refused
        return queued, result.consumed, result.refused

    def send_frame(self, frame: bytes, mss: int = 0) -> bool:
        """Queue a frame on our TX ring (an LSO frame of segments of `mss` payload bytes,
        if not 0 and LSO was negotiated); False (and counted) when it cannot go."""
        queued, consumed, _ = self._queue(FrameBatch.of([frame], [mss]))
        self.counters["tx_lso"] += bool(queued and mss and self.tsolen)
        if not consumed:
            self.counters["tx_dropped"] += 1  # link down or ring full
        return bool(queued)

    def send_offloaded(self, frame: bytes, hdr: VirtioNetHdr | None) -> bool:
        """Queue a frame with its virtio_net_hdr: one LSO frame when LSO was negotiated and it
        fits, else finished in software first (lso.lso_frames); True if any of it went."""
        sent = False
        for piece, mss in lso_frames(frame, hdr, self.tx_lso_max):
            sent = self.send_frame(piece, mss) or sent
        return sent

    def send_frames(self, frames: Sequence[bytes]) -> int:
        """Queue frames in order while our TX ring has room; returns how many were taken
        (queued, or refused for size or tag and counted as dropped). The caller keeps the
        rest until `on_tx_space`."""
        room = self.tx_free()  # only what can go now is copied into a batch
        return self._queue(FrameBatch.of(frames[:room]))[1] if frames and room else 0

    def send_groups(self, batch: FrameBatch, groups: PairGroups, selected: bytearray) -> int:
        """Queue the frames of `batch` in the `selected` groups (one byte per group); those our
        ring has no room for are dropped and counted. Returns how many were queued."""
        ffi, _ = native()
        queued, _, refused = self._queue(batch, groups.of, ffi.from_buffer(selected), groups.groups)
        wanted = sum(groups.count[g] for g in range(groups.groups) if selected[g])
        self.counters["tx_dropped"] += wanted - queued - refused
        return queued

    def send_priority(self, frame: bytes) -> bool:
        """A high-priority frame in packet mode (PKT_DATA), beside the ring (1.2+)."""
        session = self._session
        if session is None or not session.established or session.version is None or session.version < (1, 2):
            self.counters["tx_dropped"] += 1
            return False
        if not self._frame_ok(frame):
            self.counters["tx_dropped"] += 1
            return False
        session.send_packet(frame)
        self.counters["tx_frames"] += 1
        self.counters["tx_bytes"] += len(frame)
        return True

    def _frame_ok(self, frame: bytes) -> bool:
        return 14 <= len(frame) <= self.mtu and (frame[12:14] != b"\x81\x00" or self.vlan_tags_allowed)

    def on_descriptors_done(self, ring: int) -> None:
        if self.on_tx_space is not None:
            self.on_tx_space()

    # ---- frames in -----------------------------------------------------------------------

    def on_descriptors(self, session: Session, ring: int, batch: list[tuple[int, bytes]]) -> None:
        n = len(batch)
        rx = self._rx
        if rx is None or rx.capacity < n:  # grown by doubling to the largest walk step seen
            rx = self._rx = FrameBatch.empty(max(n, 2 * rx.capacity if rx else 16), self.largest_frame)
        rx.struct.count = n
        indices, payloads = zip(*batch)
        _, lib = native()
        peer = session.memory.peer_memory.native_view() or self._no_peer_memory
        lib.vnet_rx(b"".join(payloads), len(payloads[0]), n, peer, self._link, rx.struct)
        if rx.good != n:
            self._count_refused(rx)
        if rx.good:
            self.counters["rx_frames"] += rx.good
            self.counters["rx_bytes"] += rx.total
            self.counters["rx_lso"] += rx.lso
            self.on_frames(rx)
        session.complete_many(ring, list(indices))

    def gso_frames(self, batch: FrameBatch) -> Iterator[tuple[bytes, VirtioNetHdr | None]]:
        """A walk step's frames in order, each LSO frame as a GSO frame with its header; an
        LSO frame that is not one large TCP/IPv4 frame is counted (rx_errors) and left out."""
        for i in range(batch.count):
            if batch.lengths[i] < 0:
                continue
            frame, mss = batch.frame(i), batch.mss[i]
            if not mss:
                yield frame, None
                continue
            try:
                gso = gso_from_lso(frame, mss)
            except OffloadError as exc:
                self.counters["rx_errors"] += 1
                log.debug("vnet: LSO frame refused: %s", exc)
                continue
            yield gso

    def _count_refused(self, rx: FrameBatch) -> None:
        ffi, lib = native()
        lengths = ffi.unpack(rx.lengths, rx.count)
        tagged = lengths.count(lib.VNET_RX_TAGGED)  # tags only from 1.3
        bad_cookies = lengths.count(lib.VNET_RX_BAD_COOKIE)
        self.counters["rx_dropped"] += tagged
        self.counters["rx_errors"] += rx.count - rx.good - tagged
        if bad_cookies:
            log.info("vnet: %d frames with bad cookies dropped", bad_cookies)

    def _each_frame(self, batch: FrameBatch) -> None:
        for frame in batch.frames():
            self.on_frame(frame)

    def on_packet(self, data: bytes) -> None:
        if 14 <= len(data) <= self.mtu:
            self._deliver(data)
        else:
            self.counters["rx_errors"] += 1

    def _deliver(self, frame: bytes) -> None:
        if frame[12:14] == b"\x81\x00" and not self.vlan_tags_allowed:
            self.counters["rx_dropped"] += 1  # tags only from 1.3
            return
        self.counters["rx_frames"] += 1
        self.counters["rx_bytes"] += len(frame)
        self.on_frame(frame)

    # ---- multicast ---------------------------------------------------------------------------

    def set_multicast(self, groups: list[bytes], join: bool = True) -> None:
        """Client side: ask the switch to (un)subscribe us, up to 7 groups per message."""
        session = self._session
        if session is None or not session.established or session.sid is None:
            raise BackendError("vnet session not established")
        for start in range(0, len(groups), MAX_MCAST):
            info = McastInfo(join, tuple(groups[start : start + MAX_MCAST]))
            self._mcast_pending.append(info)
            session.send_device_message(MCAST_INFO, info.encode())

    def on_device_message(self, session: Session, message: DeviceMessage) -> bool:
        if message.tag.stype_env != MCAST_INFO:
            return False
        if message.tag.stype != SubType.INFO:
            if self._mcast_pending:
                self.mcast_replies.append((self._mcast_pending.pop(0), message.tag.stype == SubType.ACK))
            return True
        try:
            info = McastInfo.decode(message.payload)
        except OSError as exc:
            log.info("vnet: malformed MCAST_INFO: %s", exc)
            session.reply_device_message(message, ack=False)
            return True
        session.reply_device_message(message, ack=self._apply_multicast(info))
        return True

    def _apply_multicast(self, info: McastInfo) -> bool:
        """Seed rule: NACK an address already set, or one unset but never set.

        Also NACKed: non-multicast or broadcast addresses, an address twice in
        one message, and a group the switch refuses (then nothing of the
        message is applied)."""
        addrs = info.addrs
        if any(not addr[0] & 1 or addr == b"\xff" * 6 for addr in addrs) or len(set(addrs)) != len(addrs):
            return False
        if info.set and any(addr in self.multicast for addr in addrs):
            return False
        if not info.set and any(addr not in self.multicast for addr in addrs):
            return False
        done: list[bytes] = []
        for addr in addrs:
            if self.on_multicast is not None and not self.on_multicast(info.set, addr):
                for undo in done:  # all or nothing
                    self.on_multicast(not info.set, undo)
                return False
            done.append(addr)
        if info.set:
            self.multicast.update(addrs)
        else:
            self.multicast.difference_update(addrs)
        return True

    # ---- DDS -----------------------------------------------------------------------------------

    def on_dds(self, message: DdsInfo) -> tuple[bool, bytes]:
        """No NIU hardware here: a VNET_NIU share request (or anything else) is NACKed
        with the FAIL status the spec defines; the session echoes class, subclass and req_id."""
        return False, DDS_STATUS.pack(DDS_FAIL)
