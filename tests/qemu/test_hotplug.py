"""Hot-plug over QMP on a running guest: chardev/blockdev + device_add, device_del +
DEVICE_DELETED + backend removal; clean power-down afterwards."""

import pytest

from backend.qemu import FileDisk, Guest, QemuError

from .helpers import BOOT_TIMEOUT, check_roundtrip, make_disk, roundtrip_script, run, spec_for, wait_for_block_device

pytestmark = pytest.mark.slow


def test_x86_hotplugged_disk_is_usable_then_unplugged(tmp_path):
    first, second = tmp_path / "first.img", tmp_path / "second.img"
    make_disk(first)
    pattern = make_disk(second)
    hot = FileDisk("hot0", str(second))

    async def scenario() -> None:
        async with Guest(spec_for("x86_64", [FileDisk("disk0", str(first))])) as guest:
            assert await guest.ready(BOOT_TIMEOUT) == ["vda"]
            await guest.plug(hot)
            await wait_for_block_device(guest, "vdb", present=True)
            rc, output = await guest.run(roundtrip_script("vdb"))
            assert rc == 0, output
            check_roundtrip(output, second, pattern)
            await guest.unplug(hot)
            await wait_for_block_device(guest, "vdb", present=False)
            with pytest.raises(QemuError, match="hot0-drive"):  # the block node went with the device
                await guest.execute("blockdev-del", {"node-name": "hot0-drive"})
            assert await guest.power_down(60), "guest ignored the ACPI power button"
            assert guest.process.returncode == 0

    run(scenario())


def test_sparc64_hotplug_round_trip_over_qmp(tmp_path):
    """sun4u's pciB refuses hot-plug; devices go onto the SHPC pci-bridge we add at start.
    The prebuilt guest kernel has no PCI hot-plug driver, so this checks QEMU's side:
    the device appears on the bridge's bus, and device_del completes. sun4u has no power
    button, so power_down types poweroff into the guest's shell."""
    disk = tmp_path / "hot.img"
    make_disk(disk)
    hot = FileDisk("hot0", str(disk))

    async def devices_on_bridge(guest: Guest) -> list[str]:
        buses = await guest.execute("query-pci")
        found = []

        def walk(devices):
            for device in devices:
                bridge = device.get("pci_bridge")
                if bridge:
                    if device.get("qdev_id") == "hotplug0":
                        found.extend(d.get("qdev_id") for d in bridge.get("devices", []))
                    walk(bridge.get("devices", []))

        for bus in buses:
            walk(bus["devices"])
        return found

    async def scenario() -> None:
        async with Guest(spec_for("sparc64", [], hotplug=True)) as guest:
            await guest.ready(BOOT_TIMEOUT)
            await guest.plug(hot)
            assert await devices_on_bridge(guest) == ["hot0"]
            await guest.unplug(hot)
            assert await devices_on_bridge(guest) == []
            with pytest.raises(QemuError, match="hot0-drive"):  # the block node went with the device
                await guest.execute("blockdev-del", {"node-name": "hot0-drive"})
            assert await guest.power_down(60), "guest did not power off from its console"
            assert guest.process.returncode == 0

    run(scenario())
