"""The seam between the vhost-user core and a device (blk, net, ldc).

A device says how many queues it has, which feature bits it offers, what its
config space holds, and what to do when a queue has work. It never sees a
vhost-user message, an eventfd or a socket: the core owns the conversation
(idea from rust-vmm's VhostUserBackend trait).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol, TypeVar

from .constants import ProtocolFeature
from .memory import GuestMemory
from .virtqueue import DescriptorChain

T = TypeVar("T")


class ServedQueue(Protocol):
    """What a device may do with one running queue (given by the core's I/O edge).

    `pop` works inside `handle_queue` (a turn) and also outside it, for work the
    device starts itself (a frame arriving for a receive queue): then no turn
    budget applies. A request whose addresses need an IOTLB translation is not
    taken (None); the queue gets a turn again once the front-end answered.
    """

    index: int

    def pop(self) -> DescriptorChain | None:
        """The next request, or None when the queue is empty, waits for a translation, or this
        turn's budget is spent (the core then serves the other queues and comes back)."""

    def rewind(self, count: int) -> None:
        """Give back the last `count` requests taken and not completed (e.g. a frame did not fit)."""

    def wake(self) -> None:
        """Ask for a turn (handle_queue) soon, e.g. when the device has new work for this queue."""

    def complete(self, chain: DescriptorChain, written: int) -> None:
        """Hand the chain back with `written` bytes filled in; the driver is signalled in batches."""

    def run_blocking(self, work: Callable[[], T], done: Callable[[T | BaseException], None]) -> None:
        """Run `work` off the event loop (disk I/O); `done` runs on the loop with its result or error."""

    def fail(self, reason: str) -> None:
        """The driver sent something impossible: the device needs a reset (NEEDS_RESET)."""

    def want_kicks(self) -> bool:
        """Ask the driver to kick on its next buffer (for a device that turned kicks down,
        see VirtioDevice.kicks_wanted); True if buffers arrived meanwhile: pop them."""


class VirtioDevice(ABC):
    """A virtio device served over vhost-user."""

    _config_notifier: Callable[[], bool] | None = None

    #: virtio device type (2 = block, 1 = net), for logs and the front-end
    device_type: int = 0
    num_queues: int = 1
    max_queue_size: int = 1024

    @abstractmethod
    def features(self) -> int:
        """Device feature bits; the core adds the ring features (VERSION_1, INDIRECT_DESC, EVENT_IDX)."""

    def protocol_features(self) -> ProtocolFeature:
        """Protocol features the device needs beyond the core's own (e.g. CONFIG, MQ)."""
        return ProtocolFeature(0)

    def config(self) -> bytes:
        """The whole device config space as the driver reads it."""
        return b""

    def write_config(self, offset: int, data: bytes) -> None:
        """The driver wrote `data` at `offset` (only writable fields may change)."""
        raise ValueError(f"config space at offset {offset} is read-only")

    def set_features(self, features: int) -> None:
        """The feature bits the driver accepted."""

    def memory_changed(self, memory: GuestMemory) -> None:
        """A new memory table is in place (devices holding guest addresses re-resolve them)."""

    @abstractmethod
    def handle_queue(self, queue: ServedQueue) -> None:
        """The queue was kicked (or has work left from a previous turn): take requests."""

    def kicks_wanted(self, index: int) -> bool:
        """After a turn: should the driver kick when it adds buffers to queue `index`?

        Yes by default. A device that takes buffers itself when it needs them (a
        receive queue it fills as records arrive) may say no while it holds
        enough, and call ServedQueue.want_kicks when it runs dry: every kick the
        driver does not send is a wake-up saved on both sides.
        """
        return True

    def queue_stopped(self, index: int) -> None:
        """The queue stopped (GET_VRING_BASE, reset, broken device): forget it."""

    def reset(self) -> None:
        """Back to the state after construction (RESET_DEVICE, or status 0)."""

    def notify_config_change(self) -> bool:
        """Raise a config interrupt: the driver re-reads config() (CONFIG_CHANGE_MSG on the back-end
        channel). False when no connected front-end can take it (no channel, CONFIG not negotiated)."""
        return self._config_notifier() if self._config_notifier is not None else False

    def set_config_notifier(self, notifier: Callable[[], bool] | None) -> None:
        """The core's I/O edge plugs in the connection's back-end channel (None when it goes)."""
        self._config_notifier = notifier
