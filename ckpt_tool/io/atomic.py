"""Crash-safe file output: temp file in the destination directory, fsync, atomic rename.

A reader of the destination path sees either the old file or the complete new
one, never a partial write, even after ``kill -9`` or a power cut (the
directory is fsynced after the rename).

A ``kill -9`` (or a power cut) still leaves the temp file itself behind, and a
merge's temp file is the size of the model. Temp names therefore say who made
them: ``.ckpt-tool-tmp-<host token>-<pid>-<random>``, where the host token is
a hash of the machine id and the boot id. ``clean_stale_temps`` removes, in one
directory, only the temps that are provably dead: made on this machine and
either before the last reboot or by a process that no longer exists. Temps of
live processes, of other machines (a shared NFS directory) and of older
releases (no token) are left alone, and only regular files are ever removed
(never a symlink, never a directory).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TEMP_PREFIX = ".ckpt-tool-tmp-"
#: ``<machine hash 8 hex><boot hash 8 hex>-<pid>-``, then mkstemp's random part.
_TEMP_NAME = re.compile(r"^" + re.escape(TEMP_PREFIX) + r"(?P<machine>[0-9a-f]{8})(?P<boot>[0-9a-f]{8})-(?P<pid>\d{1,10})-")
#: Directory entries looked at when cleaning, at most (a hostile directory may hold millions).
MAX_SCAN_ENTRIES = 100_000


def _read_first_line(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read(256).strip()
    except OSError:
        return ""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@functools.lru_cache(maxsize=1)
def host_token() -> tuple[str, str]:
    """(machine part, boot part) of this process's temp names, 8 hex digits each.

    The machine part comes from ``/etc/machine-id`` (hostname where there is none,
    e.g. in some containers); the boot part from the kernel's boot id, so a temp
    from before a reboot is recognisably dead even if its pid is reused.
    """
    machine = (
        _read_first_line("/etc/machine-id") or _read_first_line("/var/lib/dbus/machine-id") or socket.gethostname()
    )
    boot = _read_first_line("/proc/sys/kernel/random/boot_id") or "no-boot-id"
    return _digest(machine), _digest(boot)


def temp_prefix() -> str:
    """The name prefix of this process's temp files."""
    machine, boot = host_token()
    return f"{TEMP_PREFIX}{machine}{boot}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a real process id: never call it dead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return True
    return True


def is_stale_temp(name: str) -> bool:
    """Whether a temp file name belongs to a dead ckpt-tool process on this machine.

    Unknown names (other tools, older releases without a token, other machines)
    are never stale: removing them could destroy someone else's work in progress.
    """
    m = _TEMP_NAME.match(name)
    if m is None:
        return False
    machine, boot = host_token()
    if m["machine"] != machine:
        return False
    if m["boot"] != boot:
        return True  # written before the last reboot: its process is gone
    pid = int(m["pid"])
    return pid != os.getpid() and not _pid_alive(pid)


def clean_stale_temps(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove the stale ckpt-tool temp files directly inside ``directory``; return what was removed.

    Only regular files (checked with ``lstat``: a symlink named like a temp is left
    alone, so it cannot point the removal elsewhere), only names ``is_stale_temp``
    accepts, and at most ``MAX_SCAN_ENTRIES`` entries are looked at. A directory
    that does not exist or cannot be listed is not an error.
    """
    removed: list[Path] = []
    try:
        it = os.scandir(directory)
    except OSError:
        return removed
    with it:
        for i, entry in enumerate(it):
            if i >= MAX_SCAN_ENTRIES:
                break
            if not entry.name.startswith(TEMP_PREFIX) or not is_stale_temp(entry.name):
                continue
            try:
                st = os.lstat(entry.path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkstemp(dest: Path) -> tuple[int, str]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=temp_prefix(), dir=dest.parent)


@contextlib.contextmanager
def atomic_write(dest: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[bytes]]:
    """Write ``dest`` atomically. On any exception (incl. Ctrl-C) the temp file is removed.

    Example:
        >>> with atomic_write("out/model.safetensors") as fh:
        ...     fh.write(b"...")
    """
    dest = Path(dest)
    fd, tmp = _mkstemp(dest)
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
