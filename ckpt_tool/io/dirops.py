"""Crash-safe directory-entry operations: rename without replacing, hard link (or copy), durable removal.

``rename`` of an adapter folder is a change of directory entries, not of file
contents. Each primitive here is one atomic step on Linux, followed by an
``fsync`` of every directory it changed, so after a power cut the directory
shows either the state before the step or the state after it:

* ``rename_noreplace`` — ``renameat2(RENAME_NOREPLACE)``: the target name is
  created atomically and never replaces an existing file or (empty) directory,
  even if one appears between a check and the call. Where the kernel or the
  filesystem does not offer the flag, a file is moved with ``link`` + ``unlink``
  (``link`` never replaces either) and a directory with a checked ``rename``
  (the one remaining race: an empty directory created at the target by someone
  else in between would be replaced).
* ``link_or_copy`` — a second name for a file's inode (no bytes copied); on
  filesystems without hard links, a copy into a temp file beside the target,
  fsynced, then given its name without replacing anything.

All functions raise ``OSError`` as the system reports it; callers map it
(``errors.from_os_error``) and ``FileExistsError`` means the target appeared.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

from ckpt_tool.io.atomic import fsync_dir, set_publish_mode, temp_prefix

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
#: errnos meaning "this kernel / filesystem cannot do renameat2 with flags"
_NO_RENAMEAT2 = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
#: errnos meaning "this filesystem has no hard links"
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}

_libc: object | None = None


def _renameat2(src: Path, dst: Path) -> bool:
    """``renameat2(src, dst, RENAME_NOREPLACE)``; False when it is not available here (no change made)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    fn = getattr(_libc, "renameat2", None) if _libc else None
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_RENAMEAT2:
        return False
    raise OSError(err, os.strerror(err), os.fspath(src), None, os.fspath(dst))


def _sync_parents(*paths: Path) -> None:
    for d in dict.fromkeys(p.parent for p in paths):
        fsync_dir(d)


def rename_noreplace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Give ``src`` (file or directory) the name ``dst``, failing with ``FileExistsError`` if ``dst`` exists."""
    src, dst = Path(src), Path(dst)
    if not _renameat2(src, dst):
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(dst))
        if stat.S_ISDIR(os.lstat(src).st_mode):
            os.rename(src, dst)
        else:
            os.link(src, dst)  # never replaces: EEXIST if dst appeared meanwhile
            os.unlink(src)
    _sync_parents(src, dst)


def link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> str:
    """Make ``dst`` a name of ``src``'s content without replacing anything; returns "linked" or "copied"."""
    src, dst = Path(src), Path(dst)
    try:
        os.link(src, dst, follow_symlinks=False)
        how = "linked"
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        _copy_noreplace(src, dst)
        how = "copied"
    fsync_dir(dst.parent)
    return how


def _copy_noreplace(src: Path, dst: Path) -> None:
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(dst))
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(), dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as fin:
            shutil.copyfileobj(fin, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        set_publish_mode(tmp)
        rename_noreplace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def unlink_durably(path: str | os.PathLike[str]) -> None:
    """Remove the file ``path`` and fsync its directory (a missing file is not an error: the step is done)."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fsync_dir(path.parent)


def rmdir_durably(path: str | os.PathLike[str]) -> None:
    """Remove the empty directory ``path`` and fsync its parent (missing: done already)."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)
    fsync_dir(path.parent)


def mkdir_durably(path: str | os.PathLike[str]) -> None:
    """Create the directory ``path`` (an existing directory is fine) and fsync its parent."""
    path = Path(path)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path)
    if not path.is_dir() or path.is_symlink():
        raise FileExistsError(errno.EEXIST, "exists and is not a directory", os.fspath(path))
    fsync_dir(path.parent)


def same_content(a: str | os.PathLike[str], b: str | os.PathLike[str], chunk: int = 1 << 20) -> bool:
    """Whether two regular files hold the same bytes (the same inode, or equal size and bytes).

    Used to recognise the half-done state of an interrupted rename: a file that
    is already at its destination is a link to (or a copy of) its source.
    """
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    if not (stat.S_ISREG(sa.st_mode) and stat.S_ISREG(sb.st_mode)):
        return False
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
        return True
    if sa.st_size != sb.st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                return False
            if not x:
                return True
