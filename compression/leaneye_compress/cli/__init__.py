"""The `leaneye-compress` command: one module per subcommand in this package, each registering itself here.

Stage modules are imported only when their subcommand runs, so `--help` and `import` need no
PyTorch (the engine-building side runs on Jetsons without a PyTorch wheel). Errors are reported
as `leaneye` reports them (leaneye.cli.run_command): one line and exit 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse

from leaneye.cli import parser_of, run_command

# Modules that define `register(subparsers)`; each adds its subcommand with `set_defaults(func=...)`.
COMMAND_MODULES = [
    "leaneye_compress.cli.train",
    "leaneye_compress.cli.export",
    "leaneye_compress.cli.import_onnx",
    "leaneye_compress.cli.prune",
    "leaneye_compress.cli.distill",
    "leaneye_compress.cli.qad",
    "leaneye_compress.cli.calibrate",
    "leaneye_compress.cli.nms",
    "leaneye_compress.cli.report",
    "leaneye_compress.cli.build",
    "leaneye_compress.cli.engine",
    "leaneye_compress.cli.bench_gpu",
]


def build_parser() -> argparse.ArgumentParser:
    return parser_of(
        "leaneye-compress", "LeanEye offline: train, compress and build detection engines", COMMAND_MODULES
    )


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)
