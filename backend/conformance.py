"""Wire-format conformance: run `sun4v-wire-vectors/1` files against our codecs.

The vectors (see the spec's vectors.md) name a message, its fields and the exact
bytes a sun4v peer puts on the wire. Each layer registers one small `Codec` per
message in `REGISTRY`; `run_vector` checks decode(hex) == fields and, unless the
vector says `"direction": "decode"`, encode(fields) == hex. Fields a vector omits
(reserved ones) count as zero, so every codec says what its full field set is.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .ds import messages as ds
from .ds.services import domain_shutdown, md_update, var_config
from .ldc import packet as ldc_packet
from .ldc.constants import HEADER_SIZE, PACKET_SIZE, Mode, PacketType
from .ldc.memory import TRANSPORT_COOKIE, TransportCookie
from .vdisk import labels, scsi
from .vdisk import protocol as vdisk
from .vdisk.devid import DeviceId
from .vio import messages as vio
from .vio.constants import CTRL_MSG_SIZE, DESC_HEADER_SIZE, SubType
from .vswitch import vnet

FORMAT = "sun4v-wire-vectors/1"
DIRECTIONS = ("both", "decode")

Fields = dict[str, Any]


class VectorFileError(ValueError):
    """A vectors file that is not in the format we know: an error, never skipped."""


@dataclass(frozen=True, slots=True)
class Codec:
    """How one message maps between fields and bytes.

    `decode` gets the vector's fields as a second argument because some inputs are
    not on the wire (an LDC packet's mode is a channel property); it must only read
    such out-of-band fields from it. `defaults` returns the full field set, zeroed,
    for the given (possibly partial) fields; `hex_fields` are byte strings, compared
    case-insensitively.
    """

    encode: Callable[[Mapping[str, Any]], bytes]
    decode: Callable[[bytes, Mapping[str, Any]], Fields]
    defaults: Callable[[Mapping[str, Any]], Fields]
    hex_fields: frozenset[str] = field(default_factory=frozenset)

    def expected(self, fields: Mapping[str, Any]) -> Fields:
        """The vector's fields with omitted ones zeroed and hex lowercased."""
        full = {**self.defaults(fields), **fields}
        return {k: _lower_hex(v) if k in self.hex_fields else v for k, v in full.items()}


def _lower_hex(value: Any) -> Any:
    """A hex field, or an array of them (multicast addresses), lowercased."""
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, list):
        return [v.lower() if isinstance(v, str) else v for v in value]
    return value


# --- ldc.packet ---------------------------------------------------------------
#
# Fields follow the bytes: RAW packets are {mode, payload}; other packets have the
# 8-byte header fields, and RELIABLE-mode DATA packets also the ackid behind a pad
# word. CTRL and ERR packets keep their data at offset 8 in every mode (Linux and
# illumos put a VERS version at 8 and an RDX ackid at 12 whatever the mode), so for
# them `payload` is the 56 bytes from offset 8 and an RDX ackid is payload bytes 4..7.

_PACKET_HEADER = ("type", "stype", "ctrl", "env", "seqid")


def _mode(fields: Mapping[str, Any]) -> Mode:
    # Mode(...) also turns ints into the enum, which packet.encode/decode compare by identity.
    return Mode(fields.get("mode", 0))


def _has_ackid(mode: Mode, ptype: int) -> bool:
    return mode is Mode.RELIABLE and ptype == PacketType.DATA


def _payload_size(mode: Mode, ptype: int) -> int:
    if mode is Mode.RAW:
        return PACKET_SIZE
    return PACKET_SIZE - HEADER_SIZE[Mode.RELIABLE if _has_ackid(mode, ptype) else Mode.UNRELIABLE]


def _packet_defaults(fields: Mapping[str, Any]) -> Fields:
    mode, ptype = _mode(fields), fields.get("type", 0)
    names = () if mode is Mode.RAW else _PACKET_HEADER + (("ackid",) if _has_ackid(mode, ptype) else ())
    return {"mode": int(mode), **dict.fromkeys(names, 0), "payload": "00" * _payload_size(mode, ptype)}


