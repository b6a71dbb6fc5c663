"""The daemon core in one process: what a reload restarts, and the control protocol's decoder."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from backend.config import Owned, parse_config
from backend.control import ControlServer
from backend.daemon.core import Daemon
from backend.daemon.registry import kinds


def config(tmp_path, mtu: int, ports: list[str], disk_cache: str = "writeback", daemon: Daemon | None = None):
    text = f'''
        [[switch]]
        name = "s"
        mtu = {mtu}
        [[disk]]
        name = "d"
        path = "d.img"
        size = "1M"
        cache = "{disk_cache}"
    ''' + "".join(f'[[vnet]]\nname = "{p}"\nswitch = "s"\n' for p in ports)
    owned = daemon.owned() if daemon else Owned()
    return parse_config(text, "test", kinds(), config_dir=str(tmp_path), state_dir=str(tmp_path), owned=owned)


def test_a_changed_switch_restarts_its_ports_and_nothing_else(tmp_path) -> None:
    async def main() -> None:
        daemon = Daemon(kinds(), config(tmp_path, 1500, ["p", "q"]))
        await daemon.start()
        disk = daemon.service("disk", "d")
        changes = await daemon.reload(config(tmp_path, 9000, ["p", "q"], daemon=daemon))
        assert changes.summary() == {"added": [], "removed": [], "restarted": ["switch:s", "vnet:p", "vnet:q"]}
        assert daemon.service("disk", "d") is disk  # untouched
        assert daemon.service("switch", "s").spec.mtu == 9000
        changes = await daemon.reload(config(tmp_path, 9000, ["q"], disk_cache="writethrough", daemon=daemon))
        assert changes.summary() == {"added": [], "removed": ["vnet:p"], "restarted": ["disk:d"]}
        assert [spec.key for spec, _ in daemon.services()] == [("switch", "s"), ("vnet", "q"), ("disk", "d")]
        await daemon.stop()
        assert daemon.services() == []

    asyncio.run(main())


async def _echo(request: dict) -> dict:
    return {"echo": request}


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.from_type(dict).map(lambda d: json.dumps(d, default=str).encode()),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                              lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                              max_leaves=10).map(lambda v: json.dumps(v).encode())))
def test_any_request_line_gets_a_reply_never_an_exception(line: bytes) -> None:
    server = ControlServer("/nonexistent", {"status": _echo})
    reply = asyncio.run(server.answer(line))
    assert set(reply) in ({"ok", "error"}, {"ok", "result"})
    assert reply["ok"] is ("result" in reply)
    json.dumps(reply)
