"""The back-end side of the vhost-user protocol as a state machine: messages in, replies and events out.

Theory of operation
-------------------
`receive(message)` applies one front-end message. Replies go to the outbox
output; what the I/O edge must do goes to the outbox events:

  QueueStarted(index, queue, kick_fd, call_fd)  serve this queue (watch kick_fd)
  QueueStopped(index)                            stop watching it
  CallChanged(index, call_fd)                    signal this fd from now on
  DrainRequested(index)                          GET_VRING_BASE: finish the queue's
                                                 in-flight requests, then call
                                                 `queue_drained(index)`, which sends the reply
  DeviceBroken(reason)                           the driver broke a queue; logged, status has NEEDS_RESET
  BackendChannel(fd)                             the front-end's back-end request channel (SET_BACKEND_REQ_FD)
  BackendSend(message)                           send this on that channel (IOTLB miss, config change)
  TranslationsChanged()                          IOTLB updates/invalidations: parked queues retry

With VIRTIO_F_ACCESS_PLATFORM negotiated, ring and buffer addresses are IOVAs
translated by the device IOTLB (iotlb.py). A lookup that misses never waits:
the machine sends a MISS (with NEED_REPLY) on the back-end channel, the queue
parks, and the front-end's UPDATE wakes it. QEMU answers a miss with an UPDATE
on the main channel first and then acks the miss, so an ack whose miss no
update answered means the IOMMU refused: the IOVA is marked refused and the
request that needs it breaks the device. Rings whose translation is missing
(or invalidated) are unbound meanwhile (virtqueue.RingsUnmapped).

With VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD each ring marks the heads it takes
in the front-end's inflight region (inflight.py), so a restarted back-end
resubmits what a killed one left unfinished.

A ring is *started* once it has a size, addresses, a kick fd and memory, and
*stopped* by GET_VRING_BASE. It is *enabled* by SET_VRING_ENABLE, or from the
start when VHOST_USER_F_PROTOCOL_FEATURES was not negotiated. It runs when both.

The machine owns the fds that come with messages: it keeps what it needs and
closes the rest. Memory is mapped through an injected `mapper` (shm.map_region).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import BackendError, GuestError, ProtocolError
from ..outbox import Outbox
from .constants import (
    F_PROTOCOL_FEATURES,
    FLAG_NEED_REPLY,
    IOTLB_INVALIDATE,
    IOTLB_MISS,
    IOTLB_RO,
    IOTLB_RW,
    IOTLB_UPDATE,
    MAX_QUEUE_SIZE,
    VERSION,
    VIRTIO_F_ACCESS_PLATFORM,
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    VRING_INDEX_MASK,
    VRING_NOFD,
    BackendRequest,
    DeviceStatus,
    ProtocolFeature,
    Request,
)
from .device import VirtioDevice
from .inflight import InflightRing, queue_region_size, region_size
from .iotlb import DeviceIotlb, IotlbMiss, IotlbSpace
from .memory import AddressSpace, GuestMemory, MappedRegion
from .messages import (
    ConfigSpace,
    InflightInfo,
    IotlbMessage,
    MemoryRegion,
    Message,
    VringAddr,
    VringState,
    decode_mem_table,
    decode_u64,
    encode_u64,
)
from .virtqueue import QueueBroken, RingViews, SplitQueue, check_queue_size

log = logging.getLogger(__name__)

RING_FEATURES = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX
CORE_PROTOCOL_FEATURES = ProtocolFeature.REPLY_ACK | ProtocolFeature.RESET_DEVICE | ProtocolFeature.STATUS
# Requests whose answer is a payload of their own (REPLY_ACK does not add a second reply).
ANSWERED = {
    Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.GET_VRING_BASE, Request.GET_QUEUE_NUM,
    Request.GET_CONFIG, Request.GET_STATUS, Request.GET_INFLIGHT_FD, Request.GET_MAX_MEM_SLOTS,
}

# Always acknowledged (vhost-user.rst: the back-end "has to acknowledge" IOTLB messages).
ALWAYS_ACKED = {Request.IOTLB_MSG}
MAX_INFLIGHT_QUEUES = 64

Mapper = Callable[[MemoryRegion, int], MappedRegion]


class InflightMapper(Protocol):
    """Shared memory for inflight regions (shm.py): create one, or map the front-end's."""

    def create(self, size: int) -> tuple[int, memoryview]: ...

    def map(self, fd: int, size: int, offset: int) -> memoryview: ...


