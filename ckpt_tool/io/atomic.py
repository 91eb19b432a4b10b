"""Crash-safe file output: temp file in the destination directory, fsync, atomic rename.

A reader of the destination path sees either the old file or the complete new
one, never a partial write, even after ``kill -9`` or a power cut (the
directory is fsynced after the rename).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TEMP_PREFIX = ".ckpt-tool-tmp-"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(dest: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[bytes]]:
    """Write ``dest`` atomically. On any exception (incl. Ctrl-C) the temp file is removed.

    Example:
        >>> with atomic_write("out/model.safetensors") as fh:
        ...     fh.write(b"...")
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=dest.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        set_publish_mode(tmp)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def set_publish_mode(path: str | os.PathLike[str]) -> None:
    """Give a finished temp file its published mode, 0644 less the umask (``mkstemp`` creates it 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o644 & ~mask)
