"""Wire values of vhost-user and virtio, named as in QEMU's vhost-user.rst and the virtio 1.x spec."""

from __future__ import annotations

import enum

# ---- vhost-user message header --------------------------------------------------------

VERSION = 0x1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8

HEADER_SIZE = 12
MAX_PAYLOAD = 4096  # larger than any payload the spec defines; bigger claims are garbage
MAX_FDS = 8  # VHOST_MEMORY_BASELINE_NREGIONS: the most fds one message carries
MAX_MEM_REGIONS = 8
MAX_CONFIG_SIZE = 256


class Request(enum.IntEnum):
    """Front-end -> back-end requests (the `request` field)."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class BackendRequest(enum.IntEnum):
    """Back-end -> front-end requests on the back-end channel (SET_BACKEND_REQ_FD)."""

    IOTLB_MSG = 1
    CONFIG_CHANGE_MSG = 2
    VRING_HOST_NOTIFIER_MSG = 3


class ProtocolFeature(enum.IntFlag):
    """Bits of GET/SET_PROTOCOL_FEATURES."""

    MQ = 1 << 0
    LOG_SHMFD = 1 << 1
    RARP = 1 << 2
    REPLY_ACK = 1 << 3
    NET_MTU = 1 << 4
    BACKEND_REQ = 1 << 5
    CROSS_ENDIAN = 1 << 6
    CRYPTO_SESSION = 1 << 7
    PAGEFAULT = 1 << 8
    CONFIG = 1 << 9
    BACKEND_SEND_FD = 1 << 10
    HOST_NOTIFIER = 1 << 11
    INFLIGHT_SHMFD = 1 << 12
    RESET_DEVICE = 1 << 13
    INBAND_NOTIFICATIONS = 1 << 14
    CONFIGURE_MEM_SLOTS = 1 << 15
    STATUS = 1 << 16


# In GET/SET_FEATURES: the back-end speaks GET/SET_PROTOCOL_FEATURES.
F_PROTOCOL_FEATURES = 1 << 30

# SET_VRING_KICK/CALL/ERR payload: low byte is the queue, this bit says "no fd follows".
VRING_INDEX_MASK = 0xFF
VRING_NOFD = 1 << 8

# SET_VRING_ADDR flags
VRING_F_LOG = 1 << 0

# GET/SET_CONFIG flags
CONFIG_TYPE_FRONTEND = 0
CONFIG_TYPE_MIGRATION = 1

# IOTLB message types and permissions (struct vhost_iotlb_msg)
IOTLB_MISS = 1
IOTLB_UPDATE = 2
IOTLB_INVALIDATE = 3
IOTLB_ACCESS_FAIL = 4
IOTLB_DENY, IOTLB_RO, IOTLB_WO, IOTLB_RW = 0, 1, 2, 3

# ---- virtio ----------------------------------------------------------------------------


class DeviceStatus(enum.IntFlag):
    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    NEEDS_RESET = 0x40
    FAILED = 0x80


# Device-independent feature bits
VIRTIO_F_NOTIFY_ON_EMPTY = 1 << 24
VIRTIO_F_ANY_LAYOUT = 1 << 27
VIRTIO_RING_F_INDIRECT_DESC = 1 << 28
VIRTIO_RING_F_EVENT_IDX = 1 << 29
VIRTIO_F_VERSION_1 = 1 << 32
VIRTIO_F_ACCESS_PLATFORM = 1 << 33
VIRTIO_F_RING_PACKED = 1 << 34

# Split-ring descriptor flags
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
# avail.flags / used.flags
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1

MAX_QUEUE_SIZE = 32768
