"""The migrate journal and lock: what makes ``migrate --apply`` resumable and ``--undo`` possible.

The journal is a JSON-lines file in ROOT. Every record is appended and
fsynced before the change it announces, so after ``kill -9`` (or a power cut)
the file says which plan was being applied. The steps themselves are chosen to
be checkable against the filesystem (a rename keeps size, mtime and inode), so
resuming and undoing look at the tree, not at which "done" markers made it to
disk: the markers are an audit trail, the plan is the contract.

Records::

    {"type": "plan", "session": 1, "steps": [...], "time": ...}   # before the first change
    {"type": "done", "session": 1, "groups": [0, 1, 2]}            # checkpoint folders finished
    {"type": "skip", "session": 1, "step": 7, "reason": "..."}     # a source changed since the plan
    {"type": "derived", "session": 1, "step": 9, "sha256": "..."}  # a converted file, before it is published
    {"type": "complete", "session": 1}
    {"type": "undo"}                                               # an undo started (file deleted at its end)

``CKPT_TOOL_MIGRATE_CRASH_AFTER=N`` (tests only) SIGKILLs the process right
after the Nth mutation (journal record or filesystem change), so a test can
prove that every possible interruption converges.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_tool.errors import Conflict, InvalidFile
from ckpt_tool.io.atomic import fsync_dir

JOURNAL_NAME = ".ckpt-tool-migrate.journal"
LOCK_NAME = ".ckpt-tool-migrate.lock"
ENV_CRASH = "CKPT_TOOL_MIGRATE_CRASH_AFTER"

_mutations = 0


def mutation_count() -> int:
    """How many mutating steps this process has made (the crash test's unit)."""
    return _mutations


def mutated() -> None:
    """Count one mutation; die here if the crash hook asks for it (tests only)."""
    global _mutations
    _mutations += 1
    target = os.environ.get(ENV_CRASH)
    if target and target.isdigit() and int(target) == _mutations:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def migrate_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ROOT's lock file; ``Conflict`` if another run holds it.

    The lock file is removed when the run ends. A process that opened the old
    file before it was unlinked would lock a dead inode, so after locking we
    check that the path still names the inode we hold, and retry if not.
    """
    path = root / LOCK_NAME
    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise Conflict(
                f"cannot create the lock file {path} ({exc.strerror})", "check ROOT is writable"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise Conflict(
                    f"another ckpt-tool migrate is running on {root} (lock {path.name} is held)",
                    "wait for it to finish; runs on one ROOT never overlap",
                ) from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:  # pragma: no cover - needs a pathological race
        raise Conflict(f"could not take the migrate lock on {root}", "retry")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


@dataclass
class Session:
    """One ``--apply`` plan as recorded in the journal."""

    number: int
    steps: list[dict[str, Any]]
    complete: bool = False
    done_groups: set[int] = field(default_factory=set)
    skipped: dict[int, str] = field(default_factory=dict)


class Journal:
    """Append-only, fsynced record of migrate plans in ROOT."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / JOURNAL_NAME
        self.sessions: list[Session] = []
        self.undoing = False
        self._load()

    # reading -----------------------------------------------------------------
    def _load(self) -> None:
        if not self.path.exists():
            return
        if self.path.is_symlink() or not self.path.is_file():
            raise InvalidFile(f"{self.path}: the migrate journal is not a regular file", "remove it by hand")
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        good = 0  # byte length of the valid prefix
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if not line:
                good += len(line) + (0 if last else 1)
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not an object")
            except ValueError:
                if last or all(not rest for rest in lines[i + 1 :]):
                    # a record torn by a crash mid-append: drop it (it announced nothing done)
                    break
                raise InvalidFile(
                    f"{self.path}: line {i + 1} is not a journal record",
                    "the journal is damaged; inspect it by hand",
                ) from None
            self._apply_record(rec)
            good += len(line) + (0 if last else 1)
        if good < len(raw):
            with open(self.path, "r+b") as fh:
                fh.truncate(good)
                fh.flush()
                os.fsync(fh.fileno())

    def _apply_record(self, rec: dict[str, Any]) -> None:
        kind = rec.get("type")
        if kind == "plan":
            self.sessions.append(Session(int(rec["session"]), list(rec["steps"])))
        elif kind == "undo":
            self.undoing = True
        elif self.sessions:
            session = self.sessions[-1]
            if kind == "done":
                session.done_groups.update(
                    int(g) for g in rec.get("groups", [rec.get("group")]) if g is not None
                )
            elif kind == "skip":
                session.skipped[int(rec["step"])] = str(rec.get("reason", ""))
            elif kind == "complete":
                session.complete = True
            elif kind == "derived":
                # the sha256 of a converted file, journaled before it is published
                step = int(rec["step"])
                if 0 <= step < len(session.steps):
                    session.steps[step]["derived_sha256"] = str(rec["sha256"])

    @property
    def pending(self) -> Session | None:
        """The interrupted session, if the last ``--apply`` did not finish."""
        if self.sessions and not self.sessions[-1].complete:
            return self.sessions[-1]
        return None

    # writing -----------------------------------------------------------------
    def append(self, rec: dict[str, Any]) -> None:
        """Append one record and fsync it (and, for a new file, its directory)."""
        new = not self.path.exists()
        line = (json.dumps(rec, separators=(",", ":"), sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            fsync_dir(self.root)
        self._apply_record(rec)
        mutated()

    def start(self, steps: list[dict[str, Any]]) -> Session:
        number = (self.sessions[-1].number + 1) if self.sessions else 1
        self.append({"type": "plan", "session": number, "steps": steps, "time": time.time()})
        return self.sessions[-1]

    def remove(self) -> None:
        """Forget everything (after a finished undo)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        fsync_dir(self.root)
        self.sessions = []
        self.undoing = False
        mutated()
