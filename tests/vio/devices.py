"""Device classes for testing the VIO session: small, but real protocol users."""

from __future__ import annotations

from backend.vio.constants import DevClass, DringOption
from backend.vio.device import AttrReply, Device, RingSpec
from backend.vio.messages import DdsInfo, DringReg
from backend.vio.session import Session


class Recorder(Device):
    """Records everything the session hands it."""

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.done: list[tuple[int, int, bytes]] = []
        self.inband_done: list[tuple[int, bytes, bool]] = []
        self.packets: list[bytes] = []
        self.dds_replies: list[tuple[DdsInfo, DdsInfo]] = []

    def on_established(self, session: Session) -> None:
        self.log.append(("established", session.version))

    def on_reset(self, reason: str) -> None:
        self.log.append(("reset", reason))

    def on_descriptor_done(self, ring: int, index: int, payload: bytes) -> None:
        self.done.append((ring, index, payload))

    def on_inband_done(self, handle: int, payload: bytes, ok: bool) -> None:
        self.inband_done.append((handle, payload, ok))

    def on_packet(self, data: bytes) -> None:
        self.packets.append(data)

    def on_dds_reply(self, request: DdsInfo, reply: DdsInfo) -> None:
        self.dds_replies.append((request, reply))


class Client(Recorder):
    """A disk-client-like initiator: sends attributes, registers a TX ring, sends RDX."""

    dev_class = DevClass.DISK
    peer_classes = frozenset({DevClass.DISK_SERVER})
    initiator = True
    sends_rdx = True
    expects_rdx = False

    def __init__(self, versions=((1, 1), (1, 0)), ring: RingSpec | None = None, attrs: bytes = b"client-attrs") -> None:
        super().__init__()
        self.versions = tuple(versions)
        self.ring = ring or RingSpec(16, 64)
        self.attrs = attrs
        self.attr_ack_payloads: list[bytes] = []

    def attr_payload(self, version):
        return self.attrs.ljust(48, b"\0")

    def on_attr_ack(self, payload, version):
        self.attr_ack_payloads.append(payload)
        return True

    def rings(self, version):
        return [self.ring] if self.ring else []


class Server(Recorder):
    """A disk-server-like responder: checks attributes, processes the client's ring."""

    dev_class = DevClass.DISK_SERVER
    peer_classes = frozenset({DevClass.DISK})
    initiator = False
    sends_rdx = False
    expects_rdx = True
    expects_peer_ring = True

    def __init__(self, versions=((1, 1), (1, 0)), accept_attrs: bool = True, complete_now: bool = True) -> None:
        super().__init__()
        self.versions = tuple(versions)
        self.accept_attrs = accept_attrs
        self.complete_now = complete_now
        self.seen: list[tuple[int, int, bytes]] = []
        self.inband_seen: list[tuple[int, bytes]] = []
        self.session: Session | None = None

    def expects_attr(self, version):
        return True

    def on_attr_info(self, payload, version):
        return AttrReply(self.accept_attrs, payload.replace(b"client", b"server"))

    def accepts_ring(self, reg: DringReg, version) -> bool:
        return reg.options & DringOption.TX != 0

    def on_descriptor(self, session, ring, index, payload):
        self.session = session
        self.seen.append((ring, index, payload))
        if self.complete_now:
            session.complete(ring, index, b"done:" + payload[:10])

    def on_inband(self, session, handle, payload):
        self.inband_seen.append((handle, payload))
        session.complete_inband(handle, payload.upper(), ok=True)

    def on_dds(self, message: DdsInfo):
        return message.dds_subclass == 1, b"status"


class Peer(Recorder):
    """A network-like end: both directions, duplex RDX, rings both ways."""

    peer_classes = frozenset({DevClass.NETWORK, DevClass.NETWORK_SWITCH})
    sends_rdx = True
    expects_rdx = True
    expects_peer_ring = True

    def __init__(self, initiator: bool, open_ended: bool = True, ack_each: bool = False) -> None:
        super().__init__()
        self.initiator = initiator
        self.dev_class = DevClass.NETWORK if initiator else DevClass.NETWORK_SWITCH
        self.versions = ((1, 6), (1, 0))
        self.spec = RingSpec(8, 64, DringOption.TX, ack_each=ack_each, open_ended=open_ended)
        self.seen: list[tuple[int, int, bytes]] = []

    def attr_payload(self, version):
        return b"net".ljust(48, b"\0")

    def expects_attr(self, version):
        return True

    def on_attr_info(self, payload, version):
        return AttrReply(True, payload)

    def accepts_ring(self, reg, version):
        return True

    def rings(self, version):
        return [self.spec]

    def on_descriptor(self, session, ring, index, payload):
        self.seen.append((ring, index, payload))
        session.complete(ring, index, None)
