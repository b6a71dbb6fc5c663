"""SCSI for vDisk: the VD_OP_SCSICMD buffer codec and a small SCSI disk emulator.

illumos vds only ever passes VD_OP_SCSICMD through to a real SCSI disk; we
emulate a direct-access device over any BlockIO instead, so that a guest's
uscsi(4I) users, failfast probes and format(8) see a sane disk.
See docs/vdisk-scsi.md for the layout, the reply rules and the sense choices.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar

from backend.vdisk.blockio import BlockIO

# --------------------------------------------------------------------------
# SCSI status, sense keys and additional sense codes (SAM-5, SPC-4)
# --------------------------------------------------------------------------

GOOD = 0x00
CHECK_CONDITION = 0x02
TASK_ABORTED = 0x40
#: illumos STATUS_TERMINATED: vds returns sense for it like for CHECK CONDITION.
COMMAND_TERMINATED = 0x22

NO_SENSE = 0x0
NOT_READY = 0x2
MEDIUM_ERROR = 0x3
HARDWARE_ERROR = 0x4
ILLEGAL_REQUEST = 0x5
DATA_PROTECT = 0x7

ASC_WRITE_ERROR = 0x0C
ASC_UNRECOVERED_READ_ERROR = 0x11
ASC_INVALID_OPCODE = 0x20
ASC_LBA_OUT_OF_RANGE = 0x21
ASC_INVALID_FIELD_IN_CDB = 0x24
ASC_WRITE_PROTECTED = 0x27
ASCQ_SPACE_ALLOCATION_FAILED = 0x07
ASC_SAVING_PARAMETERS_NOT_SUPPORTED = 0x39

FIXED_SENSE_LEN = 18

# Operation codes we implement.
TEST_UNIT_READY = 0x00
REQUEST_SENSE = 0x03
READ_6 = 0x08
WRITE_6 = 0x0A
INQUIRY = 0x12
MODE_SENSE_6 = 0x1A
READ_CAPACITY_10 = 0x25
READ_10 = 0x28
WRITE_10 = 0x2A
SYNCHRONIZE_CACHE_10 = 0x35
MODE_SENSE_10 = 0x5A
READ_16 = 0x88
WRITE_16 = 0x8A
SYNCHRONIZE_CACHE_16 = 0x91
SERVICE_ACTION_IN_16 = 0x9E
READ_12 = 0xA8
WRITE_12 = 0xAA
SA_READ_CAPACITY_16 = 0x10

# --------------------------------------------------------------------------
# VD_OP_SCSICMD buffer (illumos vd_scsi_t, usr/src/uts/sun4v/sys/vdsk_common.h)
# --------------------------------------------------------------------------

#: Byte 0..7: cmd_status, sense_status, task_attribute, task_priority, crn,
#: reserved (u8 each), timeout (u16); then options, cdb_len, sense_len,
#: datain_len, dataout_len (u64 each). Big-endian like every sun4v structure.
VD_SCSI_HEADER = struct.Struct(">BBBBBBHQQQQQ")
VD_SCSI_HEADER_SIZE = VD_SCSI_HEADER.size  # 48, illumos VD_SCSI_SIZE
#: vds refuses a descriptor whose nbytes is below sizeof (vd_scsi_t) = 56.
VD_SCSI_MIN_BUFFER = 56

VD_SCSI_TASK_SIMPLE = 0x01
VD_SCSI_TASK_ORDERED = 0x02
VD_SCSI_TASK_HQUEUE = 0x03
VD_SCSI_TASK_ACA = 0x04
VD_SCSI_OPT_CRN = 0x01
VD_SCSI_OPT_NORETRY = 0x02

#: uscsi_cdblen and uscsi_rqlen are uchar_t in illumos, so no client can ask for more.
MAX_CDB_LEN = 255
MAX_SENSE_LEN = 255


def _pad8(n: int) -> int:
    """Round up to the 8-byte multiple every vd_scsi_t area occupies."""
    return (n + 7) & ~7


def _einval(why: str) -> OSError:
    return OSError(errno.EINVAL, f"VD_OP_SCSICMD buffer: {why}")


@dataclass(frozen=True)
class VdScsi:
    """One vd_scsi_t. Each area's length field is the length of its bytes here.

    In a request the areas are the client's buffers (data_in is the space the
    client offers; its content is irrelevant). In a decoded reply they are cut
    to the lengths the server reported.
    """

    cdb: bytes
    sense: bytes = b""
    data_in: bytes = b""
    data_out: bytes = b""
    cmd_status: int = 0
    sense_status: int = 0
    task_attribute: int = 0
    task_priority: int = 0
    crn: int = 0
    reserved: int = 0
    timeout: int = 0
    options: int = 0

    @property
    def cdb_len(self) -> int:
        return len(self.cdb)

    @property
    def sense_len(self) -> int:
        return len(self.sense)

    @property
    def datain_len(self) -> int:
        return len(self.data_in)

    @property
    def dataout_len(self) -> int:
        return len(self.data_out)

    @classmethod
    def request(
        cls,
        cdb: bytes,
        *,
        sense_len: int = 20,
        datain_len: int = 0,
        data_out: bytes = b"",
        **header: int,
    ) -> VdScsi:
        """A client-side request (vdc asks for sizeof (scsi_extended_sense) = 20 sense bytes)."""
        return cls(
            cdb=bytes(cdb),
            sense=bytes(sense_len),
            data_in=bytes(datain_len),
            data_out=bytes(data_out),
            **header,
        )

    def offsets(self) -> tuple[int, int, int, int, int]:
        """Offsets of CDB, sense, data-in, data-out, and the total size, from the length fields."""
        cdb = VD_SCSI_HEADER_SIZE
        sense = cdb + _pad8(self.cdb_len)
        din = sense + _pad8(self.sense_len)
        dout = din + _pad8(self.datain_len)
        return cdb, sense, din, dout, dout + _pad8(self.dataout_len)

    def encode(self) -> bytes:
        """The buffer with every area zero-padded to 8 bytes."""
        cdb_off, sense_off, din_off, dout_off, total = self.offsets()
        buf = bytearray(total)
        buf[:VD_SCSI_HEADER_SIZE] = self._header(
            self.sense_len, self.datain_len, self.dataout_len
        )
        buf[cdb_off : cdb_off + self.cdb_len] = self.cdb
        buf[sense_off : sense_off + self.sense_len] = self.sense
        buf[din_off : din_off + self.datain_len] = self.data_in
        buf[dout_off : dout_off + self.dataout_len] = self.data_out
        return bytes(buf)

    def _header(self, sense_len: int, datain_len: int, dataout_len: int) -> bytes:
        return VD_SCSI_HEADER.pack(
            self.cmd_status, self.sense_status, self.task_attribute, self.task_priority,
            self.crn, self.reserved, self.timeout, self.options,
            self.cdb_len, sense_len, datain_len, dataout_len,
        )  # fmt: skip

    @classmethod
    def decode(cls, buf: bytes, *, exact: bool = False) -> VdScsi:
        """Parse a request. vds accepts trailing bytes (exact=False); exact=True refuses them."""
        if len(buf) < VD_SCSI_HEADER_SIZE:
            raise _einval(
                f"{len(buf)} bytes, shorter than the {VD_SCSI_HEADER_SIZE}-byte header"
            )
        (
            cst,
            sst,
            tattr,
            tprio,
            crn,
            resv,
            timeout,
            options,
            cdb_len,
            sense_len,
            din_len,
            dout_len,
        ) = VD_SCSI_HEADER.unpack_from(buf)
        _check_lengths(cdb_len, sense_len, din_len, dout_len)
        total = VD_SCSI_HEADER_SIZE + sum(
            _pad8(n) for n in (cdb_len, sense_len, din_len, dout_len)
        )
        if len(buf) < total or (exact and len(buf) != total):
            raise _einval(f"lengths need {total} bytes, buffer has {len(buf)}")
        view = memoryview(buf)
        off = VD_SCSI_HEADER_SIZE
        areas = []
        for n in (cdb_len, sense_len, din_len, dout_len):
            areas.append(bytes(view[off : off + n]))
            off += _pad8(n)
        return cls(
            cdb=areas[0], sense=areas[1], data_in=areas[2], data_out=areas[3],
            cmd_status=cst, sense_status=sst, task_attribute=tattr, task_priority=tprio,
            crn=crn, reserved=resv, timeout=timeout, options=options,
        )  # fmt: skip

    @classmethod
    def decode_reply(cls, buf: bytes, request: VdScsi) -> VdScsi:
        """Parse a reply: areas stay where the request put them, lengths are what the server reported."""
        if len(buf) < request.offsets()[4]:
            raise _einval("reply shorter than its request")
        hdr = VD_SCSI_HEADER.unpack_from(buf)
        sense_len, din_len, dout_len = hdr[9], hdr[10], hdr[11]
        if (
            sense_len > request.sense_len
            or din_len > request.datain_len
            or dout_len > request.dataout_len
        ):
            raise _einval("reply reports more bytes than the request offered")
        _, sense_off, din_off, _, _ = request.offsets()
        return cls(
            cdb=request.cdb,
            sense=bytes(buf[sense_off : sense_off + sense_len]),
            data_in=bytes(buf[din_off : din_off + din_len]),
            data_out=request.data_out[:dout_len],
            cmd_status=hdr[0], sense_status=hdr[1], task_attribute=hdr[2], task_priority=hdr[3],
            crn=hdr[4], reserved=hdr[5], timeout=hdr[6], options=hdr[7],
        )  # fmt: skip


def _check_lengths(cdb_len: int, sense_len: int, din_len: int, dout_len: int) -> None:
    """Refuse what no vdc can send and what vds refuses (both data directions at once)."""
    if not 1 <= cdb_len <= MAX_CDB_LEN:
        raise _einval(f"cdb_len {cdb_len} outside 1..{MAX_CDB_LEN}")
    if sense_len > MAX_SENSE_LEN:
        raise _einval(f"sense_len {sense_len} above {MAX_SENSE_LEN}")
    if din_len and dout_len:
        raise _einval(
            "both data-in and data-out are set (uscsi has no bidirectional commands)"
        )


@dataclass(frozen=True)
class ScsiResult:
    """What a command produced: SCSI status, data for the initiator, sense data."""

    status: int
    data_in: bytes = b""
    sense: bytes = b""
    #: Bytes of data-out the command consumed (the reply's dataout_len on GOOD).
    data_out_used: int = 0

    @property
    def sense_key(self) -> int | None:
        return self.sense[2] & 0x0F if len(self.sense) > 2 else None

    @property
    def asc_ascq(self) -> tuple[int, int] | None:
        return (self.sense[12], self.sense[13]) if len(self.sense) > 13 else None


def reply_lengths(request: VdScsi, result: ScsiResult) -> tuple[int, int, int, int]:
    """(sense_status, sense_len, datain_len, dataout_len) as illumos vds sets them.

    Sense travels only on CHECK CONDITION / COMMAND TERMINATED and only if the
    client offered a sense area; data lengths are zeroed unless status is GOOD,
    and the direction is decided by datain_len != 0 (vds's USCSI_READ).
    """
    sense_status, sense_len = request.sense_status, 0
    if request.sense_len and result.status in (CHECK_CONDITION, COMMAND_TERMINATED):
        sense_status, sense_len = GOOD, min(len(result.sense), request.sense_len)
    if result.status != GOOD:
        return sense_status, sense_len, 0, 0
    if request.datain_len:
        return sense_status, sense_len, min(len(result.data_in), request.datain_len), 0
    return sense_status, sense_len, 0, min(result.data_out_used, request.dataout_len)


def encode_reply(request: VdScsi, result: ScsiResult) -> bytes:
    """The request buffer with status, sense, data-in and the reported lengths filled in.

    The layout is the request's: vdc located its sense and data-in pointers
    before sending and reads them back at the same place, so shrinking a
    length must not move the areas behind it.
    """
    sense_status, sense_len, din_len, dout_len = reply_lengths(request, result)
    buf = bytearray(request.encode())
    _, sense_off, din_off, _, _ = request.offsets()
    buf[sense_off : sense_off + sense_len] = result.sense[:sense_len]
    buf[din_off : din_off + din_len] = result.data_in[:din_len]
    hdr = replace(request, cmd_status=result.status, sense_status=sense_status)
    buf[:VD_SCSI_HEADER_SIZE] = hdr._header(sense_len, din_len, dout_len)
    return bytes(buf)


# --------------------------------------------------------------------------
# Sense data (SPC-4 4.5.3, fixed format)
# --------------------------------------------------------------------------


def fixed_sense(
    key: int,
    asc: int,
    ascq: int = 0,
    *,
    byte: int | None = None,
    bit: int | None = None,
) -> bytes:
    """18 bytes of current-error fixed-format sense; `byte`/`bit` point at the offending CDB field."""
    sense = bytearray(FIXED_SENSE_LEN)
    sense[0] = 0x70
    sense[2] = key & 0x0F
    sense[7] = FIXED_SENSE_LEN - 8
    sense[12], sense[13] = asc, ascq
    if byte is not None:
        # SKSV, C/D (the field is in the CDB), and BPV with the bit when one is named
        sense[15] = 0x80 | 0x40 | ((0x08 | bit) if bit is not None else 0)
        sense[16:18] = byte.to_bytes(2, "big")
    return bytes(sense)


class _CheckCondition(Exception):
    """Raised inside a handler to end the command with CHECK CONDITION."""

    def __init__(self, sense: bytes) -> None:
        super().__init__(sense.hex())
        self.sense = sense


def _invalid_field(byte: int, bit: int | None = None) -> _CheckCondition:
    return _CheckCondition(
        fixed_sense(ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB, byte=byte, bit=bit)
    )


def _lba_out_of_range() -> _CheckCondition:
    return _CheckCondition(fixed_sense(ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE))


def _write_protected(ascq: int = 0) -> _CheckCondition:
    return _CheckCondition(fixed_sense(DATA_PROTECT, ASC_WRITE_PROTECTED, ascq))


def _io_error(exc: OSError, *, writing: bool) -> _CheckCondition:
    """Map a backend failure to sense data (choices explained in docs/vdisk-scsi.md)."""
    if exc.errno == errno.ENOSPC:
        return _write_protected(ASCQ_SPACE_ALLOCATION_FAILED)
    if exc.errno == errno.EROFS and writing:
        return _write_protected()
    if exc.errno == errno.EINVAL:
        return _lba_out_of_range()
    asc = ASC_WRITE_ERROR if writing else ASC_UNRECOVERED_READ_ERROR
    return _CheckCondition(fixed_sense(MEDIUM_ERROR, asc))


# --------------------------------------------------------------------------
# CDB field helpers
# --------------------------------------------------------------------------


def _be(cdb: bytes, start: int, size: int) -> int:
    return int.from_bytes(cdb[start : start + size], "big")


@dataclass(frozen=True)
class _Rw:
    """Decoded READ/WRITE/SYNCHRONIZE CACHE addressing."""

    lba: int
    blocks: int
    flags: int  # byte 1 (RDPROTECT/WRPROTECT, DPO, FUA); 0 for the 6-byte forms
    length_field: int  # CDB byte of the transfer length, for sense field pointers


def _rw6(cdb: bytes) -> _Rw:
    lba = _be(cdb, 1, 3) & 0x1FFFFF
    return _Rw(lba, cdb[4] or 256, 0, 4)  # SBC: a 0 in the 6-byte form means 256 blocks


def _rw10(cdb: bytes) -> _Rw:
    return _Rw(_be(cdb, 2, 4), _be(cdb, 7, 2), cdb[1], 7)


def _rw12(cdb: bytes) -> _Rw:
    return _Rw(_be(cdb, 2, 4), _be(cdb, 6, 4), cdb[1], 6)


def _rw16(cdb: bytes) -> _Rw:
    return _Rw(_be(cdb, 2, 8), _be(cdb, 10, 4), cdb[1], 10)


def _padded(text: str, size: int) -> bytes:
    return text.encode("ascii")[:size].ljust(size, b" ")


# --------------------------------------------------------------------------
# The emulated logical unit
# --------------------------------------------------------------------------

_CDB_LEN_BY_GROUP = {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}

_VPD_PAGES = (0x00, 0x80, 0x83, 0xB0, 0xB1)
_MODE_CACHING = 0x08
_MODE_CONTROL = 0x0A
_MODE_ALL = 0x3F


@dataclass
class ScsiTarget:
    """A direct-access SCSI logical unit (SBC-3) backed by a BlockIO.

    write_cache is the WCE state MODE SENSE reports: a bool, or a getter so
    that it follows VD_OP_GET_WCE/SET_WCE state kept elsewhere.
    """

    disk: BlockIO
    device_id: bytes
    serial: str
    vendor: str = "SUN"
    product: str = "Virtual Disk"
    revision: str = "1.0"
    write_cache: bool | Callable[[], bool] = True
    #: Largest READ/WRITE in blocks (Block Limits VPD MAXIMUM TRANSFER LENGTH).
    max_transfer_blocks: int = 2048
    _pending_sense: bytes | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.device_id or len(self.device_id) > 123:
            raise ValueError(
                "device_id must be 1..123 bytes (hex-encoded into a 255-byte designator)"
            )
        for name, text, limit in (("serial", self.serial, 251), ("vendor", self.vendor, 8),
                                  ("product", self.product, 16), ("revision", self.revision, 4)):  # fmt: skip
            if not text.isascii() or not text.isprintable() or len(text) > limit:
                raise ValueError(
                    f"{name} must be printable ASCII of at most {limit} characters"
                )

    # -- public entry ------------------------------------------------------

    def execute(
        self, cdb: bytes, data_out: bytes = b"", allocation: int | None = None
    ) -> ScsiResult:
        """Run one command. `allocation` is the initiator's data-in buffer size (None: unlimited).

        Never raises for anything the initiator sends: every failure becomes
        CHECK CONDITION with fixed-format sense, remembered for REQUEST SENSE.
        """
        try:
            result = self._dispatch(bytes(cdb), bytes(data_out), allocation)
        except _CheckCondition as cc:
            self._pending_sense = cc.sense
            return ScsiResult(CHECK_CONDITION, sense=cc.sense)
        if allocation is not None and len(result.data_in) > allocation:
            result = replace(result, data_in=result.data_in[: max(allocation, 0)])
        return result

    # -- properties of the medium -------------------------------------------

    @property
    def blocks(self) -> int:
        """Whole logical blocks on the disk (a trailing partial block is not addressable)."""
        return self.disk.size_bytes // self.disk.block_size

    def wce(self) -> bool:
        wc = self.write_cache
        return bool(wc() if callable(wc) else wc)

    # -- dispatch ------------------------------------------------------------

    def _dispatch(
        self, cdb: bytes, data_out: bytes, allocation: int | None
    ) -> ScsiResult:
        if not cdb:
            raise _CheckCondition(fixed_sense(ILLEGAL_REQUEST, ASC_INVALID_OPCODE))
        handler = self._HANDLERS.get(cdb[0])
        if handler is None:
            raise _CheckCondition(fixed_sense(ILLEGAL_REQUEST, ASC_INVALID_OPCODE))
        need = _CDB_LEN_BY_GROUP[cdb[0] >> 5]
        if len(cdb) < need:
            raise _invalid_field(len(cdb) - 1)
        # CONTROL byte: NACA or the obsolete LINK bit; there is no ACA here
        if cdb[need - 1] & 0x05:
            raise _invalid_field(need - 1, 2 if cdb[need - 1] & 0x04 else 0)
        return handler(self, cdb, data_out, allocation)

    # -- simple commands -----------------------------------------------------

    def _test_unit_ready(
        self, cdb: bytes, data_out: bytes, allocation: int | None
    ) -> ScsiResult:
        return ScsiResult(GOOD)

    def _request_sense(
        self, cdb: bytes, data_out: bytes, allocation: int | None
    ) -> ScsiResult:
        if cdb[1] & 0x01:  # DESC: descriptor-format sense is not supported
            raise _invalid_field(1, 0)
        sense = self._pending_sense or fixed_sense(NO_SENSE, 0)
        self._pending_sense = None
        return ScsiResult(GOOD, data_in=sense[: cdb[4]])

    # -- INQUIRY (SPC-4 6.6) -------------------------------------------------

    def _inquiry(
        self, cdb: bytes, data_out: bytes, allocation: int | None
    ) -> ScsiResult:
        if cdb[1] & 0x02:  # obsolete CMDDT
            raise _invalid_field(1, 1)
        evpd, page, alloc = cdb[1] & 0x01, cdb[2], _be(cdb, 3, 2)
        if not evpd:
            if page:
                raise _invalid_field(2)
            return ScsiResult(GOOD, data_in=self._standard_inquiry()[:alloc])
        if page not in _VPD_PAGES:
            raise _invalid_field(2)
        return ScsiResult(GOOD, data_in=self._vpd(page)[:alloc])

    def _standard_inquiry(self) -> bytes:
        # direct access, VERSION 5 (SPC-3), response format 2, CMDQUE
        head = bytes([0x00, 0x00, 0x05, 0x02, 36 - 5, 0x00, 0x00, 0x02])
        return (
            head
            + _padded(self.vendor, 8)
            + _padded(self.product, 16)
            + _padded(self.revision, 4)
        )

    def _vpd(self, page: int) -> bytes:
        body = {
            0x00: lambda: bytes(_VPD_PAGES),
            0x80: lambda: self.serial.encode("ascii"),
            0x83: self._device_identification,
            0xB0: self._block_limits,
            0xB1: lambda: bytes(0x3C),  # rotation rate and form factor "not reported"
        }[page]()
        return bytes([0x00, page]) + len(body).to_bytes(2, "big") + body

    def _device_identification(self) -> bytes:
        """One logical-unit designator: T10 vendor ID based, ASCII (see docs for why not NAA)."""
        ident = _padded(self.vendor, 8) + self.device_id.hex().upper().encode("ascii")
        # code set 2 (ASCII); association 0 (logical unit), designator type 1
        return bytes([0x02, 0x01, 0x00, len(ident)]) + ident

    def _block_limits(self) -> bytes:
        body = bytearray(0x3C)
        # MAXIMUM TRANSFER LENGTH sits at page byte 8, i.e. body byte 4
        body[4:8] = self.max_transfer_blocks.to_bytes(4, "big")
        return bytes(body)

    # -- READ CAPACITY (SBC-3 5.15, 5.16) ------------------------------------

    def _read_capacity_10(
        self, cdb: bytes, data_out: bytes, allocation: int | None
    ) -> ScsiResult:
        if not cdb[8] & 0x01 and _be(cdb, 2, 4):  # LBA without PMI is invalid
            raise _invalid_field(2)
        last = max(self.blocks - 1, 0)
        data = min(last, 0xFFFFFFFF).to_bytes(4, "big") + self.disk.block_size.to_bytes(
            4, "big"
        )
        return ScsiResult(GOOD, data_in=data)

    def _service_action_in_16(
        self, cdb: bytes, data_out: bytes, allocation: int | None
    ) -> ScsiResult:
        if cdb[1] & 0x1F != SA_READ_CAPACITY_16:
            raise _invalid_field(1, 4)
        if not cdb[14] & 0x01 and _be(cdb, 2, 8):
            raise _invalid_field(2)
        data = bytearray(32)
        data[0:8] = max(self.blocks - 1, 0).to_bytes(8, "big")
        data[8:12] = self.disk.block_size.to_bytes(4, "big")
        return ScsiResult(GOOD, data_in=bytes(data[: _be(cdb, 10, 4)]))

    # -- READ / WRITE (SBC-3 5.x) --------------------------------------------

    def _check_rw(self, cdb: bytes, rw: _Rw) -> None:
        if rw.flags & 0xE0:  # RDPROTECT/WRPROTECT: no protection information here
            raise _invalid_field(1, 7)
        if rw.blocks > self.max_transfer_blocks:
            raise _invalid_field(rw.length_field)
        if rw.lba + rw.blocks > self.blocks:
            raise _lba_out_of_range()

    def _read(self, cdb: bytes, allocation: int | None, rw: _Rw) -> ScsiResult:
        self._check_rw(cdb, rw)
        bs = self.disk.block_size
        length = (
            rw.blocks * bs
            if allocation is None
            else min(rw.blocks * bs, max(allocation, 0))
        )
        try:
            data = self.disk.read(rw.lba * bs, length) if length else b""
        except OSError as exc:
            raise _io_error(exc, writing=False) from exc
        return ScsiResult(GOOD, data_in=data)

    def _write(self, cdb: bytes, data_out: bytes, rw: _Rw) -> ScsiResult:
        self._check_rw(cdb, rw)
        bs = self.disk.block_size
        if len(data_out) != rw.blocks * bs:
            raise _invalid_field(rw.length_field)
        if not rw.blocks:
            # nothing reaches the medium, so not even write protection applies
            return ScsiResult(GOOD)
        if self.disk.read_only:
            raise _write_protected()
        try:
            self.disk.write(rw.lba * bs, data_out)
            if rw.flags & 0x08:  # FUA: the data must be on stable storage before GOOD
                self.disk.flush()
        except OSError as exc:
            raise _io_error(exc, writing=True) from exc
        return ScsiResult(GOOD, data_out_used=len(data_out))

    def _read6(self, cdb: bytes, data_out: bytes, allocation: int | None) -> ScsiResult:
        return self._read(cdb, allocation, _rw6(cdb))

    def _read10(
        self, cdb: bytes, data_out: bytes, allocation: int | None
    ) -> ScsiResult:
        return self._read(cdb, allocation, _rw10(cdb))

    def _read12(
        self, cdb: bytes, data_out: bytes, allocation: int | None
    ) -> ScsiResult:
        return self._read(cdb, allocation, _rw12(cdb))

    def _read16(
        self, cdb: bytes, data_out: bytes, allocation: int | None
    ) -> ScsiResult:
        return self._read(cdb, allocation, _rw16(cdb))

    def _write6(
        self, cdb: bytes, data_out: bytes, allocation: int | None
    ) -> ScsiResult:
        return self._write(cdb, data_out, _rw6(cdb))

    def _write10(
        self, cdb: bytes, data_out: bytes, allocation: int | None
    ) -> ScsiResult:
        return self._write(cdb, data_out, _rw10(cdb))

    def _write12(
        self, cdb: bytes, data_out: bytes, allocation: int | None
    ) -> ScsiResult:
        return self._write(cdb, data_out, _rw12(cdb))

    def _write16(
        self, cdb: bytes, data_out: bytes, allocation: int | None
    ) -> ScsiResult:
        return self._write(cdb, data_out, _rw16(cdb))

    # -- SYNCHRONIZE CACHE (SBC-3 5.22, 5.23) --------------------------------

    def _sync(self, lba: int, blocks: int) -> ScsiResult:
        # NUMBER OF LOGICAL BLOCKS 0 means "from lba to the end", so lba itself must exist.
        if lba + max(blocks, 1) > self.blocks and (lba, blocks) != (0, 0):
            raise _lba_out_of_range()
        try:
            self.disk.flush()
        except OSError as exc:
            raise _io_error(exc, writing=True) from exc
        return ScsiResult(GOOD)

    def _sync10(
        self, cdb: bytes, data_out: bytes, allocation: int | None
    ) -> ScsiResult:
        return self._sync(_be(cdb, 2, 4), _be(cdb, 7, 2))

    def _sync16(
        self, cdb: bytes, data_out: bytes, allocation: int | None
    ) -> ScsiResult:
        return self._sync(_be(cdb, 2, 8), _be(cdb, 10, 4))

    # -- MODE SENSE (SPC-4 6.11, 6.12; pages SBC-3 6.4.5, SPC-4 7.5.8) ------

    def _mode_sense_6(
        self, cdb: bytes, data_out: bytes, allocation: int | None
    ) -> ScsiResult:
        pages = self._mode_pages(cdb)
        desc = b"" if cdb[1] & 0x08 else self._short_block_descriptor()
        head = bytes([0, 0x00, self._device_specific(), len(desc)])
        data = bytearray(head + desc + pages)
        data[0] = min(len(data) - 1, 0xFF)
        return ScsiResult(GOOD, data_in=bytes(data[: cdb[4]]))

    def _mode_sense_10(
        self, cdb: bytes, data_out: bytes, allocation: int | None
    ) -> ScsiResult:
        pages = self._mode_pages(cdb)
        long_lba = bool(cdb[1] & 0x10)
        desc = (
            b""
            if cdb[1] & 0x08
            else (
                self._long_block_descriptor()
                if long_lba
                else self._short_block_descriptor()
            )
        )
        head = bytearray(8)
        head[3] = self._device_specific()
        head[4] = 0x01 if desc and long_lba else 0x00  # LONGLBA
        head[6:8] = len(desc).to_bytes(2, "big")
        data = bytearray(head + desc + pages)
        data[0:2] = (len(data) - 2).to_bytes(2, "big")
        return ScsiResult(GOOD, data_in=bytes(data[: _be(cdb, 7, 2)]))

    def _device_specific(self) -> int:
        """WP (bit 7) for a read-only disk; DPOFUA (bit 4) because FUA is honoured."""
        return (0x80 if self.disk.read_only else 0) | 0x10

    def _short_block_descriptor(self) -> bytes:
        return (
            min(self.blocks, 0xFFFFFFFF).to_bytes(4, "big")
            + b"\x00"
            + self.disk.block_size.to_bytes(3, "big")
        )

    def _long_block_descriptor(self) -> bytes:
        return (
            self.blocks.to_bytes(8, "big")
            + bytes(4)
            + self.disk.block_size.to_bytes(4, "big")
        )

    def _mode_pages(self, cdb: bytes) -> bytes:
        pc, page, subpage = cdb[2] >> 6, cdb[2] & 0x3F, cdb[3]
        if pc == 3:
            raise _CheckCondition(
                fixed_sense(ILLEGAL_REQUEST, ASC_SAVING_PARAMETERS_NOT_SUPPORTED)
            )
        if subpage and not (page == _MODE_ALL and subpage == 0xFF):
            raise _invalid_field(3)
        builders = {
            _MODE_CACHING: self._caching_page,
            _MODE_CONTROL: self._control_page,
        }
        if page == _MODE_ALL:
            return b"".join(builders[p](pc) for p in sorted(builders))
        if page not in builders:
            raise _invalid_field(2, 5)
        return builders[page](pc)

    def _caching_page(self, pc: int) -> bytes:
        page = bytearray(20)
        page[0], page[1] = _MODE_CACHING, 18
        if (
            pc != 1 and self.wce()
        ):  # changeable values (pc 1): nothing, there is no MODE SELECT
            page[2] |= 0x04  # WCE
        return bytes(page)

    def _control_page(self, pc: int) -> bytes:
        page = bytearray(12)
        page[0], page[1] = _MODE_CONTROL, 10
        return bytes(page)

    _HANDLERS: ClassVar[
        dict[int, Callable[[ScsiTarget, bytes, bytes, int | None], ScsiResult]]
    ] = {
        TEST_UNIT_READY: _test_unit_ready,
        REQUEST_SENSE: _request_sense,
        READ_6: _read6,
        WRITE_6: _write6,
        INQUIRY: _inquiry,
        MODE_SENSE_6: _mode_sense_6,
        READ_CAPACITY_10: _read_capacity_10,
        READ_10: _read10,
        WRITE_10: _write10,
        SYNCHRONIZE_CACHE_10: _sync10,
        MODE_SENSE_10: _mode_sense_10,
        READ_16: _read16,
        WRITE_16: _write16,
        SYNCHRONIZE_CACHE_16: _sync16,
        SERVICE_ACTION_IN_16: _service_action_in_16,
        READ_12: _read12,
        WRITE_12: _write12,
    }


def serve_scsicmd(target: ScsiTarget, buf: bytes) -> bytes:
    """Handle one VD_OP_SCSICMD payload end to end; OSError(EINVAL) for a malformed buffer.

    A SCSI-level failure is not an error here: it travels in cmd_status and the
    sense area and the descriptor status stays 0, as vds does.
    """
    request = VdScsi.decode(buf)
    result = target.execute(
        request.cdb, request.data_out, allocation=request.datain_len
    )
    return encode_reply(request, result) + bytes(len(buf) - request.offsets()[4])
