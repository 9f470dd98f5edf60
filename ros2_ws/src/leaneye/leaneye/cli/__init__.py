"""The `leaneye` command: one module per subcommand in this package, each registering itself here.

Errors the user can fix (LeanEyeError) print one line to stderr and exit 2; no traceback.
Ctrl-C (SIGINT) exits 130 and SIGTERM (`docker stop`, systemd) exits 143, the shells' 128 + signal
number; both first remove what the run had half-written, as any error does.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Iterator

from ..errors import LeanEyeError

# Modules that define `register(subparsers)`; each adds its subcommand with `set_defaults(func=...)`.
COMMAND_MODULES = [
    "leaneye.cli.scenes",
    "leaneye.cli.eval",
    "leaneye.cli.detect",
    "leaneye.cli.bench",
    "leaneye.cli.bag",
    "leaneye.cli.replay",
]


def parser_of(prog: str, description: str, command_modules: list[str]) -> argparse.ArgumentParser:
    """A command whose subcommands are the given modules, each defining `register(subparsers)`;
    shared by `leaneye` and `leaneye-compress`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in command_modules:
        importlib.import_module(name).register(subparsers)
    return parser


def build_parser() -> argparse.ArgumentParser:
    return parser_of("leaneye", "LeanEye runtime: detection on camera frames, bags and videos", COMMAND_MODULES)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the run is so that its cleanup (atomic outputs, open bags) runs as on Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse and run; shared by `leaneye` and `leaneye-compress` so both report errors the same way."""
    try:
        args = parser.parse_args(argv)  # inside: option types raise LeanEyeError for out-of-range values
        with _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except LeanEyeError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file-system problem the user can fix: name the file, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{parser.prog}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"{parser.prog}: terminated; nothing half-written was left behind", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)
