"""LDC, the sun4v logical domain channel link layer (sans-I/O)."""

from .channel import RESET, Channel, LinkReset, LinkUp, MessageReceived, ProtocolViolation, State
from .constants import PACKET_SIZE, PAYLOAD_SIZE, Control, Mode, PacketType, SubType
from .memory import PERM_RO, PERM_RW, CookieError, Export, MapTable, PeerMemory, Perm, Segment, TransportCookie
from .packet import Packet, PacketError, decode, encode
from .raw import RawChannel

__all__ = [
    "RESET", "Channel", "LinkReset", "LinkUp", "MessageReceived", "ProtocolViolation", "State",
    "PACKET_SIZE", "PAYLOAD_SIZE", "Control", "Mode", "PacketType", "SubType",
    "PERM_RO", "PERM_RW", "CookieError", "Export", "MapTable", "PeerMemory", "Perm", "Segment", "TransportCookie",
    "Packet", "PacketError", "decode", "encode", "RawChannel",
]
