"""Classic pcap files of what crosses a switch port, for tcpdump and Wireshark.

The format is libpcap's original one: a 24-byte file header (magic
0xa1b2c3d4 in our byte order, which readers use to detect it; version 2.4;
snaplen; link type 1, Ethernet) and, per frame, a 16-byte record header
(seconds, microseconds, captured length, original length) then the bytes.

`capture` hooks a writer into a switch with `Switch.add_tap`, not by wrapping
the port: the switch knows the `now` of each frame, sees frames it drops at
ingress, and the port object stays the one its owner attached.
"""

from __future__ import annotations

import os
import struct
from types import TracebackType
from typing import BinaryIO, Self

from ..errors import ConfigError
from .port import Port
from .switch import Switch

MAGIC = 0xA1B2C3D4
VERSION = (2, 4)
SNAPLEN = 65535
LINKTYPE_ETHERNET = 1

FILE_HEADER = struct.Struct("<IHHiIII")
RECORD_HEADER = struct.Struct("<IIII")


class PcapWriter:
    """Writes frames to a new pcap file (or an open binary file) as they come."""

    def __init__(self, target: str | os.PathLike[str] | BinaryIO, *, snaplen: int = SNAPLEN) -> None:
        if not 0 < snaplen <= 0x7FFFFFFF:
            raise ConfigError(f"pcap snaplen {snaplen} out of range")
        self.snaplen = snaplen
        if isinstance(target, (str, os.PathLike)):
            self._file: BinaryIO = open(target, "wb")  # noqa: SIM115 - closed by close()
            self._owned = True
        else:
            self._file = target
            self._owned = False
        self.frames = 0
        self._file.write(FILE_HEADER.pack(MAGIC, *VERSION, 0, 0, snaplen, LINKTYPE_ETHERNET))

    def write(self, frame: bytes, timestamp: float) -> None:
        """Append one frame seen at `timestamp` (seconds since the epoch)."""
        if timestamp < 0:
            raise ValueError(f"pcap timestamps cannot be negative: {timestamp}")
        micros = round(timestamp * 1_000_000)
        seconds, micros = divmod(micros, 1_000_000)
        if seconds > 0xFFFFFFFF:
            raise ValueError(f"timestamp {timestamp} does not fit a classic pcap record")
        data = bytes(frame[: self.snaplen])
        self._file.write(RECORD_HEADER.pack(seconds, micros, len(data), len(frame)) + data)
        self.frames += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self._owned:
            self._file.close()
        else:
            self._file.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Capture:
    """A running capture on one port; `close` (or leaving the `with`) stops it."""

    def __init__(self, switch: Switch, port: Port, writer: PcapWriter, *, offset: float, directions: str) -> None:
        self.switch = switch
        self.port = port
        self.writer = writer
        self.offset = offset
        self.directions = frozenset({"rx", "tx"}) if directions == "both" else frozenset({directions})
        switch.add_tap(port, self._tap)

    def _tap(self, direction: str, frame: bytes, now: float) -> None:
        if direction in self.directions:
            self.writer.write(frame, now + self.offset)

    def close(self) -> None:
        self.switch.remove_tap(self.port, self._tap)
        self.writer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def capture(
    switch: Switch,
    port: Port,
    path: str | os.PathLike[str],
    *,
    offset: float = 0.0,
    directions: str = "both",
    snaplen: int = SNAPLEN,
) -> Capture:
    """Record every frame `switch` receives from `port` and transmits through it.

    Timestamps are the `now` given to `Switch.receive`, plus `offset` (pass
    time.time() - time.monotonic() when `now` is monotonic, to get wall time).
    `directions` is "both", "rx" or "tx".
    """
    if directions not in ("both", "rx", "tx"):
        raise ConfigError(f"capture directions must be both, rx or tx, not {directions!r}")
    writer = PcapWriter(path, snaplen=snaplen)
    try:
        return Capture(switch, port, writer, offset=offset, directions=directions)
    except BaseException:
        writer.close()
        raise
