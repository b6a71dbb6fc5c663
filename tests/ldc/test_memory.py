"""Map table, cookies, and the importer's bounds and permission checks."""

from __future__ import annotations

import os

import pytest

from backend.errors import LinkDownError
from backend.ldc.memory import (
    PERM_RO,
    PERM_RW,
    CookieError,
    MapTable,
    PeerMemory,
    Perm,
    Segment,
    TransportCookie,
    make_cookie,
    split_cookie,
)

PAGE = 8192


def setup(pages: int = 64, entries: int = 256) -> tuple[MapTable, Segment, PeerMemory, bytearray]:
    table_buffer = bytearray(entries * 8)
    table = MapTable(table_buffer)
    segment = Segment(1, bytearray(pages * PAGE))
    table.add_segment(segment)
    peer = PeerMemory(table_buffer, {1: segment.view})
    return table, segment, peer, table_buffer


@pytest.mark.parametrize("code, shift", [(0, 13), (1, 16), (2, 19), (3, 22)])
def test_cookie_layout(code: int, shift: int) -> None:
    cookie = make_cookie(code, 5, 123)
    assert cookie == (code << 60) | (5 << shift) | 123
    assert split_cookie(cookie) == (code, 5, 123)


def test_export_gives_one_cookie_for_consecutive_pages() -> None:
    table, segment, peer, raw = setup()
    export = table.export(segment, PAGE + 100, 3 * PAGE, PERM_RW)
    assert len(export.cookies) == 1
    cookie = export.cookies[0]
    assert cookie.size == 3 * PAGE
    assert split_cookie(cookie.addr) == (0, export.first_index, 100)
    assert export.count == 4  # the buffer touches four pages
    entry = int.from_bytes(raw[export.first_index * 8 : export.first_index * 8 + 8], "big")
    assert entry & 0x0FFF_FFFF_FFFF_E000 == (1 << 36) | PAGE  # segment 1, page 1
    assert entry & 0x7F0 == PERM_RW and entry & 0xF == 0


@pytest.mark.parametrize("page_code", [0, 1, 2])
def test_copy_in_and_out_round_trip(page_code: int) -> None:
    table, segment, peer, _ = setup(pages=128)
    data = os.urandom(300_000)
    segment.view[5000 : 5000 + len(data)] = data
    export = table.export(segment, 5000, len(data), PERM_RW, page_code)
    got = bytearray(len(data))
    assert peer.copy_in(export.cookies, 0, got) == len(data)
    assert got == data
    part = bytearray(1000)
    peer.copy_in(export.cookies, 70_000, part)
    assert part == data[70_000:71_000]
    peer.copy_out(export.cookies, 10, b"x" * 20_000)
    assert bytes(segment.view[5010:25010]) == b"x" * 20_000
    assert bytes(segment.view[5000:5010]) == data[:10]


def test_map_gives_direct_views() -> None:
    table, segment, peer, _ = setup()
    export = table.export(segment, 0, 4 * PAGE, PERM_RW)
    (view,) = peer.map(export.cookies, 4 * PAGE, writable=True)
    view[0:4] = b"abcd"
    assert bytes(segment.view[0:4]) == b"abcd"
    (ro,) = peer.map(export.cookies, 10, writable=False)
    assert ro.readonly


def test_bounds_past_the_cookie_are_refused() -> None:
    table, segment, peer, _ = setup()
    export = table.export(segment, 0, 100, PERM_RW)
    with pytest.raises(CookieError, match="cover 100 of the 101"):
        peer.copy_in(export.cookies, 0, bytearray(101))
    with pytest.raises(CookieError):
        peer.copy_out(export.cookies, 50, b"y" * 51)


def test_forged_cookie_size_cannot_reach_unexported_pages() -> None:
    table, segment, peer, _ = setup()
    export = table.export(segment, 0, PAGE, PERM_RW)
    forged = TransportCookie(export.cookies[0].addr, 10 * PAGE)
    with pytest.raises(CookieError, match="not valid"):
        peer.copy_in([forged], 0, bytearray(2 * PAGE))


