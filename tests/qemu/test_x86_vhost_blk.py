"""Our vhost-user back-end (backend/vhost, `vio vhost-blk`) serving a real x86_64 guest:
the guest writes a random pattern the host verifies, and reads the host's; also as a
hot-plugged second disk, then unplugged."""

import pytest

from backend.qemu import vio_vhost_blk_argv

from .helpers import run, vhost_blk_scenario

pytestmark = pytest.mark.slow


def test_x86_guest_uses_our_vhost_blk_disks_at_start_and_hotplugged(tmp_path):
    run(vhost_blk_scenario(tmp_path, vio_vhost_blk_argv))
