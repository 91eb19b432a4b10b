"""File operations below one ROOT directory that never follow a symlink, whatever the tree does meanwhile.

Why: ``migrate`` works from paths relative to ROOT (from its plan, or from a
journal found on disk). Between the moment a path was checked and the moment
it is used, any directory on the way can be replaced by a symlink to somewhere
else (``final -> ~/.config``); a path-based ``rename`` or ``open`` would follow
it, moving weights out of the tree or writing files elsewhere. Here every
operation starts from a descriptor of ROOT, opens each directory component
with ``O_NOFOLLOW | O_DIRECTORY`` relative to the previous one, and acts on the
last name with the ``*at`` system calls (``dir_fd``, ``src_dir_fd`` ...). A
symlink (or a file) anywhere on the way fails with ``UnsafePath`` instead of
being followed. The walk is repeated for every operation — nothing is cached —
so a symlink swapped in after planning is caught right before the step that
would have used it; opening a component costs about a microsecond.

Paths given to this module are already validated ROOT-relative paths
(``ckpt_tool.ops.migrate_steps.check_rel``): no absolute path, no ``..``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ckpt_tool.io.atomic import TEMP_PREFIX

_O_PATH = getattr(os, "O_PATH", 0)  # Linux: a handle for *at calls, no read permission needed
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_WALK = (_O_PATH or os.O_RDONLY) | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
_LIST = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
_CHUNK = 1 << 20
_MAX_PINS = 64  # directories one pinned block keeps open


class UnsafePath(OSError):
    """A component of a path below ROOT is a symlink or not a directory: nothing was done through it."""


_libc: Any = None


def _load_libc() -> Any:
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(None, use_errno=True)
            fn = lib.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return _libc


def publish_mode() -> int:
    """0644 less the umask: the mode of a file published by ``open(..., 0o644)``."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o644 & ~mask


