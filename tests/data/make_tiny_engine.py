"""Rebuild tests/data/tiny_engine (a few kB, committed so that environments without onnx or
../shared still run an engine end to end):

    .venv/bin/python tests/data/make_tiny_engine.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers

from helpers import TINY_ENGINE_DIR, write_tiny_engine  # noqa: E402

if __name__ == "__main__":
    write_tiny_engine(TINY_ENGINE_DIR, force=True)
    print(f"wrote {TINY_ENGINE_DIR}")
