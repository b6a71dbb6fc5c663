"""A libds process for the two-process tests: `python peer.py provider SVC MAJOR.MINOR,...` or `send HANDLE`.

provider: registers SVC with callbacks, prints each registration and
unregistration, and answers every request with b"echo: " + request (as the
C example provider does) until stdin closes. send: tries ds_send_msg on
someone else's handle and prints the errno.
"""

from __future__ import annotations

import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from backend.ds import libds  # noqa: E402


def provider(svc_id: str, versions: str) -> None:
    # callbacks run on the library's thread and may come before ds_svc_reg returns: they
    # print after its result, so the output's order is fixed
    reported = threading.Event()

    def registered(hdl: int, arg: object, version: tuple[int, int], dhdl: int) -> None:
        reported.wait()
        print(f"registered {hdl:#x} {version[0]}.{version[1]} {dhdl}", flush=True)

    def unregistered(hdl: int, arg: object) -> None:
        reported.wait()
        print(f"unregistered {hdl:#x}", flush=True)

    def data(hdl: int, arg: object, payload: bytes) -> None:
        libds.ds_send_msg(hdl, b"echo: " + payload)

    vers = [tuple(int(x) for x in v.split(".")) for v in versions.split(",")]
    result = libds.ds_svc_reg(libds.Capability(svc_id, vers), libds.Ops(registered, unregistered, data))
    print(f"svc_reg {result}", flush=True)
    reported.set()
    sys.stdin.read()
    libds.ds_fini()


if __name__ == "__main__":
    if sys.argv[1] == "provider":
        provider(sys.argv[2], sys.argv[3])
    else:
        libds.ds_init()
        print(libds.ds_send_msg(int(sys.argv[2], 0), b"not mine"), libds.ds_unreg_hdl(int(sys.argv[2], 0)), flush=True)
