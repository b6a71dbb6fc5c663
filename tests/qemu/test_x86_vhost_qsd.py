"""The vhost-user plumbing (launch, hot-plug, unplug) against qemu-storage-daemon's
vhost-user-blk export, the reference back-end."""

import pytest

from backend.qemu import storage_daemon_argv

from .helpers import run, vhost_blk_scenario

pytestmark = pytest.mark.slow


def test_x86_guest_uses_storage_daemon_disks_at_start_and_hotplugged(tmp_path):
    run(vhost_blk_scenario(tmp_path, storage_daemon_argv))
