"""The C one's-complement sum (backend/native/csum.c) against the arithmetic definition."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from backend.vswitch.offload import checksum, ones_sum


def model(data: bytes) -> int:
    """2**16 is 1 modulo 0xFFFF: the sum of the big-endian words is the number modulo 0xFFFF,
    except that a nonzero sum that is a multiple of 0xFFFF is written 0xFFFF."""
    if len(data) % 2:
        data += b"\0"
    total = int.from_bytes(data, "big") % 0xFFFF
    return 0xFFFF if total == 0 and any(data) else total


@given(st.binary(max_size=3000), st.integers(0, 7))
def test_ones_sum_is_the_sum_of_big_endian_words_at_any_length_and_alignment(data: bytes, skip: int) -> None:
    view = memoryview(data)[min(skip, len(data)) :]  # starts at any byte, as csum_start does
    assert ones_sum(view) == model(bytes(view))


def test_edges_and_a_known_header() -> None:
    assert ones_sum(b"") == 0 and ones_sum(bytes(64)) == 0
    assert ones_sum(b"\xff\xff" * 3) == 0xFFFF and ones_sum(b"\x00\x01" * 0xFFFF) == 0xFFFF
    assert ones_sum(b"\xab") == 0xAB00
    assert ones_sum(b"\xff" * 65536) == 0xFFFF
    # An IPv4 header whose checksum field is right sums to 0xFFFF (its checksum is 0).
    header = bytes.fromhex("4500007300004000" "4011" "b861" "c0a80001c0a800c7")
    assert checksum(header) == 0