@pytest.mark.parametrize(
    "cookie, match",
    [
        (TransportCookie(make_cookie(0, 255, 0) + (1 << 13) * 10, 8), "out of range"),  # index past the table
        (TransportCookie(7 << 60, 8), "page-size code 7"),
        (TransportCookie(make_cookie(0, 17, 0), 8), "not valid"),  # never exported
    ],
)
def test_bogus_cookies(cookie: TransportCookie, match: str) -> None:
    table, segment, peer, _ = setup()
    with pytest.raises(CookieError, match=match):
        peer.copy_in([cookie], 0, bytearray(8))


def test_permissions_are_enforced() -> None:
    table, segment, peer, _ = setup()
    export = table.export(segment, 0, PAGE, PERM_RO)
    peer.copy_in(export.cookies, 0, bytearray(8))
    with pytest.raises(CookieError, match="permission"):
        peer.copy_out(export.cookies, 0, b"12345678")
    with pytest.raises(CookieError, match="permission"):
        peer.map(export.cookies, 8, writable=True)
    copy_only = table.export(segment, PAGE, PAGE, Perm.COPY_READ)
    with pytest.raises(CookieError, match="permission"):
        peer.map(copy_only.cookies, 8, writable=False)


def test_unmap_and_revoke_all_revoke_access() -> None:
    table, segment, peer, _ = setup()
    export = table.export(segment, 0, PAGE, PERM_RW)
    table.unmap(export)
    with pytest.raises(CookieError, match="revoked"):
        peer.copy_in(export.cookies, 0, bytearray(8))
    with pytest.raises(ValueError):
        table.unmap(export)
    again = table.export(segment, 0, PAGE, PERM_RW)
    table.revoke_all()
    assert table.entries_in_use == 0
    with pytest.raises(CookieError):
        peer.copy_in(again.cookies, 0, bytearray(8))
    peer.revoke()
    with pytest.raises(LinkDownError):
        peer.copy_in(again.cookies, 0, bytearray(8))


def test_table_entry_pointing_outside_shared_memory() -> None:
    table, segment, peer, raw = setup()
    # A hostile exporter writes an entry naming a page past its segment.
    raw[0:8] = ((1 << 36) | (1000 * PAGE) | int(PERM_RW)).to_bytes(8, "big")
    with pytest.raises(CookieError, match="outside shared memory"):
        peer.copy_in([TransportCookie(make_cookie(0, 0, 0), 8)], 0, bytearray(8))
    raw[0:8] = ((9 << 36) | int(PERM_RW)).to_bytes(8, "big")  # unknown segment
    with pytest.raises(CookieError, match="outside shared memory"):
        peer.copy_in([TransportCookie(make_cookie(0, 0, 0), 8)], 0, bytearray(8))


def test_table_full_and_bad_exports() -> None:
    table, segment, peer, _ = setup(pages=64, entries=4)
    table.export(segment, 0, 4 * PAGE, PERM_RW)
    with pytest.raises(MemoryError):
        table.export(segment, 0, PAGE, PERM_RW)
    with pytest.raises(ValueError):
        table.export(segment, 63 * PAGE, 2 * PAGE, PERM_RW)
    with pytest.raises(ValueError):
        table.export(segment, 0, 0, PERM_RW)
    with pytest.raises(ValueError):
        table.export(Segment(2, bytearray(PAGE)), 0, 8, PERM_RW)


def test_multiple_cookies_with_offset() -> None:
    table, segment, peer, _ = setup()
    first = table.export(segment, 0, 100, PERM_RW).cookies[0]
    second = table.export(segment, 4 * PAGE, 100, PERM_RW).cookies[0]
    segment.view[0:100] = bytes(range(100))
    segment.view[4 * PAGE : 4 * PAGE + 100] = bytes(range(100, 200))
    got = bytearray(150)
    peer.copy_in([first, second], 25, got)
    assert got == bytes(range(25, 175))


def test_unmap_after_revoke_all_is_harmless() -> None:
    table, segment, peer, _ = setup()
    old = table.export(segment, 0, PAGE, PERM_RW)
    table.revoke_all()  # a channel reset
    table.unmap(old)  # the owner cleans up afterwards: nothing to do
    new = table.export(segment, 0, PAGE, PERM_RW)
    table.unmap(old)  # must not touch the new export in the same entries
    got = bytearray(8)
    peer.copy_in(new.cookies, 0, got)
