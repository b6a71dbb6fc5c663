"""Driving domains through the well-known services, both sides (the `vio ds` commands but `agent`).

Control side: `shutdown` and `md-update` are clients that find the handle
connected to the named domain, send one request and print the answer;
`var-config` keeps the variables a domain sets in a JSON file. Domain side:
`guest-services` answers domain-shutdown and md-update as a guest kernel
does (running a command for each), `setvar` sets or deletes a variable.
Everything talks to the agent at $VIO_DS_SOCKET.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time

from .api import DomainServices
from .services import ServiceError, domain_shutdown, md_update, var_config

log = logging.getLogger(__name__)

SIGNAL_CHECK = 0.25  # seconds between looks for a SIGTERM while serving


def run(args: argparse.Namespace) -> int:
    commands = {
        "shutdown": _shutdown,
        "md-update": _md_update,
        "guest-services": _guest_services,
        "var-config": _var_config,
        "setvar": _setvar,
    }
    try:
        return commands[args.ds_command](args)
    except (OSError, TimeoutError, ServiceError, ValueError) as exc:
        print(f"vio ds {args.ds_command}: {exc}", file=sys.stderr)
        return 1


def _request_number() -> int:
    return time.time_ns() & 0xFFFF_FFFF_FFFF_FFFF


def _shutdown(args: argparse.Namespace) -> int:
    with DomainServices() as ds, ds.client(domain_shutdown.SVC_ID) as service:
        handle = service.wait_ready(args.timeout, domain=args.domain)
        request = domain_shutdown.Request(_request_number(), args.delay)
        answer = domain_shutdown.Response.decode(service.request(handle, request.encode(), args.timeout))
    if answer.req_num != request.req_num:
        raise ServiceError(f"answer to request {answer.req_num}, not ours ({request.req_num})")
    print(f"{args.domain}: shutdown {'accepted' if answer.result == domain_shutdown.OK else 'refused'} (result {answer.result}){': ' + answer.reason if answer.reason else ''}")
    return 0 if answer.result == domain_shutdown.OK else 1


def _md_update(args: argparse.Namespace) -> int:
    with DomainServices() as ds, ds.client(md_update.SVC_ID) as service:
        handle = service.wait_ready(args.timeout, domain=args.domain)
        request = md_update.Request(_request_number())
        answer = md_update.Response.decode(service.request(handle, request.encode(), args.timeout))
    print(f"{args.domain}: md-update result {answer.result}")
    return 0 if answer.result == md_update.OK else 1


class _Counter:
    """Counts served requests; `done` is set after `limit` (0: never)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count, self.done = limit, 0, threading.Event()

    def served(self) -> None:
        self.count += 1
        if self.limit and self.count >= self.limit:
            self.done.set()


def _run_command(command: str | None) -> int:
    if not command:
        return 0
    return subprocess.run(command, shell=True).returncode


def _guest_services(args: argparse.Namespace) -> int:
    counter = _Counter(args.count)
    with DomainServices() as ds:

        def on_shutdown(handle: int, _: object, payload: bytes) -> None:
            try:
                request = domain_shutdown.Request.decode(payload)
            except ServiceError as exc:
                log.warning("%s", exc)
                return
            ds.lib.ds_send_msg(handle, domain_shutdown.Response(request.req_num, domain_shutdown.OK).encode())
            print(f"shutdown requested (delay {request.ms_delay} ms)", flush=True)
            threading.Timer(request.ms_delay / 1000, lambda: (_run_command(args.on_shutdown), counter.served())).start()

        def on_md_update(handle: int, _: object, payload: bytes) -> None:
            try:
                request = md_update.Request.decode(payload)
            except ServiceError as exc:
                log.warning("%s", exc)
                return
            result = _run_command(args.on_md_update)
            ds.lib.ds_send_msg(handle, md_update.Response(request.req_num, 0 if result == 0 else 1).encode())
            print("md-update answered", flush=True)
            counter.served()

        ds.provide(domain_shutdown.SVC_ID, on_data=on_shutdown)
        ds.provide(md_update.SVC_ID, on_data=on_md_update)
        print("guest services: domain-shutdown, md-update", flush=True)
        _wait(counter)
    return 0


def _wait(counter: _Counter) -> None:
    import signal

    signal.signal(signal.SIGTERM, lambda *_: counter.done.set())
    try:
        # Python runs signal handlers only in the main thread; a SIGTERM the kernel hands to
        # the libds reader or a timer thread would not end an untimed wait, so wake up now and then.
        while not counter.done.wait(SIGNAL_CHECK):
            pass
    except KeyboardInterrupt:
        pass


def _var_config(args: argparse.Namespace) -> int:
    counter = _Counter(args.count)
    lock = threading.Lock()

    def answer(message: var_config.Message) -> var_config.Response:
        with lock:
            store = {}
            if os.path.exists(args.store):
                with open(args.store) as stored:
                    store = json.load(stored)
            if isinstance(message, var_config.SetRequest):
                store[message.name] = message.value
                kind, result = var_config.Type.SET_RESP, var_config.Result.SUCCESS
            elif isinstance(message, var_config.DeleteRequest):
                kind = var_config.Type.DELETE_RESP
                result = var_config.Result.SUCCESS if store.pop(message.name, None) is not None else var_config.Result.NOT_PRESENT
            else:
                raise ServiceError("a var-config response where a request belongs")
            with open(args.store + ".new", "w") as out:
                json.dump(store, out, indent=1, sort_keys=True)
            os.replace(args.store + ".new", args.store)
        return var_config.Response(kind, result)

    with DomainServices() as ds:

        def on_data(handle: int, _: object, payload: bytes) -> None:
            try:
                response = answer(var_config.decode(payload))
            except ServiceError as exc:
                log.warning("var-config: %s", exc)
                return
            ds.lib.ds_send_msg(handle, var_config.encode(response))
            counter.served()

        ds.client(var_config.SVC_ID, on_data=on_data)
        print(f"var-config: variables in {args.store}", flush=True)
        _wait(counter)
    return 0


def _setvar(args: argparse.Namespace) -> int:
    request = var_config.DeleteRequest(args.name) if args.delete else var_config.SetRequest(args.name, args.value)
    with DomainServices() as ds, ds.provide(var_config.SVC_ID) as service:
        handle = service.wait_ready(args.timeout)
        answer = var_config.decode(service.request(handle, var_config.encode(request), args.timeout))
    if not isinstance(answer, var_config.Response):
        raise ServiceError("the control side answered with a request")
    known = {r.value: r.name for r in var_config.Result}
    print(f"{args.name}: {known.get(answer.result, answer.result)}")
    return 0 if answer.result == var_config.Result.SUCCESS else 1
