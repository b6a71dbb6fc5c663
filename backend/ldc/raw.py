"""RAW-mode channels: no header, no handshake, one 64-byte message per packet."""

from __future__ import annotations

from .channel import RESET, LinkReset, LinkUp, MessageReceived, Outbox
from .constants import PACKET_SIZE, Mode
from ..errors import LinkDownError


class RawChannel(Outbox):
    """Up as soon as the transport is; every packet is a 64-byte message.

    RAW mode has no link protocol at all (the console uses it), so the
    only state is whether the transport connected us.
    """

    mode = Mode.RAW

    def __init__(self) -> None:
        super().__init__()
        self.is_up = False

    def open(self) -> None:
        if not self.is_up:
            self.is_up = True
            self._events.append(LinkUp((1, 0), Mode.RAW))

    def close(self) -> None:
        if self.is_up:
            self.is_up = False
            self._output.append(RESET)
            self._events.append(LinkReset("closed locally", by_peer=False))

    def send(self, message: bytes | bytearray | memoryview) -> None:
        if not self.is_up:
            raise LinkDownError("cannot send: RAW channel is down")
        if len(message) != PACKET_SIZE:
            raise ValueError(f"RAW messages are exactly {PACKET_SIZE} bytes, got {len(message)}")
        self._output.append(bytes(message))

    def receive(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if len(view) % PACKET_SIZE:
            raise ValueError(f"transport delivered {len(view)} bytes, not whole {PACKET_SIZE}-byte packets")
        for offset in range(0, len(view), PACKET_SIZE):
            self._events.append(MessageReceived(bytes(view[offset : offset + PACKET_SIZE])))

    def peer_reset(self, reason: str = "peer reset the channel") -> None:
        if self.is_up:
            self.is_up = False
            self._events.append(LinkReset(reason, by_peer=True))

    def transport_error(self, reason: str) -> None:
        """Malformed input from the peer: RAW mode can only drop the link."""
        self.close()

