"""asyncio edge: a VIO session over an LdcEndpoint (Unix-socket LDC transport)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..ldc.aio import LdcEndpoint
from .device import Device
from .dring import OwnedRing
from .session import Established, HandshakeFailed, Rejected, Session, SessionReset

log = logging.getLogger(__name__)


class VioEndpoint:
    """Runs a Session on an LdcEndpoint: LDC events in, VIO messages out."""

    def __init__(self, ldc: LdcEndpoint, device: Device, *, sid_source: Callable[[], int] | None = None) -> None:
        self.ldc = ldc
        self.session = Session(device, ldc, sid_source=sid_source)
        self.established = asyncio.Event()
        self.failure: str | None = None
        self._resume_scheduled = False
        self._pump_scheduled = False
        ldc.set_listener(self)

    async def open(self, timeout: float | None = 10.0) -> tuple[int, int]:
        """Bring up the LDC link and wait for the VIO handshake to complete."""
        await self.ldc.open(timeout)
        await asyncio.wait_for(self.established.wait(), timeout)
        assert self.session.version is not None
        return self.session.version

    def submit(self, ring: OwnedRing, payload: bytes, *, ack: bool | None = None) -> int:
        index = self.session.submit(ring, payload, ack=ack)
        self.pump()
        return index

    def complete(self, ring: int, index: int, payload: bytes | None) -> None:
        self.session.complete(ring, index, payload)
        self.pump()

    def pump_soon(self) -> None:
        """Pump once at the end of this loop iteration: requests made together
        leave together (one record, one wakeup of the peer)."""
        if not self._pump_scheduled:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_pump)

    def _scheduled_pump(self) -> None:
        self._pump_scheduled = False
        self.pump()

    def pump(self) -> None:
        """Send what the session queued; handle what it reported."""
        self._transfer()
        self.ldc.flush()

    def _transfer(self) -> None:
        """Session output into the LDC channel (the LdcEndpoint writes it to the
        socket after the messages of this read are handled, in one go)."""
        channel = self.ldc.channel
        for message in self.session.take_output():
            if channel.is_up:
                channel.send(message)
        for event in self.session.take_events():
            if isinstance(event, Established):
                self.established.set()
            elif isinstance(event, SessionReset):
                self.established.clear()
                log.info("VIO session reset: %s", event.reason)
            elif isinstance(event, HandshakeFailed):
                self.failure = event.reason
                log.warning("VIO handshake failed: %s", event.reason)
            elif isinstance(event, Rejected):
                log.warning("VIO: %s", event.reason)
        if self.session.has_pending_work and not self._resume_scheduled:
            self._resume_scheduled = True
            asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self) -> None:
        self._resume_scheduled = False
        self.session.resume()
        self.pump()

    # ---- LdcEndpoint listener -------------------------------------------------------

    def ldc_up(self) -> None:
        self.session.link_up()
        self._transfer()

    def ldc_reset(self, reason: str) -> None:
        self.session.link_down(reason)
        self._transfer()

    def ldc_message(self, data: bytes) -> None:
        try:
            self.session.receive(data)
        except Exception:  # a device bug must not take the event loop (or other channels) down
            log.exception("VIO device failed on a message; resetting the session")
            self.session.restart()
        self._transfer()
