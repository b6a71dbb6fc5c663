"""Disk labels for the vDisk server: protocol VTOC/geometry/EFI codecs, Sun SMI labels, GPT.

The vDisk protocol exchanges partition information as big-endian structures
(GET/SET_VTOC, GET/SET_DISKGEOM, GET/SET_EFI). On the backing store the same
information lives either in a Sun SMI label in block 0 (big-endian, VTOC_8
layout, the one SPARC Solaris and util-linux's "sun" label use) or in a GPT
(little-endian, UEFI). This module converts between the two views. Every
error is an OSError carrying an errno the server can put in a descriptor's
status: EINVAL for bad input, EIO when a label cannot be read, ENOTSUP when
the disk has no valid label of the asked kind. Layout notes: docs/vdisk-labels.md.
"""

from __future__ import annotations

import errno
import itertools
import os
import struct
import uuid
import zlib
from dataclasses import dataclass, field, replace

from backend.vdisk.blockio import BlockIO

# ---------------------------------------------------------------------------
# errors


def _err(code: int, message: str) -> OSError:
    """One place to build errno-carrying errors, so messages read alike."""
    return OSError(code, f"{os.strerror(code)}: {message}")


def _read(disk: BlockIO, offset: int, length: int) -> bytes:
    """Read label bytes; any failure of the store means the label is unreadable (EIO)."""
    try:
        data = disk.read(offset, length)
    except OSError as exc:
        raise _err(errno.EIO, f"cannot read {length} bytes at {offset}: {exc}") from exc
    if len(data) != length:
        raise _err(errno.EIO, f"short read of {len(data)}/{length} bytes at {offset}")
    return data


def _text(raw: bytes) -> str:
    """Fixed-size C string field -> str; latin-1 so any byte round-trips."""
    return raw.split(b"\0", 1)[0].decode("latin-1")


def _field(value: str, size: int, what: str) -> bytes:
    """str -> NUL-padded fixed-size field; EINVAL when it does not fit."""
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise _err(errno.EINVAL, f"{what} is not latin-1: {value!r}") from exc
    if len(raw) > size:
        raise _err(errno.EINVAL, f"{what} longer than {size} bytes: {value!r}")
    return raw.ljust(size, b"\0")


def _check_size(data: bytes, size: int, what: str) -> None:
    """Wire structures have one size; anything else is a malformed request."""
    if len(data) != size:
        raise _err(errno.EINVAL, f"{what} must be {size} bytes, got {len(data)}")


def _pack(fmt: str, *values: int) -> bytes:
    """struct.pack that reports out-of-range fields as EINVAL rather than struct.error."""
    try:
        return struct.pack(fmt, *values)
    except struct.error as exc:
        raise _err(errno.EINVAL, f"field out of range: {exc}") from exc


# ---------------------------------------------------------------------------
# protocol structures (big-endian)

NDKMAP = 8
V_NUMPAR = 8
V_BACKUP = 0x05  # tag of the slice that covers the whole disk
V_UNMNT = 0x01
V_RONLY = 0x10
VD_ENTIRE_DISK_SLICE = 2

_VTOC_HEAD = struct.Struct(">8sHH128s4x")
_VTOC_PART = struct.Struct(">HHIQQ")
VTOC_SIZE = _VTOC_HEAD.size + 8 * _VTOC_PART.size  # 336


@dataclass
class VtocPartition:
    """One slice as the protocol describes it: tag, flags, absolute start and size in blocks."""

    id: int = 0
    perm_flags: int = 0
    start_block: int = 0
    num_blocks: int = 0


def _empty_partitions() -> list[VtocPartition]:
    return [VtocPartition() for _ in range(NDKMAP)]


@dataclass
class Vtoc:
    """The GET/SET_VTOC payload (336 bytes on the wire)."""

    SIZE = _VTOC_HEAD.size + NDKMAP * _VTOC_PART.size

    volume_name: str = ""
    sector_size: int = 512
    num_partitions: int = V_NUMPAR
    ascii_label: str = ""
    partitions: list[VtocPartition] = field(default_factory=_empty_partitions)

    def encode(self) -> bytes:
        """Wire bytes; always 8 partition slots (missing ones are zero)."""
        if len(self.partitions) > NDKMAP:
            raise _err(errno.EINVAL, f"a VTOC holds {NDKMAP} partitions, got {len(self.partitions)}")
        head = _VTOC_HEAD.pack(
            _field(self.volume_name, 8, "volume name"),
            *_u16s(self.sector_size, self.num_partitions),
            _field(self.ascii_label, 128, "ascii label"),
        )
        parts = self.partitions + _empty_partitions()[len(self.partitions) :]
        body = b"".join(_pack(">HHIQQ", p.id, p.perm_flags, 0, p.start_block, p.num_blocks) for p in parts)
        return head + body

    @classmethod
    def decode(cls, data: bytes) -> Vtoc:
        """Parse exactly SIZE bytes; reserved fields are ignored as the protocol asks."""
        _check_size(data, cls.SIZE, "VTOC")
        volume, sector_size, nparts, label = _VTOC_HEAD.unpack_from(data, 0)
        parts = []
        for i in range(NDKMAP):
            pid, flags, _reserved, start, size = _VTOC_PART.unpack_from(data, _VTOC_HEAD.size + i * _VTOC_PART.size)
            parts.append(VtocPartition(pid, flags, start, size))
        return cls(_text(volume), sector_size, nparts, _text(label), parts)


