"""`vio serve`, `vio status`, `vio reload`, `vio stop`: the daemon and its control socket from the shell."""

from __future__ import annotations

import argparse
import errno
import json
import sys

from .config.load import DEFAULT_STATE_DIR

COMMANDS = ("serve", "status", "reload", "stop")
DEFAULT_CONTROL = f"{DEFAULT_STATE_DIR}/control.sock"


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run the service domain daemon on a config file")
    serve.add_argument("config", nargs="?", help="the TOML config file (see docs/config.md)")
    serve.add_argument("--default", action="store_true", help="run the embedded default config instead of a file")
    serve.add_argument("--state-dir", help="override the config's state_dir (sockets, runtime files)")
    serve.add_argument("--check", action="store_true", help="only check the config; start nothing")
    serve.add_argument("--print-default", action="store_true", help="print the embedded default config and exit")
    for name, text in (("status", "show the running daemon's domains, channels, disks, switches"),
                       ("reload", "re-read the daemon's config file and apply the changes"),
                       ("stop", "shut the daemon down cleanly")):
        command = subparsers.add_parser(name, help=text)
        where = command.add_mutually_exclusive_group()
        where.add_argument("--control", help=f"the daemon's control socket (default {DEFAULT_CONTROL})")
        where.add_argument("--config", help="find the control socket through this config file")
        if name == "status":
            command.add_argument("--json", action="store_true", help="the raw status as JSON")


def dispatch(args: argparse.Namespace) -> int | None:
    if args.command not in COMMANDS:
        return None
    if args.command == "serve":
        return _serve(args)
    return _control(args)


def _serve(args: argparse.Namespace) -> int:
    from .config import DEFAULT_CONFIG, ConfigProblems
    from .daemon.registry import kinds
    from .daemon.run import ConfigSource, serve
    from .errors import ConfigError

    if args.print_default:
        print(DEFAULT_CONFIG, end="")
        return 0
    if bool(args.config) == bool(args.default):
        print("vio serve: give a config file (vio serve CONFIG.toml) or --default, not both or neither", file=sys.stderr)
        return 2
    source = ConfigSource(None if args.default else args.config, args.state_dir)
    try:
        if args.check:
            config = source.load(kinds())
            print(f"{config.source}: OK ({len(config.domains)} domains, {len(config.services)} services)")
            return 0
        serve(source)
    except ConfigProblems as exc:
        print(f"vio serve: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"vio serve: {exc}; nothing was left running", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"vio serve: {exc}{_hint(exc)}; nothing was left running", file=sys.stderr)
        return 1
    return 0


def _hint(exc: OSError) -> str:
    if exc.errno in (errno.EPERM, errno.EACCES):
        return " (run as root)"
    if exc.errno == errno.EADDRINUSE:
        return " (another process uses that port: pick another metrics port)"
    return ""


def _control(args: argparse.Namespace) -> int:
    from .config import ConfigProblems
    from .config.load import daemon_settings
    from .control import ControlError, request
    from .daemon.status_text import render

    try:
        path = args.control or (daemon_settings(args.config).control_socket if args.config else DEFAULT_CONTROL)
        result = request(path, args.command)
    except (ControlError, ConfigProblems) as exc:
        print(f"vio {args.command}: {exc}", file=sys.stderr)
        return 1
    if args.command == "status":
        print(json.dumps(result, indent=2) if args.json else render(result), end="\n" if args.json else "")
    elif args.command == "reload":
        changes = ", ".join(f"{k}: {' '.join(v)}" for k, v in result.items() if v) or "nothing changed"
        print(f"reloaded: {changes}")
    else:
        print("stopping")
    return 0
