"""A persistent device id per backing store (VD_OP_GET_DEVID, SCSI page 0x83).

The id must survive server restarts and differ between disks. We store a
random id with the backing store itself where we can (a `user.` extended
attribute on the file or device node), and otherwise in a small registry in
the state directory keyed by the store's canonical path. Solaris fabricates
ids for disks without one (DEVID_FAB); ours are of that kind.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

DEVID_FAB = 3  # a fabricated id, as illumos makes for files and volumes
XATTR = "user.vio.devid"
ID_LENGTH = 16
WIRE = struct.Struct(">HHI")  # reserved u16, type u16, len u32, then the id bytes


@dataclass(frozen=True, slots=True)
class DeviceId:
    type: int
    id: bytes

    def encode(self) -> bytes:
        """The VD_OP_GET_DEVID payload."""
        return WIRE.pack(0, self.type, len(self.id)) + self.id

    @classmethod
    def decode(cls, data: bytes) -> DeviceId:
        if len(data) < WIRE.size:
            raise OSError(errno.EINVAL, "device id truncated")
        _, kind, length = WIRE.unpack_from(data, 0)
        if len(data) < WIRE.size + length:
            raise OSError(errno.EINVAL, f"device id says {length} bytes, has {len(data) - WIRE.size}")
        return cls(kind, bytes(data[WIRE.size : WIRE.size + length]))


def default_state_dir() -> Path:
    base = os.environ.get("VIO_STATE_DIR") or os.path.join(os.environ.get("XDG_STATE_HOME", os.path.expanduser("~/.local/state")), "vio")
    return Path(base)


def device_id_for(path: str, state_dir: Path | None = None) -> DeviceId:
    """The store's id, creating and recording it on first use."""
    canonical = os.path.realpath(path)
    try:
        return DeviceId(DEVID_FAB, os.getxattr(canonical, XATTR))
    except OSError:
        pass
    fresh = os.urandom(ID_LENGTH)
    try:
        os.setxattr(canonical, XATTR, fresh, os.XATTR_CREATE)
        return DeviceId(DEVID_FAB, os.getxattr(canonical, XATTR))
    except OSError as exc:
        if exc.errno == errno.EEXIST:  # another server won the race
            return DeviceId(DEVID_FAB, os.getxattr(canonical, XATTR))
    return DeviceId(DEVID_FAB, _from_registry(canonical, fresh, state_dir or default_state_dir()))


def _from_registry(canonical: str, fresh: bytes, state_dir: Path) -> bytes:
    state_dir.mkdir(parents=True, exist_ok=True)
    registry = state_dir / "devids.json"
    lock = os.open(state_dir / "devids.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        import fcntl

        fcntl.flock(lock, fcntl.LOCK_EX)
        known = json.loads(registry.read_text()) if registry.exists() else {}
        if canonical not in known:
            known[canonical] = fresh.hex()
            temporary = registry.with_suffix(".tmp")
            temporary.write_text(json.dumps(known, indent=1, sort_keys=True))
            os.replace(temporary, registry)
        return bytes.fromhex(known[canonical])
    finally:
        os.close(lock)
