"""Outputs that appear whole or not at all: write under a temporary name, then rename.

An interrupted run (Ctrl-C, a crash, a bad frame) leaves the previous output untouched and no
half-written file behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import LeanEyeError


def check_output_path(path: Path, force: bool, what: str = "output") -> None:
    """Fail early, before any work, if `path` exists without `force` or its folder is unwritable."""
    path = Path(path)
    if path.exists() and not force:
        raise LeanEyeError(f"{what} {path} already exists; pass --force to replace it")
    parent = path.absolute().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise LeanEyeError(f"{what} {path}: folder {probe} is not writable")


@contextlib.contextmanager
def atomic_path(path: Path | str, force: bool = True, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write into; on success it replaces `path`.

    With `is_dir` the temporary path is an empty directory; otherwise it does not exist yet
    (writers that insist on creating their own file or folder, like bag writers, get a fresh name).
    On any exception, KeyboardInterrupt included, the temporary is removed and `path` is untouched.
    """
    path = Path(path)
    check_output_path(path, force)
    try:
        path.absolute().parent.mkdir(parents=True, exist_ok=True)
        tmp_root = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.absolute().parent))
    except OSError as exc:
        raise LeanEyeError(f"{path}: cannot write there ({exc.strerror})") from None
    tmp = tmp_root / path.name
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
        if path.exists() or path.is_symlink():
            # Keep the old output until the new one is in place: rename it aside first.
            old = tmp_root / (path.name + ".old")
            os.replace(path, old)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is not None and str(tmp_root) not in str(exc.filename):
            raise  # names its own file, an input
        # A write through an open file (a full disk, a quota) names no file, or only the temporary one.
        where = str(exc.filename).replace(str(tmp), str(path)) if exc.filename else path
        raise LeanEyeError(f"{where}: cannot write ({exc.strerror or exc})") from None
    except LeanEyeError as exc:
        if str(tmp) not in str(exc):
            raise
        # Errors of nested writers name the temporary path; the user knows the output's name.
        raise LeanEyeError(str(exc).replace(str(tmp), str(path))) from None
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
