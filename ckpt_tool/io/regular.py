"""Open only regular files: a FIFO, socket or device where a checkpoint file is expected is refused.

``open()`` on a FIFO blocks until a writer appears, and ``/dev/zero`` or
``/dev/urandom`` read forever: a path swapped for one of them (or a symlink to
one) would hang ``inspect``, ``diff`` or ``migrate``. Every reader of input
files goes through :func:`open_regular`, which opens without blocking
(``O_NONBLOCK``; ``O_NOCTTY`` so a terminal device never becomes our
controlling tty), checks with ``fstat`` on the opened descriptor (no race
between the check and the read), then clears ``O_NONBLOCK`` for ordinary reads.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from ckpt_tool.errors import InvalidFile, NotFound, from_os_error

_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
}


def describe_kind(mode: int) -> str:
    """'a FIFO (named pipe)', 'a directory', ... for an ``st_mode``."""
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def open_regular(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> BinaryIO:
    """Open ``path`` for binary reading, refusing anything but a regular file.

    Raises:
        NotFound: the path does not exist.
        InvalidFile: a directory, FIFO, socket, device, or (``follow_symlinks=False``) a symlink.
        EnvironmentFailure: permission denied and other OS refusals.
    """
    nonblock = getattr(os, "O_NONBLOCK", 0)  # POSIX only; Windows has no FIFOs to block on
    flags = os.O_RDONLY | nonblock | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise NotFound(f"{os.fsdecode(path)}: no such file", "check the path") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise InvalidFile(f"{os.fsdecode(path)}: is a symbolic link", "point at the file itself") from None
        if exc.errno in (errno.ENXIO, errno.EOPNOTSUPP):  # a socket, or a FIFO/device that cannot be opened
            raise InvalidFile(f"{os.fsdecode(path)}: not a regular file", "point at a checkpoint file") from None
        raise from_os_error(exc, f"opening {os.fsdecode(path)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidFile(
                f"{os.fsdecode(path)}: is {describe_kind(st.st_mode)}, not a regular file",
                "point at a checkpoint file",
            )
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str], max_bytes: int, what: str = "the file") -> bytes:
    """All bytes of a regular file, refusing one larger than ``max_bytes`` (read at most max+1 bytes,
    so a file that grows while being read cannot get past the cap either)."""
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise InvalidFile(f"{os.fsdecode(path)}: {size} bytes is implausibly large for {what} (limit {max_bytes})")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InvalidFile(f"{os.fsdecode(path)}: more than {max_bytes} bytes is implausibly large for {what}")
    return data


def is_regular(path: Path) -> bool:
    """True for an existing regular file (following symlinks); never blocks, never raises."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False
