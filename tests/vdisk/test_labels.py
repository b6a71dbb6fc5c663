"""Tests for backend/vdisk/labels.py: wire codecs, SMI labels and GPT, checked against real host tools.

The host-tool tests need util-linux `fdisk`/`sfdisk` (Debian package fdisk) and
`sgdisk` (Debian package gdisk). A missing tool makes them fail, never skip.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

import pytest

from backend.vdisk.blockio import MemoryBlockIO
from backend.vdisk.labels import (
    DKL_MAGIC,
    VTOC_SANE,
    EfiTransfer,
    Geometry,
    GptHeader,
    GptPartition,
    SmiLabel,
    Vtoc,
    VtocPartition,
    default_geometry,
    default_vtoc,
    efi_read,
    efi_write,
    read_gpt,
    read_smi,
    smi_backup_lbas,
    smi_checksum,
    sync_backup_gpt,
    write_gpt,
    write_smi,
)

LINUX_FS = uuid.UUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
EFI_SYSTEM = uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
SOLARIS_USR = uuid.UUID("6A898CC3-1DD2-11B2-99A6-080020736631")
MIB = 1 << 20


class FileBlockIO:
    """A BlockIO over a real image file, so host tools and our code share the same bytes."""

    def __init__(self, path: Path, block_size: int = 512) -> None:
        self.fd = os.open(path, os.O_RDWR)
        self.block_size = block_size
        self.read_only = False

    @property
    def size_bytes(self) -> int:
        return os.fstat(self.fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return os.pread(self.fd, length, offset)

    def write(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        os.pwrite(self.fd, data, offset)

    def flush(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size_bytes:
            raise OSError(errno.EINVAL, "outside the image")


@pytest.fixture
def image(tmp_path: Path):
    """Factory for sparse image files wrapped in FileBlockIO."""
    opened: list[FileBlockIO] = []

    def make(size: int, name: str = "disk.img") -> tuple[Path, FileBlockIO]:
        path = tmp_path / name
        with open(path, "wb") as f:
            f.truncate(size)
        disk = FileBlockIO(path)
        opened.append(disk)
        return path, disk

    yield make
    for disk in opened:
        disk.close()


def run(*args: str, stdin: str | None = None, check: bool = True) -> str:
    """Run a host tool in the C locale; a missing binary raises and fails the test."""
    env = dict(os.environ, LC_ALL="C", LANG="C")
    proc = subprocess.run(args, input=stdin, capture_output=True, text=True, env=env, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def fdisk_partitions(path: Path) -> tuple[str, dict[int, tuple[int, int, int, str]]]:
    """`fdisk -l` output and {number: (start, sectors, id, flags)} from its partition table."""
    out = run("fdisk", "-l", str(path))
    parts = {}
    for line in out.splitlines():
        if not line.startswith(str(path)):
            continue
        name, start, _end, sectors, _size, pid, *rest = line.split()
        flags = "".join(f for f in rest if f in ("u", "r", "ur"))
        parts[int(name[len(str(path)) :])] = (int(start), int(sectors), int(pid, 16), flags)
    return out, parts


def sgdisk_info(path: Path, number: int) -> dict[str, str]:
    """`sgdisk -i N` as a dict of its 'Key: value' lines."""
    out = run("sgdisk", "-i", str(number), str(path))
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def expect_errno(code: int, fn, *args, **kwargs) -> OSError:
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    assert info.value.errno == code, info.value
    return info.value


# ---------------------------------------------------------------------------
# protocol codecs


def sample_vtoc() -> Vtoc:
    vtoc = Vtoc("vol1", 512, 8, "SUN-DiskImage-64MB cyl 216 alt 2 hd 1 sec 600")
    vtoc.partitions[0] = VtocPartition(2, 0, 0, 60000)
    vtoc.partitions[1] = VtocPartition(3, 0x01, 60000, 30000)
    vtoc.partitions[2] = VtocPartition(5, 0, 0, 129600)
    vtoc.partitions[6] = VtocPartition(4, 0x10, 90000, 39600)
    return vtoc


def test_vtoc_encode_layout_and_round_trip():
    vtoc = sample_vtoc()
    raw = vtoc.encode()
    assert len(raw) == 336 == Vtoc.SIZE
    assert raw[0:8] == b"vol1\0\0\0\0"
    assert struct.unpack_from(">HH", raw, 8) == (512, 8)
    assert raw[12:12 + 13] == b"SUN-DiskImage"
    assert raw[140:144] == bytes(4)
    assert struct.unpack_from(">HHIQQ", raw, 144 + 6 * 24) == (4, 0x10, 0, 90000, 39600)
    assert Vtoc.decode(raw) == vtoc


def test_vtoc_decode_ignores_reserved_fields():
    raw = bytearray(sample_vtoc().encode())
    raw[140:144] = b"\xff" * 4
    raw[144 + 4 : 144 + 8] = b"\xff" * 4
    assert Vtoc.decode(bytes(raw)) == sample_vtoc()


@pytest.mark.parametrize("size", [0, 335, 337, 512])
def test_vtoc_decode_wrong_size(size):
    expect_errno(errno.EINVAL, Vtoc.decode, bytes(size))


@pytest.mark.parametrize(
    "vtoc",
    [
        Vtoc(volume_name="ninechars"),
        Vtoc(ascii_label="x" * 129),
        Vtoc(sector_size=70000),
        Vtoc(partitions=[VtocPartition()] * 9),
        Vtoc(partitions=[VtocPartition(start_block=-1)]),
        Vtoc(partitions=[VtocPartition(id=0x10000)]),
    ],
)
def test_vtoc_encode_rejects_bad_fields(vtoc):
    expect_errno(errno.EINVAL, vtoc.encode)


def test_geometry_codec():
    geom = Geometry(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
    raw = geom.encode()
    assert raw == b"".join(struct.pack(">H", v) for v in range(1, 12))
    assert Geometry.decode(raw) == geom
    expect_errno(errno.EINVAL, Geometry.decode, raw[:-1])
    expect_errno(errno.EINVAL, Geometry.decode, raw + b"\0")
    expect_errno(errno.EINVAL, Geometry(num_cyl=65536).encode)


def test_efi_transfer_codec():
    req = EfiTransfer(1, 512, b"EFI PART")
    raw = req.encode()
    assert len(raw) == 16 + 512 and raw[:16] == struct.pack(">QQ", 1, 512)
    assert EfiTransfer.decode(raw) == EfiTransfer(1, 512, b"EFI PART".ljust(512, b"\0"))
    assert EfiTransfer.decode(raw + b"extra").data == raw[16:]
    expect_errno(errno.EINVAL, EfiTransfer.decode, raw[:15])
    expect_errno(errno.EINVAL, EfiTransfer.decode, raw[:-1])
    expect_errno(errno.EINVAL, EfiTransfer(1, 4, b"12345").encode)


# ---------------------------------------------------------------------------
# SMI label: layout, round trip, bad input


def test_smi_label_layout():
    geom = default_geometry(64 * MIB)
    raw = SmiLabel.decode(write_smi(MemoryBlockIO(64 * MIB), sample_vtoc(), geom).encode()).encode()
    assert len(raw) == 512
    assert raw[:13] == b"SUN-DiskImage"
    assert struct.unpack_from(">I", raw, 128)[0] == 1  # version
    assert raw[132:136] == b"vol1"
    assert struct.unpack_from(">H", raw, 140)[0] == 8  # nparts
    assert struct.unpack_from(">HH", raw, 142 + 4 * 1) == (3, 0x01)  # slice 1 tag/flag
    assert struct.unpack_from(">I", raw, 188)[0] == VTOC_SANE
    assert struct.unpack_from(">HH", raw, 420) == (7200, 218)  # rpm, pcyl
    assert struct.unpack_from(">4H", raw, 432) == (216, 2, 1, 600)  # ncyl, acyl, nhead, nsect
    assert struct.unpack_from(">II", raw, 444 + 8 * 1) == (100, 30000)  # slice 1: cylinder 100
    assert struct.unpack_from(">H", raw, 508)[0] == DKL_MAGIC
    assert smi_checksum(raw) == 0


def test_smi_round_trip_memory():
    disk = MemoryBlockIO(64 * MIB)
    geom = default_geometry(disk.size_bytes)
    geom.wr_skip, geom.rd_skip, geom.ifact = 3, 4, 1
    write_smi(disk, sample_vtoc(), geom)
    vtoc, got = read_smi(disk)
    assert vtoc == sample_vtoc()
    assert got == geom
    assert disk.flushes >= 1


def test_smi_loses_only_bcyl():
    """beg_cyl has no field in a VTOC_8 label; everything else survives."""
    disk = MemoryBlockIO(64 * MIB)
    geom = default_geometry(disk.size_bytes)
    geom.beg_cyl = 5
    write_smi(disk, sample_vtoc(), geom)
    assert read_smi(disk)[1].beg_cyl == 0


def test_smi_backup_labels_where_solaris_puts_them():
    disk = MemoryBlockIO(64 * MIB)
    geom = Geometry(num_cyl=200, alt_cyl=2, num_hd=4, num_sec=32, rpm=7200, phy_cyl=202)
    vtoc = Vtoc(partitions=[VtocPartition(5, 0, 0, 200 * 128)])
    write_smi(disk, vtoc, geom)
    # last cylinder 201, last head 3: track starts at 201*128 + 3*32
    expected = [201 * 128 + 96 + s for s in (1, 3, 5, 7, 9)]
    assert smi_backup_lbas(geom, disk.size_bytes // 512) == expected
    for lba in expected:
        assert disk.read(lba * 512, 512) == disk.read(0, 512)
    assert smi_backup_lbas(Geometry(num_cyl=10, num_hd=1, num_sec=16), 10_000) == []


def test_read_smi_blank_disk_is_enotsup():
    expect_errno(errno.ENOTSUP, read_smi, MemoryBlockIO(MIB))
    expect_errno(errno.ENOTSUP, read_smi, MemoryBlockIO(256))


def test_read_smi_bad_magic():
    disk = MemoryBlockIO(64 * MIB)
    write_smi(disk, sample_vtoc(), default_geometry(disk.size_bytes))
    disk.data[508:510] = b"\xbe\xda"  # byte-swapped magic (a little-endian label): not ours
    expect_errno(errno.ENOTSUP, read_smi, disk)


def test_read_smi_bad_checksum():
    disk = MemoryBlockIO(64 * MIB)
    write_smi(disk, sample_vtoc(), default_geometry(disk.size_bytes))
    disk.data[5] ^= 0x01
    expect_errno(errno.ENOTSUP, read_smi, disk)


def test_read_smi_zero_heads_is_eio():
    label = SmiLabel(ncyl=10, nhead=0, nsect=16)
    disk = MemoryBlockIO(MIB)
    disk.write(0, label.encode())
    expect_errno(errno.EIO, read_smi, disk)


def test_smi_label_decode_wrong_size():
    expect_errno(errno.EINVAL, SmiLabel.decode, bytes(511))


def test_write_smi_start_not_on_cylinder_boundary():
    disk = MemoryBlockIO(64 * MIB)
    vtoc = sample_vtoc()
    vtoc.partitions[1].start_block = 60001
    err = expect_errno(errno.EINVAL, write_smi, disk, vtoc, default_geometry(disk.size_bytes))
    assert "slice 1" in str(err)
    assert disk.data[:512] == bytes(512)  # nothing written


@pytest.mark.parametrize(
    "change",
    [
        lambda v, g: setattr(v.partitions[6], "num_blocks", 40200),  # past the data cylinders
        lambda v, g: setattr(g, "num_cyl", 300),  # more cylinders than the disk
        lambda v, g: setattr(g, "num_hd", 0),
        lambda v, g: setattr(v, "sector_size", 4096),
        lambda v, g: setattr(v, "num_partitions", 9),
        lambda v, g: setattr(v, "num_partitions", 0),
        lambda v, g: setattr(v.partitions[0], "num_blocks", 1 << 32),
    ],
)
def test_write_smi_rejects_bad_input(change):
    disk = MemoryBlockIO(64 * MIB)
    vtoc, geom = sample_vtoc(), default_geometry(disk.size_bytes)
    change(vtoc, geom)
    expect_errno(errno.EINVAL, write_smi, disk, vtoc, geom)


def test_write_smi_read_only_disk():
    disk = MemoryBlockIO(64 * MIB, read_only=True)
    expect_errno(errno.EROFS, write_smi, disk, sample_vtoc(), default_geometry(disk.size_bytes))


@pytest.mark.parametrize(
    "size, nhead, nsect, pcyl, acyl",
    [
        (100 * 1024, 1, 200, 1, 0),
        (MIB, 1, 200, 10, 2),
        (2 * MIB, 1, 600, 6, 2),
        (64 * MIB, 1, 600, 218, 2),
        (8 << 30, 96, 768, 227, 2),
        (100 << 30, 96, 768, 2844, 2),
    ],
)
def test_default_geometry_matches_vds(size, nhead, nsect, pcyl, acyl):
    geom = default_geometry(size)
    assert (geom.num_hd, geom.num_sec, geom.phy_cyl, geom.alt_cyl) == (nhead, nsect, pcyl, acyl)
    assert geom.num_cyl == pcyl - acyl and geom.rpm == 7200


def test_default_geometry_too_big_and_bad_input():
    expect_errno(errno.ENOTSUP, default_geometry, 3 << 40)
    expect_errno(errno.EINVAL, default_geometry, MIB, 0)


def test_default_vtoc_backup_slice():
    vtoc = default_vtoc(64 * MIB)
    assert vtoc.ascii_label == "SUN-DiskImage-64MB cyl 216 alt 2 hd 1 sec 600"
    assert vtoc.num_partitions == 8 and vtoc.sector_size == 512
    assert vtoc.partitions[2] == VtocPartition(5, 0, 0, 216 * 600)
    assert all(p.num_blocks == 0 for i, p in enumerate(vtoc.partitions) if i != 2)
    assert default_vtoc(512 * 1024).ascii_label.startswith("SUN-DiskImage-512KB ")


# ---------------------------------------------------------------------------
# SMI label against util-linux


def test_write_smi_listed_by_fdisk(image):
    path, disk = image(64 * MIB)
    write_smi(disk, sample_vtoc(), default_geometry(disk.size_bytes))
    out, parts = fdisk_partitions(path)
    assert "Disklabel type: sun" in out
    assert "1 heads, 600 sectors/track, 216 cylinders" in out
    assert "wrong" not in out.lower()
    assert parts == {
        1: (0, 60000, 2, ""),
        2: (60000, 30000, 3, "u"),
        3: (0, 129600, 5, ""),
        7: (90000, 39600, 4, "r"),
    }


def test_default_label_listed_by_fdisk(image):
    path, disk = image(64 * MIB)
    write_smi(disk, default_vtoc(disk.size_bytes), default_geometry(disk.size_bytes))
    out, parts = fdisk_partitions(path)
    assert "Disklabel type: sun" in out
    assert parts == {3: (0, 216 * 600, 5, "")}


def test_fdisk_default_sun_label_read_back(image):
    path, disk = image(64 * MIB)
    run("fdisk", str(path), stdin="s\nw\n")
    out, parts = fdisk_partitions(path)
    assert "Disklabel type: sun" in out and len(parts) == 3
    vtoc, geom = read_smi(disk)
    m = re.search(r"Geometry: (\d+) heads, (\d+) sectors/track, (\d+) cylinders", out)
    assert (geom.num_hd, geom.num_sec, geom.num_cyl) == tuple(int(x) for x in m.groups())
    for number, (start, sectors, pid, flags) in parts.items():
        p = vtoc.partitions[number - 1]
        assert (p.start_block, p.num_blocks, p.id) == (start, sectors, pid)
        assert bool(p.perm_flags & 0x01) == ("u" in flags)
    assert vtoc.ascii_label.startswith("Linux cyl")


def test_fdisk_label_survives_our_round_trip_bit_for_bit(image):
    path, disk = image(64 * MIB)
    run("fdisk", str(path), stdin="s\nw\n")
    original = disk.read(0, 512)
    vtoc, geom = read_smi(disk)
    disk.write(0, bytes(512))
    write_smi(disk, vtoc, geom)
    assert disk.read(0, 512) == original


def test_sfdisk_sun_label_read_back(image):
    path, disk = image(32 * MIB)
    run("sfdisk", str(path), stdin="label: sun\n0,32130,83\n32130,16065,82\n")
    _, parts = fdisk_partitions(path)
    vtoc, geom = read_smi(disk)
    assert geom.blocks_per_cyl == 16065
    assert parts == {1: (0, 32130, 0x83, ""), 2: (32130, 16065, 0x82, "")}
    assert [(p.start_block, p.num_blocks, p.id) for p in vtoc.partitions[:2]] == [(0, 32130, 0x83), (32130, 16065, 0x82)]


def test_write_smi_replaces_gpt(image):
    path, disk = image(64 * MIB)
    write_gpt(disk, [GptPartition(LINUX_FS, uuid.uuid4(), 2048, 4095)])
    write_smi(disk, sample_vtoc(), default_geometry(disk.size_bytes))
    expect_errno(errno.ENOTSUP, read_gpt, disk)
    out, _ = fdisk_partitions(path)
    assert "Disklabel type: sun" in out


# ---------------------------------------------------------------------------
# GPT against gdisk


def sample_gpt() -> list[GptPartition]:
    return [
        GptPartition(EFI_SYSTEM, uuid.UUID("11111111-2222-3333-4444-555555555555"), 2048, 4095, 0, "esp"),
        GptPartition(LINUX_FS, uuid.UUID("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"), 4096, 20479, 1 << 60, "root ü"),
        GptPartition(SOLARIS_USR, uuid.UUID("01234567-89ab-cdef-0123-456789abcdef"), 20480, 131037, 1, "zfs", slot=4),
    ]


def test_write_gpt_listed_and_verified_by_sgdisk(image):
    path, disk = image(64 * MIB)
    guid = uuid.UUID("deadbeef-0000-4000-8000-00000000c0de")
    write_gpt(disk, sample_gpt(), disk_guid=guid)
    out = run("sgdisk", "-p", str(path))
    assert f"Disk identifier (GUID): {str(guid).upper()}" in out
    assert "First usable sector is 34, last usable sector is 131038" in out
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+\S+ \S+\s+([0-9A-F]{4})\s+(.*)$", out, re.MULTILINE)
    assert rows == [
        ("1", "2048", "4095", "EF00", "esp"),
        ("2", "4096", "20479", "8300", "root ü"),
        ("5", "20480", "131037", "BF01", "zfs"),
    ]
    verify = run("sgdisk", "-v", str(path))
    assert "No problems found" in verify, verify
    for number, part in ((2, sample_gpt()[1]), (5, sample_gpt()[2])):
        info = sgdisk_info(path, number)
        assert info["Partition unique GUID"] == str(part.unique_guid).upper()
        assert info["Attribute flags"] == f"{part.attributes:016x}"
        assert info["Partition GUID code"].startswith(str(part.type_guid).upper())
    assert "Disklabel type: gpt" in run("fdisk", "-l", str(path))


def test_write_gpt_protective_mbr_and_headers():
    disk = MemoryBlockIO(64 * MIB)
    table = write_gpt(disk, sample_gpt())
    mbr = disk.read(0, 512)
    assert mbr[510:] == b"\x55\xaa" and mbr[450] == 0xEE
    assert struct.unpack_from("<II", mbr, 454) == (1, 131071)
    primary = GptHeader.decode(disk.read(512, 512))
    backup = GptHeader.decode(disk.read(131071 * 512, 512))
    assert (primary.my_lba, primary.alternate_lba, primary.partition_entry_lba) == (1, 131071, 2)
    assert (backup.my_lba, backup.alternate_lba, backup.partition_entry_lba) == (131071, 1, 131071 - 32)
    assert disk.read(2 * 512, 16384) == disk.read((131071 - 32) * 512, 16384)
    assert table.partitions == sample_gpt()
    assert [p.slot for p in table.partitions] == [0, 1, 4]


def test_sgdisk_created_gpt_read_back(image):
    path, disk = image(64 * MIB)
    run(
        "sgdisk", "-n", "1:2048:+8M", "-t", "1:ef00", "-c", "1:boot",
        "-n", "3:0:+16M", "-t", "3:8300", "-c", "3:data", "-A", "3:set:2",
        "-n", "2:0:0", "-t", "2:bf01", "-c", "2:rest", str(path),
    )
    table = read_gpt(disk)
    assert not table.from_backup
    disk_id = re.search(r"Disk identifier \(GUID\): (\S+)", run("sgdisk", "-p", str(path))).group(1)
    assert str(table.header.disk_guid).upper() == disk_id
    assert [p.slot for p in table.partitions] == [0, 1, 2]
    for part in table.partitions:
        info = sgdisk_info(path, part.slot + 1)
        assert info["Partition GUID code"].startswith(str(part.type_guid).upper())
        assert info["Partition unique GUID"] == str(part.unique_guid).upper()
        assert int(info["First sector"].split()[0]) == part.first_lba
        assert int(info["Last sector"].split()[0]) == part.last_lba
        assert info["Partition name"] == f"'{part.name}'"
        assert int(info["Attribute flags"], 16) == part.attributes
    by_name = {p.name: p for p in table.partitions}
    assert by_name["boot"].type_guid == EFI_SYSTEM and by_name["boot"].last_lba == 2048 + 8 * 2048 - 1
    assert by_name["data"].attributes == 1 << 2 and by_name["data"].slot == 2


def test_read_gpt_round_trip_4k_blocks():
    disk = MemoryBlockIO(64 * MIB, block_size=4096)
    parts = [GptPartition(LINUX_FS, uuid.uuid4(), 256, 1023, 0, "a"), GptPartition(LINUX_FS, uuid.uuid4(), 1024, 16383 - 6, 0, "b")]
    write_gpt(disk, parts)
    table = read_gpt(disk)
    assert table.partitions == parts
    assert (table.header.first_usable_lba, table.header.last_usable_lba) == (6, 16384 - 6)


def test_read_gpt_falls_back_to_backup():
    disk = MemoryBlockIO(64 * MIB)
    write_gpt(disk, sample_gpt())
    disk.data[512 + 40] ^= 0xFF  # primary header CRC now wrong
    table = read_gpt(disk)
    assert table.from_backup and table.partitions == sample_gpt()
    disk.data[131071 * 512 + 40] ^= 0xFF
    expect_errno(errno.ENOTSUP, read_gpt, disk)


def test_read_gpt_bad_entry_crc():
    disk = MemoryBlockIO(64 * MIB)
    write_gpt(disk, sample_gpt())
    disk.data[2 * 512 + 40] ^= 0x01  # primary entry array
    assert read_gpt(disk).from_backup
    disk.data[(131071 - 32) * 512 + 40] ^= 0x01  # backup entry array
    expect_errno(errno.ENOTSUP, read_gpt, disk)


def test_read_gpt_no_label():
    expect_errno(errno.ENOTSUP, read_gpt, MemoryBlockIO(MIB))
    expect_errno(errno.ENOTSUP, read_gpt, MemoryBlockIO(1024))
    disk = MemoryBlockIO(64 * MIB)
    write_smi(disk, sample_vtoc(), default_geometry(disk.size_bytes))
    expect_errno(errno.ENOTSUP, read_gpt, disk)


@pytest.mark.parametrize(
    "parts",
    [
        [GptPartition(LINUX_FS, uuid.uuid4(), 2048, 4095), GptPartition(LINUX_FS, uuid.uuid4(), 4095, 5000)],
        [GptPartition(LINUX_FS, uuid.uuid4(), 33, 4095)],
        [GptPartition(LINUX_FS, uuid.uuid4(), 2048, 131039)],
        [GptPartition(LINUX_FS, uuid.uuid4(), 4096, 2048)],
        [GptPartition(uuid.UUID(int=0), uuid.uuid4(), 2048, 4095)],
        [GptPartition(LINUX_FS, uuid.uuid4(), 2048, 4095, name="n" * 37)],
        [GptPartition(LINUX_FS, uuid.uuid4(), 2048, 4095, slot=128)],
        [GptPartition(LINUX_FS, uuid.uuid4(), 2048, 4095, slot=1), GptPartition(LINUX_FS, uuid.uuid4(), 4096, 5000, slot=1)],
        [GptPartition(LINUX_FS, uuid.uuid4(), 2048 + i, 2048 + i) for i in range(129)],
    ],
)
def test_write_gpt_rejects_bad_partitions(parts):
    disk = MemoryBlockIO(64 * MIB)
    expect_errno(errno.EINVAL, write_gpt, disk, parts)
    assert disk.data[:1024] == bytes(1024)


def test_write_gpt_disk_too_small():
    expect_errno(errno.EINVAL, write_gpt, MemoryBlockIO(66 * 512), [])


# ---------------------------------------------------------------------------
# GET_EFI / SET_EFI pass-through


def test_efi_read_returns_header_and_entries():
    disk = MemoryBlockIO(64 * MIB)
    table = write_gpt(disk, sample_gpt())
    header = GptHeader.decode(efi_read(disk, 1, 512))
    assert header == table.header
    entries = efi_read(disk, header.partition_entry_lba, header.entry_bytes)
    assert zlib.crc32(entries) == header.entries_crc32


@pytest.mark.parametrize("lba, length", [(131072, 1), (131071, 513), (0, 64 * MIB + 1), (-1, 512), (1, -1)])
def test_efi_read_out_of_range(lba, length):
    expect_errno(errno.EINVAL, efi_read, MemoryBlockIO(64 * MIB), lba, length)


def test_efi_write_bounds_and_flush():
    disk = MemoryBlockIO(MIB)
    efi_write(disk, 2047, b"x" * 512)
    assert disk.read(2047 * 512, 512) == b"x" * 512 and disk.flushes == 1
    expect_errno(errno.EINVAL, efi_write, disk, 2047, b"x" * 513)
    expect_errno(errno.EINVAL, efi_write, disk, -1, b"x")
    expect_errno(errno.EROFS, efi_write, MemoryBlockIO(MIB, read_only=True), 1, b"x")


def guest_set_efi(disk, parts: list[GptPartition]) -> GptHeader:
    """What a Solaris guest does through SET_EFI: a new primary header and entry array only."""
    entries = b"".join(p.encode() for p in parts).ljust(128 * 128, b"\0")
    old = GptHeader.decode(efi_read(disk, 1, 512))
    header = GptHeader(1, old.alternate_lba, old.first_usable_lba, old.last_usable_lba, uuid.uuid4(), 2,
                       entries_crc32=zlib.crc32(entries))
    efi_write(disk, 1, header.encode())
    efi_write(disk, 2, entries)
    return header


def test_sync_backup_gpt_after_guest_set_efi(image):
    path, disk = image(64 * MIB)
    write_gpt(disk, sample_gpt())
    new = [GptPartition(SOLARIS_USR, uuid.uuid4(), 256, 100000, 0, "zfs"),
           GptPartition(uuid.UUID("6A945A3B-1DD2-11B2-99A6-080020736631"), uuid.uuid4(), 100001, 116384, 0, "")]
    primary = guest_set_efi(disk, new)
    assert "No problems found" not in run("sgdisk", "-v", str(path), check=False)
    backup = sync_backup_gpt(disk)
    assert (backup.my_lba, backup.alternate_lba, backup.partition_entry_lba) == (131071, 1, 131039)
    assert backup.disk_guid == primary.disk_guid and backup.entries_crc32 == primary.entries_crc32
    assert "No problems found" in run("sgdisk", "-v", str(path))
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+\S+ \S+\s+([0-9A-F]{4})", run("sgdisk", "-p", str(path)), re.MULTILINE)
    assert rows == [("1", "256", "100000", "BF01"), ("2", "100001", "116384", "BF07")]
    disk.write(512, bytes(512))  # lose the primary: the backup alone must carry the new table
    table = read_gpt(disk)
    assert table.from_backup and table.partitions == new


def test_sync_backup_gpt_is_idempotent():
    disk = MemoryBlockIO(64 * MIB)
    write_gpt(disk, sample_gpt())
    before = bytes(disk.data)
    sync_backup_gpt(disk)
    assert bytes(disk.data) == before


def test_sync_backup_gpt_errors():
    expect_errno(errno.ENOTSUP, sync_backup_gpt, MemoryBlockIO(MIB))
    disk = MemoryBlockIO(64 * MIB)
    write_gpt(disk, sample_gpt())
    header = GptHeader.decode(disk.read(512, 512))
    header.alternate_lba = 200000  # past the disk end
    disk.write(512, header.encode())
    expect_errno(errno.EINVAL, sync_backup_gpt, disk)
