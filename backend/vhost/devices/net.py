"""virtio-net (virtio 1.x, 5.1) as a port of the vSwitch engine.

The device is a switch `Port` like a vnet or a tap: frames the driver puts
on a transmit queue go into `Switch.receive`, frames the switch transmits to
it go into the driver's receive buffers. Queue 2n receives and 2n+1
transmits for queue pair n; with several pairs a flow (addresses and ports)
always lands on the same receive queue.

Every buffer starts with a virtio_net_hdr: 12 bytes with VERSION_1 (or
MRG_RXBUF), 10 for a legacy driver. Its offload requests (NEEDS_CSUM, GSO
TCPV4/TCPV6, ECN) travel through the switch with the frame
(`Switch.receive(..., hdr)`): a 64 KiB TSO frame reaches a tap uplink or
another virtio-net guest whole, and is finished in software for a port that
cannot take it. What this guest takes unfinished (its negotiated receive
offloads) is its port's `config.offloads`. With MRG_RXBUF one frame fills as many receive chains as it needs
and num_buffers says how many.

Receive is the device's own initiative (a frame arrives from the switch), so
it does not wait for a queue turn: it pops receive chains outside a turn, and
gives them back (ServedQueue.rewind) when a frame does not fit what the driver
has made available. Frames that find no room wait in a short backlog, served
when the driver adds buffers (its kick), and beyond that are dropped and
counted: a guest that never refills costs the switch nothing.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ...errors import ConfigError
from ...vswitch.offload import GSO_ECN, GSO_TCPV4, GSO_TCPV6, OffloadError
from ...vswitch.port import Offloads, PortConfig
from ...vswitch.switch import Switch
from ...vswitch.vnet_hdr import VIRTIO_NET_HDR_F_NEEDS_CSUM, VirtioNetHdr
from ..constants import VIRTIO_F_VERSION_1, ProtocolFeature
from ..device import ServedQueue, VirtioDevice
from ..virtqueue import DescriptorChain

log = logging.getLogger(__name__)

VIRTIO_ID_NET = 1

# Feature bits (5.1.3)
F_CSUM = 1 << 0
F_GUEST_CSUM = 1 << 1
F_MTU = 1 << 3
F_MAC = 1 << 5
F_GUEST_TSO4 = 1 << 7
F_GUEST_TSO6 = 1 << 8
F_GUEST_ECN = 1 << 9
F_HOST_TSO4 = 1 << 11
F_HOST_TSO6 = 1 << 12
F_HOST_ECN = 1 << 13
F_MRG_RXBUF = 1 << 15
F_STATUS = 1 << 16
F_MQ = 1 << 22

S_LINK_UP = 1
#: struct virtio_net_config up to duplex: mac, status, max_virtqueue_pairs, mtu, speed, duplex
CONFIG = struct.Struct("<6sHHHIB")
SPEED_UNKNOWN = 0xFFFFFFFF
DUPLEX_UNKNOWN = 0xFF
HDR_LEGACY = 10  # struct virtio_net_hdr
HDR_V1 = 12  # struct virtio_net_hdr_v1 (= virtio_net_hdr_mrg_rxbuf): + num_buffers
NUM_BUFFERS = struct.Struct("<H")
MAX_PAIRS = 16
#: Frames kept for a driver that is out of receive buffers, before we drop.
RX_BACKLOG = 256

#: Which receive offload feature lets the guest take which unfinished frames.
_GUEST_OFFLOADS = ((F_GUEST_CSUM, Offloads.CSUM), (F_GUEST_TSO4, Offloads.TSO4), (F_GUEST_TSO6, Offloads.TSO6), (F_GUEST_ECN, Offloads.ECN))


@dataclass
class NetCounters:
    """What the device did, seen from the guest: tx = guest to switch, rx = switch to guest."""

    tx_frames: int = 0
    tx_bytes: int = 0
    #: GSO frames the guest sent (each counted once in tx_frames, however many segments it makes).
    tx_gso: int = 0
    #: Headers asking for an offload not negotiated, or not fitting their frame.
    tx_bad_header: int = 0
    tx_link_down: int = 0
    rx_frames: int = 0
    rx_bytes: int = 0
    rx_gso: int = 0
    #: Dropped because the driver had no receive buffers and the backlog was full.
    rx_no_buffers: int = 0
    #: Dropped because one receive chain could not hold the frame (no MRG_RXBUF).
    rx_too_big: int = 0
    rx_link_down: int = 0


class NetPort:
    """The device's face toward the switch: `config` there is the port's
    switching policy, while VirtioDevice.config() is the virtio config space."""

    def __init__(self, device: NetDevice, config: PortConfig) -> None:
        self.device = device
        self.config = config

    def transmit(self, frame: bytes, hdr: VirtioNetHdr | None = None) -> None:
        self.device.transmit(frame, hdr)


class NetDevice(VirtioDevice):
    """One virtio-net interface, attached to `switch` as the port `port_config` describes."""

    device_type = VIRTIO_ID_NET

    def __init__(self, switch: Switch, port_config: PortConfig, mac: bytes, *, queue_pairs: int = 1, queue_size: int = 256,
                 offloads: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        name = port_config.name
        if not 1 <= queue_pairs <= MAX_PAIRS:
            raise ConfigError(f"virtio-net {name}: queue_pairs {queue_pairs} must be 1..{MAX_PAIRS}")
        if len(mac) != 6 or mac[0] & 1:
            raise ConfigError(f"virtio-net {name}: {mac.hex(':')} is not a unicast MAC address")
        if not 68 <= port_config.mtu <= 65535:
            raise ConfigError(f"virtio-net {name}: MTU {port_config.mtu} must be 68..65535")
        self.switch = switch
        self.port = NetPort(self, port_config)
        self.name = name
        self.mac = bytes(mac)
        self.num_queues = 2 * queue_pairs
        self.max_queue_size = queue_size
        self.counters = NetCounters()
        self.link_up = True
        self._queue_pairs = queue_pairs
        self._offered_offloads = offloads
        self._clock = clock
        self._negotiated = 0
        self._hdr_size = HDR_V1
        self._rx: dict[int, ServedQueue] = {}
        self._backlog: deque[bytes] = deque()
        port_config.offloads = Offloads.NONE  # until the driver negotiates receive offloads
        switch.attach(self.port)

    # ---- the seam -------------------------------------------------------------------

    def features(self) -> int:
        bits = F_MTU | F_MAC | F_STATUS | F_MRG_RXBUF | (F_MQ if self._queue_pairs > 1 else 0)
        if self._offered_offloads:
            bits |= F_CSUM | F_GUEST_CSUM | F_HOST_TSO4 | F_HOST_TSO6 | F_HOST_ECN | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN
        return bits

    def protocol_features(self) -> ProtocolFeature:
        return ProtocolFeature.CONFIG | (ProtocolFeature.MQ if self._queue_pairs > 1 else ProtocolFeature(0))

    def set_features(self, features: int) -> None:
        self._negotiated = features
        self._hdr_size = HDR_V1 if features & (VIRTIO_F_VERSION_1 | F_MRG_RXBUF) else HDR_LEGACY
        self.port.config.offloads = _guest_offloads(features)

    def config(self) -> bytes:
        status = S_LINK_UP if self.link_up else 0
        return CONFIG.pack(self.mac, status, self._queue_pairs, self.port.config.mtu, SPEED_UNKNOWN, DUPLEX_UNKNOWN)

    def reset(self) -> None:
        self._negotiated = 0
        self.port.config.offloads = Offloads.NONE
        self._hdr_size = HDR_V1
        self._rx.clear()
        self._backlog.clear()

    def queue_stopped(self, index: int) -> None:
        self._rx.pop(index, None)

    def handle_queue(self, queue: ServedQueue) -> None:
        if queue.index % 2 == 0:
            self._rx[queue.index] = queue
            self._drain_backlog()
        else:
            while (chain := queue.pop()) is not None:
                self._from_guest(queue, chain)

    # ---- port side ------------------------------------------------------------------

    def transmit(self, frame: bytes, hdr: VirtioNetHdr | None = None) -> None:
        """A frame from the switch for the guest (unfinished, with its header, only as negotiated)."""
        if not self.link_up:
            self.counters.rx_link_down += 1
            return
        self._to_guest(frame, hdr)

    def set_link(self, up: bool) -> None:
        """Link status as the config space reports it; a down link drops frames both ways.

        The driver is told by a config interrupt where the front-end takes
        CONFIG_CHANGE_MSG (QEMU 7.2's virtio-net does not: it reads the config
        space again only when it wants to).
        """
        self.link_up = up
        if not up:
            self._backlog.clear()
        self.notify_config_change()

    def close(self) -> None:
        """Leave the switch."""
        if self.port in self.switch.ports:
            self.switch.detach(self.port)

    # ---- transmit: guest -> switch ---------------------------------------------------

    def _from_guest(self, queue: ServedQueue, chain: DescriptorChain) -> None:
        if chain.writable or chain.readable_len < self._hdr_size:
            queue.fail(f"virtio-net tx chain {chain.head}: {chain.readable_len} readable bytes"
                       f"{' and writable buffers' if chain.writable else ''}, need a {self._hdr_size}-byte header")
            return
        data = b"".join(chain.readable)  # a copy: the buffers are the guest's again once completed
        queue.complete(chain, 0)
        counters = self.counters
        if not self.link_up:
            counters.tx_link_down += 1
            return
        raw = VirtioNetHdr.unpack(data)
        hdr = VirtioNetHdr(raw.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM, raw.gso_type, raw.hdr_len, raw.gso_size, raw.csum_start, raw.csum_offset)
        frame = data[self._hdr_size :]
        if not self._host_offload_allowed(hdr):
            counters.tx_bad_header += 1
            log.debug("virtio-net %s: header %s asks for an offload not negotiated", self.name, hdr)
            return
        try:
            self.switch.receive(self.port, frame, self._clock(), hdr)
        except OffloadError as exc:
            counters.tx_bad_header += 1
            log.debug("virtio-net %s: %s", self.name, exc)
            return
        counters.tx_frames += 1
        counters.tx_bytes += len(frame)
        counters.tx_gso += hdr.gso_type != 0

    def _host_offload_allowed(self, hdr: VirtioNetHdr) -> bool:
        features = self._negotiated
        if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and not features & F_CSUM:
            return False
        if hdr.gso_type & GSO_ECN and not features & F_HOST_ECN:
            return False
        kind = hdr.gso_type & ~GSO_ECN
        if kind == GSO_TCPV4:
            return bool(features & F_HOST_TSO4)
        if kind == GSO_TCPV6:
            return bool(features & F_HOST_TSO6)
        return kind == 0 and hdr.gso_type == 0

    # ---- receive: switch -> guest ----------------------------------------------------

    def _to_guest(self, frame: bytes, hdr: VirtioNetHdr | None) -> None:
        header = hdr.pack(HDR_V1) if hdr is not None else bytes(HDR_V1)
        data = header[: self._hdr_size] + frame
        if self._backlog or not self._place(data):
            if len(self._backlog) >= RX_BACKLOG:
                self.counters.rx_no_buffers += 1
                return
            self._backlog.append(data)

    def _drain_backlog(self) -> None:
        while self._backlog and self._place(self._backlog[0]):
            self._backlog.popleft()

    def _place(self, data: bytes) -> bool:
        """Put one header+frame into receive buffers; False (nothing taken) when they lack room.

        True also when the frame was dropped for good (too big for a chain, or a broken ring).
        """
        served = self._pick_rx(data)
        if served is None:
            return False
        chains: list[DescriptorChain] = []
        room = 0
        mergeable = bool(self._negotiated & F_MRG_RXBUF)
        while room < len(data):
            chain = served.pop()
            if chain is None:
                served.rewind(len(chains))  # give them back: the driver will add more and kick
                return False
            if chain.readable or chain.writable_len < self._hdr_size:
                served.fail(f"virtio-net rx chain {chain.head}: {chain.readable_len} readable, "
                            f"{chain.writable_len} writable bytes (needs {self._hdr_size}+ writable only)")
                return True
            chains.append(chain)
            room += chain.writable_len
            if not mergeable:
                break
        if room < len(data):
            served.rewind(len(chains))
            self.counters.rx_too_big += 1
            return True
        if self._hdr_size == HDR_V1:
            data = data[:10] + NUM_BUFFERS.pack(len(chains)) + data[HDR_V1:]
        offset = 0
        for chain in chains:
            written = _scatter(data, offset, chain.writable)
            offset += written
            served.complete(chain, written)
        self.counters.rx_frames += 1
        self.counters.rx_bytes += len(data) - self._hdr_size
        self.counters.rx_gso += data[1] != 0
        return True

    def _pick_rx(self, data: bytes) -> ServedQueue | None:
        if len(self._rx) <= 1:
            return next(iter(self._rx.values()), None)
        queues = sorted(self._rx)
        return self._rx[queues[hash(_flow_key(data[self._hdr_size :])) % len(queues)]]


def _guest_offloads(features: int) -> Offloads:
    """What a guest takes unfinished: the receive offloads it negotiated."""
    taken = Offloads.NONE
    for bit, offload in _GUEST_OFFLOADS:
        if features & bit:
            taken |= offload
    return taken


def _flow_key(frame: bytes) -> bytes:
    """Addresses and ports of an IPv4 frame (a flow stays on one queue), else the MAC pair."""
    if frame[12:14] == b"\x08\x00" and len(frame) >= 38 and frame[14] == 0x45:
        return frame[26:38]
    return frame[:12]


def _scatter(data: bytes, offset: int, views: list[memoryview]) -> int:
    """Copy data[offset:] into views; returns the bytes written."""
    written = 0
    for view in views:
        take = min(len(view), len(data) - offset - written)
        if take <= 0:
            break
        view[:take] = data[offset + written : offset + written + take]
        written += take
    return written
