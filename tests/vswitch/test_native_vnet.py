"""The C ring data path (backend/native/vnet.c): hostile input, and the same answers as the Python
protocol code (PeerMemory resolving cookies, the descriptor layout the session reads)."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from backend.errors import BackendError
from backend.ldc.memory import (
    PERM_RO,
    PERM_RW,
    MapTable,
    PeerMemory,
    Perm,
    Segment,
    TransportCookie,
)
from backend.native import native
from backend.vswitch.batch import FrameBatch
from backend.vswitch.vnet import DESC, PACKET_SKIP

ffi, lib = native()
u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
FREE, READY = 1, 2


def _round8(n: int) -> int:
    return -(-n // 8) * 8


# ---- vnet_rx: frames in through the peer's cookies -----------------------------------------

@st.composite
def _peer(draw):
    """A peer's map table and segments, some exports valid, some not, plus junk entries."""
    segments = {}
    for sid in (1, 2):  # a repeated pattern: some frames carry an 802.1Q TPID where a tag goes
        size = draw(st.sampled_from([8192, 16384, 24576, 73728]))
        pattern = draw(st.sampled_from([b"\x81\x00", b"\x81\x00\x0a\x0b", b"\x02\x00\x00\x01\x02\x03"]) | st.binary(min_size=1, max_size=16))
        segments[sid] = memoryview(bytearray((pattern * (size // len(pattern) + 1))[:size]))
    table_buffer = bytearray(8 * draw(st.sampled_from([4, 16, 64])))
    table = MapTable(table_buffer)
    exportable = {sid: Segment(sid, view) for sid, view in segments.items()}
    for segment in exportable.values():
        table.add_segment(segment)
    cookies = []
    for _ in range(draw(st.integers(0, 6))):
        sid = draw(st.sampled_from([1, 2]))
        size = len(segments[sid])
        offset = draw(st.integers(0, size - 8))
        length = draw(st.integers(1, size - offset))
        perms = draw(st.sampled_from([PERM_RW, PERM_RO, Perm.READ, Perm.COPY_WRITE]))
        try:
            export = table.export(exportable[sid], offset, length, perms)
        except (MemoryError, ValueError):
            continue
        cookies.append(export.cookies[0])
        if draw(st.booleans()) and draw(st.booleans()):
            table.unmap(export)  # revoked: the cookie must fail
    raw = bytearray(table_buffer)
    for _ in range(draw(st.integers(0, 3))):  # junk entries: bad codes, segments, offsets
        index = draw(st.integers(0, len(raw) // 8 - 1))
        raw[index * 8 : index * 8 + 8] = struct.pack(">Q", draw(u64))
    return PeerMemory(raw, segments), cookies


@st.composite
def _descriptors(draw, cookies):
    """Descriptor payloads (after the 8-byte entry header): good ones from real cookies, and junk."""
    out = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["good", "good", "junk", "raw"]))
        if kind == "raw":
            out.append(draw(st.binary(min_size=56, max_size=56)))
            continue
        size = draw(st.sampled_from([0, 13, 14, 60, 1514, 1515, 2048, 16384, 65535, 65536, draw(u32),
                                     draw(st.integers(14, 1514)), draw(st.integers(1515, 66000))]))
        chosen = [draw(st.sampled_from(cookies)) for _ in range(draw(st.integers(1, 2)))] if cookies and kind == "good" else []
        if kind == "junk" or not chosen:
            chosen = [TransportCookie(draw(u64), draw(st.sampled_from([0, 72, 1520, draw(u64)]))) for _ in range(draw(st.integers(0, 2)))]
        ncookies = len(chosen) if kind == "good" else draw(st.sampled_from([0, 1, 2, 3, draw(u32)]))
        body = DESC.pack(size, ncookies) + b"".join(c.encode() for c in chosen)
        ext = _EXT.pack(draw(st.sampled_from([0, LSO, LSO | 0x06, 0x04]) | st.integers(0, 255)), draw(st.integers(0, 255)),
                        draw(st.sampled_from([0, 1, 1460]) | st.integers(0, 65535)), draw(u32))
        out.append((body.ljust(40, b"\0") + ext).ljust(56, b"\0"))
    return out


_EXT = struct.Struct(">BBHI")  # flags, hash value, LSO MSS, reserved (after two cookie slots)
LSO = 0x08


def _link(mtu: int, tsolen: int = 0, allow_tags: bool = False, ext: bool = False):
    return ffi.new("struct vnet_link *", {"mtu": mtu, "tsolen": tsolen, "allow_tags": allow_tags, "ext": ext})


def _expected(memory: PeerMemory, payload: bytes, mtu: int, allow_tags: bool, tsolen: int, ext: bool) -> bytes | int:
    """What the protocol says a descriptor yields: its frame (and the extension's flags and
    MSS as the receiver keeps them), or the C status for why not."""
    size, ncookies = DESC.unpack_from(payload, 0)
    flags, _, mss, _ = _EXT.unpack_from(payload, 40) if ext else (0, 0, 0, 0)
    lso = bool(tsolen and flags & LSO)
    if not 14 <= size <= max(mtu, tsolen) or not 1 <= ncookies <= min((len(payload) - 8) // 16, 2) or (lso and not mss):
        return lib.VNET_RX_BAD_DESC
    cookies = [TransportCookie._make(struct.unpack_from(">QQ", payload, 8 + 16 * i)) for i in range(ncookies)]
    try:
        frame = memory.read(cookies, _round8(size + PACKET_SKIP), PACKET_SKIP, PACKET_SKIP + size)
    except BackendError:
        return lib.VNET_RX_BAD_COOKIE
    if frame[12:14] == b"\x81\x00" and not allow_tags:
        return lib.VNET_RX_TAGGED
    return frame, (flags if lso else flags & ~LSO), (mss if lso else 0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_rx_takes_exactly_what_the_cookies_grant(data) -> None:
    memory, cookies = data.draw(_peer())
    payloads = data.draw(_descriptors(cookies))
    mtu = data.draw(st.sampled_from([1514, 1518, 9000]))
    tsolen = data.draw(st.sampled_from([0, 0, 2048, 65535]))
    allow_tags, ext = data.draw(st.booleans()), data.draw(st.booleans())
    peer = memory.native_view()
    rx = FrameBatch.empty(len(payloads), max(mtu, tsolen))
    rx.struct.count = len(payloads)
    good = lib.vnet_rx(b"".join(payloads), 56, len(payloads), peer, _link(mtu, tsolen, allow_tags, ext), rx.struct)
    expected = [_expected(memory, payload, mtu, allow_tags, tsolen, ext) for payload in payloads]
    got = [(rx.frame(i), rx.flags[i], rx.mss[i]) if rx.lengths[i] >= 0 else rx.lengths[i] for i in range(len(payloads))]
    assert got == expected
    frames = [e for e in expected if isinstance(e, tuple)]
    assert good == rx.good == len(frames)
    assert rx.lso == sum(1 for _, _, mss in frames if mss)
    assert rx.total == sum(len(frame) for frame, _, _ in frames)
    assert rx.frames() == [frame for frame, _, _ in frames]
    event(f"frames through: {min(good, 1)}, LSO: {min(rx.lso, 1)}, bad cookies: {min(expected.count(lib.VNET_RX_BAD_COOKIE), 1)}, tagged: {min(expected.count(lib.VNET_RX_TAGGED), 1)} (0/1)")


def test_rx_refuses_more_descriptors_than_room() -> None:
    rx = FrameBatch.empty(2, 1514)
    rx.struct.count = 2
    peer = ffi.new("struct ldc_peer_memory *")
    assert lib.vnet_rx(bytes(56 * 3), 56, 3, peer, _link(1514), rx.struct) == -1
    assert lib.vnet_rx(bytes(4 * 2), 4, 2, peer, _link(1514, 65535, ext=True), rx.struct) == 0  # too short for a size
    assert list(rx.lengths) == [lib.VNET_RX_BAD_DESC] * 2


# ---- vnet_tx: frames out into our slots -------------------------------------------------------

@st.composite
def _tx_case(draw):
    count = draw(st.sampled_from([4, 8, 32]))
    desc_size = draw(st.sampled_from([32, 64]))
    slot = draw(st.sampled_from([1520, 1528, 72, 4104]))
    sizes = st.sampled_from([0, 13, 14, 60, 64, 65, 1514, 1515, 1518, 1600, 2048, 4098, 4099]) | st.integers(14, 1514)
    frames = [draw(st.binary(min_size=n, max_size=n)) for n in draw(st.lists(sizes, max_size=12))]
    mss = [draw(st.sampled_from([0, 0, 1, 1460, 65535])) for _ in frames]
    frames = [f if len(f) < 14 or draw(st.booleans()) else f[:12] + b"\x81\x00" + f[14:] for f in frames]
    states = [draw(st.sampled_from([FREE, FREE, FREE, READY, 0x4, draw(st.integers(0, 255))])) for _ in range(count)]
    return {"count": count, "desc_size": desc_size, "slot": slot, "frames": frames, "states": states,
            "prod": draw(st.integers(0, count - 1)), "room": draw(st.sampled_from([0, 1, count - 1]) | st.integers(0, count)),
            "pending": draw(st.integers(0, 100)), "mtu": draw(st.sampled_from([64, 1514, 1518, 1518])),
            "allow_tags": draw(st.booleans()), "tsolen": draw(st.sampled_from([0, 2048, 4096])), "ext": draw(st.booleans()),
            "mss": mss,
            "groups": draw(st.none() | st.none() | st.lists(st.integers(-2, 3), min_size=12, max_size=12)),
            "selected": draw(st.binary(min_size=4, max_size=4))}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_tx_case())
def test_tx_queues_what_fits_and_writes_nothing_else(case) -> None:
    count, desc_size, slot = case["count"], case["desc_size"], case["slot"]
    guard = 256
    ring = bytearray(count * desc_size + guard)
    for i, state in enumerate(case["states"]):
        ring[i * desc_size] = state
    ring[count * desc_size :] = b"\xee" * guard
    buffers = bytearray(count * slot + guard)
    buffers[count * slot :] = b"\xee" * guard
    before_ring = bytes(ring)
    cookies = [0x1000 * (i + 1) for i in range(count)]
    keep = (ffi.from_buffer("uint8_t[]", ring), ffi.from_buffer("uint8_t[]", buffers), ffi.new("uint64_t[]", cookies))
    tx = ffi.new("struct vnet_tx_ring *", {
        "ring": keep[0], "ring_size": count * desc_size, "count": count, "desc_size": desc_size, "buffers": keep[1],
        "buffers_size": count * slot, "slot_size": slot, "slot_cookies": keep[2],
        "link": _link(case["mtu"], case["tsolen"], case["allow_tags"], case["ext"])[0], "ack_every": 32})
    batch = FrameBatch.of(case["frames"], case["mss"]) if case["frames"] else FrameBatch(b"", 0)
    group_of = ffi.new("int32_t[]", case["groups"]) if case["groups"] is not None else ffi.NULL
    selected = ffi.from_buffer(bytearray(case["selected"]))
    result = ffi.new("struct vnet_tx_result *")
    lib.vnet_tx(tx, case["prod"], case["room"], case["pending"], batch.struct, group_of, selected, 4, result)

    # The model: walk the frames in order, taking the selected ones while room and FREE entries last.
    wanted = [i for i in range(len(case["frames"]))
              if case["groups"] is None or (0 <= case["groups"][i] < 4 and case["selected"][case["groups"][i]])]
    queued, refused, consumed = [], 0, len(case["frames"])
    payload_len = 48 if case["ext"] else 24
    if desc_size < 8 + payload_len:  # no room for the descriptor: the ring is refused whole
        consumed = wanted[0] if wanted else consumed
        wanted = []
    for i in wanted:
        frame = case["frames"][i]
        if len(queued) == case["room"]:
            consumed = i
            break
        tagged = frame[12:14] == b"\x81\x00"
        mss = case["mss"][i] if case["tsolen"] and case["ext"] else 0
        limit = max(case["mtu"], case["tsolen"]) if mss else case["mtu"]
        if not 14 <= len(frame) <= limit or len(frame) + 6 > slot or (tagged and not case["allow_tags"]):
            refused += 1
            continue
        index = (case["prod"] + len(queued)) % count
        if case["states"][index] != FREE:
            consumed = i
            break
        queued.append((frame, mss))
    assert (result.queued, result.refused, result.consumed) == (len(queued), refused, consumed)
    assert result.bytes == sum(len(frame) for frame, _ in queued)
    event(f"queued: {min(len(queued), 2)}, refused: {min(refused, 1)} (0..2, 0/1)")
    assert ring[count * desc_size :] == b"\xee" * guard and buffers[count * slot :] == b"\xee" * guard
    touched = set()
    for n, (frame, mss) in enumerate(queued):
        index = (case["prod"] + n) % count
        touched.add(index)
        assert buffers[index * slot + 6 : index * slot + 6 + len(frame)] == frame
        desc = struct.pack(">IIQQ", len(frame), 1, cookies[index], _round8(len(frame) + 6))
        if case["ext"]:  # an empty second cookie slot, then the extension
            desc += bytes(16) + _EXT.pack(LSO if mss else 0, 0, mss, 0)
        ack = (case["pending"] + n) % 32 == 31
        if n == 0:  # left for the session to queue (it kicks the peer)
            assert bytes(result.first_desc)[: result.first_len] == desc and bool(result.first_ack) == ack
            assert ring[index * desc_size : (index + 1) * desc_size] == before_ring[index * desc_size : (index + 1) * desc_size]
        else:
            entry = ring[index * desc_size : index * desc_size + 8 + len(desc)]
            assert entry == bytes([READY, int(ack)]) + bytes(6) + desc
    for index in set(range(count)) - touched:
        assert ring[index * desc_size : (index + 1) * desc_size] == before_ring[index * desc_size : (index + 1) * desc_size]


def test_tx_with_a_broken_ring_geometry_queues_nothing() -> None:
    ring, buffers = bytearray(64), bytearray(64)
    keep = (ffi.from_buffer("uint8_t[]", ring), ffi.from_buffer("uint8_t[]", buffers), ffi.new("uint64_t[]", 4))
    result = ffi.new("struct vnet_tx_result *")
    batch = FrameBatch.of([bytes(60)])
    for geometry in ({"count": 4, "desc_size": 64}, {"count": 2, "desc_size": 16}, {"count": 0, "desc_size": 32}):
        tx = ffi.new("struct vnet_tx_ring *", {"ring": keep[0], "ring_size": 64, "buffers": keep[1], "buffers_size": 64,
                                               "slot_size": 16, "slot_cookies": keep[2], "link": _link(1514)[0], "ack_every": 32,
                                               **geometry})
        lib.vnet_tx(tx, 0, 4, 0, batch.struct, ffi.NULL, ffi.NULL, 0, result)
        assert result.queued == 0 and ring == bytearray(64) and buffers == bytearray(64)
