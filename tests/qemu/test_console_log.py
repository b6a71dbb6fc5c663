"""The console's line log: partial lines, carriage returns, cursor semantics."""

import re

from hypothesis import given, strategies as st

from backend.qemu.console import ConsoleLog


def test_lines_are_split_across_reads_and_lose_carriage_returns():
    log = ConsoleLog()
    log.feed(b"GUEST-RE")
    log.feed(b"ADY x86_64 vda\r\nnext")
    assert log.lines == ["GUEST-READY x86_64 vda"]
    log.close()
    assert log.lines[-1] == "next" and log.closed


def test_a_consumed_line_never_matches_again():
    log = ConsoleLog()
    log.feed(b"GUEST-CMD-EXIT 0\nother\nGUEST-CMD-EXIT 3\n")
    pattern = re.compile(r"GUEST-CMD-EXIT (\d+)")
    assert log.search(pattern).group(1) == "0"
    assert log.search(pattern).group(1) == "3"
    assert log.search(pattern) is None


@given(st.lists(st.binary(max_size=64), max_size=20))
def test_any_bytes_split_anywhere_give_the_same_lines(chunks):
    whole, pieces = ConsoleLog(), ConsoleLog()
    whole.feed(b"".join(chunks))
    for chunk in chunks:
        pieces.feed(chunk)
    assert whole.lines == pieces.lines