def _u16s(*values: int) -> tuple[int, ...]:
    """Range-check values destined for u16 fields (EINVAL otherwise)."""
    for v in values:
        if not 0 <= v <= 0xFFFF:
            raise _err(errno.EINVAL, f"{v} does not fit in 16 bits")
    return values


_GEOM = struct.Struct(">11H")
GEOMETRY_SIZE = _GEOM.size  # 22


@dataclass
class Geometry:
    """The GET/SET_DISKGEOM payload: eleven u16 (22 bytes), Solaris dk_geom order."""

    SIZE = _GEOM.size

    num_cyl: int = 0
    alt_cyl: int = 0
    beg_cyl: int = 0
    num_hd: int = 0
    num_sec: int = 0
    ifact: int = 0
    apc: int = 0
    rpm: int = 0
    phy_cyl: int = 0
    wr_skip: int = 0
    rd_skip: int = 0

    def _values(self) -> tuple[int, ...]:
        return (
            self.num_cyl, self.alt_cyl, self.beg_cyl, self.num_hd, self.num_sec, self.ifact,
            self.apc, self.rpm, self.phy_cyl, self.wr_skip, self.rd_skip,
        )

    def encode(self) -> bytes:
        return _GEOM.pack(*_u16s(*self._values()))

    @classmethod
    def decode(cls, data: bytes) -> Geometry:
        _check_size(data, cls.SIZE, "geometry")
        return cls(*_GEOM.unpack(data))

    @property
    def blocks_per_cyl(self) -> int:
        """Cylinder size in blocks: the unit SMI maps count starts in."""
        return self.num_hd * self.num_sec


_EFI_HEAD = struct.Struct(">QQ")


@dataclass
class EfiTransfer:
    """The GET/SET_EFI payload: lba u64, length u64, then `length` bytes of data."""

    HEADER_SIZE = _EFI_HEAD.size

    lba: int
    length: int
    data: bytes = b""

    def encode(self) -> bytes:
        """Header plus data zero-padded to `length` (the client's buffer size)."""
        if len(self.data) > self.length:
            raise _err(errno.EINVAL, f"{len(self.data)} bytes of EFI data exceed length {self.length}")
        return _pack(">QQ", self.lba, self.length) + self.data.ljust(self.length, b"\0")

    @classmethod
    def decode(cls, buf: bytes) -> EfiTransfer:
        """Parse a request/reply buffer; EINVAL if it is shorter than its own length field says."""
        if len(buf) < cls.HEADER_SIZE:
            raise _err(errno.EINVAL, f"EFI transfer shorter than its {cls.HEADER_SIZE}-byte header")
        lba, length = _EFI_HEAD.unpack_from(buf, 0)
        if len(buf) - cls.HEADER_SIZE < length:
            raise _err(errno.EINVAL, f"EFI transfer claims {length} data bytes, buffer has {len(buf) - cls.HEADER_SIZE}")
        return cls(lba, length, bytes(buf[cls.HEADER_SIZE : cls.HEADER_SIZE + length]))


# ---------------------------------------------------------------------------
# Sun SMI label (VTOC_8 dk_label, block 0, 512 bytes, big-endian)

DKL_MAGIC = 0xDABE
VTOC_SANE = 0x600DDEEE
V_VERSION = 1
DK_LABEL_SIZE = 512
DK_ACYL = 2
SMI_BACKUP_LABELS = 5  # copies on odd sectors of the last track of the last alternate cylinder

