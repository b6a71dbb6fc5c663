"""vNet over VIO (seed section 1.1.7): attributes, multicast, descriptors, and the device class.

Both roles run the same `VnetDevice`: the switch side of a port (device
class NETWORK_SWITCH, responder) and a vnet client (NETWORK, initiator).
Each side registers its own TX ring; the peer processes it, copying each
frame in through the sender's cookies. Frames sit 6 bytes into their
buffers (Linux VNET_PACKET_SKIP, illumos VNET_IPALIGN) and copies are
rounded up to 8 bytes, as the hypervisor's copy wants.

MTU (the attribute counts whole frames): below 1.3 both ends use exactly
1514; at 1.3 exactly 1518 (a VLAN tag fits); from 1.4 the receiver of an
ATTR_INFO ACKs with the lower of its own and the peer's (Linux does this).
VLAN-tagged frames are allowed only from 1.3.
"""

from __future__ import annotations

import errno
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import BackendError
from ..ldc.memory import PERM_RW, TRANSPORT_COOKIE, Export, PeerMemory, Segment, TransportCookie
from ..vio.constants import DevClass, DringOption, SubType
from ..vio.device import AttrReply, Device, RingSpec
from ..vio.dring import OwnedRing
from ..vio.messages import DdsInfo, DeviceMessage, DringReg
from ..vio.session import Session
from ..vio.xfer import Transfer, decode_xfer_mode, encode_xfer_mode

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

ATTR = struct.Struct(">BBHBBxxQQHH20x")  # the 48 bytes after the VIO tag
MCAST = struct.Struct(">BB42s4x")
DESC = struct.Struct(">II")  # size, ncookies (after the 8-byte ring header)
DESC_ONE_COOKIE = struct.Struct(">IIQQ")  # DESC and the one transport cookie our frames need
DDS_VNET_NIU = 0x10
DDS_STATUS = struct.Struct(">Q")
DDS_SUCCESS, DDS_FAIL = 0x0, 0x1


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


