"""The switch engine: a learning, VLAN-aware Ethernet switch with no I/O.

Theory of operation. Ports hand frames in with `receive(port, frame, now)`;
the switch hands frames out, synchronously and before `receive` returns,
through each egress port's `transmit`. Time exists only as the `now` values
callers pass, so tests can age entries with plain numbers.

A frame may come unfinished, with the virtio_net_hdr that says what is left
to do (checksum, TCP segmentation): `receive(port, frame, now, hdr)`. The
steps below then judge its first segment, the first frame it will be on a
wire; at egress a port whose `config.offloads` cover the work gets the whole
frame with its header, any other port the finished frames (offload.py).

One frame goes through four steps, and leaves each step either dropped (one
reason, counted on the ingress port) or one step further:

1. classify: parse the header; pick the ingress VLAN (the tag on a tagged
   port that carries it, else the port's PVID); check the size against the
   ingress port's MTU; refuse group or all-zero source addresses.
2. learn: (vlan, src) -> ingress port, stamped with `now`. A known address
   seen on another port moves; when the table is full, new addresses are not
   learned (frames still flow), so a port spraying random sources costs the
   others nothing but flooding for stations they have not yet seen.
3. decide: broadcast and unknown unicast go to every port of the VLAN;
   multicast to ports that joined (group, vlan) plus uplinks; known unicast
   to its port. The ingress port is never among them. An empty set is a
   `no_route` drop.
4. egress: per port, untagged if the VLAN is its PVID, tagged if the port is
   tagged and carries the VLAN, otherwise the port is not a member and is
   never chosen. A transmit that raises is counted on that port and logged;
   the other ports still get the frame. An unfinished frame is sent whole or
   finished, as the port's offloads allow.

Every counter lives here; see `PortCounters` for how they add up.

Batches. A vnet hands in a ring walk's worth of frames at once
(`receive_batch`). Its plain unicast frames between the same two stations
(untagged, within the ingress MTU) meet the same four steps with the same
outcome, so the steps run once per such group (`_pair_route`, the unicast
case of step 3 and what step 4 does for one untagged port), and the frames go
out to a port that takes batches (`transmit_groups`) in one call, counted per
group. What that decision does not cover (group addresses, tags, oversize,
taps, stations that are the destination of another group, a destination not
known) goes through `receive` frame by frame, so every outcome is the one
the per-frame path gives.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from ..errors import BackendError, ConfigError, GuestError
from .batch import FrameBatch, PairGroups
from .frames import (
    HEADER_LEN,
    MAC_LEN,
    TAG_LEN,
    VID_MAX,
    VID_MIN,
    FrameError,
    RuntFrameError,
    UnsupportedFrameError,
    VlanTagError,
    format_mac,
    is_broadcast,
    is_multicast,
    is_valid_source,
    parse,
    tag,
    untag,
)
from .offload import check, finish, first_segment, needed
from .port import Offloads, Port
from .vnet_hdr import VirtioNetHdr

log = logging.getLogger(__name__)

#: Ingress drop reasons (counted on the port the frame came in on).
RUNT = "runt"
OVERSIZE = "oversize"
BAD_VLAN = "bad_vlan"
UNSUPPORTED = "unsupported"
BAD_SOURCE = "bad_source"
NO_ROUTE = "no_route"
FLOOD_LIMIT = "flood_limit"
INGRESS_DROPS = (RUNT, OVERSIZE, BAD_VLAN, UNSUPPORTED, BAD_SOURCE, NO_ROUTE, FLOOD_LIMIT)
#: Egress drop reasons (counted on the port that should have sent the frame).
TX_ERROR = "tx_error"
TX_OVERSIZE = "tx_oversize"
EGRESS_DROPS = (TX_ERROR, TX_OVERSIZE)

#: Tap directions: the switch received the frame from the port / sent it out of the port.
RX = "rx"
TX = "tx"

Tap = Callable[[str, bytes, float], None]


class NotAttachedError(BackendError):
    """The port is not attached to this switch (never was, or was detached)."""


@dataclass
class PortCounters:
    """Per-port statistics.

    For every port: rx_frames == forwarded + sum of the ingress drop reasons.
    A forwarded frame produced, on each egress port chosen for it, exactly one
    of tx_frames, tx_error or tx_oversize.
    """

    rx_frames: int = 0
    rx_bytes: int = 0
    tx_frames: int = 0
    tx_bytes: int = 0
    #: Frames that passed ingress checks and had at least one egress port.
    forwarded: int = 0
    drops: Counter[str] = field(default_factory=Counter)

    @property
    def rx_dropped(self) -> int:
        return sum(self.drops[r] for r in INGRESS_DROPS)

    @property
    def tx_dropped(self) -> int:
        return sum(self.drops[r] for r in EGRESS_DROPS)


@dataclass
class SwitchCounters:
    """Whole-switch statistics."""

    #: Frames sent to every port of their VLAN: broadcast and unknown unicast.
    flooded: int = 0
    learned: int = 0
    #: A known (vlan, mac) seen on another port than the one it was learned on.
    moves: int = 0
    #: Addresses not learned because the table held max_fdb entries.
    fdb_full: int = 0
    aged: int = 0
    tap_errors: int = 0


@dataclass(frozen=True, slots=True)
class FdbEntry:
    """Where a station was last seen, and when."""

    port: Port
    seen: float


class _Member:
    """What the switch keeps about one attached port."""

    __slots__ = ("counters", "groups", "port", "refilled", "taps", "tokens", "uplink")

    def __init__(self, port: Port, uplink: bool, burst: float) -> None:
        self.port = port
        self.uplink = uplink
        self.counters = PortCounters()
        self.groups: set[tuple[bytes, int]] = set()
        self.taps: list[Tap] = []
        self.tokens = burst
        self.refilled: float | None = None

    @property
    def name(self) -> str:
        return self.port.config.name

    def egress_tagged(self, vlan: int) -> bool | None:
        """True: send tagged; False: send untagged; None: not a member of `vlan`."""
        config = self.port.config
        if vlan == config.pvid:
            return False
        if config.tagged and vlan in config.vlans:
            return True
        return None

    def max_frame(self, tagged: bool) -> int:
        return self.port.config.mtu + HEADER_LEN + (TAG_LEN if tagged else 0)


class _Entry:
    __slots__ = ("member", "seen")

    def __init__(self, member: _Member, seen: float) -> None:
        self.member = member
        self.seen = seen


class _Unfinished:
    """A frame whose checksum or segmentation is left to do, untagged, and what egress makes of it."""

    __slots__ = ("_pieces", "hdr", "need", "plain")

    def __init__(self, frame: bytes, hdr: VirtioNetHdr) -> None:
        self.plain = frame
        self.hdr = hdr
        self.need = needed(hdr)
        self._pieces: list[bytes] | None = None

    def untag(self) -> None:
        """Drop the frame's 802.1Q tag; the header's offsets move with the bytes."""
        self.plain = untag(self.plain)
        self.hdr = _shift(self.hdr, -TAG_LEN)

    def whole(self, vlan: int, pcp: int) -> tuple[bytes, VirtioNetHdr]:
        """The whole frame tagged for `vlan`, with its header to match."""
        return tag(self.plain, vlan, pcp), _shift(self.hdr, TAG_LEN)

    def pieces(self) -> list[bytes]:
        """The finished (untagged) frames, made once for all ports that need them."""
        if self._pieces is None:
            self._pieces = finish(self.plain, self.hdr)
        return self._pieces


def _shift(hdr: VirtioNetHdr, by: int) -> VirtioNetHdr:
    return replace(hdr, csum_start=hdr.csum_start + by, hdr_len=max(0, hdr.hdr_len + by))


class Switch:
    """One virtual switch (one vsw instance): its ports, FDB and multicast groups.

    `ageing`: seconds an address stays learned without being seen again.
    `max_fdb`: most addresses learned at once, across all VLANs.
    `max_groups`: most multicast (group, vlan) memberships per port.
    `flood_rate`/`flood_burst`: optional storm control, a token bucket per
    ingress port for frames that would be flooded (broadcast, unknown unicast).
    """

    def __init__(
        self,
        name: str,
        *,
        ageing: float = 300.0,
        max_fdb: int = 4096,
        max_groups: int = 1024,
        flood_rate: float | None = None,
        flood_burst: float = 100.0,
    ) -> None:
        if ageing < 0:
            raise ConfigError(f"switch {name}: ageing must be >= 0 seconds, got {ageing}")
        if max_fdb < 0 or max_groups < 0:
            raise ConfigError(f"switch {name}: max_fdb and max_groups must be >= 0")
        if flood_rate is not None and (flood_rate < 0 or flood_burst < 1):
            raise ConfigError(f"switch {name}: flood_rate must be >= 0 and flood_burst >= 1")
        self.name = name
        self.ageing = ageing
        self.max_fdb = max_fdb
        self.max_groups = max_groups
        self.flood_rate = flood_rate
        self.flood_burst = flood_burst
        self.stats = SwitchCounters()
        self._members: dict[int, _Member] = {}
        # Ordered by last refresh, oldest first, so full-table eviction of
        # expired entries only looks at the head.
        self._fdb: OrderedDict[tuple[int, bytes], _Entry] = OrderedDict()
        self._groups: dict[tuple[bytes, int], set[int]] = {}

    # -- ports ---------------------------------------------------------------

    def attach(self, port: Port, *, uplink: bool = False) -> None:
        """Add a port. An uplink receives all multicast of its VLANs (the rest
        of the network may hold listeners the switch cannot see join)."""
        config = port.config
        if id(port) in self._members:
            raise ConfigError(f"switch {self.name}: port {config.name} is already attached")
        if any(m.name == config.name for m in self._members.values()):
            raise ConfigError(f"switch {self.name}: another port is already named {config.name}")
        if not VID_MIN <= config.pvid <= VID_MAX:
            raise ConfigError(f"port {config.name}: PVID {config.pvid} not in {VID_MIN}..{VID_MAX}")
        bad = sorted(v for v in config.vlans if not VID_MIN <= v <= VID_MAX)
        if bad:
            raise ConfigError(f"port {config.name}: VLAN ids {bad} not in {VID_MIN}..{VID_MAX}")
        if config.mtu < 1:
            raise ConfigError(f"port {config.name}: MTU {config.mtu} must be positive")
        self._members[id(port)] = _Member(port, uplink, self.flood_burst)

    def detach(self, port: Port) -> None:
        """Remove a port with its learned addresses, group memberships and taps."""
        member = self._member(port)
        del self._members[id(port)]
        for key in [k for k, e in self._fdb.items() if e.member is member]:
            del self._fdb[key]
        for group in member.groups:
            self._leave(id(port), group)
        member.groups.clear()
        member.taps.clear()

    @property
    def ports(self) -> list[Port]:
        return [m.port for m in self._members.values()]

    def is_uplink(self, port: Port) -> bool:
        return self._member(port).uplink

    def counters(self, port: Port) -> PortCounters:
        """The live counters of an attached port."""
        return self._member(port).counters

    # -- multicast -----------------------------------------------------------

    def join(self, port: Port, group_mac: bytes, vlan: int) -> None:
        """Deliver multicast to `group_mac` on `vlan` to this port (idempotent)."""
        member = self._member(port)
        if len(group_mac) != MAC_LEN or not is_multicast(group_mac) or is_broadcast(group_mac):
            raise GuestError(f"port {member.name}: {group_mac.hex(':')} is not a multicast group address")
        if member.egress_tagged(vlan) is None:
            raise GuestError(f"port {member.name}: cannot join a group on VLAN {vlan}, which it does not carry")
        key = (bytes(group_mac), vlan)
        if key in member.groups:
            return
        if len(member.groups) >= self.max_groups:
            raise GuestError(f"port {member.name}: already in {self.max_groups} multicast groups")
        member.groups.add(key)
        self._groups.setdefault(key, set()).add(id(port))

    def leave(self, port: Port, group_mac: bytes, vlan: int) -> None:
        """Stop delivering that group to this port; leaving a group not joined is fine."""
        member = self._member(port)
        key = (bytes(group_mac), vlan)
        if key in member.groups:
            member.groups.discard(key)
            self._leave(id(port), key)

    def groups(self, port: Port) -> frozenset[tuple[bytes, int]]:
        return frozenset(self._member(port).groups)

    def _leave(self, port_id: int, key: tuple[bytes, int]) -> None:
        members = self._groups.get(key)
        if members is not None:
            members.discard(port_id)
            if not members:
                del self._groups[key]

    # -- forwarding database -------------------------------------------------

    @property
    def fdb(self) -> Mapping[tuple[int, bytes], FdbEntry]:
        """A snapshot, (vlan, mac) -> FdbEntry; may hold entries `age` would remove."""
        return {key: FdbEntry(e.member.port, e.seen) for key, e in self._fdb.items()}

    def lookup(self, mac: bytes, vlan: int, now: float) -> Port | None:
        """The port `mac` was learned on in `vlan`, unless it has aged out by `now`."""
        entry = self._fdb.get((vlan, bytes(mac)))
        if entry is None or self._expired(entry, now):
            return None
        return entry.member.port

    def age(self, now: float) -> int:
        """Forget addresses not seen for `ageing` seconds; returns how many."""
        stale = [key for key, e in self._fdb.items() if self._expired(e, now)]
        for key in stale:
            del self._fdb[key]
        self.stats.aged += len(stale)
        return len(stale)

    def flush(self, port: Port | None = None) -> None:
        """Forget every learned address (of one port, if given)."""
        member = None if port is None else self._member(port)
        for key in [k for k, e in self._fdb.items() if member is None or e.member is member]:
            del self._fdb[key]

    def _expired(self, entry: _Entry, now: float) -> bool:
        return now - entry.seen >= self.ageing

    def _learn(self, member: _Member, vlan: int, src: bytes, now: float) -> None:
        key = (vlan, src)
        entry = self._fdb.get(key)
        if entry is not None:
            if entry.member is not member:
                if not self._expired(entry, now):
                    self.stats.moves += 1
                    log.debug(
                        "%s: %s moved on VLAN %d from %s to %s",
                        self.name, format_mac(src), vlan, entry.member.name, member.name,
                    )
                entry.member = member
            entry.seen = now
            self._fdb.move_to_end(key)
            return
        if len(self._fdb) >= self.max_fdb:
            self._evict_expired_head(now)
            if len(self._fdb) >= self.max_fdb:
                self.stats.fdb_full += 1
                return
        self._fdb[key] = _Entry(member, now)
        self.stats.learned += 1

    def _evict_expired_head(self, now: float) -> None:
        while self._fdb:
            key, entry = next(iter(self._fdb.items()))
            if not self._expired(entry, now):
                return
            del self._fdb[key]
            self.stats.aged += 1

    # -- taps ----------------------------------------------------------------

    def add_tap(self, port: Port, tap: Tap) -> None:
        """Call `tap(direction, frame, now)` for every frame the switch receives
        from `port` (RX, as received, before any check) and every frame it
        transmits through `port` (TX, as sent, once transmit returned)."""
        self._member(port).taps.append(tap)

    def remove_tap(self, port: Port, tap: Tap) -> None:
        member = self._members.get(id(port))
        if member is not None and tap in member.taps:
            member.taps.remove(tap)

    def _tap(self, member: _Member, direction: str, frame: bytes, now: float) -> None:
        for tap in list(member.taps):
            try:
                tap(direction, frame, now)
            except Exception:
                self.stats.tap_errors += 1
                log.warning("%s: tap on port %s failed", self.name, member.name, exc_info=True)

    # -- forwarding ----------------------------------------------------------

    def receive(
        self, port: Port, frame: bytes | bytearray | memoryview, now: float, hdr: VirtioNetHdr | None = None
    ) -> None:
        """Switch one frame that `port` received from whatever is behind it.

        `hdr`: the frame's virtio_net_hdr, when checksum or segmentation may be
        left to do. Counters and taps see the frame's first segment. Raises
        OffloadError, before anything is counted, when the header does not fit
        the frame.
        """
        member = self._member(port)
        frame = bytes(frame)
        unfinished = None
        if hdr is not None and needed(hdr) != Offloads.NONE:
            check(frame, hdr)
            unfinished = _Unfinished(frame, hdr)
            frame = first_segment(frame, hdr)
        counters = member.counters
        counters.rx_frames += 1
        counters.rx_bytes += len(frame)
        if member.taps:
            self._tap(member, RX, frame, now)

        reason = self._forward(member, frame, now, unfinished)
        if reason is None:
            counters.forwarded += 1
        else:
            counters.drops[reason] += 1

    def receive_batch(self, port: Port, batch: FrameBatch, now: float) -> None:
        """Switch the frames `port` received in one go (see "Batches" above); the batch
        is not kept. Frames of one station pair keep their order."""
        member = self._member(port)
        groups = PairGroups(batch, member.max_frame(False))
        of = groups.of
        pairs = [batch.addresses(groups.first[g]) for g in range(groups.groups)]
        slow = [i for i in range(batch.count) if of[i] == -1] if groups.grouped != batch.good else []
        slow_pairs = [batch.addresses(i) for i in slow]
        # Learning from one frame can change the outcome for a later one. Frames to a station
        # that is a source in this batch (it may have just moved here) take the per-frame
        # path, in order, and so do frames from a station that a frame on that path is for.
        sources = {src for _, src in pairs} | {src for _, src in slow_pairs}
        routes = [None if dst in sources else self._pair_route(member, dst, src, now) for dst, src in pairs]
        slow_destinations = {dst for dst, _ in slow_pairs} | {pairs[g][0] for g, out in enumerate(routes) if out is None}
        while any(out is not None and pairs[g][1] in slow_destinations for g, out in enumerate(routes)):
            for g, out in enumerate(routes):
                if out is not None and pairs[g][1] in slow_destinations:
                    routes[g] = None
                    slow_destinations.add(pairs[g][0])
        egress: dict[int, tuple[_Member, bytearray]] = {}
        counters = member.counters
        learn_at: dict[int, int] = {}  # first frame of a group -> its group, for its source's refresh
        for g, out in enumerate(routes):
            if out is not None:
                learn_at[groups.first[g]] = g
                count = groups.count[g]
                counters.rx_frames += count
                counters.rx_bytes += groups.bytes[g]
                counters.forwarded += count
                egress.setdefault(id(out), (out, bytearray(groups.groups)))[1][g] = 1
        if None in routes:
            slow += [i for i in range(batch.count) if of[i] >= 0 and routes[of[i]] is None]
        # The refreshes and the per-frame path in frame order: which stations age out or
        # get evicted from a full table depends on it.
        vlan = member.port.config.pvid
        for i in sorted(slow + list(learn_at)):
            group = learn_at.get(i)
            if group is None:
                self.receive(port, batch.frame(i), now)
            else:
                self._learn(member, vlan, pairs[group][1], now)  # a refresh (see _pair_route)
        for out, selected in egress.values():
            self._emit_groups(out, batch, groups, selected)

    def _pair_route(self, ingress: _Member, dst: bytes, src: bytes, now: float) -> _Member | None:
        """The one port an untagged unicast frame from `src` to `dst` leaves by (untagged,
        within its MTU, no taps on the way, a port that takes batches) when `src` is already
        learned on `ingress`; None when the per-frame path must decide (and count)."""
        vlan = ingress.port.config.pvid
        entry = self._fdb.get((vlan, dst))
        if ingress.taps or not is_valid_source(src) or entry is None or self._expired(entry, now):
            return None
        source = self._fdb.get((vlan, src))
        if source is None or source.member is not ingress:
            return None  # a new station or a move: counted and logged frame by frame
        out = entry.member
        if (out is ingress or out.taps or out.egress_tagged(vlan) is not False
                or out.max_frame(False) < ingress.max_frame(False) or not hasattr(out.port, "transmit_groups")):
            return None
        return out

    def _emit_groups(self, out: _Member, batch: FrameBatch, groups: PairGroups, selected: bytearray) -> None:
        """Step 4 for the frames of the selected groups, all bound untagged for `out`."""
        chosen = [g for g in range(groups.groups) if selected[g]]
        count = sum(groups.count[g] for g in chosen)
        try:
            out.port.transmit_groups(batch, groups, selected)  # type: ignore[attr-defined]
        except Exception:
            out.counters.drops[TX_ERROR] += count
            log.warning("%s: transmit on port %s failed", self.name, out.name, exc_info=True)
            return
        out.counters.tx_frames += count
        out.counters.tx_bytes += sum(groups.bytes[g] for g in chosen)

    def _forward(self, member: _Member, frame: bytes, now: float, unfinished: _Unfinished | None) -> str | None:
        """Run the four steps; return the drop reason, or None once sent."""
        try:
            info = parse(frame)
        except RuntFrameError:
            return RUNT
        except VlanTagError:
            return BAD_VLAN
        except UnsupportedFrameError:
            return UNSUPPORTED
        except FrameError:  # pragma: no cover - parse raises only the three above
            return UNSUPPORTED

        config = member.port.config
        if info.vlan is None:
            vlan = config.pvid
        elif config.tagged and (info.vlan == config.pvid or info.vlan in config.vlans):
            vlan = info.vlan
        else:
            return BAD_VLAN
        if len(frame) > member.max_frame(info.tagged):
            return OVERSIZE
        if not is_valid_source(info.src):
            return BAD_SOURCE

        self._learn(member, vlan, info.src, now)

        flood = False
        if is_broadcast(info.dst):
            targets = self._vlan_members(vlan, member)
            flood = True
        elif is_multicast(info.dst):
            targets = self._multicast_members(info.dst, vlan, member)
        else:
            entry = self._fdb.get((vlan, info.dst))
            if entry is not None and not self._expired(entry, now) and entry.member.egress_tagged(vlan) is not None:
                if entry.member is member:
                    return NO_ROUTE  # the station is behind the port it came from
                targets = [entry.member]
            else:
                targets = self._vlan_members(vlan, member)
                flood = True
        if not targets:
            return NO_ROUTE
        if flood:
            if not self._flood_allowed(member, now):
                return FLOOD_LIMIT
            self.stats.flooded += 1

        if unfinished is not None and info.tagged:
            unfinished.untag()
        self._emit(targets, frame, info.tagged, vlan, info.pcp, now, unfinished)
        return None

    def _vlan_members(self, vlan: int, ingress: _Member) -> list[_Member]:
        return [m for m in self._members.values() if m is not ingress and m.egress_tagged(vlan) is not None]

    def _multicast_members(self, group: bytes, vlan: int, ingress: _Member) -> list[_Member]:
        joined = self._groups.get((group, vlan), ())
        return [
            m
            for pid, m in self._members.items()
            if m is not ingress and (pid in joined or m.uplink) and m.egress_tagged(vlan) is not None
        ]

    def _flood_allowed(self, member: _Member, now: float) -> bool:
        if self.flood_rate is None:
            return True
        if member.refilled is not None and now > member.refilled:
            member.tokens = min(self.flood_burst, member.tokens + (now - member.refilled) * self.flood_rate)
        if member.refilled is None or now > member.refilled:
            member.refilled = now
        if member.tokens < 1:
            return False
        member.tokens -= 1
        return True

    def _emit(
        self,
        targets: list[_Member],
        frame: bytes,
        tagged_in: bool,
        vlan: int,
        pcp: int,
        now: float,
        unfinished: _Unfinished | None,
    ) -> None:
        plain = untag(frame) if tagged_in else frame
        tagged: bytes | None = None
        for out in targets:
            if self._members.get(id(out.port)) is not out:
                continue  # an earlier transmit detached it
            as_tagged = out.egress_tagged(vlan)
            if as_tagged is None:  # an earlier transmit changed its VLANs
                continue
            if as_tagged:
                if tagged is None:
                    tagged = tag(plain, vlan, pcp)
                data = tagged
            else:
                data = plain
            counters = out.counters
            if len(data) > out.max_frame(as_tagged):
                counters.drops[TX_OVERSIZE] += 1
                continue
            try:
                if unfinished is None:
                    out.port.transmit(data)
                    sent = [data]
                else:
                    sent = self._send_unfinished(out, unfinished, data, as_tagged, vlan, pcp)
            except Exception:
                counters.drops[TX_ERROR] += 1
                n = counters.drops[TX_ERROR]
                if n == 1 or n % 1000 == 0:
                    log.warning(
                        "%s: transmit on port %s failed (%d so far)", self.name, out.name, n, exc_info=True
                    )
                continue
            counters.tx_frames += len(sent)
            counters.tx_bytes += sum(map(len, sent))
            if out.taps:
                for wire in sent:
                    self._tap(out, TX, wire, now)

    @staticmethod
    def _send_unfinished(
        out: _Member, unfinished: _Unfinished, first: bytes, as_tagged: bool, vlan: int, pcp: int
    ) -> list[bytes]:
        """Transmit an unfinished frame whole or finished, as `out` takes it; returns the wire frames
        that stand for what was sent (`first`, its first segment as egress made it, for a whole frame)."""
        port = out.port
        if unfinished.need in port.config.offloads:
            whole, hdr = unfinished.whole(vlan, pcp) if as_tagged else (unfinished.plain, unfinished.hdr)
            port.transmit(whole, hdr)
            return [first]
        pieces = unfinished.pieces()
        if as_tagged:
            pieces = [tag(piece, vlan, pcp) for piece in pieces]
        for piece in pieces:
            port.transmit(piece)
        return pieces

    def _member(self, port: Port) -> _Member:
        member = self._members.get(id(port))
        if member is None or member.port is not port:
            name = getattr(getattr(port, "config", None), "name", repr(port))
            raise NotAttachedError(f"switch {self.name}: port {name} is not attached")
        return member

    def __repr__(self) -> str:
        return f"<Switch {self.name} ports={len(self._members)} fdb={len(self._fdb)}>"
