"""LDC wire constants, named as in the sun4v headers (see docs/ldc.md)."""

from enum import IntEnum, IntFlag

PACKET_SIZE = 64


class Mode(IntEnum):
    """Channel mode, agreed in RTS/RTR; decides the header size of every packet."""

    RAW = 0x00
    UNRELIABLE = 0x01
    # 0x02 is reserved (an early "reliable" mode nobody ships).
    RELIABLE = 0x03  # Linux calls it STREAM, illumos RELIABLE.


#: Header bytes in front of the payload, per mode.
HEADER_SIZE = {Mode.RAW: 0, Mode.UNRELIABLE: 8, Mode.RELIABLE: 16}
#: Payload bytes one packet carries, per mode.
PAYLOAD_SIZE = {mode: PACKET_SIZE - size for mode, size in HEADER_SIZE.items()}


class PacketType(IntEnum):
    CTRL = 0x01
    DATA = 0x02
    ERR = 0x10


class SubType(IntFlag):
    """Data ACKs and NACKs may be combined with INFO, hence a flag set."""

    INFO = 0x01
    ACK = 0x02
    NACK = 0x04


class Control(IntEnum):
    """The control envelope of CTRL packets (the `ctrl` byte, low nibble)."""

    VERS = 0x01
    RTS = 0x02
    RTR = 0x03
    RDX = 0x04


CTRL_MASK = 0x0F

# The `env` byte of DATA packets.
ENV_LENGTH_MASK = 0x3F
ENV_START = 0x40
ENV_STOP = 0x80
ENV_FRAGMENT_MASK = ENV_START | ENV_STOP

#: LDC link versions we speak, highest first (Linux and illumos ship 1.0 only).
SUPPORTED_VERSIONS: tuple[tuple[int, int], ...] = ((1, 0),)