def _slot_size(mtu: int) -> int:
    """Bytes of one TX buffer: the frame after PACKET_SKIP, rounded up to 8."""
    return -(-(mtu + PACKET_SKIP) // 8) * 8


def _ring_for(mtu: int) -> int:
    return BIG_RING if BIG_RING * _slot_size(mtu) <= BIG_RING_BUFFERS else SMALL_RING


def our_mtu(version: tuple[int, int], configured: int) -> int:
    if version < (1, 3):
        return FRAME_LEN
    if version == (1, 3):
        return FRAME_LEN + VLAN_LEN
    return configured


@dataclass
class _TxSlot:
    export: Export
    offset: int
    addr: int  # the cookie of the slot's buffer


class VnetDevice(Device):
    """One end of a vNet channel (either role)."""

    sends_rdx = True
    expects_rdx = True
    expects_peer_ring = True
    versions = VERSIONS

    def __init__(
        self,
        mac: bytes,
        *,
        switch_side: bool,
        mtu: int = FRAME_LEN,
        ring_size: int | None = None,
        on_frame: Callable[[bytes], None] | None = None,
    ) -> None:
        self.mac = mac
        self.switch_side = switch_side
        self.initiator = not switch_side
        self.dev_class = DevClass.NETWORK_SWITCH if switch_side else DevClass.NETWORK
        self.peer_classes = frozenset({DevClass.NETWORK} if switch_side else {DevClass.NETWORK_SWITCH, DevClass.NETWORK})
        self.configured_mtu = mtu
        self.mtu = mtu
        self._fixed_ring_size = ring_size  # None: sized from the MTU once it is agreed
        self.ring_size = ring_size or SMALL_RING
        self.on_frame = on_frame or (lambda frame: None)
        self.peer_mac: bytes | None = None
        self.version: tuple[int, int] | None = None
        self.multicast: set[bytes] = set()  # groups the peer joined (switch side)
        self.on_multicast: Callable[[bool, bytes], bool] | None = None  # join/leave; False: refused
        self.on_up: Callable[[Session], None] | None = None  # the session is established
        self.on_tx_space: Callable[[], None] | None = None  # TX ring entries came back
        self.counters = dict(rx_frames=0, rx_bytes=0, tx_frames=0, tx_bytes=0, rx_dropped=0, tx_dropped=0, rx_errors=0)
        self._slots: list[_TxSlot] = []
        self._buffers: Segment | None = None
        self._session: Session | None = None
        self._ring: OwnedRing | None = None  # our TX ring while the session is established
        self._mcast_pending: list[McastInfo] = []
        self.mcast_replies: list[tuple[McastInfo, bool]] = []  # client side: what the switch said

    # ---- handshake ---------------------------------------------------------------------

    def attr_payload(self, version: tuple[int, int]) -> bytes:
        modes = Transfer.PKT | Transfer.DRING if version >= (1, 2) else Transfer.DRING
        return NetAttrs(encode_xfer_mode(version, modes), ADDR_ETHERMAC, 0, 0, DringOption.TX,
                        mac_to_int(self.mac), our_mtu(version, self.configured_mtu)).encode()

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
        return AttrReply(True, NetAttrs(attrs.xfer_mode, attrs.addr_type, attrs.ack_freq, 0, attrs.options,
                                        attrs.addr, mtu, 0, 0).encode())

    def on_attr_ack(self, payload: bytes, version: tuple[int, int]) -> bool:
        attrs = NetAttrs.decode(payload)
        ours = our_mtu(version, self.configured_mtu)
        if version >= (1, 4) and 64 <= attrs.mtu <= ours:
            self.mtu = min(self.mtu, attrs.mtu)  # the peer answered with the lower MTU
            return True
        return attrs.mtu == ours

    def rings(self, version: tuple[int, int]) -> list[RingSpec]:
        self.ring_size = self._fixed_ring_size or _ring_for(self.mtu)
        return [RingSpec(self.ring_size, 64, DringOption.TX, ack_each=False, open_ended=True)]

    def accepts_ring(self, reg: DringReg, version: tuple[int, int]) -> bool:
        return reg.descr_size >= 8 + DESC.size + TRANSPORT_COOKIE.size

    def on_established(self, session: Session) -> None:
        self._session = session
        self.version = session.version
        self._ring = session.own_rings[0]
        self._prepare_buffers(session)
        if self.on_up is not None:
            self.on_up(session)

    def on_reset(self, reason: str) -> None:
        self._session = None
        self._ring = None
        self._slots = []
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

    # ---- frames out ----------------------------------------------------------------------

    def _prepare_buffers(self, session: Session) -> None:
        """One buffer per ring entry, exported for the session (Linux maps per frame; a fixed
        slot per entry saves the map-table work on every frame)."""
        slot = _slot_size(self.mtu)
        size = max(8192, -(-(slot * self.ring_size) // 8192) * 8192)
        memory = session.memory
        if self._buffers is None or self._buffers.size < size:
            self._buffers = memory.allocate_segment(size)
        exports = [memory.export(self._buffers, i * slot, slot, PERM_RW) for i in range(self.ring_size)]
        self._slots = [_TxSlot(export, i * slot, export.cookies[0].addr) for i, export in enumerate(exports)]

    def send_frame(self, frame: bytes) -> bool:
        """Queue a frame on our TX ring; False (and counted) when it cannot go."""
        session, ring = self._session, self._ring
        if session is None or ring is None or not session.established or not self._frame_ok(frame):
            self.counters["tx_dropped"] += 1
            return False
        if not ring.free_entries():
            self.counters["tx_dropped"] += 1
            return False
        slot = self._slots[ring.prod]
        assert self._buffers is not None
        size = len(frame)
        start = slot.offset + PACKET_SKIP
        self._buffers.view[start : start + size] = frame
        payload = DESC_ONE_COOKIE.pack(size, 1, slot.addr, (size + PACKET_SKIP + 7) & ~7)
        # Now and then ask for an ACK: under steady traffic the peer keeps walking
        # our ring and would otherwise only answer (STOPPED) when it runs dry.
        session.submit(ring, payload, ack=ring.pending % ACK_EVERY == ACK_EVERY - 1)
        counters = self.counters
        counters["tx_frames"] += 1
        counters["tx_bytes"] += size
        return True

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
        if len(frame) < 14 or len(frame) > self.mtu:
            return False
        tagged = frame[12:14] == b"\x81\x00"
        return not tagged or self.vlan_tags_allowed

    def on_descriptor_done(self, ring: int, index: int, payload: bytes) -> None:
        if self.on_tx_space is not None:
            self.on_tx_space()

    # ---- frames in -----------------------------------------------------------------------

    def on_descriptors(self, session: Session, ring: int, batch: list[tuple[int, bytes]]) -> None:
        memory = session.memory.peer_memory
        for _, payload in batch:
            frame = self._receive_one(memory, payload)
            if frame is not None:
                self._deliver(frame)
        session.complete_many(ring, [index for index, _ in batch])

    def _receive_one(self, memory: PeerMemory, payload: bytes) -> bytes | None:
        size, ncookies = DESC.unpack_from(payload, 0)
        room = (len(payload) - DESC.size) // TRANSPORT_COOKIE.size
        if not 14 <= size <= self.mtu or not 1 <= ncookies <= min(room, 2):
            self.counters["rx_errors"] += 1
            return None
        if ncookies == 1:  # what Linux and we send: one cookie per frame
            cookies = [TransportCookie._make(TRANSPORT_COOKIE.unpack_from(payload, DESC.size))]
        else:
            cookies = [TransportCookie._make(TRANSPORT_COOKIE.unpack_from(payload, DESC.size + 16 * i)) for i in range(ncookies)]
        try:
            # The copy is rounded up to 8 bytes, as the hypervisor's; one copy out of it.
            return memory.read(cookies, (size + PACKET_SKIP + 7) & ~7, PACKET_SKIP, PACKET_SKIP + size)
        except BackendError as exc:
            log.info("vnet: frame with bad cookies dropped: %s", exc)
            self.counters["rx_errors"] += 1
            return None

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