@dataclass(slots=True)
class InflightRegion:
    fd: int
    data: memoryview
    num_queues: int
    queue_size: int


@dataclass(frozen=True, slots=True)
class QueueStarted:
    index: int
    queue: SplitQueue
    kick_fd: int | None
    call_fd: int | None


@dataclass(frozen=True, slots=True)
class QueueStopped:
    index: int


@dataclass(frozen=True, slots=True)
class CallChanged:
    index: int
    call_fd: int | None


@dataclass(frozen=True, slots=True)
class DrainRequested:
    index: int


@dataclass(frozen=True, slots=True)
class DeviceBroken:
    reason: str


@dataclass(frozen=True, slots=True)
class BackendChannel:
    fd: int  # owned by the machine; the edge uses its own duplicate


@dataclass(frozen=True, slots=True)
class BackendSend:
    message: Message


@dataclass(frozen=True, slots=True)
class TranslationsChanged:
    pass


Event = QueueStarted | QueueStopped | CallChanged | DrainRequested | DeviceBroken | BackendChannel | BackendSend | TranslationsChanged


@dataclass(slots=True)
class Vring:
    """What the front-end told us about one ring."""

    size: int = 0
    addr: VringAddr | None = None
    base: int = 0
    kick_fd: int | None = None
    call_fd: int | None = None
    err_fd: int | None = None
    kicked: bool = False  # a kick fd (or polling) was set: the ring is started
    enabled: bool = False
    queue: SplitQueue | None = field(default=None)
    running: bool = False  # QueueStarted was emitted and no QueueStopped since
    stopping: Message | None = None  # the GET_VRING_BASE awaiting a drain