def _packet_encode(fields: Mapping[str, Any]) -> bytes:
    mode, ptype = _mode(fields), fields.get("type", 0)
    payload = bytes.fromhex(fields["payload"])
    if len(payload) != _payload_size(mode, ptype):
        raise ValueError(f"payload is {len(payload)} bytes; this packet's payload area is {_payload_size(mode, ptype)}")
    if mode is Mode.RAW:
        return ldc_packet.encode(ldc_packet.Packet(payload=payload), mode)
    header = {name: fields[name] for name in _PACKET_HEADER}
    return ldc_packet.encode(ldc_packet.Packet(**header, ackid=fields.get("ackid", 0), payload=payload), mode)


def _packet_decode(data: bytes, context: Mapping[str, Any]) -> Fields:
    mode = _mode(context)
    p = ldc_packet.decode(data, mode)
    out: Fields = {"mode": int(mode)}
    if mode is not Mode.RAW:
        out.update({name: getattr(p, name) for name in _PACKET_HEADER})
    if _has_ackid(mode, p.type):
        out["ackid"] = p.ackid
    out["payload"] = p.payload.hex()
    return out


# --- ldc.transport_cookie -----------------------------------------------------


def _cookie_encode(fields: Mapping[str, Any]) -> bytes:
    return TransportCookie(fields["cookie_addr"], fields["cookie_size"]).encode()


def _cookie_decode(data: bytes, context: Mapping[str, Any]) -> Fields:
    # TransportCookie.decode accepts trailing bytes; a vector must be exactly one cookie.
    if len(data) != TRANSPORT_COOKIE.size:
        raise ValueError(f"a transport cookie is {TRANSPORT_COOKIE.size} bytes, got {len(data)}")
    cookie = TransportCookie.decode(data)
    return {"cookie_addr": cookie.addr, "cookie_size": cookie.size}


# --- vio.* ---------------------------------------------------------------------
#
# Every VIO message starts with the tag, whose fields (type, stype, stype_env, sid)
# are fields of every vio.* vector. Decoding goes through vio.decode, which picks
# the class from the tag; the codec then checks it is the class the vector names.
# Byte-string fields are hex; fixed-size ones (ATTR_INFO payload, DDS body) must
# have exactly their wire size when encoding.

_TAG_FIELDS = ("type", "stype", "stype_env", "sid")


def _tag(fields: Mapping[str, Any]) -> vio.Tag:
    return vio.Tag(*(fields[name] for name in _TAG_FIELDS))


def _tag_out(tag: vio.Tag) -> Fields:
    return {name: getattr(tag, name) for name in _TAG_FIELDS}


def _hex_of_size(fields: Mapping[str, Any], name: str, size: int | None = None) -> bytes:
    data = bytes.fromhex(fields[name])
    if size is not None and len(data) != size:
        raise ValueError(f"{name} is {len(data)} bytes; the message carries exactly {size}")
    return data


def _tag_decode(data: bytes, context: Mapping[str, Any]) -> Fields:
    # A tag alone is no message, so vio.decode does not apply; it must be exactly 8 bytes.
    if len(data) != vio.TAG.size:
        raise ValueError(f"a VIO tag is {vio.TAG.size} bytes, got {len(data)}")
    return _tag_out(vio.decode_tag(data))


