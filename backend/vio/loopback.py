"""A VIO session over an LDC channel, and two such ends wired in one process.

`Stack` is the sans-I/O glue between the layers: LDC events drive the
session (link up/down, messages in) and session output becomes LDC
messages. `pump` shuttles two stacks' packets until both are quiet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ldc.channel import Channel, LinkReset, LinkUp, MessageReceived
from ..ldc.constants import Mode
from ..ldc.loopback import LocalMemory, deliver
from .device import Device
from .session import Session


@dataclass
class Stack:
    """One end: LDC channel, its memory, and the VIO session on top."""

    channel: Channel
    memory: LocalMemory
    session: Session
    ldc_events: list = field(default_factory=list)

    def step(self) -> None:
        """Feed LDC events to the session and session output to LDC."""
        for event in self.channel.take_events():
            self.ldc_events.append(event)
            if isinstance(event, LinkUp):
                self.session.link_up()
            elif isinstance(event, LinkReset):
                self.session.link_down(event.reason)
            elif isinstance(event, MessageReceived):
                self.session.receive(event.data)
        if self.session.has_pending_work:
            self.session.resume()
        for message in self.session.take_output():
            if self.channel.is_up:
                self.channel.send(message)


def make_pair(a: Device, b: Device, *, sids: tuple[int, int] | None = None) -> tuple[Stack, Stack]:
    """Two stacks over one in-process LDC link, memories linked, links not yet open."""
    memories = LocalMemory(), LocalMemory()
    LocalMemory.link(*memories)
    stacks = []
    for index, (device, memory) in enumerate(zip((a, b), memories, strict=True)):
        source = None
        if sids is not None:
            counter = iter(range(sids[index], sids[index] + 1_000_000))
            source = counter.__next__
        stacks.append(Stack(Channel(Mode.UNRELIABLE), memory, Session(device, memory, sid_source=source)))
    return stacks[0], stacks[1]


def pump(a: Stack, b: Stack, *, max_rounds: int = 100_000) -> None:
    """Run both stacks until neither has anything left to say."""
    for _ in range(max_rounds):
        a.step()
        b.step()
        out_a, out_b = a.channel.take_output(), b.channel.take_output()
        busy = a.session.has_pending_work or b.session.has_pending_work
        if not out_a and not out_b and not a.session._output and not b.session._output and not busy:
            return
        deliver(out_a, b.channel)
        deliver(out_b, a.channel)
    raise RuntimeError(f"VIO stacks still talking after {max_rounds} rounds")


def connect(a: Stack, b: Stack) -> None:
    """Open both LDC ends and run until quiet (the VIO handshake runs on link up)."""
    a.channel.open()
    b.channel.open()
    pump(a, b)