# offsets inside the 512-byte label (see docs/vdisk-labels.md for the table)
_SMI_VTOC = struct.Struct(">I8sH16H2x3II40x8I")  # offset 128, 136 bytes
_SMI_REINSTRUCT = struct.Struct(">HH")  # offset 264 (u16 each, as illumos declares them)
_SMI_GEOM = struct.Struct(">12H")  # offset 420: rpm pcyl apc obs1 obs2 intrlv ncyl acyl nhead nsect obs3 obs4
_SMI_MAP = struct.Struct(">16I")  # offset 444: (cylno, nblk) x 8
_SMI_TAIL = struct.Struct(">HH")  # offset 508: magic, checksum


@dataclass
class SmiPartition:
    """One on-disk slice: tag/flag from the VTOC part, start cylinder/size from the map."""

    tag: int = 0
    flag: int = 0
    start_cyl: int = 0
    num_blocks: int = 0


def _empty_smi_partitions() -> list[SmiPartition]:
    return [SmiPartition() for _ in range(NDKMAP)]


@dataclass
class SmiLabel:
    """A decoded dk_label; encode() fills in magic and checksum."""

    ascii_label: str = ""
    volume_name: str = ""
    version: int = V_VERSION
    num_partitions: int = V_NUMPAR
    partitions: list[SmiPartition] = field(default_factory=_empty_smi_partitions)
    bootinfo: tuple[int, int, int] = (0, 0, 0)
    sanity: int = VTOC_SANE
    timestamps: tuple[int, ...] = (0,) * NDKMAP
    write_reinstruct: int = 0
    read_reinstruct: int = 0
    rpm: int = 0
    pcyl: int = 0
    apc: int = 0
    intrlv: int = 0
    ncyl: int = 0
    acyl: int = 0
    nhead: int = 0
    nsect: int = 0

    def encode(self) -> bytes:
        """512 label bytes whose 16-bit words XOR to zero."""
        if len(self.partitions) != NDKMAP:
            raise _err(errno.EINVAL, f"an SMI label has {NDKMAP} partitions, got {len(self.partitions)}")
        buf = bytearray(DK_LABEL_SIZE)
        buf[0:128] = _field(self.ascii_label, 128, "ascii label")
        tags = [v for p in self.partitions for v in (p.tag, p.flag)]
        _SMI_VTOC.pack_into(buf, 128, *_vtoc_fields(self, tags))
        _SMI_REINSTRUCT.pack_into(buf, 264, *_u16s(self.write_reinstruct, self.read_reinstruct))
        geom = (self.rpm, self.pcyl, self.apc, 0, 0, self.intrlv, self.ncyl, self.acyl, self.nhead, self.nsect, 0, 0)
        _SMI_GEOM.pack_into(buf, 420, *_u16s(*geom))
        cmap = [v for p in self.partitions for v in (p.start_cyl, p.num_blocks)]
        buf[444:508] = _pack(">16I", *cmap)
        _SMI_TAIL.pack_into(buf, 508, DKL_MAGIC, 0)
        _SMI_TAIL.pack_into(buf, 508, DKL_MAGIC, smi_checksum(bytes(buf)))
        return bytes(buf)

    @classmethod
    def decode(cls, data: bytes) -> SmiLabel:
        """Parse a label; ENOTSUP unless magic is 0xDABE and the words XOR to zero."""
        _check_size(data, DK_LABEL_SIZE, "SMI label")
        magic, _ = _SMI_TAIL.unpack_from(data, 508)
        if magic != DKL_MAGIC:
            raise _err(errno.ENOTSUP, f"no SMI label (magic {magic:#06x})")
        if smi_checksum(data) != 0:
            raise _err(errno.ENOTSUP, "SMI label checksum mismatch")
        version, volume, nparts, *rest = _SMI_VTOC.unpack_from(data, 128)
        tags, bootinfo, sanity, stamps = rest[:16], rest[16:19], rest[19], rest[20:28]
        wr, rd = _SMI_REINSTRUCT.unpack_from(data, 264)
        rpm, pcyl, apc, _o1, _o2, intrlv, ncyl, acyl, nhead, nsect, _o3, _o4 = _SMI_GEOM.unpack_from(data, 420)
        cmap = _SMI_MAP.unpack_from(data, 444)
        parts = [SmiPartition(tags[2 * i], tags[2 * i + 1], cmap[2 * i], cmap[2 * i + 1]) for i in range(NDKMAP)]
        return cls(
            _text(data[:128]), _text(volume), version, nparts, parts, tuple(bootinfo), sanity, tuple(stamps),
            wr, rd, rpm, pcyl, apc, intrlv, ncyl, acyl, nhead, nsect,
        )

    def to_geometry(self) -> Geometry:
        """Protocol geometry; bcyl has no place in a VTOC_8 label so it reads as 0."""
        return Geometry(
            num_cyl=self.ncyl, alt_cyl=self.acyl, beg_cyl=0, num_hd=self.nhead, num_sec=self.nsect,
            ifact=self.intrlv, apc=self.apc, rpm=self.rpm, phy_cyl=self.pcyl,
            wr_skip=self.write_reinstruct, rd_skip=self.read_reinstruct,
        )

    def to_vtoc(self, sector_size: int) -> Vtoc:
        """Protocol VTOC; starts become absolute blocks (cylinder x blocks per cylinder)."""
        spc = self.nhead * self.nsect
        parts = [VtocPartition(p.tag, p.flag, p.start_cyl * spc, p.num_blocks) for p in self.partitions]
        return Vtoc(self.volume_name, sector_size, self.num_partitions, self.ascii_label, parts)


