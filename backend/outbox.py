"""The output side every sans-I/O protocol core here shares."""

from __future__ import annotations

from typing import Generic, TypeVar

O = TypeVar("O")  # noqa: E741 - what goes to the wire
E = TypeVar("E")  # what happened, for the user


class Outbox(Generic[O, E]):
    """What a protocol core has for the outside: output for the wire, events for the user.

    The I/O edge drains both after feeding the core; nothing is sent or
    reported behind its back.
    """

    def __init__(self) -> None:
        self._output: list[O] = []
        self._events: list[E] = []

    def take_output(self) -> list[O]:
        out, self._output = self._output, []
        return out

    def take_events(self) -> list[E]:
        events, self._events = self._events, []
        return events
