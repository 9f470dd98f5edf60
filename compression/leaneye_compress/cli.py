"""The `leaneye-compress` command: one subcommand per pipeline stage, each registered by its module."""

from __future__ import annotations

import argparse
import sys

from leaneye.cli import parser_with_commands, run_command

COMMAND_MODULES = [
    "leaneye_compress.stages.train",
    "leaneye_compress.stages.export",
    "leaneye_compress.stages.import_onnx",
]


def build_parser() -> argparse.ArgumentParser:
    return parser_with_commands(
        "leaneye-compress", "LeanEye offline: train, compress and build detection engines", COMMAND_MODULES
    )


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