def _vtoc_fields(label: SmiLabel, tags: list[int]) -> tuple:
    """Values for the VTOC part of the label in struct order, range-checked."""
    if len(label.bootinfo) != 3 or len(label.timestamps) != NDKMAP:
        raise _err(errno.EINVAL, "SMI label needs 3 bootinfo words and 8 timestamps")
    _u16s(label.num_partitions, *tags)
    values = (label.version, *label.bootinfo, label.sanity, *label.timestamps)
    if any(not 0 <= v <= 0xFFFFFFFF for v in values):
        raise _err(errno.EINVAL, "SMI label VTOC field does not fit in 32 bits")
    return (
        label.version, _field(label.volume_name, 8, "volume name"), label.num_partitions,
        *tags, *label.bootinfo, label.sanity, *label.timestamps,
    )


def smi_checksum(label: bytes) -> int:
    """XOR of all big-endian 16-bit words; a stored label XORs to 0 with its checksum included."""
    words = struct.unpack(f">{len(label) // 2}H", label[: len(label) // 2 * 2])
    acc = 0
    for w in words:
        acc ^= w
    return acc


def smi_from_vtoc(vtoc: Vtoc, geometry: Geometry, block_size: int = 512) -> SmiLabel:
    """Build the on-disk label for a SET_VTOC/SET_DISKGEOM pair; EINVAL on anything unlabelable."""
    spc = _check_geometry(geometry)
    if vtoc.sector_size not in (0, block_size):
        raise _err(errno.EINVAL, f"VTOC sector size {vtoc.sector_size} != disk block size {block_size}")
    if not 0 < vtoc.num_partitions <= NDKMAP or len(vtoc.partitions) > NDKMAP:
        raise _err(errno.EINVAL, f"an SMI label holds at most {NDKMAP} partitions")
    parts = [_smi_partition(i, p, spc) for i, p in enumerate(vtoc.partitions)]
    parts += _empty_smi_partitions()[len(parts) :]
    return SmiLabel(
        ascii_label=vtoc.ascii_label, volume_name=vtoc.volume_name, num_partitions=vtoc.num_partitions,
        partitions=parts, write_reinstruct=geometry.wr_skip, read_reinstruct=geometry.rd_skip,
        rpm=geometry.rpm, pcyl=geometry.phy_cyl, apc=geometry.apc, intrlv=geometry.ifact,
        ncyl=geometry.num_cyl, acyl=geometry.alt_cyl, nhead=geometry.num_hd, nsect=geometry.num_sec,
    )


def _check_geometry(geometry: Geometry) -> int:
    """Blocks per cylinder, after rejecting geometries a label cannot describe."""
    _u16s(*geometry._values())
    if geometry.num_hd == 0 or geometry.num_sec == 0 or geometry.num_cyl == 0:
        raise _err(errno.EINVAL, "geometry needs non-zero cylinders, heads and sectors")
    return geometry.blocks_per_cyl


def _smi_partition(index: int, part: VtocPartition, spc: int) -> SmiPartition:
    """Protocol slice -> map entry; the map can only start slices on cylinder boundaries."""
    if part.start_block % spc:
        raise _err(errno.EINVAL, f"slice {index} starts at block {part.start_block}, not a multiple of {spc}")
    cyl = part.start_block // spc
    if cyl > 0xFFFFFFFF or not 0 <= part.num_blocks <= 0xFFFFFFFF:
        raise _err(errno.EINVAL, f"slice {index} does not fit the 32-bit SMI map")
    _u16s(part.id, part.perm_flags)
    return SmiPartition(part.id, part.perm_flags, cyl, part.num_blocks)


def read_smi(disk: BlockIO) -> tuple[Vtoc, Geometry]:
    """GET_VTOC/GET_DISKGEOM from block 0; ENOTSUP without a valid label, EIO if unusable."""
    if disk.size_bytes < DK_LABEL_SIZE:
        raise _err(errno.ENOTSUP, "disk too small for an SMI label")
    label = SmiLabel.decode(_read(disk, 0, DK_LABEL_SIZE))
    if label.nhead == 0 or label.nsect == 0:
        raise _err(errno.EIO, "SMI label has zero heads or sectors")
    return label.to_vtoc(disk.block_size), label.to_geometry()


def write_smi(disk: BlockIO, vtoc: Vtoc, geometry: Geometry) -> SmiLabel:
    """SET_VTOC: write the label to block 0 plus Solaris-style backups; return what was written."""
    label = smi_from_vtoc(vtoc, geometry, disk.block_size)
    _check_fits(disk, vtoc, geometry)
    raw = label.encode()
    _wipe_gpt_headers(disk)
    disk.write(0, raw)
    for lba in smi_backup_lbas(geometry, disk.size_bytes // disk.block_size):
        disk.write(lba * disk.block_size, raw)
    disk.flush()
    return label


def _check_fits(disk: BlockIO, vtoc: Vtoc, geometry: Geometry) -> None:
    """Data cylinders and every slice must lie inside the disk."""
    disk_blocks = disk.size_bytes // disk.block_size
    data_blocks = geometry.num_cyl * geometry.blocks_per_cyl
    if data_blocks > disk_blocks:
        raise _err(errno.EINVAL, f"geometry describes {data_blocks} blocks, disk has {disk_blocks}")
    for i, p in enumerate(vtoc.partitions):
        if p.num_blocks and p.start_block + p.num_blocks > data_blocks:
            raise _err(errno.EINVAL, f"slice {i} ends past the {data_blocks} data blocks")


def smi_backup_lbas(geometry: Geometry, disk_blocks: int) -> list[int]:
    """Where Solaris keeps backup labels: odd sectors 1,3,..,9 of the last track of the last cylinder."""
    if geometry.alt_cyl == 0:
        return []
    cyl = geometry.num_cyl + geometry.alt_cyl - 1
    track = cyl * (geometry.blocks_per_cyl - geometry.apc) + (geometry.num_hd - 1) * geometry.num_sec
    sectors = [s for s in range(1, 2 * SMI_BACKUP_LABELS, 2) if s < geometry.num_sec]
    return [track + s for s in sectors if track + s < disk_blocks]


def _wipe_gpt_headers(disk: BlockIO) -> None:
    """An SMI label replaces a GPT: drop both GPT headers so no tool sees two labels."""
    bs = disk.block_size
    last = disk.size_bytes // bs - 1
    for lba in (1, last):
        if lba >= 1 and _read(disk, lba * bs, 8) == GPT_SIGNATURE:
            disk.write(lba * bs, bytes(bs))


# default label for an unlabelled disk, as illumos vds builds it
ONE_MIB = 1 << 20
ONE_GIB = 1 << 30
DEFAULT_RPM = 7200


def default_geometry(size_bytes: int, block_size: int = 512) -> Geometry:
    """Geometry vds offers for a blank disk: cylinder size grows in two steps with disk size."""
    if size_bytes < 0 or block_size <= 0:
        raise _err(errno.EINVAL, "size and block size must be positive")
    if size_bytes >= 8 * ONE_GIB:
        nhead, nsect = 96, 768
    elif size_bytes >= 2 * ONE_MIB:
        nhead, nsect = 1, 600
    else:
        nhead, nsect = 1, 200
    pcyl = max(size_bytes // (nhead * nsect * block_size), 1)
    if pcyl > 0xFFFF:
        raise _err(errno.ENOTSUP, f"{size_bytes} bytes is too large for an SMI geometry")
    acyl = DK_ACYL if pcyl > 2 else 0
    return Geometry(
        num_cyl=pcyl - acyl, alt_cyl=acyl, num_hd=nhead, num_sec=nsect, rpm=DEFAULT_RPM, phy_cyl=pcyl,
    )


def default_vtoc(size_bytes: int, block_size: int = 512, geometry: Geometry | None = None) -> Vtoc:
    """VTOC vds offers for a blank disk: only the backup slice 2, spanning all data cylinders."""
    geom = geometry or default_geometry(size_bytes, block_size)
    parts = _empty_partitions()
    parts[VD_ENTIRE_DISK_SLICE] = VtocPartition(V_BACKUP, 0, 0, geom.num_cyl * geom.blocks_per_cyl)
    label = (
        f"SUN-DiskImage-{_readable_size(size_bytes)}B cyl {geom.num_cyl} alt {geom.alt_cyl}"
        f" hd {geom.num_hd} sec {geom.num_sec}"
    )
    return Vtoc("", block_size, V_NUMPAR, label, parts)


def _readable_size(size: int) -> str:
    """Truncated size with a K/M/G/T unit, as the default ascii label spells it."""
    for shift, unit in ((20, "K"), (30, "M"), (40, "G")):
        if size < (1 << shift):
            return f"{size >> (shift - 10)}{unit}"
    return f"{size >> 40}T"


# ---------------------------------------------------------------------------
# GPT (UEFI, little-endian)

GPT_SIGNATURE = b"EFI PART"
GPT_REVISION = 0x00010000
GPT_HEADER_SIZE = 92
GPT_ENTRY_SIZE = 128
GPT_NUM_ENTRIES = 128
GPT_NAME_UNITS = 36
MAX_ENTRY_ARRAY = 1 << 20  # refuse absurd arrays from a corrupt header instead of allocating them
PMBR_TYPE = 0xEE

_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_GPT_ENTRY = struct.Struct("<16s16sQQQ72s")


@dataclass
class GptHeader:
    """A GPT header; encode() computes the header CRC, entries_crc32 must already be right."""

    my_lba: int
    alternate_lba: int
    first_usable_lba: int
    last_usable_lba: int
    disk_guid: uuid.UUID
    partition_entry_lba: int
    num_entries: int = GPT_NUM_ENTRIES
    entry_size: int = GPT_ENTRY_SIZE
    entries_crc32: int = 0
    revision: int = GPT_REVISION
    header_size: int = GPT_HEADER_SIZE
    header_crc32: int = 0

    def encode(self) -> bytes:
        """The header_size bytes of the header with a fresh CRC (callers pad to a block)."""
        raw = self._pack(0)
        crc = zlib.crc32(raw[: self.header_size])
        self.header_crc32 = crc
        return self._pack(crc)[: self.header_size]

    def _pack(self, crc: int) -> bytes:
        raw = _GPT_HEADER.pack(
            GPT_SIGNATURE, self.revision, self.header_size, crc, 0, self.my_lba, self.alternate_lba,
            self.first_usable_lba, self.last_usable_lba, self.disk_guid.bytes_le,
            self.partition_entry_lba, self.num_entries, self.entry_size, self.entries_crc32,
        )
        return raw.ljust(max(self.header_size, GPT_HEADER_SIZE), b"\0")

    @classmethod
    def decode(cls, block: bytes) -> GptHeader:
        """Parse a header block; ENOTSUP unless signature, size and CRC are right."""
        if len(block) < GPT_HEADER_SIZE or block[:8] != GPT_SIGNATURE:
            raise _err(errno.ENOTSUP, "no GPT header signature")
        (_sig, rev, hsize, crc, _res, my, alt, first, last, guid, pe_lba, n, esize, ecrc) = _GPT_HEADER.unpack_from(block)
        if not GPT_HEADER_SIZE <= hsize <= len(block):
            raise _err(errno.ENOTSUP, f"GPT header size {hsize} invalid")
        body = bytearray(block[:hsize])
        body[16:20] = bytes(4)
        if zlib.crc32(body) != crc:
            raise _err(errno.ENOTSUP, "GPT header CRC mismatch")
        return cls(my, alt, first, last, uuid.UUID(bytes_le=guid), pe_lba, n, esize, ecrc, rev, hsize, crc)

    @property
    def entry_bytes(self) -> int:
        return self.num_entries * self.entry_size


@dataclass
class GptPartition:
    """One used GPT entry. `slot` is its index in the entry array (None: next free when writing)."""

    type_guid: uuid.UUID
    unique_guid: uuid.UUID
    first_lba: int
    last_lba: int
    attributes: int = 0
    name: str = ""
    slot: int | None = field(default=None, compare=False)

    def encode(self) -> bytes:
        name = self.name.encode("utf-16-le")
        if len(name) > 2 * GPT_NAME_UNITS:
            raise _err(errno.EINVAL, f"GPT partition name longer than {GPT_NAME_UNITS} UTF-16 units")
        return _pack_entry(self.type_guid.bytes_le, self.unique_guid.bytes_le, self.first_lba, self.last_lba,
                           self.attributes, name.ljust(72, b"\0"))

    @classmethod
    def decode(cls, raw: bytes, slot: int | None = None) -> GptPartition | None:
        """None for an unused entry (all-zero type GUID)."""
        tguid, uguid, first, last, attrs, name = _GPT_ENTRY.unpack_from(raw)
        if tguid == bytes(16):
            return None
        units = name.decode("utf-16-le", errors="replace").split("\0", 1)[0]
        return cls(uuid.UUID(bytes_le=tguid), uuid.UUID(bytes_le=uguid), first, last, attrs, units, slot)


def _pack_entry(*values) -> bytes:
    try:
        return _GPT_ENTRY.pack(*values)
    except struct.error as exc:
        raise _err(errno.EINVAL, f"GPT entry field out of range: {exc}") from exc


@dataclass
class GptTable:
    """What read_gpt found: the header it trusted, the used entries, and whether it was the backup."""

    header: GptHeader
    partitions: list[GptPartition]
    from_backup: bool = False


def _blocks(nbytes: int, block_size: int) -> int:
    return -(-nbytes // block_size)


def gpt_layout(disk_blocks: int, block_size: int) -> tuple[int, int, int]:
    """(entry array blocks, first usable LBA, last usable LBA) for a standard 128-entry GPT."""
    eblocks = _blocks(GPT_NUM_ENTRIES * GPT_ENTRY_SIZE, block_size)
    first, last = 2 + eblocks, disk_blocks - 2 - eblocks
    if last < first:
        raise _err(errno.EINVAL, f"a disk of {disk_blocks} blocks is too small for a GPT")
    return eblocks, first, last


def protective_mbr(disk_blocks: int) -> bytes:
    """LBA 0 of a GPT disk: one 0xEE partition from LBA 1 to the end (capped at 32 bits)."""
    mbr = bytearray(512)
    size = min(disk_blocks - 1, 0xFFFFFFFF)
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", PMBR_TYPE, b"\xff\xff\xff", 1, size)
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def write_gpt(disk: BlockIO, partitions: list[GptPartition], disk_guid: uuid.UUID | None = None) -> GptTable:
    """Label the disk with a fresh GPT: protective MBR, primary and backup headers and entry arrays."""
    bs, nblocks = disk.block_size, disk.size_bytes // disk.block_size
    _, first, last = gpt_layout(nblocks, bs)
    placed = _place_entries(partitions, first, last)
    entries = b"".join(placed)
    primary = GptHeader(1, nblocks - 1, first, last, disk_guid or uuid.uuid4(), 2,
                        entries_crc32=zlib.crc32(entries))
    backup = _backup_of(primary)
    disk.write(0, protective_mbr(nblocks).ljust(bs, b"\0"))
    _write_half(disk, primary, entries)
    _write_half(disk, backup, entries)
    disk.flush()
    return GptTable(primary, _decode_entries(entries, GPT_ENTRY_SIZE))


def _place_entries(partitions: list[GptPartition], first: int, last: int) -> list[bytes]:
    """The 128 raw entries, after checking slots, bounds and overlaps (EINVAL)."""
    slots: list[bytes] = [bytes(GPT_ENTRY_SIZE)] * GPT_NUM_ENTRIES
    used: dict[int, GptPartition] = {}
    for p in partitions:
        slot = p.slot if p.slot is not None else next((i for i in range(GPT_NUM_ENTRIES) if i not in used), -1)
        if not 0 <= slot < GPT_NUM_ENTRIES or slot in used:
            raise _err(errno.EINVAL, f"no free or valid GPT slot for {p.name!r} (slot {p.slot})")
        _check_gpt_partition(p, first, last)
        used[slot] = p
        slots[slot] = p.encode()
    _check_overlaps(list(used.values()))
    return slots


def _check_gpt_partition(p: GptPartition, first: int, last: int) -> None:
    if p.type_guid.int == 0:
        raise _err(errno.EINVAL, "a used GPT entry needs a non-zero type GUID")
    if not first <= p.first_lba <= p.last_lba <= last:
        raise _err(errno.EINVAL, f"partition {p.first_lba}-{p.last_lba} outside usable {first}-{last}")


def _check_overlaps(parts: list[GptPartition]) -> None:
    ordered = sorted(parts, key=lambda p: p.first_lba)
    for a, b in itertools.pairwise(ordered):
        if b.first_lba <= a.last_lba:
            raise _err(errno.EINVAL, f"partitions {a.name!r} and {b.name!r} overlap")


def _backup_of(primary: GptHeader) -> GptHeader:
    """The backup header mirrors the primary: swapped self/alternate LBAs, entries just before it."""
    return replace(primary, my_lba=primary.alternate_lba, alternate_lba=primary.my_lba, header_crc32=0)


def _write_half(disk: BlockIO, header: GptHeader, entries: bytes) -> None:
    """Write one header and its entry array; a backup's array sits right below it."""
    bs = disk.block_size
    if header.my_lba != 1:
        header.partition_entry_lba = header.my_lba - _blocks(len(entries), bs)
    disk.write(header.partition_entry_lba * bs, entries)
    disk.write(header.my_lba * bs, header.encode().ljust(bs, b"\0"))


def _decode_entries(raw: bytes, entry_size: int) -> list[GptPartition]:
    out = []
    for i in range(len(raw) // entry_size):
        p = GptPartition.decode(raw[i * entry_size : i * entry_size + GPT_ENTRY_SIZE], i)
        if p is not None:
            out.append(p)
    return out


def read_gpt(disk: BlockIO) -> GptTable:
    """Read the primary GPT, falling back to the backup at the last LBA; ENOTSUP if neither is valid."""
    nblocks = disk.size_bytes // disk.block_size
    if nblocks < 3:
        raise _err(errno.ENOTSUP, "disk too small for a GPT")
    try:
        return _read_half(disk, 1, nblocks, False)
    except OSError as primary_error:
        if primary_error.errno != errno.ENOTSUP:
            raise
        try:
            return _read_half(disk, nblocks - 1, nblocks, True)
        except OSError as backup_error:
            if backup_error.errno != errno.ENOTSUP:
                raise
            raise _err(errno.ENOTSUP, f"no valid GPT ({primary_error.strerror}; backup: {backup_error.strerror})") from None


def _read_half(disk: BlockIO, lba: int, nblocks: int, backup: bool) -> GptTable:
    """Validate one header and its entries the way UEFI asks (self LBA, ranges, both CRCs)."""
    bs = disk.block_size
    header = GptHeader.decode(_read(disk, lba * bs, bs))
    if header.my_lba != lba:
        raise _err(errno.ENOTSUP, f"GPT header at LBA {lba} claims to be at {header.my_lba}")
    if header.entry_size < GPT_ENTRY_SIZE or header.entry_size % 8 or not 0 < header.entry_bytes <= MAX_ENTRY_ARRAY:
        raise _err(errno.ENOTSUP, "GPT entry array geometry invalid")
    end = header.partition_entry_lba + _blocks(header.entry_bytes, bs)
    if header.partition_entry_lba < 2 or end > nblocks or header.last_usable_lba >= nblocks:
        raise _err(errno.ENOTSUP, "GPT entry array or usable range outside the disk")
    raw = _read(disk, header.partition_entry_lba * bs, header.entry_bytes)
    if zlib.crc32(raw) != header.entries_crc32:
        raise _err(errno.ENOTSUP, "GPT entry array CRC mismatch")
    return GptTable(header, _decode_entries(raw, header.entry_size), backup)


# ---------------------------------------------------------------------------
# GET_EFI / SET_EFI pass-through


def _efi_range(disk: BlockIO, lba: int, length: int) -> int:
    """Byte offset of an EFI transfer after bounds checks (EINVAL past the end or negative)."""
    if lba < 0 or length < 0:
        raise _err(errno.EINVAL, f"negative EFI lba {lba} or length {length}")
    offset = lba * disk.block_size
    if offset + length > disk.size_bytes:
        raise _err(errno.EINVAL, f"EFI transfer of {length} bytes at LBA {lba} runs past the disk end")
    return offset


def efi_read(disk: BlockIO, lba: int, length: int) -> bytes:
    """GET_EFI: raw bytes from `lba`, as the Solaris ioctl reads them."""
    return _read(disk, _efi_range(disk, lba, length), length)


def efi_write(disk: BlockIO, lba: int, data: bytes) -> None:
    """SET_EFI: raw bytes at `lba`, then flush (a label write must be stable before we reply)."""
    disk.write(_efi_range(disk, lba, len(data)), bytes(data))
    disk.flush()


def sync_backup_gpt(disk: BlockIO) -> GptHeader:
    """Rebuild the backup GPT from a valid primary (after a guest's SET_EFI) and return it.

    The backup goes where the primary's alternate_lba says, with its entry array
    just below it, so a guest's own choice of disk end is kept.
    """
    bs, nblocks = disk.block_size, disk.size_bytes // disk.block_size
    table = _read_half(disk, 1, nblocks, False)
    primary = table.header
    eblocks = _blocks(primary.entry_bytes, bs)
    if not primary.last_usable_lba < primary.alternate_lba - eblocks or primary.alternate_lba >= nblocks:
        raise _err(errno.EINVAL, f"primary GPT alternate LBA {primary.alternate_lba} is not a usable backup place")
    entries = _read(disk, primary.partition_entry_lba * bs, primary.entry_bytes)
    backup = _backup_of(primary)
    _write_half(disk, backup, entries)
    disk.flush()
    return backup
