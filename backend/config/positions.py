"""Where every key of a TOML document sits (line and column), for error messages.

tomllib gives values but no positions, so this scanner walks the same text a
second time, after tomllib has accepted it, and records the position of every
key path: ``("disk", 1, "path")`` is the ``path`` key of the second
``[[disk]]`` table; ``("switch", 0, "vlans", 2)`` the third element of an
array. A table header's own path maps to the header.

The scanner follows TOML's structure only as far as positions need it:
headers, (dotted, quoted) keys, and values it must step over without being
fooled (strings of all four kinds, nested arrays and inline tables, comments).
It never raises on odd input; it records what it could.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

Path = tuple[str | int, ...]

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SCALAR_END = frozenset(",]}#\n\r")


class Positions:
    """Key path -> (line, column), both 1-based."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._line_starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        self._found: dict[Path, int] = {}
        try:
            _Scanner(text, self._found).document()
        except _Stop:
            pass

    def line(self, path: Path) -> int:
        """Line of `path`, else of its nearest recorded ancestor, else 1."""
        return self.locate(path)[0]

    def locate(self, path: Path) -> tuple[int, int]:
        for end in range(len(path), 0, -1):
            offset = self._found.get(path[:end])
            if offset is not None:
                return self._line_col(offset)
        return 1, 1

    def __contains__(self, path: Path) -> bool:
        return path in self._found

    def paths(self) -> Iterator[Path]:
        return iter(self._found)

    def _line_col(self, offset: int) -> tuple[int, int]:
        index = bisect.bisect_right(self._line_starts, offset) - 1
        return index + 1, offset - self._line_starts[index] + 1


class _Stop(Exception):
    """The text ended (or stopped making sense) where the scanner needed more."""


class _Scanner:
    def __init__(self, text: str, found: dict[Path, int]) -> None:
        self.text = text
        self.i = 0
        self.found = found
        self.table: Path = ()
        #: Array-of-tables paths (resolved) -> index of their latest element.
        self.aot: dict[Path, int] = {}

    # -- top level -----------------------------------------------------------

    def document(self) -> None:
        while True:
            self.skip_blank_lines()
            if self.i >= len(self.text):
                return
            if self.peek() == "[":
                self.header()
            else:
                start = self.i
                key = self.key()
                self.record(self.table + key, start)
                self.expect("=")
                self.value(self.table + key)
            self.skip_to_line_end()

    def header(self) -> None:
        start = self.i
        array = self.text.startswith("[[", self.i)
        self.i += 2 if array else 1
        parts = self.key()
        # The last part of [[a.b]] names the array itself, not its latest element.
        key = self.resolve(parts[:-1]) + parts[-1:] if array else self.resolve(parts)
        if array:
            self.record(key, start)  # the array itself sits at its first element
            index = self.aot.get(key, -1) + 1
            self.aot[key] = index
            # Tables nested under the previous element are not under this one.
            for stale in [p for p in self.aot if len(p) > len(key) and p[: len(key)] == key]:
                del self.aot[stale]
            key = key + (index,)
        self.record(key, start)
        self.table = key
        self.i = self.text.find("\n", self.i)
        if self.i < 0:
            self.i = len(self.text)

    def resolve(self, key: Path) -> Path:
        """Insert the current index after every array-of-tables prefix of `key`."""
        out: Path = ()
        for part in key:
            out = out + (part,)
            if out in self.aot:
                out = out + (self.aot[out],)
        return out

    # -- keys and values -----------------------------------------------------

    def key(self) -> Path:
        parts: list[str] = []
        while True:
            self.skip_spaces()
            c = self.peek()
            if c in "\"'":
                parts.append(self.string())
            else:
                start = self.i
                while self.i < len(self.text) and self.text[self.i] in _BARE:
                    self.i += 1
                if self.i == start:
                    raise _Stop
                parts.append(self.text[start : self.i])
            self.skip_spaces()
            if self.peek() != ".":
                return tuple(parts)
            self.i += 1

    def value(self, path: Path) -> None:
        self.skip_spaces()
        c = self.peek()
        if c == "{":
            self.i += 1
            while True:
                self.skip_spaces()
                if self.peek() == "}":
                    self.i += 1
                    return
                start = self.i
                key = self.key()
                self.record(path + key, start)
                self.expect("=")
                self.value(path + key)
                self.skip_spaces()
                if self.peek() == ",":
                    self.i += 1
        elif c == "[":
            self.i += 1
            index = 0
            while True:
                self.skip_blank_lines()
                if self.peek() == "]":
                    self.i += 1
                    return
                self.record(path + (index,), self.i)
                self.value(path + (index,))
                index += 1
                self.skip_blank_lines()
                if self.peek() == ",":
                    self.i += 1
        elif c in "\"'":
            self.string()
        else:
            start = self.i
            while self.i < len(self.text) and self.text[self.i] not in _SCALAR_END:
                self.i += 1
            if self.i == start:
                raise _Stop

    def string(self) -> str:
        """Step over a string of any kind; returns its raw contents (enough for keys)."""
        quote = self.peek()
        if self.text.startswith(quote * 3, self.i):
            end = self.text.find(quote * 3, self.i + 3)
            while quote == '"' and end > 0 and _escaped(self.text, end):
                end = self.text.find(quote * 3, end + 1)
            if end < 0:
                raise _Stop
            while self.text.startswith(quote, end + 3):  # up to two quotes may end the contents
                end += 1
            body, self.i = self.text[self.i + 3 : end], end + 3
            return body
        end = self.text.find(quote, self.i + 1)
        while quote == '"' and end > 0 and _escaped(self.text, end):
            end = self.text.find(quote, end + 1)
        if end < 0:
            raise _Stop
        body, self.i = self.text[self.i + 1 : end], end + 1
        return _unescape(body) if quote == '"' else body

    # -- whitespace and the rest -----------------------------------------------

    def record(self, path: Path, offset: int) -> None:
        self.found.setdefault(path, offset)

    def peek(self) -> str:
        if self.i >= len(self.text):
            raise _Stop
        return self.text[self.i]

    def expect(self, char: str) -> None:
        self.skip_spaces()
        if self.peek() != char:
            raise _Stop
        self.i += 1

    def skip_spaces(self) -> None:
        while self.i < len(self.text) and self.text[self.i] in " \t":
            self.i += 1

    def skip_blank_lines(self) -> None:
        while self.i < len(self.text):
            c = self.text[self.i]
            if c in " \t\r\n":
                self.i += 1
            elif c == "#":
                self.skip_to_line_end()
            else:
                return

    def skip_to_line_end(self) -> None:
        end = self.text.find("\n", self.i)
        self.i = len(self.text) if end < 0 else end + 1


_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", "e": "\x1b", '"': '"', "\\": "\\"}


def _unescape(body: str) -> str:
    """The value of a basic string's contents (TOML escapes), so quoted keys match tomllib's."""
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c != "\\" or i + 1 >= len(body):
            out.append(c)
            i += 1
            continue
        code = body[i + 1]
        width = {"u": 4, "U": 8}.get(code)
        if width:
            try:
                out.append(chr(int(body[i + 2 : i + 2 + width], 16)))
            except ValueError:
                raise _Stop from None
            i += 2 + width
        else:
            out.append(_ESCAPES.get(code, code))
            i += 2
    return "".join(out)


def _escaped(text: str, index: int) -> bool:
    """Whether the character at `index` follows an odd number of backslashes."""
    count = 0
    while index - count - 1 >= 0 and text[index - count - 1] == "\\":
        count += 1
    return count % 2 == 1
