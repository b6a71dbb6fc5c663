"""The guest's serial console: a line log we search for markers, and a shell we can type into.

ConsoleLog is the sans-I/O part (bytes in, lines kept, patterns matched after a cursor so
an old line never satisfies a new wait). Console reads QEMU's stdout into it on asyncio.
"""

from __future__ import annotations

import asyncio
import re

from .errors import GuestTimeoutError, QemuError
from .machine import encode_command

TAIL_LINES = 25


class ConsoleLog:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self._partial = b""
        self.cursor = 0          # lines before it are already consumed by a wait
        self.closed = False

    def feed(self, data: bytes) -> None:
        self._partial += data
        *complete, self._partial = self._partial.split(b"\n")
        self.lines += [line.decode(errors="replace").rstrip("\r") for line in complete]

    def close(self) -> None:
        if self._partial:
            self.lines.append(self._partial.decode(errors="replace").rstrip("\r"))
            self._partial = b""
        self.closed = True

    def search(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        """First match at or after the cursor; the cursor moves past the matching line."""
        for index in range(self.cursor, len(self.lines)):
            match = pattern.search(self.lines[index])
            if match:
                self.cursor = index + 1
                return match
        return None

    def tail(self, count: int = TAIL_LINES) -> str:
        return "\n".join(self.lines[-count:])


class Console:
    """Reads a QEMU serial console (its stdout) and writes to it (its stdin)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None, name: str) -> None:
        self.log = ConsoleLog()
        self.name = name
        self._writer = writer
        self._changed = asyncio.Condition()
        self._commands = 0
        self._task = asyncio.create_task(self._pump(reader))

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(4096):
            async with self._changed:
                self.log.feed(data)
                self._changed.notify_all()
        async with self._changed:
            self.log.close()
            self._changed.notify_all()

    async def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait for a console line matching `pattern` (a regex); errors show the console tail."""
        regex = re.compile(pattern)

        async def found() -> re.Match[str]:
            async with self._changed:
                while (match := self.log.search(regex)) is None:
                    if self.log.closed:
                        raise QemuError(f"{self.name}: console closed (QEMU exited) before {pattern!r}; "
                                        f"last lines:\n{self.log.tail()}")
                    await self._changed.wait()
                return match

        try:
            return await asyncio.wait_for(found(), timeout)
        except asyncio.TimeoutError:
            raise GuestTimeoutError(f"{self.name}: no {pattern!r} on the console within {timeout:.0f} s; "
                                    f"last lines:\n{self.log.tail()}") from None

    async def type(self, text: str) -> None:
        """Send keystrokes to the guest's console."""
        if self._writer is None:
            raise QemuError(f"{self.name}: the console is read-only")
        self._writer.write(text.encode())
        await self._writer.drain()

    async def run(self, script: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run a shell script in the guest's console shell; return its exit code and output.

        The script travels base64-encoded (no quoting trouble); the markers are split in
        the typed line so the tty's echo of it (wrapped at 80 columns) never matches."""
        self._commands += 1
        number = self._commands
        await self.type(f'echo "CONSOLE-RUN-""BEGIN {number}"; echo {encode_command(script)} | base64 -d > '
                        f'/tmp/run.sh; sh /tmp/run.sh; echo "CONSOLE-RUN-""END {number} $?"\n')
        await self.expect(rf"^CONSOLE-RUN-BEGIN {number}$", timeout)
        start = self.log.cursor
        match = await self.expect(rf"CONSOLE-RUN-END {number} (\d+)$", timeout)
        end = self.log.cursor - 1
        output = self.log.lines[start:end] + [self.log.lines[end][:match.start()]]
        return int(match.group(1)), "\n".join(line for line in output if line)

    async def closed(self) -> None:
        await self._task
