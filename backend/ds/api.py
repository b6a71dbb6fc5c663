"""A Pythonic layer over libds: exceptions instead of errno, context managers, message iterators, asyncio.

    with DomainServices() as ds, ds.client("domain-shutdown") as service:
        handle = service.wait_ready(domain="ldg1")
        reply = service.request(handle, payload)

Callbacks are the C API's (they run on the library's thread); for a
callback-free registration, `messages(handle)` iterates what arrives and
`areceive` / `arequest` wait without blocking an event loop.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from .control import MAX_SEND
from .libds import Capability, DataCb, LibDs, Ops, RegCb, UnregCb

POLL_INTERVAL = 0.005


def check(result: int, what: str) -> None:
    """Raise the OSError a libds errno result stands for."""
    if result:
        raise OSError(result, f"{what}: {os.strerror(result)}")


class DomainServices:
    """One libds instance; closing it (ds_fini) unregisters everything it registered."""

    def __init__(self, socket_path: str | None = None) -> None:
        self.lib = LibDs(socket_path)
        check(self.lib.ds_init(), "ds_init")

    def __enter__(self) -> DomainServices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.lib.ds_fini()

    def provide(self, svc_id: str, versions: Sequence[tuple[int, int]] = ((1, 0),), **callbacks: Any) -> Registration:
        """Register as the provider (callbacks: on_register, on_unregister, on_data, arg)."""
        return Registration(self, svc_id, versions, is_client=False, **callbacks)

    def client(self, svc_id: str, versions: Sequence[tuple[int, int]] = ((1, 0),), **callbacks: Any) -> Registration:
        """Register as a client (one handle per provider domain)."""
        return Registration(self, svc_id, versions, is_client=True, **callbacks)

    def domain_handle(self, name: str) -> int:
        result, dhdl = self.lib.ds_dom_name_to_hdl(name)
        check(result, f"domain {name!r}")
        return dhdl

    def domain_name(self, dhdl: int) -> str:
        result, name = self.lib.ds_dom_hdl_to_name(dhdl, 256)
        check(result, f"domain handle {dhdl}")
        return name


class Registration:
    """One service registration; a context manager that unregisters on exit."""

    def __init__(
        self,
        ds: DomainServices,
        svc_id: str,
        versions: Sequence[tuple[int, int]],
        *,
        is_client: bool,
        on_register: RegCb | None = None,
        on_unregister: UnregCb | None = None,
        on_data: DataCb | None = None,
        arg: Any = None,
    ) -> None:
        self.lib = ds.lib
        self.ds = ds
        self.svc_id = svc_id
        self.is_client = is_client
        register = self.lib.ds_clnt_reg if is_client else self.lib.ds_svc_reg
        check(register(Capability(svc_id, tuple(versions)), Ops(on_register, on_unregister, on_data, arg)), f"register {svc_id!r}")

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.lib.ds_unreg_svc(self.svc_id, self.is_client)

    def handles(self) -> list[int]:
        result, handles = self.lib.ds_hdl_lookup(self.svc_id, self.is_client, 64)
        check(result, f"lookup {self.svc_id!r}")
        return handles

    def ready_handles(self) -> list[int]:
        return [h for h in self.handles() if self.lib.ds_isready(h) == (0, True)]

    def domain_of(self, handle: int) -> int:
        result, dhdl = self.lib.ds_domain_lookup(handle)
        check(result, f"domain of handle 0x{handle:x}")
        return dhdl

    def wait_ready(self, timeout: float = 10.0, domain: str | None = None) -> int:
        """Poll (ds_hdl_lookup + ds_isready) for a ready handle, connected to `domain` if given."""
        wanted = self.ds.domain_handle(domain) if domain is not None else None
        deadline = time.monotonic() + timeout
        while True:
            for handle in self.ready_handles():
                if wanted is None or self.lib.ds_domain_lookup(handle) == (0, wanted):
                    return handle
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.svc_id!r}: no ready handle{' to ' + domain if domain else ''} after {timeout} s")
            time.sleep(POLL_INTERVAL)

    def send(self, handle: int, data: bytes) -> None:
        check(self.lib.ds_send_msg(handle, data), f"send on 0x{handle:x}")

    def receive(self, handle: int, timeout: float | None = None) -> bytes:
        result, data, _ = self.lib.ds_recv_msg(handle, MAX_SEND, timeout)
        check(result, f"receive on 0x{handle:x}")
        assert data is not None
        return data

    def request(self, handle: int, data: bytes, timeout: float | None = 10.0) -> bytes:
        self.send(handle, data)
        return self.receive(handle, timeout)

    def messages(self, handle: int) -> Iterator[bytes]:
        """What arrives on `handle`, until it goes stale."""
        while True:
            result, data, _ = self.lib.ds_recv_msg(handle, MAX_SEND)
            if result in (errno.EINVAL, errno.ENXIO, errno.EBADF):
                return
            check(result, f"receive on 0x{handle:x}")
            assert data is not None
            yield data

    async def areceive(self, handle: int, timeout: float | None = None) -> bytes:
        return await asyncio.to_thread(self.receive, handle, timeout)

    async def arequest(self, handle: int, data: bytes, timeout: float | None = 10.0) -> bytes:
        self.send(handle, data)
        return await self.areceive(handle, timeout)