class RootFS:
    """ROOT opened once; every path below it reached one component at a time, never through a symlink."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        # ROOT itself is the user's argument: a symlink there is their choice and is followed, once
        self.fd = os.open(self.root, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        self._mode = publish_mode()
        self._pins: dict[str, int] | None = None

    def close(self) -> None:
        if self._pins:
            for fd in self._pins.values():
                os.close(fd)
            self._pins = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RootFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # walking ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """Within this block each directory is reached once (without following a symlink) and reused.

        One step's check and its operation run in one block, so they act on
        the same directories at a cost of one walk; the next step walks anew.
        Nested blocks share the outer one.
        """
        if self._pins is not None:
            yield
            return
        self._pins = {}
        try:
            yield
        finally:
            pins, self._pins = self._pins, None
            for fd in pins.values():
                os.close(fd)

    def _dir(self, rel_dir: str, flags: int = _WALK) -> tuple[int, bool]:
        """``(descriptor of the directory rel_dir ("" = ROOT), whether the caller must close it)``."""
        pins = self._pins
        if not rel_dir:
            return (self.fd, False) if flags == _WALK else (os.open(".", flags, dir_fd=self.fd), True)
        if pins is not None and flags == _WALK and rel_dir in pins:
            return pins[rel_dir], False
        parts = rel_dir.split("/")
        start, cur, owned = 0, self.fd, False
        if pins:
            for n in range(len(parts) - 1, 0, -1):
                got = pins.get("/".join(parts[:n]))
                if got is not None:
                    start, cur = n, got
                    break
        try:
            for n in range(start, len(parts)):
                f = flags if n == len(parts) - 1 else _WALK
                try:
                    nxt = os.open(parts[n], f, dir_fd=cur)
                except OSError as exc:
                    raise self._why(cur, "/".join(parts[: n + 1]), exc) from None
                if owned:
                    os.close(cur)
                cur, owned = nxt, True
                if pins is not None and f == _WALK and len(pins) < _MAX_PINS:
                    pins["/".join(parts[: n + 1])] = cur
                    owned = False
            return cur, owned
        except BaseException:
            if owned:
                os.close(cur)
            raise

    def _open_dir(self, rel_dir: str, flags: int = _WALK) -> int:
        """A new descriptor of the directory ``rel_dir``, reached without following a symlink (caller closes)."""
        fd, owned = self._dir(rel_dir, flags)
        return fd if owned else os.dup(fd)

    @staticmethod
    def _why(parent_fd: int, prefix: str, exc: OSError) -> OSError:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            try:
                st = os.lstat(prefix.rsplit("/", 1)[-1], dir_fd=parent_fd)
                kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
            except OSError:
                kind = "not a directory"
            return UnsafePath(exc.errno, f"{prefix} is {kind} (migrate never goes through one)", prefix)
        exc.filename = prefix
        return exc

    @contextlib.contextmanager
    def parent(self, rel: str) -> Iterator[tuple[int, str]]:
        """``(descriptor of rel's directory, rel's last name)``, valid inside the block."""
        head, _, name = rel.rpartition("/")
        fd, owned = self._dir(head)
        try:
            yield fd, name
        finally:
            if owned:
                os.close(fd)

    # looking ---------------------------------------------------------------------------------------
    def lstat(self, rel: str) -> os.stat_result | None:
        """``lstat`` of ``rel``; ``None`` when it (or a directory on the way) does not exist."""
        try:
            with self.parent(rel) as (fd, name):
                return os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            return None

    def is_dir(self, rel: str) -> bool:
        """``rel`` is a real directory (not a symlink to one), reached without following a symlink."""
        st = self.lstat(rel)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def listdir(self, rel_dir: str) -> list[str]:
        fd = self._open_dir(rel_dir, _LIST)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def scan(self, rel_dir: str) -> Iterator[tuple[str, os.stat_result]]:
        """``(name, lstat)`` of every entry of the directory ``rel_dir``."""
        fd = self._open_dir(rel_dir, _LIST)
        try:
            for name in os.listdir(fd):
                try:
                    yield name, os.lstat(name, dir_fd=fd)
                except FileNotFoundError:
                    continue
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def open_file(self, rel: str) -> Iterator[int]:
        """A read-only descriptor of the regular file ``rel`` (``UnsafePath`` if it is a symlink or special)."""
        with self.parent(rel) as (dfd, name):
            try:
                fd = os.open(name, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | getattr(os, "O_NONBLOCK", 0), dir_fd=dfd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise UnsafePath(exc.errno, f"{rel} is a symlink (migrate never follows one)", rel) from None
                exc.filename = rel
                raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafePath(errno.EINVAL, f"{rel} is not a regular file", rel)
            yield fd
        finally:
            os.close(fd)

    def read_bytes(self, rel: str, limit: int) -> bytes:
        """The content of the regular file ``rel``; ``ValueError`` past ``limit`` bytes."""
        with self.open_file(rel) as fd:
            size = os.fstat(fd).st_size
            if size > limit:
                raise ValueError(f"{rel} is {size} bytes (limit {limit})")
            chunks = []
            total = 0
            while True:
                chunk = os.read(fd, _CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > limit:
                    raise ValueError(f"{rel} grew past {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)

    # changing --------------------------------------------------------------------------------------
    def mkdir(self, rel: str) -> None:
        with self.parent(rel) as (fd, name):
            os.mkdir(name, 0o777, dir_fd=fd)

    def rmdir(self, rel: str) -> None:
        with self.parent(rel) as (fd, name):
            os.rmdir(name, dir_fd=fd)

    def unlink(self, rel: str) -> None:
        with self.parent(rel) as (fd, name):
            os.unlink(name, dir_fd=fd)

    def rename_noreplace(self, src: str, dst: str) -> None:
        """rename(2) that fails with EEXIST instead of replacing ``dst`` (renameat2 RENAME_NOREPLACE)."""
        if src.rpartition("/")[0] == dst.rpartition("/")[0]:
            with self.parent(src) as (fd, sname):
                rename_noreplace_at(fd, sname, fd, dst.rpartition("/")[2])
            return
        with self.parent(src) as (sfd, sname), self.parent(dst) as (dfd, dname):
            rename_noreplace_at(sfd, sname, dfd, dname)

    def create_temp(self, rel_dir: str) -> tuple[int, str]:
        """A new empty temp file in ``rel_dir`` (``O_EXCL``, never through a symlink): ``(fd, rel path)``."""
        dfd = self._open_dir(rel_dir)
        try:
            fd, name = _create_temp_at(dfd)
            return fd, f"{rel_dir}/{name}" if rel_dir else name
        finally:
            os.close(dfd)

    def link_noreplace(self, tmp: str, dst: str) -> None:
        """Publish the complete file ``tmp`` as ``dst``: ``link`` fails with EEXIST, it never overwrites."""
        with self.parent(tmp) as (sfd, sname), self.parent(dst) as (dfd, dname):
            _link_noreplace_at(sfd, sname, dfd, dname, dst)

    def publish(self, rel: str, data: bytes, crash_point: Any = None) -> None:
        """Create ``rel`` holding ``data``, complete or not at all, never replacing an existing file.

        One walk to the directory; the temp file, the link and the cleanup all
        happen relative to that descriptor. The temp file is not fsynced one by
        one: the caller ends its session with one ``syncfs`` and checks
        published content on resume.
        """
        with self.parent(rel) as (dfd, name):
            fd, tmp = _create_temp_at(dfd)
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fchmod(fd, self._mode)
                finally:
                    os.close(fd)
                if crash_point is not None:
                    crash_point()  # temp file complete, destination not yet there
                _link_noreplace_at(dfd, tmp, dfd, name, rel)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dfd)

    def finish_temp(self, fd: int) -> None:
        os.fchmod(fd, self._mode)

    def syncfs(self) -> None:
        """Flush everything written under ROOT (one ``syncfs`` instead of an fsync per file)."""
        lib = _load_libc()
        if lib and hasattr(lib, "syncfs") and lib.syncfs(self.fd) == 0:
            return
        os.sync()


def _create_temp_at(dfd: int) -> tuple[int, str]:
    for _ in range(100):
        name = TEMP_PREFIX + secrets.token_hex(8)
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600, dir_fd=dfd)
        except FileExistsError:
            continue
        return fd, name
    raise FileExistsError(errno.EEXIST, "no free temp file name")


def _link_noreplace_at(sfd: int, sname: str, dfd: int, dname: str, shown: str) -> None:
    try:
        os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):  # no hard links here
            exc.filename = shown
            raise
        rename_noreplace_at(sfd, sname, dfd, dname)


def rename_noreplace_at(sfd: int, sname: str, dfd: int, dname: str) -> None:
    lib = _load_libc()
    if lib:
        RENAME_NOREPLACE = 1
        if lib.renameat2(sfd, os.fsencode(sname), dfd, os.fsencode(dname), RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):  # filesystems without the flag: fall through
            raise OSError(err, os.strerror(err), dname)
    try:
        os.lstat(dname, dir_fd=dfd)
    except FileNotFoundError:
        os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
        return
    raise FileExistsError(errno.EEXIST, "destination exists", dname)


def fd_path(fd: int) -> Path:
    """A path naming the open file ``fd`` itself (``/proc/self/fd/N``), for code that takes paths.

    Reopening it reaches the very inode we opened without following any symlink in the tree.
    """
    return Path(f"/proc/self/fd/{fd}")
