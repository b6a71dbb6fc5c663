"""Socket files and listeners the daemon opens are its own to close and remove."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat

from ..ldc.aio import SocketServer


def remove_socket(path: str) -> None:
    """Unlink `path` if it is (still) a socket; anything else there is not ours."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


def close_server(server: SocketServer) -> None:
    """Close a SocketServer so that the next listener can accept.

    SocketServer.close() closes the listening socket under its pending
    sock_accept: asyncio's selector keeps the dead descriptor registered, and
    the next socket that gets the same descriptor number never accepts a
    connection (a reload that removes one export and adds another hits this).
    Unregistering first avoids it, until SocketServer does so itself.
    """
    listener = server._listener
    if listener is not None and listener.fileno() >= 0:
        asyncio.get_running_loop().remove_reader(listener.fileno())
    server.close()
