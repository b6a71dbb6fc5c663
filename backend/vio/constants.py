"""VIO wire constants, named as in the sun4v headers (see docs/vio.md)."""

from enum import IntEnum


class MsgType(IntEnum):
    CTRL = 0x01
    DATA = 0x02
    ERR = 0x04


class SubType(IntEnum):
    INFO = 0x01
    ACK = 0x02
    NACK = 0x04


class Env(IntEnum):
    """The `stype_env` of the message tag: which message this is."""

    VER_INFO = 0x0001
    ATTR_INFO = 0x0002
    DRING_REG = 0x0003
    DRING_UNREG = 0x0004
    RDX = 0x0005
    DDS_INFO = 0x0006
    PKT_DATA = 0x0040
    DESC_DATA = 0x0041
    DRING_DATA = 0x0042
    VNET_MCAST_INFO = 0x0101


class DevClass(IntEnum):
    NETWORK = 0x01
    NETWORK_SWITCH = 0x02
    DISK = 0x03
    DISK_SERVER = 0x04
    CONSOLE = 0x05


class XferMode(IntEnum):
    """Transfer modes before version 1.2: an enumeration."""

    PKT = 0x1
    DESC = 0x2
    DRING = 0x3


class XferBits(IntEnum):
    """Transfer modes from version 1.2: a bit mask (vnet and vsw use PKT | DRING = 0x5)."""

    PKT = 0x1
    DESC = 0x2
    DRING = 0x4


class DringOption(IntEnum):
    TX = 0x1
    RX = 0x2
    RX_DATA = 0x4


class DescState(IntEnum):
    FREE = 0x1
    READY = 0x2
    ACCEPTED = 0x3
    DONE = 0x4


class ProcState(IntEnum):
    """DRING_DATA `state`: whether the processor goes on or waits for a new kick."""

    ACTIVE = 0x1
    STOPPED = 0x2


#: end_idx meaning "until a descriptor is not READY".
END_OPEN = 0xFFFF_FFFF
#: Every VIO control message is padded to one unreliable LDC packet.
CTRL_MSG_SIZE = 56
#: Bytes of the descriptor header at the start of every ring entry.
DESC_HEADER_SIZE = 8
ACK_ENABLE = 0x1

# Limits we put on what a peer may ask of us (it is their memory, but our work).
MAX_RING_COOKIES = 24  # as Linux
MAX_DESCRIPTORS = 1 << 16
MAX_DESCRIPTOR_SIZE = 1 << 16

