"""What a device class plugs into a VIO session (like the ops table of Linux viohs.c).

The session owns the handshake and the data transfer protocol; a device
class says which versions and peers it takes, builds and checks attribute
payloads, names the rings it registers, and handles the data. Every method
has a default that refuses or ignores, so a device overrides only what its
class uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .constants import DevClass, DringOption
from .messages import DdsInfo, DeviceMessage, DringReg

if TYPE_CHECKING:
    from .dring import ImportedRing
    from .session import Session


@dataclass(frozen=True, slots=True)
class RingSpec:
    """A descriptor ring this end registers with its peer."""

    count: int
    size: int
    options: int = DringOption.TX
    ack_each: bool = True  # set the ACK bit in every descriptor
    open_ended: bool = False  # kick with end_idx = -1 and let the processor walk


@dataclass(frozen=True, slots=True)
class AttrReply:
    """The answer to a peer's ATTR_INFO: ACK or NACK, with the payload to send back."""

    ack: bool
    payload: bytes


class Device:
    """Defaults for every hook; a device class overrides what it needs."""

    #: Our device class (VER_INFO dev_class).
    dev_class: int = DevClass.NETWORK
    #: Device classes we accept from the peer.
    peer_classes: frozenset[int] = frozenset()
    #: Supported versions, highest first.
    versions: tuple[tuple[int, int], ...] = ((1, 0),)
    #: We send VER_INFO when the link comes up (and again after a reset).
    initiator: bool = False
    #: We send RDX when ready / we need the peer's RDX before data flows.
    sends_rdx: bool = True
    expects_rdx: bool = False
    #: The peer registers a ring with us (we process its descriptors).
    expects_peer_ring: bool = False
    #: on_descriptor_done gets each finished descriptor; False: on_descriptors_done once per ACK.
    reads_done_payloads: bool = True

    # ---- handshake -------------------------------------------------------------

    def attr_payload(self, version: tuple[int, int]) -> bytes | None:
        """Our ATTR_INFO payload (48 bytes), or None if this class sends none."""
        return None

    def expects_attr(self, version: tuple[int, int]) -> bool:
        """Whether the peer must send us an ATTR_INFO before data flows."""
        return False

    def on_attr_info(self, payload: bytes, version: tuple[int, int]) -> AttrReply:
        return AttrReply(False, payload)

    def on_attr_ack(self, payload: bytes, version: tuple[int, int]) -> bool:
        """The peer ACKed our attributes, perhaps adjusted: accept them?"""
        return True

    def rings(self, version: tuple[int, int]) -> list[RingSpec]:
        """The rings we register once attributes are agreed."""
        return []

    def accepts_ring(self, reg: DringReg, version: tuple[int, int]) -> bool:
        """Whether a ring the peer registers suits this device (descriptor size, options)."""
        return self.expects_peer_ring

    def on_established(self, session: Session) -> None:
        """The handshake is complete: data may flow."""

    def on_reset(self, reason: str) -> None:
        """The session was reset; everything in flight is gone."""

    # ---- data --------------------------------------------------------------------

    def on_descriptor(self, session: Session, ring: int, index: int, payload: bytes) -> None:
        """Process an accepted descriptor; call session.complete(ring, index, payload) when done."""
        session.complete(ring, index, None)

    def on_descriptors(self, session: Session, ring: int, batch: list[tuple[int, bytes]]) -> None:
        """A run of accepted descriptors, in ring order (override to work on them in bulk)."""
        for index, payload in batch:
            if session.peer_ring(ring) is None:
                return  # our own work reset the session or dropped the ring
            self.on_descriptor(session, ring, index, payload)

    def serve_in_place(self, session: Session, ring: ImportedRing, first: int, limit: int) -> tuple[int, list[int]]:
        """A fast path: finish READY entries from `first` (at most `limit`, no wrap)
        right in the ring, without accepting them first.

        Called only while nothing of the ring is in progress, so entries still
        become DONE in ring order. Returns how many were finished (now DONE)
        and those of them that asked for an ACK; the walk hands the rest to
        `on_descriptors` as usual. Raise RingError if an entry changed state
        behind our back. Default: none.
        """
        return 0, []

    def on_descriptor_done(self, ring: int, index: int, payload: bytes) -> None:
        """The peer finished a descriptor we queued."""

    def on_descriptors_done(self, ring: int) -> None:
        """The peer finished descriptors we queued (when reads_done_payloads is False)."""

    def on_inband(self, session: Session, handle: int, payload: bytes) -> None:
        """Process an in-band descriptor; call session.complete_inband(handle, payload, ok)."""
        session.complete_inband(handle, payload, ok=False)

    def on_inband_done(self, handle: int, payload: bytes, ok: bool) -> None:
        """The peer answered an in-band descriptor we sent."""

    def on_packet(self, data: bytes) -> None:
        """Packet-mode data arrived."""

    def on_dds(self, message: DdsInfo) -> tuple[bool, bytes]:
        """A DDS request: (ACK?, response body)."""
        return False, b""

    def on_dds_reply(self, request: DdsInfo, reply: DdsInfo) -> None:
        """The peer answered a DDS request of ours (reply.tag.stype says ACK or NACK)."""

    def on_device_message(self, session: Session, message: DeviceMessage) -> bool:
        """A device-class message (e.g. VNET_MCAST_INFO); False if not understood."""
        return False

