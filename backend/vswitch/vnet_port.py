"""vNet ports of a switch over LDC, and the vnet client library (asyncio edges).

`VnetPort` is the switch side of one vnet connection: the VnetDevice's frames
go into the switch, the switch's frames go out through the device. `VnetClient`
is the guest side: a network device programs (and tests) can send and receive
Ethernet frames with.

Both offer LSO when asked (the port always does): with it
negotiated an LSO frame off the ring enters as a GSO frame with its
virtio_net_hdr, and a GSO TCP frame leaves as one LSO frame (lso.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence

from ..errors import GuestError
from ..ldc.aio import LdcEndpoint, SocketServer
from ..ldc.channel import Channel
from ..ldc.constants import Mode
from ..vio.aio import VioEndpoint
from ..vio.session import Session
from .batch import FrameBatch, PairGroups
from .offload import OffloadError, finish
from .port import Offloads, PortConfig
from .switch import Switch
from .vnet import FRAME_LEN, LSO_CLIENT_BUFFERS, MAX_TSO, VLAN_LEN, VnetDevice
from .vnet_hdr import VirtioNetHdr

#: What a vnet with LSO negotiated takes unfinished: GSO TCP/IPv4, and checksums left open.
LSO_OFFLOADS = Offloads.CSUM | Offloads.TSO4

log = logging.getLogger(__name__)


class VnetPort:
    """One vnet client attached to a switch."""

    def __init__(self, switch: Switch, ldc: LdcEndpoint, mac: bytes, config: PortConfig, clock: Callable[[], float] = time.monotonic,
                 *, lso_maxlen: int = MAX_TSO) -> None:
        self.switch = switch
        self.config = config
        self.clock = clock
        self.device = VnetDevice(mac, switch_side=True, mtu=config.mtu + 18, on_frames=self._from_vnet, lso_maxlen=lso_maxlen)
        self.device.on_multicast = self._multicast
        self.device.on_up = self._established
        self.endpoint = VioEndpoint(ldc, self.device)
        self.attached = False

    def _established(self, session: Session) -> None:
        version = session.version
        assert version is not None
        header = 18 if version >= (1, 3) else 14
        self.config.mtu = self.device.mtu - header
        self.config.tagged = version >= (1, 3) and bool(self.config.vlans)
        self.config.offloads = LSO_OFFLOADS if self.device.tsolen else Offloads.NONE
        if not self.attached:
            self.switch.attach(self)
            self.attached = True
        log.info("vsw %s: port %s up (vnet %d.%d, peer %s, frame MTU %d, LSO up to %d)", self.switch.name, self.config.name,
                 version[0], version[1], self.device.peer_mac.hex(":") if self.device.peer_mac else "?", self.device.mtu,
                 self.device.tsolen)

    def _from_vnet(self, batch: FrameBatch) -> None:
        if not batch.lso:
            self.switch.receive_batch(self, batch, self.clock())
            return
        now = self.clock()  # frames one by one, in order: an LSO frame enters with its header
        for frame, hdr in self.device.gso_frames(batch):
            try:
                self.switch.receive(self, frame, now, hdr)
            except OffloadError as exc:
                self.device.counters["rx_errors"] += 1
                log.debug("vsw %s: port %s: LSO frame refused: %s", self.switch.name, self.config.name, exc)

    def _multicast(self, join: bool, group: bytes) -> bool:
        try:
            if join:
                self.switch.join(self, group, self.config.pvid)
            else:
                self.switch.leave(self, group, self.config.pvid)
            return True
        except GuestError as exc:  # e.g. too many groups: NACKed, the vnet keeps working
            log.warning("vsw %s: port %s multicast %s refused: %s", self.switch.name, self.config.name, group.hex(":"), exc)
            return False

    def transmit(self, frame: bytes, hdr: VirtioNetHdr | None = None) -> None:
        """A frame from the switch for this vnet (with a header only when LSO was negotiated)."""
        if self.device.send_offloaded(frame, hdr):
            self.endpoint.pump_soon()

    def transmit_groups(self, batch: FrameBatch, groups: PairGroups, selected: bytearray) -> None:
        """The frames of the selected groups of a batch, in order (the switch's batch path)."""
        if self.device.send_groups(batch, groups, selected):
            self.endpoint.pump_soon()

    def detach(self) -> None:
        if self.attached:
            self.switch.detach(self)
            self.attached = False


class SwitchServer:
    """A switch's vnet ports: one Unix socket, one port per connection."""

    def __init__(self, switch: Switch, socket_path: str, mac: bytes, *, mtu: int = 1500, pvid: int = 1,
                 vlans: frozenset[int] = frozenset(), clock: Callable[[], float] = time.monotonic) -> None:
        self.switch, self.socket_path, self.mac = switch, socket_path, mac
        self.mtu, self.pvid, self.vlans, self.clock = mtu, pvid, vlans, clock
        self.ports: list[VnetPort] = []
        self._server = SocketServer(socket_path, self._connected)
        self._count = 0

    async def start(self) -> None:
        await self._server.start()

    def _connected(self, sock: socket.socket) -> None:
        self._count += 1
        config = PortConfig(f"{self.switch.name}-vnet{self._count}", self.mtu, self.pvid, self.vlans)
        port = VnetPort(self.switch, LdcEndpoint(sock, Channel(Mode.UNRELIABLE)), self.mac, config, self.clock)
        port.endpoint.ldc.channel.open()
        port.endpoint.ldc.flush()
        self.ports.append(port)
        asyncio.get_running_loop().create_task(self._reap(port))

    async def _reap(self, port: VnetPort) -> None:
        await port.endpoint.ldc.closed_event.wait()
        port.detach()
        self.ports.remove(port)

    def close(self) -> None:
        self._server.close()
        for port in list(self.ports):
            port.endpoint.ldc.close()


class VnetClient:
    """A guest-side vnet: send frames, get frames, join multicast groups."""

    def __init__(self, ldc: LdcEndpoint, mac: bytes, *, mtu: int = FRAME_LEN + VLAN_LEN,
                 on_frame: Callable[..., None] | None = None, lso_maxlen: int = 0) -> None:
        """`mtu` is the frame MTU offered: from vnet 1.3 it counts a VLAN tag, so the
        default carries a 1500-byte payload untagged (1514 would leave 1496).
        `on_frame(frame)` takes each frame received, and `on_frame(frame, hdr)` each LSO
        frame (as GSO, only when `lso_maxlen` is offered and LSO negotiated); without
        on_frame, frames queue in `frames` (LSO frames cut into segments)."""
        self.frames: deque[bytes] = deque()  # received, not yet taken (unless on_frame takes them)
        self._arrived = asyncio.Event()
        self._on_frame = on_frame
        self.device = VnetDevice(mac, switch_side=False, mtu=mtu, on_frames=self._arrive, lso_maxlen=lso_maxlen,
                                 tx_buffers=LSO_CLIENT_BUFFERS)
        self.endpoint = VioEndpoint(ldc, self.device)
        self.mac = mac
        self._space = asyncio.Event()
        self.device.on_tx_space = self._space.set

    @classmethod
    async def connect(cls, path: str, mac: bytes, **kwargs: object) -> VnetClient:
        client = cls(await LdcEndpoint.connect(path, Mode.UNRELIABLE), mac, **kwargs)  # type: ignore[arg-type]
        await client.endpoint.open()
        return client

    def send(self, frame: bytes, *, priority: bool = False, hdr: VirtioNetHdr | None = None) -> bool:
        """Send a frame; with `hdr` (a GSO or checksum-offloaded frame) as one LSO frame when
        the vnet negotiated LSO and the frame fits, else finished in software first."""
        if priority:
            sent = self.device.send_priority(frame)
        elif hdr is None:
            sent = self.device.send_frame(frame)
        else:
            sent = self.device.send_offloaded(frame, hdr)
        if sent:
            self.endpoint.pump_soon()
        return sent

    async def send_when_possible(self, frame: bytes, timeout: float = 5.0) -> None:
        """Send, waiting while our TX ring is full (flow control for bulk senders)."""
        if not 14 <= len(frame) <= self.device.mtu:
            raise ConnectionError(f"a {len(frame)}-byte frame does not fit this vnet (MTU {self.device.mtu})")
        await self._tx_room(timeout)
        if not self.send(frame):
            raise ConnectionError("vnet refused the frame")

    async def send_all(self, frames: Sequence[bytes], timeout: float = 5.0) -> None:
        """Send frames in order, as many per ring refill as fit (bulk senders); a frame the
        vnet refuses (size, tag) is counted as dropped, as with `send`."""
        sent = 0
        while sent < len(frames):
            await self._tx_room(timeout)
            sent += self.device.send_frames(frames[sent:])
            self.endpoint.pump_soon()

    async def _tx_room(self, timeout: float) -> None:
        while not self.device.tx_free():
            if not self.device.is_up:
                raise ConnectionError("vnet link is down")
            self._space.clear()
            await asyncio.wait_for(self._space.wait(), timeout)

    def _arrive(self, batch: FrameBatch) -> None:
        on_frame = self._on_frame
        if not batch.lso:
            if on_frame is None:
                self.frames.extend(batch.frames())
                self._arrived.set()
            else:
                for frame in batch.frames():
                    on_frame(frame)
            return
        for frame, hdr in self.device.gso_frames(batch):
            if on_frame is None:
                self.frames.extend(finish(frame, hdr) if hdr else (frame,))
            elif hdr:
                on_frame(frame, hdr)
            else:
                on_frame(frame)
        self._arrived.set()

    async def receive(self, timeout: float = 5.0) -> bytes:
        """The next frame received (TimeoutError after `timeout` seconds without one)."""
        await self._wait_frames(timeout)
        return self.frames.popleft()

    async def receive_many(self, timeout: float = 5.0) -> list[bytes]:
        """Every frame received so far, at least one (bulk receivers)."""
        await self._wait_frames(timeout)
        frames = list(self.frames)
        self.frames.clear()
        return frames

    async def _wait_frames(self, timeout: float) -> None:
        while not self.frames:  # under load the frames are already here: no timer, no task
            self._arrived.clear()
            await asyncio.wait_for(self._arrived.wait(), timeout)

    def join(self, groups: list[bytes], join: bool = True) -> None:
        self.device.set_multicast(groups, join)
        self.endpoint.pump_soon()

    def close(self) -> None:
        self.endpoint.ldc.close()
