"""Tap uplink: the switch's door to the host's own network stack.

A `TapDevice` is a Linux tap interface we create on /dev/net/tun and configure
over rtnetlink (pyroute2): MTU, MAC, link up, and optionally a bridge to sit
on. It owns exactly what it created and takes exactly that down on `close()`.

A `TapPort` makes the device a switch `Port`: an asyncio reader hands every
frame the kernel sends us to the switch, and `transmit` writes frames into the
kernel without ever blocking or raising into the switch (full queues and a
downed link are counted drops, other failures counted errors). With vnet
headers and `offloads` it carries unfinished frames (checksum, TSO) both ways.

Theory of operation, for the bits that are not obvious:

- The tap is non-persistent: the kernel deletes it when the last file
  descriptor on it closes. `close()` still checks over netlink and deletes it
  by index in case a forked child kept a copy of the descriptor.
- IFF_TUN_EXCL makes TUNSETIFF fail with EBUSY when the name exists, so we
  never attach to (and later delete) someone else's persistent tap.
- With `vnet_hdr`, every read and write carries a virtio_net_hdr (10 bytes, or
  12 with num_buffers) in front of the frame, little-endian as in virtio 1.0.
  The device passes those bytes through untouched; `VirtioNetHdr` decodes
  them. TUNSETOFFLOAD says which unfinished frames the kernel may hand us
  (TUN_F_CSUM: partial checksums; TUN_F_TSO4/6: TCP frames up to 64 KiB;
  TUN_F_TSO_ECN: those with CWR); its argument is the flag word itself, not
  a pointer. A `TapPort` with `offloads` sets them and passes such frames,
  with their header, to the switch; without offloads the kernel owes us
  finished frames, and a header with work in it is counted an error. Writes
  need no promise: the kernel takes a GSO frame whenever its header
  describes it, so the switch hands an offloading tap large frames whole.
- pyroute2's synchronous IPRoute runs its own asyncio loop, which cannot run in
  a thread whose loop is already running; netlink calls made from inside our
  loop therefore run in a short-lived worker thread (set-up and tear-down
  only, never per frame).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import ConfigError, GuestError
from .offload import ALL as ALL_OFFLOADS
from .port import Offloads, PortConfig
from .vnet_hdr import VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_SIZE, VirtioNetHdr, check_hdr_size

if TYPE_CHECKING:
    from .switch import Switch

log = logging.getLogger(__name__)

TUN_PATH = "/dev/net/tun"

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
TUNSETSNDBUF = 0x400454D4  # _IOW('T', 212, int)
TUNSETVNETHDRSZ = 0x400454D8  # _IOW('T', 216, int)
TUNSETVNETLE = 0x400454DC  # _IOW('T', 220, int)
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000

IFNAMSIZ = 16
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, ifr_flags, union padding (40 bytes)

READ_BUFFER = 65536  # largest frame a tap can hand us (64 KiB, GSO included)
FRAMES_PER_WAKEUP = 256  # then yield to the loop; the reader is level-triggered

ETH_HEADER = 14
# Errors on write meaning "the kernel would not take this frame now": a drop, not a fault.
_DROP_ERRNOS = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.EIO})
# Errors on read meaning the tap is gone (deleted under us, or closed).
_GONE_ERRNOS = frozenset({errno.EBADFD, errno.EBADF, errno.ENODEV})

_TUN_OFFLOADS = {Offloads.CSUM: TUN_F_CSUM, Offloads.TSO4: TUN_F_TSO4, Offloads.TSO6: TUN_F_TSO6, Offloads.ECN: TUN_F_TSO_ECN}

T = TypeVar("T")


def check_ifname(name: str, what: str = "interface") -> None:
    """Refuse names the kernel would refuse, with our words instead of EINVAL."""
    if not name or len(name.encode()) >= IFNAMSIZ:
        raise ConfigError(f"{what} name {name!r} must be 1 to {IFNAMSIZ - 1} bytes")
    if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name):
        raise ConfigError(f"{what} name {name!r} may not be '.', '..' or contain '/', ':' or spaces")


def netlink(fn: Callable[[IPRoute], T], *, netns: str | None = None) -> T:
    """Run fn with a fresh IPRoute (in `netns`, if named), off-thread if an asyncio loop runs in this one."""

    def call() -> T:
        with IPRoute(netns=netns) if netns else IPRoute() as ipr:
            return fn(ipr)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return call()
    with ThreadPoolExecutor(1, thread_name_prefix="netlink") as pool:
        return pool.submit(call).result()


def link_info(ipr: IPRoute, *, ifname: str | None = None, index: int | None = None) -> dict[str, Any] | None:
    """Name, index, kind, MTU, MAC, master and flags of a link, or None if there is none."""
    try:
        msg = ipr.link("get", ifname=ifname) if index is None else ipr.link("get", index=index)
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise
    m = msg[0]
    return {
        "ifname": m.get("ifname"),
        "index": m["index"],
        "kind": m.get(("linkinfo", "kind")),
        "mtu": m.get("mtu"),
        "address": m.get("address"),
        "master": m.get("master"),
        "flags": m["flags"],
        "operstate": m.get("operstate"),
    }


def _netlink_config_error(e: NetlinkError, doing: str) -> ConfigError:
    if e.code == errno.EPERM:
        return ConfigError(f"cannot {doing}: needs CAP_NET_ADMIN (run as root or grant the capability)")
    return ConfigError(f"cannot {doing}: {os.strerror(e.code)}")


class TapDevice:
    """A tap interface we created (and will remove), with its file descriptor set non-blocking.

    `name` None lets the kernel choose ("tap%d"); a name with "%d" is a template.
    `bridge` names a bridge to enslave the tap to; `create_bridge` creates it
    (and brings it up) when it does not exist. `sndbuf` bounds the bytes of our
    frames the kernel may hold before writes fail with EAGAIN (as QEMU's tap
    sndbuf=). `vnet_hdr` puts a virtio_net_hdr of `vnet_hdr_size` bytes in
    front of every frame read or written.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        mtu: int = 1500,
        mac: str | None = None,
        bridge: str | None = None,
        create_bridge: bool = False,
        vnet_hdr: bool = False,
        vnet_hdr_size: int = VIRTIO_NET_HDR_SIZE,
        sndbuf: int | None = None,
    ) -> None:
        if name is not None:
            check_ifname(name, "tap")
        if bridge is not None:
            check_ifname(bridge, "bridge")
        elif create_bridge:
            raise ConfigError("create_bridge needs a bridge name")
        if vnet_hdr:
            check_hdr_size(vnet_hdr_size)
        if sndbuf is not None and sndbuf <= 0:
            raise ConfigError(f"sndbuf must be positive, not {sndbuf}")
        self._vnet_hdr_size = vnet_hdr_size if vnet_hdr else 0
        self._fd = -1
        self._bridge_index: int | None = None  # set only if we created the bridge
        self.bridge = bridge
        self.index = 0
        self.closed = False
        self._buf = bytearray(self._vnet_hdr_size + READ_BUFFER)
        self._view = memoryview(self._buf)
        self.name = self._create(name or "tap%d", sndbuf)
        try:
            self.index, self.mac = netlink(lambda ipr: self._configure(ipr, mtu, mac, create_bridge))
        except BaseException:
            self.close()
            raise
        self.mtu = mtu

    @property
    def vnet_hdr_size(self) -> int:
        """Bytes of virtio_net_hdr before each frame on read and write; 0 without vnet_hdr."""
        return self._vnet_hdr_size

    @property
    def created_bridge(self) -> bool:
        """We created `bridge` (so close() removes it)."""
        return self._bridge_index is not None

    def fileno(self) -> int:
        return self._fd

    def _create(self, name: str, sndbuf: int | None) -> str:
        flags = IFF_TAP | IFF_NO_PI | IFF_TUN_EXCL | (IFF_VNET_HDR if self._vnet_hdr_size else 0)
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise ConfigError(f"cannot open {TUN_PATH}: {e.strerror} (is the tun module loaded?)") from e
        try:
            try:
                ifr = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), flags))
            except OSError as e:
                raise self._setiff_error(e, name) from e
            if self._vnet_hdr_size:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", self._vnet_hdr_size))
                fcntl.ioctl(fd, TUNSETVNETLE, struct.pack("i", 1))  # virtio 1.0 byte order on any host
            if sndbuf is not None:
                fcntl.ioctl(fd, TUNSETSNDBUF, struct.pack("i", sndbuf))
            os.set_blocking(fd, False)
        except BaseException:
            os.close(fd)  # the tap, if made, dies with its only descriptor
            raise
        self._fd = fd
        return _IFREQ.unpack(ifr)[0].rstrip(b"\0").decode()

    @staticmethod
    def _setiff_error(e: OSError, name: str) -> ConfigError:
        if e.errno == errno.EPERM:
            return ConfigError(f"cannot create tap {name!r}: needs CAP_NET_ADMIN (run as root or grant the capability)")
        if e.errno in (errno.EBUSY, errno.EEXIST, errno.EINVAL):
            other = netlink(lambda ipr: link_info(ipr, ifname=name)) if "%" not in name else None
            if other is not None:
                kind = other["kind"] or "device"
                return ConfigError(f"cannot create tap {name!r}: the name is taken by an existing {kind} we did not create")
        return ConfigError(f"cannot create tap {name!r}: {e.strerror}")

    def _configure(self, ipr: IPRoute, mtu: int, mac: str | None, create_bridge: bool) -> tuple[int, str]:
        me = link_info(ipr, ifname=self.name)
        if me is None:
            raise ConfigError(f"tap {self.name!r} vanished right after creation")
        index = me["index"]
        self.index = index  # close() needs it should a later step fail
        master = self._bridge(ipr, create_bridge) if self.bridge else None
        steps: list[tuple[str, dict[str, Any]]] = [(f"set MTU {mtu} on {self.name}", {"mtu": mtu})]
        if mac is not None:
            steps.append((f"set MAC {mac} on {self.name}", {"address": mac}))
        if master is not None:
            steps.append((f"enslave {self.name} to bridge {self.bridge}", {"master": master}))
        steps.append((f"bring {self.name} up", {"state": "up"}))
        for doing, attrs in steps:
            try:
                ipr.link("set", index=index, **attrs)
            except NetlinkError as e:
                raise _netlink_config_error(e, doing) from e
        now = link_info(ipr, index=index)
        if now is None:
            raise ConfigError(f"tap {self.name!r} vanished while being configured")
        return index, now["address"]

    def _bridge(self, ipr: IPRoute, create: bool) -> int:
        """Index of the bridge to join, creating (and raising) it if asked and absent."""
        name = self.bridge
        assert name is not None
        info = link_info(ipr, ifname=name)
        if info is None and create:
            try:
                ipr.link("add", ifname=name, kind="bridge")
                info = link_info(ipr, ifname=name)
                assert info is not None
                self._bridge_index = info["index"]
                ipr.link("set", index=info["index"], state="up")
            except NetlinkError as e:
                if e.code != errno.EEXIST:  # EEXIST: someone made it meanwhile; judge theirs below
                    raise _netlink_config_error(e, f"create bridge {name}") from e
                info = link_info(ipr, ifname=name)
        if info is None:
            raise ConfigError(f"bridge {name!r} does not exist (pass create_bridge=True to create it)")
        if info["kind"] != "bridge":
            raise ConfigError(f"{name!r} exists but is a {info['kind'] or 'plain device'}, not a bridge")
        return info["index"]

    def read(self) -> bytes | None:
        """One frame, behind its virtio_net_hdr if the tap has one; None when nothing is queued."""
        if self._vnet_hdr_size > VIRTIO_NET_HDR_SIZE:
            self._buf[VIRTIO_NET_HDR_SIZE : self._vnet_hdr_size] = bytes(self._vnet_hdr_size - VIRTIO_NET_HDR_SIZE)
        try:
            n = os.readv(self._fd, [self._view])
        except BlockingIOError:
            return None
        return bytes(self._view[:n])

    def write(self, data: bytes) -> int:
        """Hand one frame (behind its virtio_net_hdr, if any) to the kernel; OSError as the kernel says."""
        return os.write(self._fd, data)

    def close(self) -> None:
        """Remove the tap and, if we created it, the bridge. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        if self.index or self._bridge_index is not None:
            netlink(self._remove)

    def _remove(self, ipr: IPRoute) -> None:
        mine: list[tuple[int, str | None, str | None]] = [(self.index, self.name, None)]
        if self._bridge_index is not None:
            mine.append((self._bridge_index, self.bridge, "bridge"))
        for index, name, kind in mine:
            info = link_info(ipr, index=index) if index else None
            if info is None or info["ifname"] != name or (kind and info["kind"] != kind):
                continue  # already gone (the usual case for the tap), or not ours any more
            try:
                ipr.link("del", index=index)
            except NetlinkError as e:
                if e.code != errno.ENODEV:
                    log.warning("could not remove %s (index %d): %s", name, index, os.strerror(e.code))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<TapDevice {self.name} index={self.index} bridge={self.bridge} {state}>"


def set_tap_offloads(device: TapDevice, offloads: Offloads) -> None:
    """TUNSETOFFLOAD: which unfinished frames the kernel may hand us (TSO needs CSUM)."""
    if device.vnet_hdr_size != VIRTIO_NET_HDR_SIZE:
        raise ConfigError(f"{device.name}: offloads need a tap opened with a {VIRTIO_NET_HDR_SIZE}-byte vnet header")
    if offloads & (Offloads.TSO4 | Offloads.TSO6 | Offloads.ECN) and not offloads & Offloads.CSUM:
        raise ConfigError("segmentation offloads need checksum offload too")
    flags = 0
    for offload, bit in _TUN_OFFLOADS.items():
        if offloads & offload:
            flags |= bit
    fcntl.ioctl(device.fileno(), TUNSETOFFLOAD, flags)


@dataclass
class TapCounters:
    rx_frames: int = 0
    rx_bytes: int = 0
    tx_frames: int = 0
    tx_bytes: int = 0
    #: Frames the kernel would not take: queue full (EAGAIN/ENOBUFS) or link down (EIO).
    tx_dropped: int = 0
    #: Everything else that went wrong: failed reads/writes, bad headers, on_frame raising.
    errors: int = 0
    #: GSO frames received whole from the kernel / written whole to it (also in rx/tx_frames).
    rx_gso: int = 0
    tx_gso: int = 0


#: Takes each frame the kernel sends us (the switch's receive): `on_frame(frame)`, or
#: `on_frame(frame, hdr)` for an unfinished frame, which only a tap with offloads passes on.
OnFrame = Callable[..., None]


class TapPort:
    """A switch Port over a TapDevice: frames in through an asyncio reader, out through transmit().

    `offloads` (on a tap with a 10-byte vnet header) are set with
    TUNSETOFFLOAD and become `config.offloads`.
    """

    def __init__(self, device: TapDevice, config: PortConfig | None = None, *, offloads: Offloads = Offloads.NONE) -> None:
        if offloads:
            set_tap_offloads(device, offloads)
        self.device = device
        self.config = config if config is not None else PortConfig(name=device.name, mtu=device.mtu)
        self.config.offloads = offloads
        self.counters = TapCounters()
        self._hdr = device.vnet_hdr_size
        self._zero_hdr = VirtioNetHdr().pack(self._hdr) if self._hdr else b""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_frame: OnFrame | None = None

    @property
    def attached(self) -> bool:
        return self._loop is not None

    def attach(self, loop: asyncio.AbstractEventLoop, on_frame: OnFrame) -> None:
        """Start handing every frame the kernel sends us to on_frame (the switch's receive)."""
        if self._loop is not None:
            raise RuntimeError(f"{self.config.name} is already attached")
        if self.device.closed:
            raise RuntimeError(f"{self.config.name}: the tap is closed")
        self._loop, self._on_frame = loop, on_frame
        loop.add_reader(self.device.fileno(), self._readable)

    def detach(self) -> None:
        if self._loop is not None:
            if self.device.fileno() >= 0:
                self._loop.remove_reader(self.device.fileno())
            self._loop = self._on_frame = None

    def close(self) -> None:
        """Stop reading and remove the tap (and the bridge the device created)."""
        self.detach()
        self.device.close()

    def _readable(self) -> None:
        for _ in range(FRAMES_PER_WAKEUP):
            try:
                data = self.device.read()
            except InterruptedError:
                continue
            except OSError as e:
                self.counters.errors += 1
                if e.errno in _GONE_ERRNOS:
                    log.warning("%s: tap is gone (%s); no longer reading", self.config.name, e.strerror)
                    self.detach()
                else:
                    log.debug("%s: read failed: %s", self.config.name, e.strerror)
                return
            if data is None:
                return
            frame, hdr = data, None
            if self._hdr:
                if len(data) < self._hdr:
                    self.counters.errors += 1
                    continue
                hdr = VirtioNetHdr.unpack(data, self._hdr)
                if hdr.is_plain:
                    hdr = None
                elif not self.config.offloads:
                    self.counters.errors += 1  # no offloads were enabled, so the kernel broke its word
                    continue
                frame = data[self._hdr :]
            self.counters.rx_frames += 1
            self.counters.rx_bytes += len(frame)
            self.counters.rx_gso += hdr is not None and hdr.gso_type != VIRTIO_NET_HDR_GSO_NONE
            on_frame = self._on_frame
            if on_frame is None:
                return
            try:
                if hdr is None:
                    on_frame(frame)
                else:
                    on_frame(frame, hdr)
            except GuestError as e:
                self.counters.errors += 1
                log.debug("%s: frame from the kernel refused: %s", self.config.name, e)
            except Exception:
                self.counters.errors += 1
                log.exception("%s: the switch failed on a received frame", self.config.name)
            if self._loop is None:
                return  # on_frame detached or closed us

    def transmit(self, frame: bytes, hdr: VirtioNetHdr | None = None) -> None:
        """Write one frame (behind its header, if unfinished) to the kernel; drops and errors are
        counted, never raised into the switch."""
        if self.device.closed:
            self.counters.errors += 1
            return
        if not self._hdr:
            data = frame
        else:
            data = (self._zero_hdr if hdr is None else hdr.pack(self._hdr)) + frame
        try:
            self.device.write(data)
        except OSError as e:
            if e.errno in _DROP_ERRNOS:
                self.counters.tx_dropped += 1
            else:
                self.counters.errors += 1
                log.debug("%s: write of %d bytes failed: %s", self.config.name, len(frame), e.strerror)
            return
        self.counters.tx_frames += 1
        self.counters.tx_bytes += len(frame)
        self.counters.tx_gso += hdr is not None and hdr.gso_type != VIRTIO_NET_HDR_GSO_NONE


def open_uplink(switch: Switch, name: str, *, mtu: int, bridge: str | None = None, create_bridge: bool = False,
                config: PortConfig | None = None, offloads: Offloads = ALL_OFFLOADS) -> TapPort:
    """A new tap as `switch`'s uplink, carrying virtio_net_hdr both ways.

    Large TCP segments (a vnet's LSO, a virtio-net guest's TSO) then reach the
    kernel whole and come back whole, instead of being cut to the MTU and
    checksummed in Python. Closing the port removes the tap (and a bridge it made).
    """
    device = TapDevice(name, mtu=mtu, bridge=bridge, create_bridge=create_bridge, vnet_hdr=True,
                       vnet_hdr_size=VIRTIO_NET_HDR_SIZE)
    try:
        port = TapPort(device, config, offloads=offloads)
        switch.attach(port, uplink=True)
    except BaseException:
        device.close()
        raise
    port.attach(asyncio.get_running_loop(), lambda frame, hdr=None: switch.receive(port, frame, time.monotonic(), hdr))
    return port