class BackendProtocol(Outbox[Message, Event]):
    """One front-end connection's protocol state for one device."""

    def __init__(self, device: VirtioDevice, mapper: Mapper, *, iommu: bool = False, inflight_mapper: InflightMapper | None = None) -> None:
        super().__init__()
        self.device = device
        self._mapper = mapper
        self._iommu = iommu
        self._inflight_mapper = inflight_mapper
        self.iotlb = DeviceIotlb()
        self.backend_fd: int | None = None
        self.inflight: InflightRegion | None = None
        self._unanswered: set[int] = set()  # IOVAs of misses no update has covered yet
        self._acks_due: deque[int] = deque()  # misses sent with NEED_REPLY, in order
        self.owner = False
        self.features = 0
        self.protocol_features = ProtocolFeature(0)
        self.status = 0
        self.memory = GuestMemory()
        self.vrings = [Vring() for _ in range(device.num_queues)]
        self.broken: str | None = None
        self._handlers: dict[int, Callable[[Message], bytes | Message | None]] = {
            Request.GET_FEATURES: self._get_features,
            Request.SET_FEATURES: self._set_features,
            Request.GET_PROTOCOL_FEATURES: self._get_protocol_features,
            Request.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            Request.SET_OWNER: self._set_owner,
            Request.RESET_OWNER: self._reset,
            Request.RESET_DEVICE: self._reset,
            Request.SET_MEM_TABLE: self._set_mem_table,
            Request.SET_VRING_NUM: self._set_vring_num,
            Request.SET_VRING_ADDR: self._set_vring_addr,
            Request.SET_VRING_BASE: self._set_vring_base,
            Request.GET_VRING_BASE: self._get_vring_base,
            Request.SET_VRING_KICK: self._set_vring_kick,
            Request.SET_VRING_CALL: self._set_vring_call,
            Request.SET_VRING_ERR: self._set_vring_err,
            Request.SET_VRING_ENABLE: self._set_vring_enable,
            Request.GET_QUEUE_NUM: self._get_queue_num,
            Request.GET_CONFIG: self._get_config,
            Request.SET_CONFIG: self._set_config,
            Request.SET_STATUS: self._set_status,
            Request.GET_STATUS: self._get_status,
            Request.SET_BACKEND_REQ_FD: self._set_backend_req_fd,
            Request.IOTLB_MSG: self._iotlb_msg,
            Request.GET_INFLIGHT_FD: self._get_inflight_fd,
            Request.SET_INFLIGHT_FD: self._set_inflight_fd,
        }

    # ---- offered features ---------------------------------------------------------------

    def offered_features(self) -> int:
        return self.device.features() | RING_FEATURES | F_PROTOCOL_FEATURES | (VIRTIO_F_ACCESS_PLATFORM if self._iommu else 0)

    def offered_protocol_features(self) -> ProtocolFeature:
        # CONFIG rides along with BACKEND_REQ for CONFIG_CHANGE_MSG only if the device asks for it.
        extra = ProtocolFeature.BACKEND_REQ | (ProtocolFeature.INFLIGHT_SHMFD if self._inflight_mapper else ProtocolFeature(0))
        return CORE_PROTOCOL_FEATURES | extra | self.device.protocol_features()

    @property
    def translating(self) -> bool:
        """Ring and buffer addresses are IOVAs (ACCESS_PLATFORM negotiated)."""
        return bool(self.features & VIRTIO_F_ACCESS_PLATFORM)

    # ---- input --------------------------------------------------------------------------

    def receive(self, message: Message) -> None:
        """Apply one message; never raises for anything the front-end sent."""
        handler = self._handlers.get(message.request)
        fds = list(message.fds)
        try:
            if handler is None:
                raise ProtocolError(f"{message.name} is not supported")
            answer = handler(message)
        except BackendError as exc:
            log.warning("vhost-user %s refused: %s", message.name, exc)
            self._close_unclaimed(message, fds)
            self._answer_failure(message)
            return
        self._close_unclaimed(message, fds)
        if isinstance(answer, Message):
            self._output.append(answer)
        elif answer is not None:
            self._output.append(message.reply(answer))
        elif message.need_reply and (self._acks or message.request in ALWAYS_ACKED) and message.request not in ANSWERED:
            self._output.append(message.reply(encode_u64(0)))

    def backend_reply(self, message: Message) -> None:
        """A reply on the back-end channel: the ack of our oldest miss."""
        if not self._acks_due:
            log.warning("vhost-user back-end channel: unexpected %s (flags 0x%x)", message.name, message.flags)
            return
        iova = self._acks_due.popleft()
        if iova in self._unanswered:
            self._unanswered.discard(iova)
            self.iotlb.refused(iova)
            log.warning("IOTLB miss at IOVA 0x%x was not translated by the front-end", iova)
            self._events.append(TranslationsChanged())

    def request_translation(self, iova: int, write: bool) -> None:
        """A queue missed in the IOTLB: ask the front-end (once per IOVA until it answers)."""
        if iova in self._unanswered:
            return
        if self.backend_fd is None:
            self.mark_broken(f"IOTLB miss at IOVA 0x{iova:x} and the front-end gave no back-end channel")
            return
        self._unanswered.add(iova)
        flags = VERSION
        if self._acks:
            flags |= FLAG_NEED_REPLY
            self._acks_due.append(iova)
        self.iotlb.misses += 1
        miss = IotlbMessage(iova, 0, 0, IOTLB_RW if write else IOTLB_RO, IOTLB_MISS)
        self._events.append(BackendSend(Message(BackendRequest.IOTLB_MSG, flags, miss.encode())))

    def config_changed(self) -> bool:
        """The device's config space changed: CONFIG_CHANGE_MSG, if the front-end can take it."""
        if self.backend_fd is None or not self.protocol_features & ProtocolFeature.CONFIG:
            return False
        self._events.append(BackendSend(Message(BackendRequest.CONFIG_CHANGE_MSG, VERSION)))
        return True

    def queue_drained(self, index: int) -> None:
        """The edge finished the queue's in-flight requests after DrainRequested: reply."""
        vring = self.vrings[index]
        request, vring.stopping = vring.stopping, None
        if request is not None:
            self._output.append(request.reply(VringState(index, vring.base).encode()))

    def mark_broken(self, reason: str) -> None:
        """A queue found the driver's data impossible: stop the device until it is reset,
        and tell the driver with a config interrupt (virtio 1.2, 2.1.2: a device that sets
        NEEDS_RESET after DRIVER_OK must send one), when the front-end can take it."""
        if self.broken is None:
            self.broken = reason
            self.status |= DeviceStatus.NEEDS_RESET
            log.error("virtio device broken, needs reset: %s", reason)
            self._events.append(DeviceBroken(reason))
            for index in range(len(self.vrings)):
                self._halt(index)
            if self.status & DeviceStatus.DRIVER_OK or not self.protocol_features & ProtocolFeature.STATUS:
                self.config_changed()  # (a front-end that never sends SET_STATUS: assume it is driving)

    def close(self) -> None:
        """Connection gone: stop everything and close every fd we hold."""
        for index in range(len(self.vrings)):
            self._halt(index)
            self._forget_fds(self.vrings[index])
        for fd in (self.backend_fd, self.inflight.fd if self.inflight else None):
            if fd is not None:
                _close(fd)
        self.backend_fd = None
        self.inflight = None

    # ---- helpers ------------------------------------------------------------------------

    @property
    def _acks(self) -> bool:
        return bool(self.protocol_features & ProtocolFeature.REPLY_ACK)

    def _answer_failure(self, message: Message) -> None:
        if message.request in ANSWERED:
            self._output.append(message.reply(b""))  # an empty answer: the front-end sees the failure
        elif message.need_reply and (self._acks or message.request in ALWAYS_ACKED):
            self._output.append(message.reply(encode_u64(1)))

    def _close_unclaimed(self, message: Message, fds: list[int]) -> None:
        claimed = self._claimed
        for fd in fds:
            if fd not in claimed:
                _close(fd)

    @property
    def _claimed(self) -> set[int]:
        held = [self.backend_fd, self.inflight.fd if self.inflight else None]
        held += [fd for v in self.vrings for fd in (v.kick_fd, v.call_fd, v.err_fd)]
        return {fd for fd in held if fd is not None}

    def _vring(self, index: int) -> Vring:
        if not 0 <= index < len(self.vrings):
            raise ProtocolError(f"queue {index} does not exist (device has {len(self.vrings)})")
        return self.vrings[index]

    def _runnable(self, vring: Vring) -> bool:
        enabled = vring.enabled or not self.features & F_PROTOCOL_FEATURES
        return vring.queue is not None and enabled and self.broken is None

    def _try_start(self, index: int) -> None:
        """Start the ring if everything it needs is known; restart it if it ran."""
        vring = self.vrings[index]
        self._halt(index)
        if not vring.kicked or vring.addr is None or not vring.size or self.broken is not None:
            return
        buffers: AddressSpace = IotlbSpace(self.iotlb) if self.translating else self.memory.gpa
        try:
            vring.queue = SplitQueue(None, vring.size, buffers, last_avail=vring.base,
                                     event_idx=bool(self.features & VIRTIO_RING_F_EVENT_IDX), inflight=self._inflight_ring(index, vring.size))
        except GuestError as exc:
            self.mark_broken(f"queue {index}: {exc}")
            return
        self._bind_rings(index)
        if self.broken is None and self._runnable(vring):
            vring.running = True
            self._events.append(QueueStarted(index, vring.queue, vring.kick_fd, vring.call_fd))

    def _bind_rings(self, index: int) -> None:
        """Resolve the ring addresses (UVAs, or IOVAs through the IOTLB); a miss leaves the rings unbound."""
        vring = self.vrings[index]
        if vring.queue is None or vring.addr is None:
            return
        space: AddressSpace = IotlbSpace(self.iotlb, ring=True) if self.translating else self.memory.uva
        try:
            rings = RingViews.resolve(space, vring.size, vring.addr.desc, vring.addr.avail, vring.addr.used)
            vring.queue.bind(rings)
            if vring.queue.to_resubmit:
                log.info("queue %d: resubmitting %d requests a previous back-end left unfinished", index, vring.queue.to_resubmit)
        except IotlbMiss as miss:
            vring.queue.bind(None)
            self.request_translation(miss.iova, miss.write)
        except GuestError as exc:
            self.mark_broken(f"queue {index}: {exc}")

    def _inflight_ring(self, index: int, size: int) -> InflightRing | None:
        region = self.inflight
        if region is None or index >= region.num_queues:
            return None
        if region.queue_size != size:
            log.warning("queue %d has %d entries, the inflight region tracks %d: not tracked", index, size, region.queue_size)
            return None
        part = queue_region_size(size)
        return InflightRing(region.data[index * part : (index + 1) * part], size)

    def _halt(self, index: int) -> None:
        vring = self.vrings[index]
        if vring.queue is not None:
            vring.base = vring.queue.last_avail
            vring.queue = None
        if vring.running:
            vring.running = False
            self._events.append(QueueStopped(index))
            self.device.queue_stopped(index)

    def _forget_fds(self, vring: Vring) -> None:
        for fd in (vring.kick_fd, vring.call_fd, vring.err_fd):
            if fd is not None:
                _close(fd)
        vring.kick_fd = vring.call_fd = vring.err_fd = None

    # ---- handlers: each returns the reply payload, or None -------------------------------

    def _get_features(self, message: Message) -> bytes:
        return encode_u64(self.offered_features())

    def _set_features(self, message: Message) -> None:
        features = decode_u64(message.payload)
        extra = features & ~self.offered_features()
        if extra:
            raise ProtocolError(f"features 0x{extra:x} were never offered")
        self.features = features
        self.device.set_features(features & ~F_PROTOCOL_FEATURES)
        for index in range(len(self.vrings)):
            if self.vrings[index].queue is not None:
                self._try_start(index)  # EVENT_IDX or ring enabling may have changed

    def _get_protocol_features(self, message: Message) -> bytes:
        return encode_u64(self.offered_protocol_features())

    def _set_protocol_features(self, message: Message) -> None:
        features = decode_u64(message.payload)
        extra = features & ~self.offered_protocol_features()
        if extra:
            raise ProtocolError(f"protocol features 0x{extra:x} were never offered")
        self.protocol_features = ProtocolFeature(features)

    def _set_owner(self, message: Message) -> None:
        self.owner = True

    def _reset(self, message: Message) -> None:
        """RESET_OWNER / RESET_DEVICE: rings off and forgotten, device back to its first state."""
        for index, vring in enumerate(self.vrings):
            self._halt(index)
            self._forget_fds(vring)
            self.vrings[index] = Vring()
        self.features = self.features & F_PROTOCOL_FEATURES
        self.status = 0
        self.broken = None
        self._forget_translations()
        self.device.reset()

    def _forget_translations(self) -> None:
        self.iotlb.clear()
        self._unanswered.clear()
        self._acks_due.clear()

    def _set_mem_table(self, message: Message) -> None:
        regions = decode_mem_table(message.payload)
        if len(message.fds) != len(regions):
            raise ProtocolError(f"memory table of {len(regions)} regions came with {len(message.fds)} fds")
        memory = GuestMemory(self._mapper(region, fd) for region, fd in zip(regions, message.fds))
        self.memory = self.iotlb.memory = memory
        log.info("memory table: %s", ", ".join(f"GPA 0x{r.guest_phys_addr:x}+0x{r.size:x} at UVA 0x{r.user_addr:x}" for r in regions))
        self.device.memory_changed(memory)
        for index in range(len(self.vrings)):
            if self.vrings[index].queue is not None:
                self._try_start(index)

    def _set_vring_num(self, message: Message) -> None:
        state = VringState.decode(message.payload)
        vring = self._vring(state.index)
        if state.num > self.device.max_queue_size:
            raise ProtocolError(f"queue {state.index} size {state.num} exceeds the device's {self.device.max_queue_size}")
        check_queue_size(state.num)
        vring.size = state.num

    def _set_vring_addr(self, message: Message) -> None:
        addr = VringAddr.decode(message.payload)
        self._vring(addr.index).addr = addr
        if self.vrings[addr.index].queue is not None:
            self._try_start(addr.index)

    def _set_vring_base(self, message: Message) -> None:
        state = VringState.decode(message.payload)
        self._vring(state.index).base = state.num & 0xFFFF

    def _get_vring_base(self, message: Message) -> bytes | None:
        state = VringState.decode(message.payload)
        vring = self._vring(state.index)
        running = vring.running
        self._halt(state.index)
        vring.kicked = False
        if vring.kick_fd is not None:
            _close(vring.kick_fd)
            vring.kick_fd = None
        if running:
            vring.stopping = message
            self._events.append(DrainRequested(state.index))
            return None
        return VringState(state.index, vring.base).encode()

    def _fd_message(self, message: Message) -> tuple[Vring, int, int | None]:
        value = decode_u64(message.payload)
        index = value & VRING_INDEX_MASK
        if value & ~(VRING_INDEX_MASK | VRING_NOFD):
            raise ProtocolError(f"{message.name} payload 0x{value:x} has unknown bits")
        vring = self._vring(index)
        if value & VRING_NOFD:
            if message.fds:
                raise ProtocolError(f"{message.name} says no fd but carries {len(message.fds)}")
            return vring, index, None
        if len(message.fds) != 1:
            raise ProtocolError(f"{message.name} needs exactly one fd, got {len(message.fds)}")
        return vring, index, message.fds[0]

    def _set_vring_kick(self, message: Message) -> None:
        vring, index, fd = self._fd_message(message)
        if vring.kick_fd is not None:
            self._halt(index)
            _close(vring.kick_fd)
        vring.kick_fd = fd
        vring.kicked = True
        self._try_start(index)

    def _set_vring_call(self, message: Message) -> None:
        vring, index, fd = self._fd_message(message)
        if vring.call_fd is not None:
            _close(vring.call_fd)
        vring.call_fd = fd
        if vring.running:
            self._events.append(CallChanged(index, fd))

    def _set_vring_err(self, message: Message) -> None:
        vring, _, fd = self._fd_message(message)
        if vring.err_fd is not None:
            _close(vring.err_fd)
        vring.err_fd = fd

    def _set_vring_enable(self, message: Message) -> None:
        state = VringState.decode(message.payload)
        vring = self._vring(state.index)
        if state.num not in (0, 1):
            raise ProtocolError(f"SET_VRING_ENABLE with {state.num}")
        if vring.enabled != bool(state.num):
            vring.enabled = bool(state.num)
            if vring.queue is not None or vring.running:
                self._try_start(state.index)

    def _get_queue_num(self, message: Message) -> bytes:
        return encode_u64(self.device.num_queues)

    def _get_config(self, message: Message) -> bytes:
        window = ConfigSpace.decode(message.payload)
        # Fields past the device's layout read as zero: front-ends built against newer
        # headers ask for more (QEMU reads its own sizeof(struct virtio_blk_config)).
        config = self.device.config().ljust(window.offset + window.size, b"\0")
        return ConfigSpace(window.offset, window.size, window.flags, config[window.offset : window.offset + window.size]).encode()

    def _set_config(self, message: Message) -> None:
        window = ConfigSpace.decode(message.payload)
        try:
            self.device.write_config(window.offset, window.data)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None

    def _set_status(self, message: Message) -> None:
        status = decode_u64(message.payload)
        if status > 0xFF:
            raise ProtocolError(f"device status 0x{status:x} is wider than 8 bits")
        if status == 0:
            for index in range(len(self.vrings)):
                self._halt(index)
            self.broken = None
            self._forget_translations()
        self.status = status | (self.status & DeviceStatus.NEEDS_RESET if self.broken else 0)

    def _get_status(self, message: Message) -> bytes:
        return encode_u64(self.status)

    def _set_backend_req_fd(self, message: Message) -> None:
        if len(message.fds) != 1:
            raise ProtocolError(f"SET_BACKEND_REQ_FD needs exactly one fd, got {len(message.fds)}")
        if self.backend_fd is not None:
            _close(self.backend_fd)
        self.backend_fd = message.fds[0]
        self._acks_due.clear()
        self._unanswered.clear()
        self._events.append(BackendChannel(self.backend_fd))

    def _iotlb_msg(self, message: Message) -> None:
        if not self.translating:
            raise ProtocolError("IOTLB message without VIRTIO_F_ACCESS_PLATFORM")
        iotlb = IotlbMessage.decode(message.payload)
        if iotlb.type == IOTLB_UPDATE:
            self.iotlb.update(iotlb)  # GuestError: refused, the miss stays unanswered
            self._unanswered = {iova for iova in self._unanswered if not iotlb.iova <= iova < iotlb.iova + iotlb.size}
            for index, vring in enumerate(self.vrings):
                if vring.queue is not None and vring.queue.rings is None:
                    self._bind_rings(index)
        elif iotlb.type == IOTLB_INVALIDATE:
            if self.iotlb.invalidate(iotlb.iova, iotlb.size):
                for index, vring in enumerate(self.vrings):
                    self._bind_rings(index)
        else:
            raise ProtocolError(f"IOTLB message type {iotlb.type} is not for a back-end")
        self._events.append(TranslationsChanged())

    def _get_inflight_fd(self, message: Message) -> Message:
        if self._inflight_mapper is None:
            raise ProtocolError("GET_INFLIGHT_FD without INFLIGHT_SHMFD")
        info = InflightInfo.decode(message.payload)
        self._check_inflight_shape(info)
        size = region_size(info.num_queues, info.queue_size)
        fd, data = self._inflight_mapper.create(size)
        self._replace_inflight(InflightRegion(fd, data, info.num_queues, info.queue_size))
        reply = message.reply(InflightInfo(size, 0, info.num_queues, info.queue_size).encode())
        return Message(reply.request, reply.flags, reply.payload, (fd,))

    def _set_inflight_fd(self, message: Message) -> None:
        if self._inflight_mapper is None:
            raise ProtocolError("SET_INFLIGHT_FD without INFLIGHT_SHMFD")
        info = InflightInfo.decode(message.payload)
        if len(message.fds) != 1:
            raise ProtocolError(f"SET_INFLIGHT_FD needs exactly one fd, got {len(message.fds)}")
        self._check_inflight_shape(info)
        need = region_size(info.num_queues, info.queue_size)
        if info.mmap_size < need:
            raise ProtocolError(f"inflight region of {info.mmap_size} bytes, {info.num_queues} queues of {info.queue_size} need {need}")
        data = self._inflight_mapper.map(message.fds[0], need, info.mmap_offset)
        self._replace_inflight(InflightRegion(message.fds[0], data, info.num_queues, info.queue_size))

    def _check_inflight_shape(self, info: InflightInfo) -> None:
        if not 1 <= info.num_queues <= min(MAX_INFLIGHT_QUEUES, len(self.vrings)):
            raise ProtocolError(f"inflight region for {info.num_queues} queues (device has {len(self.vrings)})")
        if not 0 < info.queue_size <= MAX_QUEUE_SIZE:
            raise ProtocolError(f"inflight region for queues of {info.queue_size} entries")

    def _replace_inflight(self, region: InflightRegion) -> None:
        if self.inflight is not None and self.inflight.fd != region.fd:
            _close(self.inflight.fd)
        self.inflight = region


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


__all__ = ["BackendChannel", "BackendProtocol", "BackendSend", "CallChanged", "DeviceBroken", "DrainRequested", "QueueBroken",
           "QueueStarted", "QueueStopped", "TranslationsChanged"]
