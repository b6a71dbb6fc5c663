"""Labels and SCSI through a real vds process: what a guest writes, host tools read, and back."""

from __future__ import annotations

import subprocess
import uuid

from backend.vdisk import labels, scsi
from backend.vdisk.blockio import MemoryBlockIO
from backend.vdisk.client import VdcClient

from .test_two_process import MiB, Server, run

LINUX_FS = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")


def test_gpt_written_by_the_guest_is_read_by_sgdisk(tmp_path) -> None:
    server = Server(tmp_path, f"d0={tmp_path}/d0.img,size={32 * MiB}")
    scratch = MemoryBlockIO(32 * MiB)
    labels.write_gpt(scratch, [labels.GptPartition(LINUX_FS, uuid.uuid4(), 2048, 20479, name="guest-data")])
    entries_lba = 2

    async def guest() -> None:
        client = await VdcClient.connect(server.socket("d0"))
        # a guest label tool writes the entries, then the primary header, through SET_EFI
        await client.set_efi(entries_lba, scratch.read(entries_lba * 512, 32 * 512))
        await client.set_efi(1, scratch.read(512, 512))
        await client.write(0, scratch.read(0, 512))  # protective MBR, as a plain block write
        header = await client.get_efi(1, 512)
        assert header[:8] == b"EFI PART"
        client.close()

    run(guest())
    assert server.stop() == 0
    listing = subprocess.run(["sgdisk", "-p", str(tmp_path / "d0.img")], capture_output=True, text=True, check=True).stdout
    assert "guest-data" in listing and "2048" in listing and "20479" in listing
    verify = subprocess.run(["sgdisk", "-v", str(tmp_path / "d0.img")], capture_output=True, text=True)
    assert "No problems found" in verify.stdout, verify.stdout


def test_sun_label_made_by_host_fdisk_is_seen_by_the_guest(tmp_path) -> None:
    image = tmp_path / "d0.img"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["fdisk", str(image)], input="s\nw\n", capture_output=True, text=True, check=True)
    server = Server(tmp_path, f"d0={image}")

    async def guest() -> None:
        client = await VdcClient.connect(server.socket("d0"))
        vtoc = await client.get_vtoc()
        geometry = await client.get_geometry()
        assert vtoc.num_partitions == 8 and geometry.num_hd > 0
        backup = vtoc.partitions[2]
        assert backup.num_blocks > 0  # the whole-disk slice fdisk made
        # slice-relative I/O: block 16 of slice 2 (block 0 holds the label)
        await client.write(16 * 512, b"S" * 512, slice_=2)
        assert await client.read((backup.start_block + 16) * 512, 512) == b"S" * 512
        data_slice = vtoc.partitions[1]  # slice 1 does not start at 0: offsets really are relative
        await client.write(0, b"R" * 512, slice_=1)
        assert await client.read(data_slice.start_block * 512, 512) == b"R" * 512
        # the guest relabels: one data slice, written back in Sun format
        vtoc.partitions[0] = labels.VtocPartition(2, 0, 0, geometry.blocks_per_cyl * 4)
        await client.set_vtoc(vtoc)
        client.close()

    run(guest())
    assert server.stop() == 0
    listing = subprocess.run(["fdisk", "-l", str(image)], capture_output=True, text=True, check=True).stdout
    assert "sun" in listing.lower()
    vtoc, geometry = labels.read_smi(_file_io(image))
    assert vtoc.partitions[0].num_blocks == geometry.blocks_per_cyl * 4


def test_scsi_through_vds(tmp_path) -> None:
    server = Server(tmp_path, f"d0={tmp_path}/d0.img,size={8 * MiB}")

    async def guest() -> None:
        client = await VdcClient.connect(server.socket("d0"))
        inquiry = await client.scsi(scsi.VdScsi.request(bytes([0x12, 0, 0, 0, 96, 0]), datain_len=96))
        assert inquiry.cmd_status == 0 and inquiry.data_in[8:11] == b"SUN"
        capacity = await client.scsi(scsi.VdScsi.request(bytes([0x25]) + bytes(9), datain_len=8))
        assert int.from_bytes(capacity.data_in[:4], "big") == 8 * MiB // 512 - 1
        bad = await client.scsi(scsi.VdScsi.request(bytes([0xEE]) + bytes(5), sense_len=20))
        assert bad.cmd_status == 2 and bad.sense[2] & 0x0F == 0x5 and bad.sense[12] == 0x20
        client.close()

    run(guest())
    assert server.stop() == 0


def _file_io(path):
    from backend.vdisk.engine import DiskEngine

    return DiskEngine(path, read_only=True)
