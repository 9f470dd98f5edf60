"""The `leaneye-compress` command: one subcommand per pipeline stage, each registered by its module."""
from __future__ import annotations

import argparse
import importlib
import sys

from leaneye.cli import run_command

COMMAND_MODULES = [
    "leaneye_compress.train",
    "leaneye_compress.export",
    "leaneye_compress.import_onnx",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leaneye-compress", description="LeanEye offline: train, compress and build detection engines")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
