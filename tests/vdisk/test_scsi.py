"""SCSI emulation and the VD_OP_SCSICMD codec: exact bytes, errors, and a fuzz that nothing escapes."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.vdisk.blockio import MemoryBlockIO
from backend.vdisk.scsi import (
    CHECK_CONDITION,
    GOOD,
    VD_SCSI_HEADER_SIZE,
    ScsiResult,
    ScsiTarget,
    VdScsi,
    encode_reply,
    fixed_sense,
    reply_lengths,
    serve_scsicmd,
)

BS = 512
BLOCKS = 128


def make(
    read_only: bool = False, blocks: int = BLOCKS, **kw
) -> tuple[ScsiTarget, MemoryBlockIO]:
    disk = MemoryBlockIO(blocks * BS)
    for i in range(blocks):
        disk.data[i * BS : (i + 1) * BS] = bytes([i & 0xFF]) * BS
    disk.read_only = read_only
    return ScsiTarget(
        disk, device_id=bytes.fromhex("0a0b0c"), serial="VD0001", **kw
    ), disk


def cdb6(op: int, *b: int) -> bytes:
    return bytes([op, *b]).ljust(6, b"\0")


def cdb10(op: int, lba: int = 0, count: int = 0, flags: int = 0) -> bytes:
    return (
        bytes([op, flags])
        + lba.to_bytes(4, "big")
        + b"\0"
        + count.to_bytes(2, "big")
        + b"\0"
    )


def cdb12(op: int, lba: int = 0, count: int = 0) -> bytes:
    return bytes([op, 0]) + lba.to_bytes(4, "big") + count.to_bytes(4, "big") + b"\0\0"


def cdb16(op: int, lba: int = 0, count: int = 0, flags: int = 0) -> bytes:
    return (
        bytes([op, flags]) + lba.to_bytes(8, "big") + count.to_bytes(4, "big") + b"\0\0"
    )


def check(res: ScsiResult, key: int, asc: int, ascq: int = 0) -> None:
    assert res.status == CHECK_CONDITION
    assert res.data_in == b""
    assert len(res.sense) == 18 and res.sense[0] == 0x70 and res.sense[7] == 10
    assert (res.sense_key, res.asc_ascq) == (key, (asc, ascq))


# ---------------------------------------------------------------- fixed sense


def test_fixed_sense_layout_with_field_pointer() -> None:
    s = fixed_sense(0x5, 0x24, byte=2, bit=5)
    assert s == bytes(
        [0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0xC0 | 0x08 | 5, 0, 2]
    )
    assert fixed_sense(0x3, 0x11)[15:] == b"\0\0\0"


# ---------------------------------------------------------------- simple commands


def test_test_unit_ready() -> None:
    t, _ = make()
    assert t.execute(cdb6(0x00)) == ScsiResult(GOOD)


def test_request_sense_returns_last_then_no_sense() -> None:
    t, _ = make()
    check(t.execute(cdb6(0xFF)), 0x5, 0x20)
    res = t.execute(cdb6(0x03, 0, 0, 0, 252))
    assert res.status == GOOD and res.data_in == fixed_sense(0x5, 0x20)
    res = t.execute(cdb6(0x03, 0, 0, 0, 252))
    assert res.data_in == fixed_sense(0x0, 0x00)
    assert t.execute(cdb6(0x03, 0, 0, 0, 8)).data_in == fixed_sense(0, 0)[:8]


def test_request_sense_descriptor_format_refused() -> None:
    t, _ = make()
    res = t.execute(cdb6(0x03, 0x01, 0, 0, 252))
    check(res, 0x5, 0x24)
    assert res.sense[15:18] == bytes([0xC8, 0, 1])


# ---------------------------------------------------------------- INQUIRY


def test_standard_inquiry_bytes() -> None:
    t, _ = make()
    data = t.execute(cdb6(0x12, 0, 0, 0, 96)).data_in
    assert data == (
        bytes([0x00, 0x00, 0x05, 0x02, 31, 0x00, 0x00, 0x02])
        + b"SUN     "
        + b"Virtual Disk    "
        + b"1.0 "
    )


def test_inquiry_allocation_truncates_and_uses_two_bytes() -> None:
    t, _ = make()
    assert t.execute(cdb6(0x12, 0, 0, 0, 5)).data_in == bytes([0, 0, 5, 2, 31])
    # allocation 0x0100 = 256: the 2-byte field (SPC-3+) is honoured
    assert len(t.execute(cdb6(0x12, 0, 0, 0x01, 0x00)).data_in) == 36
    assert t.execute(cdb6(0x12, 0, 0, 0, 0)).data_in == b""
    assert (
        t.execute(cdb6(0x12, 0, 0, 0, 96), allocation=10).data_in
        == t.execute(cdb6(0x12, 0, 0, 0, 10)).data_in
    )


def test_inquiry_page_without_evpd_is_invalid() -> None:
    t, _ = make()
    res = t.execute(cdb6(0x12, 0, 0x80, 0, 96))
    check(res, 0x5, 0x24)
    assert res.sense[16:18] == b"\0\x02"


def test_vpd_supported_pages() -> None:
    t, _ = make()
    assert t.execute(cdb6(0x12, 1, 0x00, 0, 255)).data_in == bytes(
        [0, 0, 0, 5, 0x00, 0x80, 0x83, 0xB0, 0xB1]
    )


def test_vpd_unit_serial() -> None:
    t, _ = make()
    assert (
        t.execute(cdb6(0x12, 1, 0x80, 0, 255)).data_in
        == bytes([0, 0x80, 0, 6]) + b"VD0001"
    )


def test_vpd_device_identification_t10_vendor_designator() -> None:
    t, _ = make()
    ident = b"SUN     " + b"0A0B0C"
    assert t.execute(cdb6(0x12, 1, 0x83, 0, 255)).data_in == (
        bytes([0, 0x83, 0, 4 + len(ident), 0x02, 0x01, 0x00, len(ident)]) + ident
    )


def test_vpd_block_limits_and_characteristics() -> None:
    t, _ = make(max_transfer_blocks=300)
    b0 = t.execute(cdb6(0x12, 1, 0xB0, 0, 255)).data_in
    assert b0[:4] == bytes([0, 0xB0, 0, 0x3C]) and len(b0) == 64
    assert (
        b0[8:12] == (300).to_bytes(4, "big")
        and b0[12:] == bytes(52)
        and b0[4:8] == bytes(4)
    )
    assert t.execute(cdb6(0x12, 1, 0xB1, 0, 255)).data_in == bytes(
        [0, 0xB1, 0, 0x3C]
    ) + bytes(60)


def test_vpd_unknown_page() -> None:
    t, _ = make()
    check(t.execute(cdb6(0x12, 1, 0x86, 0, 255)), 0x5, 0x24)


def test_inquiry_cmddt_refused() -> None:
    t, _ = make()
    check(t.execute(cdb6(0x12, 2, 0, 0, 255)), 0x5, 0x24)


def test_target_validates_identity() -> None:
    disk = MemoryBlockIO(BS)
    with pytest.raises(ValueError):
        ScsiTarget(disk, device_id=b"", serial="x")
    with pytest.raises(ValueError):
        ScsiTarget(disk, device_id=b"\1", serial="caf\u00e9")
    with pytest.raises(ValueError):
        ScsiTarget(disk, device_id=b"\1", serial="s", vendor="TOO-LONG-VENDOR")


# ---------------------------------------------------------------- READ CAPACITY


def test_read_capacity_10() -> None:
    t, _ = make()
    assert t.execute(cdb10(0x25)).data_in == (BLOCKS - 1).to_bytes(
        4, "big"
    ) + BS.to_bytes(4, "big")


def test_read_capacity_10_saturates() -> None:
    t, disk = make(blocks=1)
    disk.data = bytearray(0)  # then pretend a huge disk
    huge = type(
        "Huge", (), {"block_size": BS, "read_only": False, "size_bytes": (1 << 33) * BS}
    )()
    t.disk = huge  # type: ignore[assignment]
    assert t.execute(cdb10(0x25)).data_in == b"\xff\xff\xff\xff" + BS.to_bytes(4, "big")
    rc16 = t.execute(
        bytes([0x9E, 0x10]) + bytes(8) + (32).to_bytes(4, "big") + b"\0\0"
    ).data_in
    assert rc16[:8] == ((1 << 33) - 1).to_bytes(8, "big")


def test_read_capacity_10_lba_without_pmi_invalid() -> None:
    t, _ = make()
    check(t.execute(cdb10(0x25, lba=5)), 0x5, 0x24)
    pmi = bytearray(cdb10(0x25, lba=5))
    pmi[8] = 1
    assert t.execute(bytes(pmi)).status == GOOD


def test_read_capacity_16() -> None:
    t, _ = make()
    cdb = bytes([0x9E, 0x10]) + bytes(8) + (32).to_bytes(4, "big") + b"\0\0"
    data = t.execute(cdb).data_in
    assert data == (BLOCKS - 1).to_bytes(8, "big") + BS.to_bytes(4, "big") + bytes(20)
    short = bytes([0x9E, 0x10]) + bytes(8) + (12).to_bytes(4, "big") + b"\0\0"
    assert t.execute(short).data_in == data[:12]


def test_service_action_in_other_action() -> None:
    t, _ = make()
    res = t.execute(bytes([0x9E, 0x11]) + bytes(14))
    check(res, 0x5, 0x24)
    assert res.sense[15:18] == bytes([0xC0 | 0x08 | 4, 0, 1])


# ---------------------------------------------------------------- READ / WRITE


@pytest.mark.parametrize(
    "cdb",
    [cdb6(0x08, 0, 0, 3, 2), cdb10(0x28, 3, 2), cdb12(0xA8, 3, 2), cdb16(0x88, 3, 2)],
    ids=["read6", "read10", "read12", "read16"],
)
def test_reads(cdb: bytes) -> None:
    t, _ = make()
    res = t.execute(cdb)
    assert res.status == GOOD and res.data_in == b"\x03" * BS + b"\x04" * BS


def test_read6_zero_means_256_blocks() -> None:
    t, _ = make(blocks=300, max_transfer_blocks=512)
    assert len(t.execute(cdb6(0x08, 0, 0, 0, 0)).data_in) == 256 * BS


def test_read10_zero_blocks() -> None:
    t, _ = make()
    assert t.execute(cdb10(0x28, 5, 0)) == ScsiResult(GOOD)
    # lba + 0 does not pass the end
    assert t.execute(cdb10(0x28, BLOCKS, 0)) == ScsiResult(GOOD)


def test_read_truncated_to_allocation() -> None:
    t, _ = make()
    assert (
        t.execute(cdb10(0x28, 1, 4), allocation=700).data_in
        == b"\x01" * BS + b"\x02" * 188
    )


@pytest.mark.parametrize(
    "cdb",
    [
        cdb10(0x28, BLOCKS - 1, 2),
        cdb10(0x28, BLOCKS, 1),
        cdb16(0x88, 1 << 60, 1),
        cdb6(0x08, 0, 0, BLOCKS, 1),
        cdb12(0xA8, BLOCKS - 3, 4),
        cdb10(0x2A, BLOCKS + 1, 0),
    ],
)
def test_lba_out_of_range(cdb: bytes) -> None:
    t, _ = make()
    check(
        t.execute(cdb, b"\0" * BS * (cdb[7] << 8 | cdb[8]) if cdb[0] == 0x2A else b""),
        0x5,
        0x21,
    )


def test_read_last_block_ok() -> None:
    t, _ = make()
    assert t.execute(cdb10(0x28, BLOCKS - 1, 1)).data_in == bytes([BLOCKS - 1]) * BS


def test_transfer_above_limit() -> None:
    t, _ = make(max_transfer_blocks=4)
    res = t.execute(cdb10(0x28, 0, 5))
    check(res, 0x5, 0x24)
    assert res.sense[16:18] == b"\0\x07"


def test_rdprotect_refused() -> None:
    t, _ = make()
    check(t.execute(cdb10(0x28, 0, 1, flags=0x20)), 0x5, 0x24)


@pytest.mark.parametrize(
    "cdb",
    [cdb6(0x0A, 0, 0, 7, 2), cdb10(0x2A, 7, 2), cdb12(0xAA, 7, 2), cdb16(0x8A, 7, 2)],
    ids=["write6", "write10", "write12", "write16"],
)
def test_writes(cdb: bytes) -> None:
    t, disk = make()
    payload = b"\xaa" * BS + b"\xbb" * BS
    assert t.execute(cdb, payload) == ScsiResult(GOOD, data_out_used=2 * BS)
    assert disk.data[7 * BS : 9 * BS] == payload
    assert (
        disk.data[6 * BS : 7 * BS] == b"\x06" * BS
        and disk.data[9 * BS : 10 * BS] == b"\x09" * BS
    )


def test_write_fua_flushes() -> None:
    t, disk = make()
    t.execute(cdb10(0x2A, 0, 1), b"x" * BS)
    assert disk.flushes == 0
    t.execute(cdb10(0x2A, 0, 1, flags=0x08), b"x" * BS)
    assert disk.flushes == 1


@pytest.mark.parametrize("size", [0, BS - 1, 2 * BS])
def test_write_data_out_must_match(size: int) -> None:
    t, disk = make()
    res = t.execute(cdb10(0x2A, 0, 1), b"z" * size)
    check(res, 0x5, 0x24)
    assert res.sense[16:18] == b"\0\x07"
    assert disk.data[:BS] == b"\0" * BS


def test_write_read_only() -> None:
    t, disk = make(read_only=True)
    check(t.execute(cdb10(0x2A, 0, 1), b"z" * BS), 0x7, 0x27)
    assert disk.data[:BS] == b"\0" * BS
    assert t.execute(cdb10(0x2A, 0, 0)) == ScsiResult(GOOD)  # vdc's failfast probe
    assert t.execute(cdb10(0x28, 0, 1)).status == GOOD


def test_write_out_of_range_beats_read_only() -> None:
    t, _ = make(read_only=True)
    check(t.execute(cdb10(0x2A, BLOCKS, 1), b"z" * BS), 0x5, 0x21)


class FailingDisk(MemoryBlockIO):
    def __init__(self, err: int) -> None:
        super().__init__(BLOCKS * BS)
        self.err = err

    def read(self, offset: int, length: int) -> bytes:
        raise OSError(self.err, "boom")

    def write(self, offset: int, data: bytes) -> None:
        raise OSError(self.err, "boom")

    def flush(self) -> None:
        raise OSError(self.err, "boom")


@pytest.mark.parametrize(
    ("err", "read_sense", "write_sense"),
    [
        (errno.EIO, (0x3, 0x11, 0), (0x3, 0x0C, 0)),
        (errno.ENOSPC, (0x7, 0x27, 7), (0x7, 0x27, 7)),
        (errno.EROFS, (0x3, 0x11, 0), (0x7, 0x27, 0)),
        (errno.EINVAL, (0x5, 0x21, 0), (0x5, 0x21, 0)),
    ],
)
def test_backend_errors(err: int, read_sense: tuple, write_sense: tuple) -> None:
    t = ScsiTarget(FailingDisk(err), device_id=b"\1", serial="s")
    check(t.execute(cdb10(0x28, 0, 1)), *read_sense)
    check(t.execute(cdb10(0x2A, 0, 1), b"q" * BS), *write_sense)
    check(t.execute(cdb10(0x35)), *write_sense)


# ---------------------------------------------------------------- SYNCHRONIZE CACHE


def test_synchronize_cache() -> None:
    t, disk = make()
    assert t.execute(cdb10(0x35)) == ScsiResult(GOOD)
    assert t.execute(cdb16(0x91, 10, 5)) == ScsiResult(GOOD)
    assert t.execute(cdb10(0x35, BLOCKS - 1, 0)) == ScsiResult(GOOD)
    assert disk.flushes == 3
    check(t.execute(cdb10(0x35, BLOCKS, 0)), 0x5, 0x21)
    check(t.execute(cdb16(0x91, 10, BLOCKS)), 0x5, 0x21)
    assert disk.flushes == 3


# ---------------------------------------------------------------- MODE SENSE


def caching(wce: bool) -> bytes:
    return bytes([0x08, 18, 0x04 if wce else 0]) + bytes(17)


CONTROL = bytes([0x0A, 10]) + bytes(10)
BLOCK_DESC = BLOCKS.to_bytes(4, "big") + b"\0" + BS.to_bytes(3, "big")


def test_mode_sense6_caching_with_block_descriptor() -> None:
    t, _ = make()
    data = t.execute(cdb6(0x1A, 0, 0x08, 0, 255)).data_in
    assert data == bytes([3 + 8 + 20, 0, 0x10, 8]) + BLOCK_DESC + caching(True)


def test_mode_sense6_dbd_read_only_and_wce_off() -> None:
    t, _ = make(read_only=True, write_cache=False)
    data = t.execute(cdb6(0x1A, 0x08, 0x08, 0, 255)).data_in
    assert data == bytes([3 + 20, 0, 0x90, 0]) + caching(False)


def test_mode_sense_wce_follows_getter() -> None:
    state = {"wce": False}
    t, _ = make(write_cache=lambda: state["wce"])
    assert t.execute(cdb6(0x1A, 0x08, 0x08, 0, 255)).data_in[4 + 2] == 0
    state["wce"] = True
    assert t.execute(cdb6(0x1A, 0x08, 0x08, 0, 255)).data_in[4 + 2] == 0x04


def test_mode_sense6_control_and_all() -> None:
    t, _ = make()
    assert (
        t.execute(cdb6(0x1A, 0x08, 0x0A, 0, 255)).data_in
        == bytes([3 + 12, 0, 0x10, 0]) + CONTROL
    )
    all6 = t.execute(cdb6(0x1A, 0x08, 0x3F, 0, 255)).data_in
    assert all6 == bytes([3 + 32, 0, 0x10, 0]) + caching(True) + CONTROL
    assert t.execute(cdb6(0x1A, 0x08, 0x3F, 0xFF, 255)).data_in == all6


def test_mode_sense6_truncation_keeps_full_length_field() -> None:
    t, _ = make()
    assert t.execute(cdb6(0x1A, 0, 0x3F, 0, 6)).data_in == bytes(
        [3 + 8 + 32, 0, 0x10, 8, 0, 0]
    )


def test_mode_sense6_changeable_values() -> None:
    t, _ = make()
    assert t.execute(cdb6(0x1A, 0x08, 0x48, 0, 255)).data_in[4:] == caching(False)


def test_mode_sense_saved_values_unsupported() -> None:
    t, _ = make()
    check(t.execute(cdb6(0x1A, 0, 0xC8, 0, 255)), 0x5, 0x39)


@pytest.mark.parametrize(("page", "sub"), [(0x01, 0), (0x1C, 0), (0x08, 1), (0x3F, 1)])
def test_mode_sense_unknown_page_or_subpage(page: int, sub: int) -> None:
    t, _ = make()
    check(t.execute(cdb6(0x1A, 0, page, sub, 255)), 0x5, 0x24)


def mode10(flags: int, page: int, alloc: int = 1024) -> bytes:
    return bytes([0x5A, flags, page, 0, 0, 0, 0]) + alloc.to_bytes(2, "big") + b"\0"


def test_mode_sense10_short_and_long_descriptor() -> None:
    t, _ = make()
    data = t.execute(mode10(0, 0x08)).data_in
    assert data == (6 + 8 + 20).to_bytes(2, "big") + bytes(
        [0, 0x10, 0, 0, 0, 8]
    ) + BLOCK_DESC + caching(True)
    long_desc = BLOCKS.to_bytes(8, "big") + bytes(4) + BS.to_bytes(4, "big")
    data = t.execute(mode10(0x10, 0x0A)).data_in
    assert (
        data
        == (6 + 16 + 12).to_bytes(2, "big")
        + bytes([0, 0x10, 1, 0, 0, 16])
        + long_desc
        + CONTROL
    )
    data = t.execute(mode10(0x18, 0x0A)).data_in
    assert data == (6 + 12).to_bytes(2, "big") + bytes([0, 0x10, 0, 0, 0, 0]) + CONTROL
    assert (
        t.execute(mode10(0, 0x08, alloc=3)).data_in
        == (6 + 8 + 20).to_bytes(2, "big") + b"\0"
    )


def test_mode_sense10_read_only() -> None:
    t, _ = make(read_only=True)
    assert t.execute(mode10(0x08, 0x3F)).data_in[3] == 0x90


# ---------------------------------------------------------------- unknown / malformed


@pytest.mark.parametrize(
    "op",
    [
        0x01,
        0x04,
        0x15,
        0x1B,
        0x1E,
        0x2F,
        0x41,
        0x42,
        0x4D,
        0x55,
        0x5E,
        0x5F,
        0xA0,
        0xA3,
        0x7F,
        0xC0,
        0xFF,
    ],
)
def test_unknown_opcodes(op: int) -> None:
    t, _ = make()
    res = t.execute(bytes([op]) + bytes(15))
    check(res, 0x5, 0x20)
    assert res.sense[15:18] == b"\0\0\0"


def test_empty_cdb() -> None:
    t, _ = make()
    check(t.execute(b""), 0x5, 0x20)


def test_short_cdb() -> None:
    t, _ = make()
    res = t.execute(bytes([0x28, 0, 0, 0]))
    check(res, 0x5, 0x24)
    assert res.sense[16:18] == b"\0\x03"


def test_naca_in_control_byte() -> None:
    t, _ = make()
    res = t.execute(cdb6(0x00, 0, 0, 0, 0, 0x04))
    check(res, 0x5, 0x24)
    assert res.sense[15:18] == bytes([0xC0 | 0x08 | 2, 0, 5])


# ---------------------------------------------------------------- VdScsi codec


def test_vd_scsi_layout_against_illumos_offsets() -> None:
    req = VdScsi(
        cdb=bytes(range(10)), sense=b"S" * 20, data_in=b"I" * 9, data_out=b"",
        cmd_status=1, sense_status=2, task_attribute=3, task_priority=4, crn=5, reserved=6,
        timeout=0x0708, options=0x0102030405060708,
    )  # fmt: skip
    buf = req.encode()
    assert buf[:8] == bytes([1, 2, 3, 4, 5, 6, 7, 8])
    assert struct.unpack(">5Q", buf[8:48]) == (0x0102030405060708, 10, 20, 9, 0)
    assert VD_SCSI_HEADER_SIZE == 48
    assert buf[48:58] == bytes(range(10)) and buf[58:64] == bytes(6)
    assert buf[64:84] == b"S" * 20 and buf[84:88] == bytes(4)
    assert buf[88:97] == b"I" * 9 and len(buf) == 104
    assert req.offsets() == (48, 64, 88, 104, 104)
    assert VdScsi.decode(buf) == req
    assert VdScsi.decode(buf, exact=True) == req


def test_vd_scsi_decode_accepts_trailing_bytes_unless_exact() -> None:
    req = VdScsi.request(cdb6(0), sense_len=18)
    buf = req.encode() + bytes(16)
    assert VdScsi.decode(buf) == req
    with pytest.raises(OSError) as ei:
        VdScsi.decode(buf, exact=True)
    assert ei.value.errno == errno.EINVAL


def header(cdb_len: int, sense_len: int = 0, din: int = 0, dout: int = 0) -> bytes:
    return bytes(8) + struct.pack(">5Q", 0, cdb_len, sense_len, din, dout)


@pytest.mark.parametrize(
    "buf",
    [
        b"",
        bytes(47),
        header(0) + bytes(8),
        header(256) + bytes(256),
        header(6, 256) + bytes(8 + 256),
        header(6, 0, 8, 8) + bytes(24),
        header(6, 18) + bytes(8 + 23),
        header(6, 0, 1 << 63) + bytes(16),
        header(6, 0, 0, (1 << 64) - 1) + bytes(16),
    ],
    ids=[
        "empty",
        "short-header",
        "no-cdb",
        "huge-cdb",
        "huge-sense",
        "bidir",
        "truncated",
        "huge-in",
        "huge-out",
    ],
)
def test_vd_scsi_malformed(buf: bytes) -> None:
    with pytest.raises(OSError) as ei:
        VdScsi.decode(buf)
    assert ei.value.errno == errno.EINVAL


@given(
    cdb=st.binary(min_size=1, max_size=32),
    sense=st.binary(max_size=40),
    data=st.binary(max_size=64),
    outward=st.booleans(),
    hdr=st.tuples(
        *[st.integers(0, 255)] * 6,
        st.integers(0, 0xFFFF),
        st.integers(0, (1 << 64) - 1),
    ),
)
def test_vd_scsi_round_trip(
    cdb: bytes, sense: bytes, data: bytes, outward: bool, hdr: tuple
) -> None:
    names = (
        "cmd_status",
        "sense_status",
        "task_attribute",
        "task_priority",
        "crn",
        "reserved",
        "timeout",
        "options",
    )
    req = VdScsi(
        cdb=cdb,
        sense=sense,
        data_in=b"" if outward else data,
        data_out=data if outward else b"",
        **dict(zip(names, hdr, strict=True)),
    )
    buf = req.encode()
    assert len(buf) % 8 == 0
    assert VdScsi.decode(buf, exact=True) == req


# ---------------------------------------------------------------- replies


def test_reply_good_read_keeps_layout_and_shrinks_datain() -> None:
    t, _ = make()
    req = VdScsi.request(cdb6(0x12, 0, 0, 0, 255), sense_len=20, datain_len=100)
    result = t.execute(req.cdb, allocation=req.datain_len)
    buf = encode_reply(req, result)
    assert len(buf) == len(req.encode())
    assert buf[0] == GOOD
    assert struct.unpack(">4Q", buf[16:48]) == (6, 0, 36, 0)
    assert req.offsets()[2] == 48 + 8 + 24
    assert (
        buf[80 : 80 + 36] == result.data_in
    )  # data-in stays behind the full 24-byte sense area
    rep = VdScsi.decode_reply(buf, req)
    assert rep.data_in == result.data_in and rep.sense == b"" and rep.cmd_status == GOOD


def test_reply_check_condition_carries_sense() -> None:
    t, _ = make()
    req = VdScsi.request(
        cdb10(0x28, BLOCKS, 1), sense_len=20, datain_len=BS, sense_status=0x77
    )
    buf = serve_scsicmd(t, req.encode())
    rep = VdScsi.decode_reply(buf, req)
    assert (rep.cmd_status, rep.sense_status) == (CHECK_CONDITION, GOOD)
    assert rep.sense == fixed_sense(0x5, 0x21) and rep.data_in == b""
    assert struct.unpack(">3Q", buf[24:48]) == (18, 0, 0)


def test_reply_check_without_sense_area() -> None:
    req = VdScsi.request(cdb6(0xFF), sense_len=0, sense_status=0x55)
    res = ScsiResult(CHECK_CONDITION, sense=fixed_sense(5, 0x20))
    assert reply_lengths(req, res) == (0x55, 0, 0, 0)


def test_reply_short_sense_area_truncates() -> None:
    req = VdScsi.request(cdb6(0xFF), sense_len=8)
    res = ScsiResult(CHECK_CONDITION, sense=fixed_sense(5, 0x20))
    rep = VdScsi.decode_reply(encode_reply(req, res), req)
    assert rep.sense == fixed_sense(5, 0x20)[:8]


def test_reply_write_reports_dataout_used() -> None:
    t, disk = make()
    req = VdScsi.request(cdb10(0x2A, 2, 1), data_out=b"w" * BS)
    buf = serve_scsicmd(t, req.encode())
    assert struct.unpack(">3Q", buf[24:48]) == (0, 0, BS)
    assert disk.data[2 * BS : 3 * BS] == b"w" * BS


def test_reply_failed_write_zeroes_dataout() -> None:
    t, _ = make(read_only=True)
    req = VdScsi.request(cdb10(0x2A, 2, 1), data_out=b"w" * BS)
    assert struct.unpack(">3Q", serve_scsicmd(t, req.encode())[24:48]) == (18, 0, 0)


def test_serve_keeps_trailing_bytes_and_rejects_malformed() -> None:
    t, _ = make()
    raw = VdScsi.request(cdb6(0x00)).encode() + bytes(8)
    assert len(serve_scsicmd(t, raw)) == len(raw)
    with pytest.raises(OSError):
        serve_scsicmd(t, raw[:40])


def test_decode_reply_rejects_growth() -> None:
    req = VdScsi.request(cdb6(0x12, 0, 0, 0, 36), datain_len=8)
    buf = bytearray(req.encode())
    buf[32:40] = (9).to_bytes(8, "big")
    with pytest.raises(OSError):
        VdScsi.decode_reply(bytes(buf), req)


# ---------------------------------------------------------------- fuzz


def _well_formed(res: ScsiResult) -> None:
    assert res.status in (GOOD, CHECK_CONDITION)
    if res.status == CHECK_CONDITION:
        assert res.data_in == b"" and len(res.sense) == 18
        assert res.sense[0] == 0x70 and res.sense[7] == 10 and res.sense[2] <= 0xF
    else:
        assert res.sense == b""


_interesting = st.sampled_from(
    [
        0x00,
        0x03,
        0x08,
        0x0A,
        0x12,
        0x1A,
        0x25,
        0x28,
        0x2A,
        0x35,
        0x5A,
        0x88,
        0x8A,
        0x91,
        0x9E,
        0xA8,
        0xAA,
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    op=st.one_of(_interesting, st.integers(0, 255)),
    rest=st.binary(max_size=20),
    out=st.one_of(
        st.just(b""),
        st.binary(max_size=64),
        st.sampled_from([bytes(BS), bytes(2 * BS)]),
    ),
    allocation=st.one_of(st.none(), st.integers(0, 4096)),
    read_only=st.booleans(),
)
def test_random_cdbs_never_raise(
    op: int, rest: bytes, out: bytes, allocation: int | None, read_only: bool
) -> None:
    t, _ = make(read_only=read_only, blocks=16)
    res = t.execute(bytes([op]) + rest, out, allocation)
    _well_formed(res)
    if allocation is not None:
        assert len(res.data_in) <= allocation
    _well_formed(t.execute(cdb6(0x03, 0, 0, 0, 252)))


@settings(max_examples=200, deadline=None)
@given(buf=st.binary(max_size=160))
def test_random_buffers_only_einval(buf: bytes) -> None:
    t, _ = make(blocks=16)
    try:
        out = serve_scsicmd(t, buf)
    except OSError as exc:
        assert exc.errno == errno.EINVAL
    else:
        assert len(out) == len(buf)
