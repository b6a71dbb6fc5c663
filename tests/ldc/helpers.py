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


def split(outputs: list) -> list:
    """take_output() items with multi-packet chunks split into single packets."""
    packets: list = []
    for item in outputs:
        if isinstance(item, bytes):
            packets.extend(item[i : i + 64] for i in range(0, len(item), 64))
        else:
            packets.append(item)
    return packets
