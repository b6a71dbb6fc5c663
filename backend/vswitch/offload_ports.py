"""Carrying a frame's offload metadata (its virtio_net_hdr) through the switch engine.

The engine (switch.py) switches plain `bytes` and knows nothing of
checksum or segmentation offloads. Ports that can produce and take
unfinished frames (virtio-net, a tap with vnet headers) meet through this
module, so one engine serves every port and its rules still apply:

- Ingress, `switch_offloaded`: a frame whose header asks for work is first
  checked. If the switch knows the destination and that port is an
  `OffloadPort`, the switch is handed the frame's FIRST SEGMENT (so the MTU
  rule judges the segment size, VLAN and learning rules apply, counters and
  captures see a real wire frame) while the whole frame and its header ride
  along in a context variable for the duration of that synchronous
  `receive`. Otherwise (flooding, multicast, a port without offloads) the
  frame is finished in software here and each finished frame is switched.
- Egress, `deliver`: an `OffloadPort`'s `transmit` asks for the carried
  frame behind what the switch gave it (re-tagged by the switch if the VLAN
  rules said so) and either takes it whole or finishes it in software.

The engine's synchronous contract (every transmit happens before `receive`
returns) is what makes the context variable sound. A seam in the engine
itself (`receive(..., hdr)`, `transmit(frame, hdr)`) would replace this
module; see docs/vhost-net.md.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from .frames import FrameError, is_multicast, parse
from .offload import Offloads, check, finish, first_segment, needed
from .port import Port, PortConfig
from .switch import Switch
from .tap import VirtioNetHdr

TPID = b"\x81\x00"


@runtime_checkable
class OffloadPort(Protocol):
    """A switch port that can take frames whose checksum or segmentation is left to its far side."""

    config: PortConfig

    def transmit(self, frame: bytes) -> None: ...

    def offloads(self) -> Offloads:
        """What the far side takes unfinished right now."""
        ...


@dataclass(frozen=True, slots=True)
class Carried:
    """The frame the switch is judging (`wire`, a first segment) and the whole frame behind it."""

    wire: bytes
    frame: bytes
    hdr: VirtioNetHdr


_carried: ContextVar[Carried | None] = ContextVar("offload_carried", default=None)


def switch_offloaded(switch: Switch, port: Port, frame: bytes, hdr: VirtioNetHdr, now: float) -> int:
    """Switch a frame that came with a virtio_net_hdr; returns how many frames the switch saw.

    Raises OffloadError (nothing switched) when the header does not fit the frame.
    """
    if not needed(hdr):
        switch.receive(port, frame, now)
        return 1
    check(frame, hdr)
    target = _known_destination(switch, port, frame, now)
    if isinstance(target, OffloadPort):
        wire = first_segment(frame, hdr)
        token = _carried.set(Carried(wire, frame, hdr))
        try:
            switch.receive(port, wire, now)
        finally:
            _carried.reset(token)
        return 1
    finished = finish(frame, hdr)
    for piece in finished:
        switch.receive(port, piece, now)
    return len(finished)


def _known_destination(switch: Switch, port: Port, frame: bytes, now: float) -> Port | None:
    """The one port the switch will send this unicast frame to, if it knows it."""
    try:
        info = parse(frame)
    except FrameError:
        return None
    if is_multicast(info.dst):
        return None
    vlan = info.vlan if info.vlan is not None and port.config.tagged else port.config.pvid
    target = switch.lookup(info.dst, vlan, now)
    if target is None or target is port:
        return None
    config = target.config
    carries = vlan == config.pvid or (config.tagged and vlan in config.vlans)  # the engine's egress rule
    return target if carries else None


def carried(frame: bytes) -> tuple[bytes, VirtioNetHdr] | None:
    """The whole frame (and header) behind `frame`, if the switch is passing on a carried frame."""
    current = _carried.get()
    if current is None:
        return None
    if frame is current.wire:
        return current.frame, current.hdr
    wire_l2, out_l2 = _l2_len(current.wire), _l2_len(frame)
    if len(frame) - out_l2 != len(current.wire) - wire_l2 or frame[out_l2:] != current.wire[wire_l2:]:
        return None  # not the carried frame (cannot happen with the engine's contract)
    shift = out_l2 - wire_l2
    hdr = current.hdr
    moved = replace(hdr, csum_start=hdr.csum_start + shift, hdr_len=max(0, hdr.hdr_len + shift)) if shift else hdr
    return frame[:out_l2] + current.frame[wire_l2:], moved


def deliver(frame: bytes, offloads: Offloads, send: Callable[[bytes, VirtioNetHdr | None], None]) -> int:
    """Egress for an OffloadPort: `send(frame, hdr)` the whole carried frame if the port takes
    what it needs, else each finished frame with hdr None. Returns the frames sent."""
    found = carried(frame)
    if found is None:
        send(frame, None)
        return 1
    whole, hdr = found
    if needed(hdr) in offloads:
        send(whole, hdr)
        return 1
    pieces = finish(whole, hdr)
    for piece in pieces:
        send(piece, None)
    return len(pieces)


def _l2_len(frame: bytes) -> int:
    return 18 if frame[12:14] == TPID else 14
