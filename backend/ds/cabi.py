"""The C ABI of libds.so: each `ds_*` symbol of ds.h, defined in Python over the libds module.

Runs inside the embedded interpreter (cffi embedding, see cbuild.py);
`install(ffi)` defines every exported function on the library's ffi. C
pointers are checked (NULL where the seed forbids it: EFAULT; NULL where
it allows it: skipped), strings are read with their MAXNAMELEN bound, and
each int result is also stored in errno, as the seed says.
"""

from __future__ import annotations

import errno
from typing import Any

from . import libds
from .control import MAX_NAME, MAX_VERSIONS


def install(ffi: Any) -> None:
    null = ffi.NULL

    def result(code: int) -> int:
        if code:
            ffi.errno = code
        return code

    def c_string(pointer: Any) -> str | None:
        """A C string of at most MAX_NAME bytes; None for NULL or longer (EINVAL)."""
        if pointer == null:
            return None
        raw = ffi.string(pointer, MAX_NAME + 1)
        if len(raw) > MAX_NAME:
            return None
        return raw.decode("latin-1")

    def capability(cap: Any) -> libds.Capability | None:
        if cap == null or cap.svc_id == null or cap.vers == null or not 0 < cap.nvers <= MAX_VERSIONS:
            return None
        svc_id = c_string(cap.svc_id)
        return libds.Capability(svc_id, [(cap.vers[i].major, cap.vers[i].minor) for i in range(cap.nvers)]) if svc_id else None

    def operations(ops: Any) -> libds.Ops:
        """Copy the ops (the caller may reuse its struct); wrap each C callback."""
        reg, unreg, data, arg = ops.ds_reg_cb, ops.ds_unreg_cb, ops.ds_data_cb, ops.cb_arg

        def on_register(hdl: int, cb_arg: Any, version: tuple[int, int], dhdl: int) -> None:
            ver = ffi.new("ds_ver_t *", {"major": version[0], "minor": version[1]})
            reg(hdl, cb_arg, ver, dhdl)

        def on_data(hdl: int, cb_arg: Any, payload: bytes) -> None:
            buf = ffi.from_buffer(payload)
            data(hdl, cb_arg, buf, len(payload))

        return libds.Ops(
            on_register if reg != null else None,
            (lambda hdl, cb_arg: unreg(hdl, cb_arg)) if unreg != null else None,
            on_data if data != null else None,
            arg,
        )

    def register(cap: Any, ops: Any, is_client: bool) -> int:
        if ops == null:
            return result(errno.EINVAL)
        parsed = capability(cap)
        if parsed is None:
            return result(errno.EINVAL)
        function = libds.ds_clnt_reg if is_client else libds.ds_svc_reg
        return result(function(parsed, operations(ops)))

    @ffi.def_extern(name="ds_init")
    def ds_init() -> int:
        return result(libds.ds_init())

    @ffi.def_extern(name="ds_fini")
    def ds_fini() -> None:
        libds.ds_fini()

    @ffi.def_extern(name="ds_svc_reg")
    def ds_svc_reg(cap: Any, ops: Any) -> int:
        return register(cap, ops, is_client=False)

    @ffi.def_extern(name="ds_clnt_reg")
    def ds_clnt_reg(cap: Any, ops: Any) -> int:
        return register(cap, ops, is_client=True)

    @ffi.def_extern(name="ds_unreg_hdl")
    def ds_unreg_hdl(hdl: int) -> int:
        return result(libds.ds_unreg_hdl(hdl))

    @ffi.def_extern(name="ds_unreg_svc")
    def ds_unreg_svc(service: Any, is_client: int) -> None:
        name = c_string(service)
        if name:
            libds.ds_unreg_svc(name, bool(is_client))

    @ffi.def_extern(name="ds_hdl_lookup")
    def ds_hdl_lookup(service: Any, is_client: int, hdlp: Any, maxhdls: int, nhdlsp: Any) -> int:
        if nhdlsp == null:
            return result(errno.EFAULT)
        name = c_string(service)
        if name is None:
            return result(errno.EINVAL)
        code, handles = libds.ds_hdl_lookup(name, bool(is_client), maxhdls)
        if not code:
            if hdlp != null:
                for i, handle in enumerate(handles):
                    hdlp[i] = handle
            nhdlsp[0] = len(handles)
        return result(code)

    @ffi.def_extern(name="ds_domain_lookup")
    def ds_domain_lookup(hdl: int, dhdlp: Any) -> int:
        code, dhdl = libds.ds_domain_lookup(hdl)
        if not code and dhdlp != null:
            dhdlp[0] = dhdl
        return result(code)

    @ffi.def_extern(name="ds_isready")
    def ds_isready(hdl: int, is_ready: Any) -> int:
        if is_ready == null:
            return result(errno.EFAULT)
        code, ready = libds.ds_isready(hdl)
        if not code:
            is_ready[0] = int(ready)
        return result(code)

    @ffi.def_extern(name="ds_send_msg")
    def ds_send_msg(hdl: int, buf: Any, buflen: int) -> int:
        if buf == null and buflen:
            return result(errno.EFAULT)
        payload = ffi.buffer(buf, buflen)[:] if buflen <= libds.control.MAX_SEND else b"\0" * (libds.control.MAX_SEND + 1)
        return result(libds.ds_send_msg(hdl, payload))

    @ffi.def_extern(name="ds_recv_msg")
    def ds_recv_msg(hdl: int, buf: Any, buflen: int, msglenp: Any) -> int:
        if buf == null and buflen:
            return result(errno.EFAULT)
        code, data, length = libds.ds_recv_msg(hdl, buflen)
        if data is not None:
            ffi.memmove(buf, data, length)
        if msglenp != null and code in (0, errno.EFBIG):
            msglenp[0] = length
        return result(code)

    @ffi.def_extern(name="ds_dom_hdl_to_name")
    def ds_dom_hdl_to_name(dhdl: int, domain_name: Any, maxnamlen: int) -> int:
        if domain_name == null:
            return result(errno.EFAULT)
        code, name = libds.ds_dom_hdl_to_name(dhdl, maxnamlen)
        if not code:
            raw = name.encode()[: maxnamlen - 1]
            ffi.memmove(domain_name, raw + b"\0", len(raw) + 1)
        return result(code)

    def name_to_hdl(domain_name: Any, dhdlp: Any) -> int:
        name = c_string(domain_name) if domain_name != null else None
        if domain_name != null and name is None:
            return result(errno.EINVAL)
        code, dhdl = libds.ds_dom_name_to_hdl(name)
        if not code and dhdlp != null:
            dhdlp[0] = dhdl
        return result(code)

    ffi.def_extern(name="ds_dom_name_to_hdl")(name_to_hdl)
    ffi.def_extern(name="ds_dom_name_to_handle")(name_to_hdl)
