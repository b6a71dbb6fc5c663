"""Two channel ends wired together in one process (tests, demos, fuzzing)."""

from __future__ import annotations

from typing import Protocol

from .channel import RESET, Event, Output


class Endpoint(Protocol):
    def take_output(self) -> list[Output]: ...
    def take_events(self) -> list[Event]: ...
    def receive(self, data: bytes) -> None: ...
    def peer_reset(self, reason: str = ...) -> None: ...


def deliver(outputs: list[Output], to: Endpoint) -> None:
    """Hand one end's output to the other: packets in batches, resets in order."""
    batch: list[bytes] = []
    for item in outputs:
        if item is RESET:
            if batch:
                to.receive(b"".join(batch))
                batch = []
            to.peer_reset()
        else:
            batch.append(item)  # type: ignore[arg-type]
    if batch:
        to.receive(b"".join(batch))


def pump(a: Endpoint, b: Endpoint, *, max_rounds: int = 10_000) -> None:
    """Shuttle output between `a` and `b` until neither has anything to say."""
    for _ in range(max_rounds):
        out_a, out_b = a.take_output(), b.take_output()
        if not out_a and not out_b:
            return
        deliver(out_a, b)
        deliver(out_b, a)
    raise RuntimeError(f"channels still talking after {max_rounds} rounds (livelock?)")
