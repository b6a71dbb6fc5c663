"""Cookie resolution in C (backend/native/ldc.c) against PeerMemory.resolve, with hostile tables and cookies.

The C side must accept exactly what the Python importer accepts and reach
exactly the same bytes: every entry, segment number, offset and size comes
from memory the peer controls.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.ldc.memory import PERM_RW, CookieError, MapTable, PeerMemory, Perm, Segment, TransportCookie
from backend.native import native

PAGE = 8192
ENTRIES = 64
SEGMENT_PAGES = {1: 16, 2: 8}  # segment 3 is named by entries but never shared


def _pieces(ffi, views_or_iov) -> list[tuple[int, int]]:
    """(address, length) runs, adjacent runs merged."""
    runs: list[list[int]] = []
    for address, length in views_or_iov:
        if runs and runs[-1][0] + runs[-1][1] == address:
            runs[-1][1] += length
        else:
            runs.append([address, length])
    return [(a, n) for a, n in runs]


def _c_resolve(peer: PeerMemory, cookies: list[TransportCookie], length: int, need: int, max_iov: int = 4096):
    ffi, lib = native()
    array = ffi.new("struct ldc_cookie[]", max(1, len(cookies)))
    for slot, cookie in zip(array, cookies):
        slot.addr, slot.size = cookie
    iov = ffi.new("struct iovec[]", max_iov)
    n = lib.ldc_resolve(peer.native_view(), array, len(cookies), length, need, iov, max_iov)
    if n < 0:
        return None
    return _pieces(ffi, [(int(ffi.cast("uintptr_t", iov[i].iov_base)), iov[i].iov_len) for i in range(n)])


def _py_resolve(peer: PeerMemory, cookies: list[TransportCookie], length: int, need: int):
    ffi, _ = native()
    try:
        views = peer.resolve(cookies, 0, length, need)
    except CookieError:
        return None
    return _pieces(ffi, [(int(ffi.cast("uintptr_t", ffi.from_buffer(v))), len(v)) for v in views if len(v)])


def _memory(entries: list[int]) -> PeerMemory:
    table = bytearray(ENTRIES * 8)
    for index, entry in enumerate(entries[:ENTRIES]):
        table[index * 8 : index * 8 + 8] = entry.to_bytes(8, "big")
    segments = {sid: memoryview(bytearray(pages * PAGE)) for sid, pages in SEGMENT_PAGES.items()}
    return PeerMemory(table, segments)


# An entry: mostly well-formed (a page of segment 1, 2 or the missing 3, any permissions and
# page-size code), sometimes any 64 bits at all.
_ENTRY = st.one_of(
    st.builds(
        lambda segment, page, perms, code: (segment << 36) | (page << 13) | perms | code,
        st.integers(1, 3), st.integers(0, 20), st.integers(0, 0x7F).map(lambda p: p << 4), st.integers(0, 4),
    ),
    st.integers(0, (1 << 64) - 1),
)
_COOKIE = st.builds(
    lambda code, index, offset, size: TransportCookie((code << 60) | (index << (13 + 3 * min(code, 3))) | offset, size),
    st.integers(0, 5), st.integers(0, ENTRIES + 2), st.integers(0, 2 * PAGE), st.integers(0, 6 * PAGE),
)


@settings(max_examples=600, deadline=None)
@given(
    entries=st.lists(_ENTRY, max_size=ENTRIES),
    cookies=st.lists(_COOKIE, max_size=5),
    length=st.integers(0, 8 * PAGE),
    need=st.sampled_from([int(Perm.READ), int(Perm.READ | Perm.WRITE), int(Perm.COPY_READ), int(Perm.WRITE)]),
)
def test_c_resolves_exactly_what_python_resolves(entries, cookies, length, need) -> None:
    peer = _memory(entries)
    assert _c_resolve(peer, cookies, length, need) == _py_resolve(peer, cookies, length, need)


@settings(max_examples=200, deadline=None)
@given(cookies=st.lists(st.tuples(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1)), max_size=4),
       length=st.integers(0, (1 << 64) - 1))
def test_any_cookie_bits_and_lengths(cookies, length) -> None:
    peer = _memory([(1 << 36) | (i << 13) | PERM_RW for i in range(16)])
    cookies = [TransportCookie(*c) for c in cookies]
    assert _c_resolve(peer, cookies, length, int(Perm.READ)) == _py_resolve(peer, cookies, length, int(Perm.READ))


def test_real_exports_resolve_to_the_segment_bytes() -> None:
    table_buffer = bytearray(ENTRIES * 8)
    table = MapTable(table_buffer)
    segment = Segment(1, bytearray(16 * PAGE))
    table.add_segment(segment)
    peer = PeerMemory(table_buffer, {1: segment.view})
    for offset, length, code in [(0, 4096, 0), (100, 3 * PAGE, 0), (0, 2 * 65536, 1), (5000, 65536, 1)]:
        export = table.export(segment, offset, length, PERM_RW, code)
        ffi, _ = native()
        base = int(ffi.cast("uintptr_t", ffi.from_buffer(segment.view)))
        assert _c_resolve(peer, list(export.cookies), length, int(Perm.READ | Perm.WRITE)) == [(base + offset, length)]
        table.unmap(export)
        assert _c_resolve(peer, list(export.cookies), length, int(Perm.READ)) is None  # revoked at once


def test_too_many_pieces_is_refused() -> None:
    # Every other page: nothing merges, so 4 pages need 4 iovecs.
    peer = _memory([(1 << 36) | (2 * i << 13) | PERM_RW for i in range(8)])
    cookies = [TransportCookie(0, 4 * PAGE)]
    assert _c_resolve(peer, cookies, 4 * PAGE, int(Perm.READ), max_iov=4) is not None
    assert _c_resolve(peer, cookies, 4 * PAGE, int(Perm.READ), max_iov=3) is None


def test_revoked_memory_has_no_native_view() -> None:
    peer = _memory([])
    assert peer.native_view() is not None
    peer.revoke()
    assert peer.native_view() is None


@pytest.mark.parametrize("segments", [0, 1, 5])
def test_native_view_follows_newly_shared_segments(segments: int) -> None:
    shared: dict[int, memoryview] = {}
    peer = PeerMemory(bytearray(ENTRIES * 8), shared)
    for sid in range(1, segments + 1):
        shared[sid] = memoryview(bytearray(PAGE))
    view = peer.native_view()
    assert view.nsegments == segments and [view.segments[i].id for i in range(segments)] == list(range(1, segments + 1))