def _wire_value(value: Any) -> Any:
    """A decoded attribute as a vector field: bytes as hex, cookies and records as objects."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, TransportCookie):
        return {"cookie_addr": value.addr, "cookie_size": value.size}
    if isinstance(value, (tuple, list)):
        return [_wire_value(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _wire_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def _cookies(fields: Mapping[str, Any]) -> list[TransportCookie]:
    return [TransportCookie(c["cookie_addr"], c["cookie_size"]) for c in fields["cookies"]]


Derived = Callable[[Mapping[str, Any]], Fields]


def _no_derived(_: Mapping[str, Any]) -> Fields:
    return {}


def _check_derived(derived: Derived, fields: Mapping[str, Any]) -> None:
    """Fields on the wire that follow from others (counts, lengths): a vector stating one must agree."""
    for name, value in derived(fields).items():
        if fields.get(name, value) != value:
            raise ValueError(f"{name} {fields[name]} but the other fields make it {value}")


def _vio_codec(
    cls: type,
    body: Mapping[str, Any],
    build: Callable[[vio.Tag, Mapping[str, Any]], Any],
    hex_fields: frozenset[str] = frozenset(),
    derived: Derived = _no_derived,
    view: Callable[[Any], Any] = lambda msg: msg,
    env: int | None = None,
) -> Codec:
    """A codec for one VIO message class.

    `body` maps the fields after the tag to their zero value (decoded from the
    attribute of the same name of `view(message)`: the message itself, or the
    device payload it carries parsed); `build` makes the message from the tag
    and the full fields; `derived` gives fields that follow from the others
    (DRING_REG's num_cookies), both as defaults and in the decoded output;
    `env`, when given, is the only `stype_env` the bytes may carry (device
    messages share one class, DeviceMessage).
    """

    def encode(fields: Mapping[str, Any]) -> bytes:
        _check_derived(derived, fields)
        return build(_tag(fields), fields).encode()

    def decode(data: bytes, context: Mapping[str, Any]) -> Fields:
        msg = vio.decode(data)
        if not isinstance(msg, cls):
            raise TypeError(f"bytes decode as {type(msg).__name__}, not {cls.__name__}")
        if env is not None and msg.tag.stype_env != env:
            raise ValueError(f"stype_env 0x{msg.tag.stype_env:04x}, not 0x{env:04x}")
        parsed = view(msg)
        out = {**_tag_out(msg.tag), **{name: _wire_value(getattr(parsed, name)) for name in body}}
        return {**out, **derived(out)}

    def defaults(fields: Mapping[str, Any]) -> Fields:
        return {**dict.fromkeys(_TAG_FIELDS, 0), **body, **derived(fields)}

    return Codec(encode, decode, defaults, hex_fields)


def _dring_reg(tag: vio.Tag, f: Mapping[str, Any]) -> vio.DringReg:
    return vio.DringReg(tag, f["dring_ident"], f["num_descr"], f["descr_size"], f["options"], tuple(_cookies(f)))


def _num_cookies(name: str, array: str = "cookies") -> Derived:
    return lambda f: {name: len(f.get(array, ()))}


_CTRL_BODY = CTRL_MSG_SIZE - vio.TAG.size  # ATTR_INFO's device payload


def _attr_codec(attrs: Any, zero: Any) -> Codec:
    """ATTR_INFO of one device class: the tag plus the fields of its attribute record."""
    return _vio_codec(
        vio.AttrInfo,
        _wire_value(zero),
        lambda t, f: vio.AttrInfo(t, _record(attrs, f).encode()),
        view=lambda msg: attrs.decode(msg.payload),
    )


# --- vdisk.* ---------------------------------------------------------------------
#
# vDisk payloads have no tag: they travel in descriptors and in the buffers the
# descriptors' cookies name. Their fields are those of the backend's own record
# classes (DiskAttrs, DiskRequest, Vtoc, Geometry, DeviceId, VdScsi), byte strings
# as hex. Counts and lengths on the wire follow from the arrays and byte strings
# (`derived`): optional in a vector, but they must agree when given. Every one of
# these structures has a single size for its fields, so a vector with bytes past
# them does not decode.


def _record(cls: type, fields: Mapping[str, Any], hex_fields: frozenset[str] = frozenset(), **given: Any) -> Any:
    """`cls` built from a vector's fields: its own field names only, hex ones as bytes."""
    values = {f.name: fields[f.name] for f in dataclasses.fields(cls) if f.name in fields}
    values.update((name, bytes.fromhex(values[name])) for name in hex_fields & values.keys())
    return cls(**{**values, **given})


def _byte_count(fields: Mapping[str, Any], name: str) -> int:
    return len(bytes.fromhex(fields.get(name, "")))


def _payload_codec(
    encode: Callable[[Mapping[str, Any]], bytes],
    decode: Callable[[bytes], Fields],
    zero: Fields,
    hex_fields: frozenset[str] = frozenset(),
    derived: Derived = _no_derived,
) -> Codec:
    """A codec for a device payload: `zero` is the full field set, zeroed."""

    def checked_encode(fields: Mapping[str, Any]) -> bytes:
        _check_derived(derived, fields)
        return encode(fields)

    def checked_decode(data: bytes, context: Mapping[str, Any]) -> Fields:
        out = decode(data)
        out.update(derived(out))
        used = len(encode(out))
        if used != len(data):
            raise ValueError(f"{len(data)} bytes, but the decoded fields account for {used}")
        return out

    return Codec(checked_encode, checked_decode, lambda f: {**zero, **derived(f)}, hex_fields)


def _record_codec(
    cls: type,
    parse: Callable[[bytes], Any],
    zero: Any,
    hex_fields: frozenset[str] = frozenset(),
    derived: Derived = _no_derived,
    build: Callable[[Mapping[str, Any]], Any] | None = None,
) -> Codec:
    """A codec for a record class with encode(): fields are its attributes (`zero` an instance)."""
    make = build or (lambda f: _record(cls, f, hex_fields))
    return _payload_codec(lambda f: make(f).encode(), lambda d: _wire_value(parse(d)), _wire_value(zero), hex_fields, derived)


def _struct_codec(layout: struct.Struct, *names: str) -> Codec:
    """A codec for a plain struct of integers (capacity, access, WCE)."""
    return _payload_codec(
        lambda f: layout.pack(*(f[name] for name in names)),
        lambda d: dict(zip(names, layout.unpack_from(d), strict=True)),
        dict.fromkeys(names, 0),
    )


_RING_HEADER = struct.Struct(">BB6x")  # dstate, ack: the head of every ring entry
assert _RING_HEADER.size == DESC_HEADER_SIZE


def _desc_encode(f: Mapping[str, Any]) -> bytes:
    request = _record(vdisk.DiskRequest, f, cookies=_cookies(f))
    return _RING_HEADER.pack(f["dstate"], f["ack"]) + request.encode()


def _desc_decode(data: bytes) -> Fields:
    dstate, ack = _RING_HEADER.unpack_from(data)
    body = data[_RING_HEADER.size :]
    request = vdisk.DiskRequest.decode(body, len(body) // TRANSPORT_COOKIE.size)
    return {"dstate": dstate, "ack": ack, **_wire_value(request)}


def _efi_decode(data: bytes) -> Fields:
    transfer = labels.EfiTransfer.decode(data)
    return {"lba": transfer.lba, "len": transfer.length, "data": transfer.data.hex()}


def _vtoc(f: Mapping[str, Any]) -> labels.Vtoc:
    return _record(labels.Vtoc, f, partitions=[labels.VtocPartition(**p) for p in f["partitions"]])


_SCSI_AREAS = {"cdb_len": "cdb", "sense_len": "sense", "datain_len": "data_in", "dataout_len": "data_out"}


# --- vnet.*, dds.vnet_niu -------------------------------------------------------------
#
# vio.attr_info.vnet is ATTR_INFO with the fields of vnet.NetAttrs (addr: the MAC as
# an integer, in the low 48 bits). vnet.mcast_info is the VNET_MCAST_INFO device
# message: set, count (derived from mcast_addr), mcast_addr (6-byte hex strings).
#
# vnet.desc is a ring entry: the ring header, size, ncookies (derived), cookies, and
# from 1.7 Linux's 8-byte extension `dext` {flags, hashval, ipv4_lso_mss, reserved}.
# Linux puts the extension at &desc->cookies[2] whatever ncookies is, so a descriptor
# with `dext` always has two cookie slots (an unused one zero) and is 56 bytes;
# without it, it is 16 + 16 * ncookies bytes (40 is no multiple of 16: never ambiguous).
# `dext.reserved` may be omitted (zero), and is decoded only when it is not zero.
#
# dds.vnet_niu is DDS_INFO with its 40-byte body typed as illumos dds.h types it
# (vio_dds_msg_t's union `msg`): ACK/NACK responses {status} (dds_share_resp_msg_t),
# ADD/DEL/REL_SHARE requests {macaddr, cookie} (dds_share_msg_t), MOD_SHARE requests
# {macaddr, cookie, rx_res_map, tx_res_map} (dds_share_modify_msg_t), all u64. The
# body bytes past the typed fields are `reserved` (hex, zero when omitted): illumos
# vnet answers in the request's own buffer, overwriting only `status`, so its
# responses still carry the request's cookie there. Other subclasses keep the raw
# `body` of vio.dds_info.


def _mcast(tag: vio.Tag, f: Mapping[str, Any]) -> vio.DeviceMessage:
    addrs = tuple(_hex_of_size({"mcast_addr": a}, "mcast_addr", 6) for a in f["mcast_addr"])
    return vio.DeviceMessage(tag, vnet.McastInfo(bool(f["set"]), addrs).encode())


def _mcast_view(msg: vio.DeviceMessage) -> Any:
    info = vnet.McastInfo.decode(msg.payload)
    return SimpleNamespace(set=int(info.set), mcast_addr=info.addrs)


_NET_DEXT = struct.Struct(">BBHI")  # flags, hashval, ipv4_lso_mss, reserved
_DEXT_FIELDS = ("flags", "hashval", "ipv4_lso_mss")
_DEXT_SLOTS = 2  # the extension sits where a third cookie would


def _net_desc_encode(f: Mapping[str, Any]) -> bytes:
    cookies = b"".join(c.encode() for c in _cookies(f))
    dext = f.get("dext")
    if dext is not None:
        if len(f["cookies"]) > _DEXT_SLOTS:
            raise ValueError(f"a descriptor with the extension has {_DEXT_SLOTS} cookie slots, not {len(f['cookies'])}")
        slots = cookies.ljust(_DEXT_SLOTS * TRANSPORT_COOKIE.size, b"\0")
        cookies = slots + _NET_DEXT.pack(*(dext[name] for name in _DEXT_FIELDS), dext.get("reserved", 0))
    return _RING_HEADER.pack(f["dstate"], f["ack"]) + vnet.DESC.pack(f["size"], len(f["cookies"])) + cookies


def _net_desc_decode(data: bytes) -> Fields:
    dstate, ack = _RING_HEADER.unpack_from(data)
    size, ncookies = vnet.DESC.unpack_from(data, _RING_HEADER.size)
    start = _RING_HEADER.size + vnet.DESC.size
    room = (len(data) - start) // TRANSPORT_COOKIE.size
    if ncookies > room:
        raise ValueError(f"ncookies {ncookies}, but {len(data)} bytes hold {room} cookies")
    cookies = [TransportCookie.decode(data, start + i * TRANSPORT_COOKIE.size) for i in range(ncookies)]
    out: Fields = {"dstate": dstate, "ack": ack, "size": size, "cookies": _wire_value(cookies)}
    dext_at = start + _DEXT_SLOTS * TRANSPORT_COOKIE.size
    if ncookies <= _DEXT_SLOTS and len(data) == dext_at + _NET_DEXT.size:
        *values, reserved = _NET_DEXT.unpack_from(data, dext_at)
        out["dext"] = {**dict(zip(_DEXT_FIELDS, values, strict=True)), **({"reserved": reserved} if reserved else {})}
    return out


_DDS_INFO = _vio_codec(
    vio.DdsInfo,
    {"dds_class": 0, "dds_subclass": 0, "dds_req_id": 0, "body": "00" * vio.DdsInfo.BODY_SIZE},
    lambda t, f: vio.DdsInfo(
        t, f["dds_class"], f["dds_subclass"], f["dds_req_id"], _hex_of_size(f, "body", vio.DdsInfo.BODY_SIZE)
    ),
    frozenset({"body"}),
)

_DDS_SHARE = (struct.Struct(">QQ"), ("macaddr", "cookie"))
_DDS_NIU_REQUESTS = {
    0x1: _DDS_SHARE,  # ADD_SHARE
    0x2: _DDS_SHARE,  # DEL_SHARE
    0x3: _DDS_SHARE,  # REL_SHARE
    0x4: (struct.Struct(">QQQQ"), ("macaddr", "cookie", "rx_res_map", "tx_res_map")),  # MOD_SHARE
}
_DDS_NIU_RESPONSE = (vnet.DDS_STATUS, ("status",))


def _dds_niu_body(fields: Mapping[str, Any]) -> tuple[struct.Struct, tuple[str, ...]] | None:
    """The typed layout of a DDS_INFO body (None: keep it as raw `body`)."""
    if fields.get("stype") in (SubType.ACK, SubType.NACK):
        return _DDS_NIU_RESPONSE
    return _DDS_NIU_REQUESTS.get(fields.get("dds_subclass", 0))


def _dds_niu_encode(f: Mapping[str, Any]) -> bytes:
    layout = _dds_niu_body(f)
    if layout is None:
        return _DDS_INFO.encode(f)
    body, names = layout
    raw = body.pack(*(f[name] for name in names)) + _hex_of_size(f, "reserved", vio.DdsInfo.BODY_SIZE - body.size)
    return _DDS_INFO.encode({**f, "body": raw.hex()})


def _dds_niu_decode(data: bytes, context: Mapping[str, Any]) -> Fields:
    out = _DDS_INFO.decode(data, context)
    layout = _dds_niu_body(out)
    if layout is None:
        return out
    body, names = layout
    raw = bytes.fromhex(out.pop("body"))
    return {**out, **dict(zip(names, body.unpack_from(raw), strict=True)), "reserved": raw[body.size :].hex()}


def _dds_niu_defaults(fields: Mapping[str, Any]) -> Fields:
    generic = _DDS_INFO.defaults(fields)
    layout = _dds_niu_body(fields)
    if layout is None:
        return generic
    body, names = layout
    del generic["body"]
    return {**generic, **dict.fromkeys(names, 0), "reserved": "00" * (vio.DdsInfo.BODY_SIZE - body.size)}


# --- Domain Services: whole messages (8-byte header + payload) -------------------------


def _ds_codec(cls: type, kind: ds.MsgType, zero: Any, hex_fields: frozenset[str] = frozenset()) -> Codec:
    """A DS message: the header fields msg_type and payload_len, then the message's own."""
    names = [f.name for f in dataclasses.fields(cls)]

    def encode(f: Mapping[str, Any]) -> bytes:
        message = cls(**{n: bytes.fromhex(f[n]) if n in hex_fields else f[n] for n in names})
        return ds.encode(message)

    def decode(data: bytes) -> Fields:
        msg_type, _ = ds.HEADER.unpack_from(data, 0)
        if msg_type != kind:
            raise TypeError(f"message type 0x{msg_type:x}, expected {kind.name}")
        message = ds.decode(msg_type, data[ds.HEADER.size :])
        return {n: _wire_value(getattr(message, n)) for n in names}

    def derived(f: Mapping[str, Any]) -> Fields:
        return {"msg_type": int(kind)}

    def payload_len(f: Mapping[str, Any]) -> Fields:
        return {**derived(f), "payload_len": len(encode({**_wire_value_dict(zero), **f})) - ds.HEADER.size}

    return _payload_codec(encode, decode, _wire_value_dict(zero), hex_fields, payload_len)


def _wire_value_dict(record: Any) -> Fields:
    return {f.name: _wire_value(getattr(record, f.name)) for f in dataclasses.fields(record)}


_DS_MESSAGES: dict[str, tuple[type, ds.MsgType, Any, frozenset[str]]] = {
    "ds.init_req": (ds.InitReq, ds.MsgType.INIT_REQ, ds.InitReq(0, 0), frozenset()),
    "ds.init_ack": (ds.InitAck, ds.MsgType.INIT_ACK, ds.InitAck(0), frozenset()),
    "ds.init_nack": (ds.InitNack, ds.MsgType.INIT_NACK, ds.InitNack(0), frozenset()),
    "ds.reg_req": (ds.RegReq, ds.MsgType.REG_REQ, ds.RegReq(0, 0, 0, "x"), frozenset()),
    "ds.reg_ack": (ds.RegAck, ds.MsgType.REG_ACK, ds.RegAck(0, 0), frozenset()),
    "ds.reg_nack": (ds.RegNack, ds.MsgType.REG_NACK, ds.RegNack(0, 0, 0), frozenset()),
    "ds.unreg_req": (ds.UnregReq, ds.MsgType.UNREG_REQ, ds.UnregReq(0), frozenset()),
    "ds.unreg_ack": (ds.UnregAck, ds.MsgType.UNREG_ACK, ds.UnregAck(0), frozenset()),
    "ds.unreg_nack": (ds.UnregNack, ds.MsgType.UNREG_NACK, ds.UnregNack(0), frozenset()),
    "ds.data": (ds.Data, ds.MsgType.DATA, ds.Data(0, b""), frozenset({"payload"})),
    "ds.nack": (ds.Nack, ds.MsgType.NACK, ds.Nack(0, 0), frozenset()),
}


REGISTRY: dict[str, Codec] = {
    "ldc.packet": Codec(_packet_encode, _packet_decode, _packet_defaults, frozenset({"payload"})),
    "ldc.transport_cookie": Codec(
        _cookie_encode, _cookie_decode, lambda _: {"cookie_addr": 0, "cookie_size": 0}
    ),
    "vio.tag": Codec(
        lambda f: _tag(f).encode(), _tag_decode, lambda _: dict.fromkeys(_TAG_FIELDS, 0)
    ),
    "vio.ver_info": _vio_codec(
        vio.VerInfo,
        {"major": 0, "minor": 0, "dev_class": 0},
        lambda t, f: vio.VerInfo(t, f["major"], f["minor"], f["dev_class"]),
    ),
    "vio.attr_info": _vio_codec(
        vio.AttrInfo,
        {"payload": "00" * _CTRL_BODY},
        lambda t, f: vio.AttrInfo(t, _hex_of_size(f, "payload", _CTRL_BODY)),
        frozenset({"payload"}),
    ),
    "vio.dring_reg": _vio_codec(
        vio.DringReg,
        {"dring_ident": 0, "num_descr": 0, "descr_size": 0, "options": 0, "cookies": []},
        _dring_reg,
        derived=_num_cookies("num_cookies"),
    ),
    "vio.dring_unreg": _vio_codec(
        vio.DringUnreg, {"dring_ident": 0}, lambda t, f: vio.DringUnreg(t, f["dring_ident"])
    ),
    "vio.rdx": _vio_codec(vio.Rdx, {}, lambda t, f: vio.Rdx(t)),
    "vio.dring_data": _vio_codec(
        vio.DringData,
        {"seq": 0, "dring_ident": 0, "start_idx": 0, "end_idx": 0, "state": 0},
        lambda t, f: vio.DringData(t, f["seq"], f["dring_ident"], f["start_idx"], f["end_idx"], f["state"]),
    ),
    "vio.desc_data": _vio_codec(
        vio.DescData,
        {"seq": 0, "desc_handle": 0, "payload": ""},
        lambda t, f: vio.DescData(t, f["seq"], f["desc_handle"], _hex_of_size(f, "payload")),
        frozenset({"payload"}),
    ),
    "vio.dds_info": _DDS_INFO,
    "vio.pkt_data": _vio_codec(
        vio.PktData, {"seq": 0, "data": ""}, lambda t, f: vio.PktData(t, f["seq"], _hex_of_size(f, "data")),
        frozenset({"data"}),
    ),
    "vio.attr_info.vdisk": _attr_codec(vdisk.DiskAttrs, vdisk.DiskAttrs(0)),
    "vio.attr_info.vnet": _attr_codec(vnet.NetAttrs, vnet.NetAttrs(0, 0, 0, 0, 0, 0, 0)),
    "vnet.mcast_info": _vio_codec(
        vio.DeviceMessage,
        {"set": 0, "mcast_addr": []},
        _mcast,
        frozenset({"mcast_addr"}),
        _num_cookies("count", "mcast_addr"),
        view=_mcast_view,
        env=vnet.MCAST_INFO,
    ),
    "vnet.desc": _payload_codec(
        _net_desc_encode,
        _net_desc_decode,
        {"dstate": 0, "ack": 0, "size": 0, "cookies": []},
        derived=_num_cookies("ncookies"),
    ),
    "dds.vnet_niu": Codec(_dds_niu_encode, _dds_niu_decode, _dds_niu_defaults, frozenset({"body", "reserved"})),
    "vdisk.desc": _payload_codec(
        _desc_encode,
        _desc_decode,
        {"dstate": 0, "ack": 0, **_wire_value(vdisk.DiskRequest(0, 0, 0, 0, 0, 0))},
        derived=_num_cookies("ncookies"),
    ),
    "vdisk.vtoc": _record_codec(
        labels.Vtoc, labels.Vtoc.decode, labels.Vtoc(sector_size=0, num_partitions=0), build=_vtoc
    ),
    "vdisk.geom": _record_codec(labels.Geometry, labels.Geometry.decode, labels.Geometry()),
    "vdisk.capacity": _struct_codec(vdisk.CAPACITY, "vdisk_block_size", "vdisk_size"),
    "vdisk.access": _struct_codec(vdisk.ACCESS, "access"),
    "vdisk.wce": _struct_codec(vdisk.WCE, "wce"),
    "vdisk.devid": _record_codec(
        DeviceId, DeviceId.decode, DeviceId(0, b""), frozenset({"id"}), lambda f: {"len": _byte_count(f, "id")}
    ),
    "vdisk.efi": _payload_codec(
        lambda f: labels.EfiTransfer(f["lba"], f["len"], bytes.fromhex(f["data"])).encode(),
        _efi_decode,
        {"lba": 0, "len": 0, "data": ""},
        frozenset({"data"}),
    ),
    "vdisk.scsi": _record_codec(
        scsi.VdScsi,
        lambda d: scsi.VdScsi.decode(d, exact=True),
        scsi.VdScsi(b""),
        frozenset(_SCSI_AREAS.values()),
        lambda f: {length: _byte_count(f, area) for length, area in _SCSI_AREAS.items()},
    ),
}


# --- running vectors ----------------------------------------------------------


def load_vectors(path: str | Path) -> list[dict[str, Any]]:
    """The vectors of one file; raises VectorFileError if it is not our format."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise VectorFileError(f"{path}: cannot read vectors: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise VectorFileError(f"{path}: unknown vectors format {found!r}, expected {FORMAT!r}")
    vectors = doc.get("vectors")
    if not isinstance(vectors, list):
        raise VectorFileError(f"{path}: 'vectors' must be a list")
    for i, v in enumerate(vectors):
        where = f"{path}: vector {i} ({v.get('name', '?') if isinstance(v, dict) else '?'})"
        if not isinstance(v, dict):
            raise VectorFileError(f"{where}: not an object")
        for key, kind in (("name", str), ("message", str), ("fields", dict), ("hex", str)):
            if not isinstance(v.get(key), kind):
                raise VectorFileError(f"{where}: '{key}' missing or not a {kind.__name__}")
        if v.get("direction", "both") not in DIRECTIONS:
            raise VectorFileError(f"{where}: direction {v['direction']!r} not one of {DIRECTIONS}")
    return vectors


def implemented(vector: Mapping[str, Any]) -> bool:
    return vector["message"] in REGISTRY


def run_vector(vector: Mapping[str, Any]) -> list[str]:
    """Problems found with one vector (empty: it conforms).

    Raises NotImplementedError for a message with no codec: the caller counts and
    reports those instead of passing them.
    """
    codec = REGISTRY.get(vector["message"])
    if codec is None:
        raise NotImplementedError(f"message {vector['message']!r} not implemented")
    problems: list[str] = []
    try:
        data = bytes.fromhex(vector["hex"])
        expected = codec.expected(vector["fields"])
    except ValueError as exc:
        return [f"bad vector: {exc}"]
    try:
        decoded = codec.decode(data, vector["fields"])
    except Exception as exc:  # any failure is a finding about this vector
        problems.append(f"decode raised {type(exc).__name__}: {exc}")
    else:
        for name in sorted(expected.keys() | decoded.keys()):
            want, got = expected.get(name, "<absent>"), decoded.get(name, "<absent>")
            if want != got:
                problems.append(f"decode: field {name}: expected {want!r}, decoded {got!r}")
    if vector.get("direction", "both") == "decode":
        return problems
    try:
        encoded = codec.encode(expected).hex()
    except Exception as exc:
        problems.append(f"encode raised {type(exc).__name__}: {exc}")
    else:
        if encoded != data.hex():
            problems.append(f"encode: expected {data.hex()}, encoded {encoded}")
    return problems

REGISTRY.update({name: _ds_codec(*spec) for name, spec in _DS_MESSAGES.items()})


_VAR_CONFIG_ZERO: Fields = {"type": 0, "name": "", "value": "", "result": 0}


def _var_config_message(f: Mapping[str, Any]) -> var_config.Message:
    kind = var_config.Type(f["type"])
    if kind == var_config.Type.SET_REQ:
        return var_config.SetRequest(f["name"], f["value"])
    if kind == var_config.Type.DELETE_REQ:
        return var_config.DeleteRequest(f["name"])
    return var_config.Response(kind, f["result"])


def _var_config_fields(payload: bytes) -> Fields:
    message = var_config.decode(payload)
    if isinstance(message, var_config.Response):
        return {**_VAR_CONFIG_ZERO, "type": int(message.type), "result": message.result}
    if isinstance(message, var_config.SetRequest):
        return {**_VAR_CONFIG_ZERO, "type": int(var_config.Type.SET_REQ), "name": message.name, "value": message.value}
    return {**_VAR_CONFIG_ZERO, "type": int(var_config.Type.DELETE_REQ), "name": message.name}


# Payloads of the well-known DS services (the bytes after the 16-byte DATA header).
REGISTRY.update({
    "ds.domain_shutdown.request": _record_codec(
        domain_shutdown.Request, domain_shutdown.Request.decode, domain_shutdown.Request(0, 0)
    ),
    "ds.domain_shutdown.response": _record_codec(
        domain_shutdown.Response, domain_shutdown.Response.decode, domain_shutdown.Response(0, 0)
    ),
    "ds.md_update.request": _record_codec(md_update.Request, md_update.Request.decode, md_update.Request(0)),
    "ds.md_update.response": _record_codec(md_update.Response, md_update.Response.decode, md_update.Response(0, 0)),
    "ds.var_config": _payload_codec(
        lambda f: var_config.encode(_var_config_message(f)), _var_config_fields, _VAR_CONFIG_ZERO
    ),
})
