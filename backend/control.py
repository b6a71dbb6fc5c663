"""The daemon's control socket: one JSON request per line, one JSON reply per line.

Request:  {"command": "status"} (also "reload", "stop"; more fields per command)
Reply:    {"ok": true, "result": ...}  or  {"ok": false, "error": "what went wrong"}

A Unix stream socket, so only local users that may open the file (root, by
the state directory's mode) can drive the daemon. A client may send several
requests on one connection. Anything that is not a JSON object with a known
command gets an error reply; a line longer than MAX_LINE closes the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import BackendError

log = logging.getLogger(__name__)

MAX_LINE = 1 << 16
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlError(BackendError):
    """The daemon refused a request, or could not be reached."""


class ControlServer:
    """Serves `commands` (name -> coroutine taking the request) on a Unix socket."""

    def __init__(self, path: str, commands: dict[str, Handler]) -> None:
        self.path = path
        self.commands = commands
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        if os.path.lexists(self.path):
            os.unlink(self.path)  # stale: the config check refused a live one
        self._server = await asyncio.start_unix_server(self._client, self.path, limit=MAX_LINE)
        os.chmod(self.path, 0o660)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    writer.write(_encode({"ok": False, "error": f"request longer than {MAX_LINE} bytes"}))
                    return
                if not line:
                    return
                writer.write(_encode(await self.answer(line)))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    async def answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            return {"ok": False, "error": f"not JSON: {exc}"}
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return {"ok": False, "error": 'expected a JSON object like {"command": "status"}'}
        handler = self.commands.get(request["command"])
        if handler is None:
            return {"ok": False, "error": f"unknown command {request['command']!r}; known: {', '.join(sorted(self.commands))}"}
        try:
            return {"ok": True, "result": await handler(request)}
        except BackendError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # the daemon keeps serving; the client learns what broke
            log.exception("control command failed", extra={"event": "control_error", "command": request["command"]})
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def close(self) -> None:
        """Stop listening and hang up on connected clients (their readers see EOF)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._clients):
            writer.close()
        if os.path.lexists(self.path):
            os.unlink(self.path)


def request(path: str, command: str, timeout: float = 30.0, **fields: Any) -> Any:
    """Send one command to the daemon at `path`; its result, or ControlError."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(_encode({"command": command, **fields}))
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                reply += chunk
    except FileNotFoundError:
        raise ControlError(f"no daemon control socket at {path}: is vio serve running? (see --control)") from None
    except ConnectionRefusedError:
        raise ControlError(f"nothing listens on {path}: the daemon is gone (a stale socket file)") from None
    except PermissionError:
        raise ControlError(f"no permission to use {path}: run as root") from None
    except OSError as exc:
        raise ControlError(f"cannot talk to the daemon at {path}: {exc}") from None
    try:
        answer = json.loads(reply)
    except ValueError:
        raise ControlError(f"the daemon sent a reply that is not JSON: {reply[:200]!r}") from None
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error", "unknown error")))
    return answer.get("result")


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"
