"""Small helpers shared by the LDC tests."""

from __future__ import annotations

from backend.ldc import Channel, LinkUp, MessageReceived, Mode
from backend.ldc.loopback import pump


def up_pair(mode: Mode = Mode.UNRELIABLE, **kwargs) -> tuple[Channel, Channel]:
    """Two channel ends with the link up and their events drained."""
    a, b = Channel(mode, **kwargs), Channel(mode, **kwargs)
    a.open()
    b.open()
    pump(a, b)
    assert a.is_up and b.is_up
    assert any(isinstance(e, LinkUp) for e in a.take_events())
    assert any(isinstance(e, LinkUp) for e in b.take_events())
    return a, b


def messages(channel: Channel) -> list[bytes]:
    return [e.data for e in channel.take_events() if isinstance(e, MessageReceived)]
