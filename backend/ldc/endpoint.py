"""The user's side of an LDC channel end, whatever transport carries its packets.

Every transport (a Unix socket in aio.py, virtqueue buffers in
backend/vhost/devices/ldc_endpoint.py) offers the VIO, vDisk, vSwitch and DS
code the same API: open, send and receive messages (or a listener), link
events, back-pressure, close. `ChannelEndpoint` is that API once; a subclass
only says how records are encoded, where they go, and what it releases when
the end closes.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Protocol

from ..errors import LinkDownError
from .channel import (
    RESET,
    Channel,
    LinkReset,
    LinkUp,
    MessageReceived,
    ProtocolViolation,
)
from .raw import RawChannel

log = logging.getLogger(__name__)

HIGH_WATER = 256 * 1024  # record bytes waiting for the transport before send_message() waits


class Listener(Protocol):
    """Who takes an endpoint's link events and messages when not read with receive_message()."""

    def ldc_up(self) -> None: ...
    def ldc_reset(self, reason: str) -> None: ...
    def ldc_message(self, data: bytes) -> None: ...


class ChannelEndpoint(ABC):
    """One end of an LDC channel: the channel state machine and its user, over a transport."""

    def __init__(self, channel: Channel | RawChannel) -> None:
        self.channel = channel
        if isinstance(channel, Channel):
            channel.set_on_reset(self._revoke_exports)  # no cookie outlives its session
        self.closed = False
        self.closed_event = asyncio.Event()
        self.last_reset: str | None = None
        self._listener: Listener | None = None
        self._messages: asyncio.Queue[bytes | LinkReset] = asyncio.Queue()
        self._up = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    # ---- what the transport supplies -----------------------------------------------

    @property
    @abstractmethod
    def backlog(self) -> int:
        """Record bytes handed to the transport and not yet sent."""

    @abstractmethod
    def _encode_packets(self, packets: list[bytes]) -> list[bytes]:
        """Records carrying these packets, in order."""

    @abstractmethod
    def _encode_reset(self) -> bytes:
        """The record that tells the peer we reset the channel."""

    @abstractmethod
    def _transmit(self, records: list[bytes]) -> None:
        """Send these records (possibly none) to the peer."""

    @abstractmethod
    def _revoke_exports(self) -> None:
        """The link reset: every export of the session is void."""

    @abstractmethod
    def _release(self) -> None:
        """The end is closed: give back what the transport holds (socket, memory)."""

    # ---- the user's side -----------------------------------------------------------

    async def open(self, timeout: float | None = 10.0) -> tuple[int, int]:
        """Bring the link up; returns the negotiated LDC version."""
        self.channel.open()
        self.flush()
        await asyncio.wait_for(self._up.wait(), timeout)
        return getattr(self.channel, "version", None) or (1, 0)

    def set_listener(self, listener: Listener) -> None:
        """Hand link events and messages to `listener` instead of receive_message()."""
        self._listener = listener

    async def send_message(self, data: bytes | bytearray | memoryview) -> None:
        """Send one message; waits while too much is queued for the transport."""
        await self.send_messages((data,))

    async def send_messages(self, messages: Iterable[bytes | bytearray | memoryview]) -> None:
        """Send several messages with as few records as batching allows."""
        if self.closed:
            raise LinkDownError(f"channel closed: {self.last_reset}")
        for data in messages:
            self.channel.send(data)
        self.flush()
        while not self.closed and (self.backlog > HIGH_WATER or self._held_back()):
            self._writable.clear()
            await self._writable.wait()

    def _held_back(self) -> bool:
        """Whether a reliable-mode window is holding our data back."""
        return isinstance(self.channel, Channel) and self.channel.pending_send > 0

    async def receive_message(self) -> bytes:
        """The next message; raises LinkDownError when the link resets first."""
        item = await self._messages.get()
        if isinstance(item, LinkReset):
            raise LinkDownError(f"LDC link reset: {item.reason}")
        return item

    def flush(self) -> None:
        """Channel output into records for the transport (packets batched, resets in order)."""
        encoded: list[bytes] = []
        batch: list[bytes] = []
        for item in self.channel.take_output():
            if item is RESET:
                if batch:
                    encoded += self._encode_packets(batch)
                    batch = []
                encoded.append(self._encode_reset())
            else:
                batch.append(item)  # type: ignore[arg-type]
        if batch:
            encoded += self._encode_packets(batch)
        self._transmit(encoded)

    def close(self) -> None:
        if not self.closed:
            self.channel.close()
            self.flush()
            self.shut_down("closed locally")

    # ---- the transport's side --------------------------------------------------------

    def _dispatch_events(self) -> None:
        """Hand the channel's events to the listener, or queue them for receive_message()."""
        listener = self._listener
        for event in self.channel.take_events():
            if isinstance(event, MessageReceived):
                if listener is not None:
                    listener.ldc_message(event.data)
                else:
                    self._messages.put_nowait(event.data)
            elif isinstance(event, LinkUp):
                self._up.set()
                if listener is not None:
                    listener.ldc_up()
            elif isinstance(event, LinkReset):
                self._up.clear()
                self.last_reset = event.reason
                log.info("LDC link reset (%s): %s", "by peer" if event.by_peer else "locally", event.reason)
                if listener is not None:
                    listener.ldc_reset(event.reason)
                else:
                    self._messages.put_nowait(event)
            elif isinstance(event, ProtocolViolation):
                log.warning("LDC protocol violation by the peer: %s", event.reason)

    def shut_down(self, reason: str) -> None:
        """The end is closed for good: senders and receivers wake and see the link down."""
        if self.closed:
            return
        self.closed = True
        self.last_reset = self.last_reset or reason
        self._release()
        self.closed_event.set()
        self._writable.set()
        self._messages.put_nowait(LinkReset(reason, by_peer=False))
