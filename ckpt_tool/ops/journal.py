"""The migrate journal and lock: what makes ``migrate --apply`` resumable and ``--undo`` possible.

The journal is a JSON-lines file in ROOT. Every record is appended and
fsynced before the change it announces, so after ``kill -9`` (or a power cut)
the file says which plan was being applied. The steps themselves are chosen to
be checkable against the filesystem (a rename keeps size, mtime and inode; a
published file has the digest the plan recorded), so resuming and undoing look
at the tree, not at which "done" markers made it to disk: the markers are an
audit trail, the plan is the contract.

Records, one per line::

    {"type": "plan", "session": 1, "steps": 3, "time": ...}     # a plan of 3 steps follows,
    {"type": "step", "session": 1, "step": {"i": 0, ...}}       # one line per step,
    {"type": "planned", "session": 1}                           # and it is complete: written in one
                                                                # write + fsync before the first change
    {"type": "done", "session": 1, "groups": [0, 1, 2]}         # checkpoint folders finished
    {"type": "skip", "session": 1, "step": 7, "reason": "..."}  # a source changed since the plan
    {"type": "derived", "session": 1, "step": 9, "sha256": "..."}  # a converted file, before it is published
    {"type": "complete", "session": 1}
    {"type": "undo"}                                            # an undo started (file deleted at its end)
    {"type": "undo-end"}                                        # an undo ended leaving folders migrated

The journal is untrusted input (anyone who can write the tree can edit it).
Reading it is bounded (``MAX_JOURNAL_BYTES``, ``MAX_JOURNAL_LINE``,
``MAX_MIGRATE_STEPS``), every record is checked against this grammar and every
step is a validated ``Step`` (``migrate_steps``); anything else is one
``InvalidFile`` naming the line, and nothing is changed — the file is not even
truncated. The one exception is the torn tail a crash leaves: a last line
without its newline, or a plan block without its ``planned`` line. Neither was
fsynced completely, so nothing they announced was done; they are cut off, but
only by a run that holds the lock and is about to append.

``CKPT_TOOL_MIGRATE_CRASH_AFTER=N`` (tests only) SIGKILLs the process right
after the Nth mutation (journal record or filesystem change), so a test can
prove that every possible interruption converges.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import signal
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_tool.errors import Conflict, InvalidFile, from_os_error
from ckpt_tool.limits import MAX_JOURNAL_BYTES, MAX_JOURNAL_LINE, MAX_MIGRATE_REASON, MAX_MIGRATE_STEPS
from ckpt_tool.ops.migrate_steps import DERIVE, JOURNAL_NAME, LOCK_NAME, Step, StepError

__all__ = ["JOURNAL_NAME", "LOCK_NAME", "ENV_CRASH", "Journal", "Session", "migrate_lock", "mutated"]

ENV_CRASH = "CKPT_TOOL_MIGRATE_CRASH_AFTER"
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_MIB = 1024 * 1024
_HINT = (
    "the migrate journal is damaged or was edited; nothing was changed. Restore it from a backup, or move it "
    "away to start over (without it --undo cannot restore this tree)"
)

_mutations = 0


def _size(n: int) -> str:
    return f"{n // _MIB} MiB" if n >= _MIB else f"{n} bytes"


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
    check that the name still holds the inode we locked, and retry if not. The
    name is never followed if it is a symlink (it could point anywhere).
    """
    path = root / LOCK_NAME
    try:
        root_fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
    except OSError as exc:
        raise from_os_error(exc, f"opening {root}") from None
    try:
        for _ in range(20):
            try:
                fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | _O_NOFOLLOW | _O_CLOEXEC, 0o644, dir_fd=root_fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise Conflict(
                        f"{path} is a symlink, not migrate's lock file", "remove it and run migrate again"
                    ) from None
                raise from_os_error(exc, f"creating the migrate lock file {path}") from None
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
                same = os.fstat(fd).st_ino == os.stat(LOCK_NAME, dir_fd=root_fd, follow_symlinks=False).st_ino
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
                os.unlink(LOCK_NAME, dir_fd=root_fd)
            os.close(fd)
    finally:
        os.close(root_fd)


@dataclass
class Session:
    """One ``--apply`` plan as recorded in the journal."""

    number: int
    steps: list[Step]
    complete: bool = False
    closed: bool = False  # an undo ran after it: it is never resumed
    done_groups: set[int] = field(default_factory=set)
    skipped: dict[int, str] = field(default_factory=dict)
    derived: dict[int, str] = field(default_factory=dict)  # step -> sha256 of its converted file
    groups: int = 0  # checkpoint folders (group numbers 0 .. groups - 1)


class _Bad(Exception):
    """A record that breaks the grammar (the reader adds the line number)."""


def _fsync_dir(fd: int) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on a directory; the data is synced
        os.fsync(fd)


class Journal:
    """Append-only, fsynced record of migrate plans in ROOT, read as untrusted input."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / JOURNAL_NAME
        self.sessions: list[Session] = []
        self.undoing = False
        self._building: tuple[Session, int, int] | None = None  # (session, steps announced, offset of its plan line)
        self._torn_at: int | None = None  # where a crash's torn tail starts (cut off before the next append)
        self._total_steps = 0
        self._load()

    # reading -----------------------------------------------------------------
    def _refuse(self, what: str, line: int | None = None) -> InvalidFile:
        where = f"{self.path}: line {line}: " if line is not None else f"{self.path}: "
        return InvalidFile(where + what, _HINT)

    def _load(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._refuse("the migrate journal is a symlink; it is never followed") from None
            raise
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise self._refuse("the migrate journal is not a regular file")
            if st.st_size > MAX_JOURNAL_BYTES:
                raise self._refuse(
                    f"{st.st_size / _MIB:.0f} MiB, more than the {MAX_JOURNAL_BYTES // _MIB} MiB a migrate journal may hold"
                )
            offset = 0
            number = 0
            while True:
                line = fh.readline(MAX_JOURNAL_LINE + 1)
                if not line:
                    break
                number += 1
                if len(line) > MAX_JOURNAL_LINE:
                    raise self._refuse(f"longer than {_size(MAX_JOURNAL_LINE)}; not a journal record", number)
                if not line.endswith(b"\n"):
                    # the last line, torn by a crash mid-append: never fsynced, so nothing it announced happened
                    self._torn_at = offset
                    break
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except (ValueError, RecursionError):
                        raise self._refuse("not a journal record (not JSON)", number) from None
                    try:
                        self._apply(rec, offset)
                    except _Bad as exc:
                        raise self._refuse(str(exc), number) from None
                offset += len(line)
        if self._building is not None:
            # a plan block without its "planned" line: torn by a crash before its fsync; it authorised nothing
            self._torn_at = self._building[2]
            self.sessions.pop()
            self._total_steps -= len(self._building[0].steps)
            self._building = None

    def _apply(self, rec: Any, offset: int) -> None:
        """Check one record against the grammar and fold it into the state (raises ``_Bad``)."""
        if not isinstance(rec, dict):
            raise _Bad("a journal record must be a JSON object")
        kind = rec.get("type")
        spec = _RECORDS.get(kind) if isinstance(kind, str) else None
        if spec is None:
            raise _Bad(f"unknown record type {str(kind)[:60]!r}")
        required, optional = spec
        missing = required - rec.keys()
        if missing:
            raise _Bad(f"a {kind!r} record needs {', '.join(sorted(missing))}")
        extra = rec.keys() - required - optional
        if extra:
            raise _Bad(f"a {kind!r} record has unknown field(s) {', '.join(sorted(map(str, extra)))[:200]}")
        if "session" in rec and (type(rec["session"]) is not int or rec["session"] < 1):
            raise _Bad("session must be a positive integer")
        building = self._building
        if building is not None and kind not in ("step", "planned"):
            raise _Bad(f"a {kind!r} record inside the plan of session {building[0].number}")
        if kind == "plan":
            self._plan(rec, offset)
        elif kind == "step":
            self._step(rec)
        elif kind == "planned":
            if building is None or rec["session"] != building[0].number:
                raise _Bad("'planned' without the plan it closes")
            if len(building[0].steps) != building[1]:
                raise _Bad(f"the plan announced {building[1]} steps and has {len(building[0].steps)}")
            building[0].groups = max(s.group for s in building[0].steps) + 1
            self._building = None
        elif kind == "undo":
            if not self.sessions:
                raise _Bad("an undo record before any plan")
            self.undoing = True
            for s in self.sessions:
                s.closed = True
        elif kind == "undo-end":
            if not self.undoing:
                raise _Bad("'undo-end' without an undo")
            self.undoing = False
        else:
            session = self._current(rec, kind)
            if kind == "done":
                groups = rec["groups"]
                if not isinstance(groups, list) or not all(type(g) is int and 0 <= g < session.groups for g in groups):
                    raise _Bad(f"groups must be a list of checkpoint folder numbers below {session.groups}")
                session.done_groups.update(groups)
            elif kind == "complete":
                session.complete = True
            else:
                step = rec["step"]
                if type(step) is not int or not 0 <= step < len(session.steps):
                    raise _Bad(f"step must be a step number below {len(session.steps)}")
                if kind == "skip":
                    reason = rec["reason"]
                    if not isinstance(reason, str) or len(reason) > MAX_MIGRATE_REASON:
                        raise _Bad("reason must be text")
                    session.skipped[step] = reason
                else:  # derived
                    digest = rec["sha256"]
                    if session.steps[step].op != DERIVE:
                        raise _Bad(f"step {step} is a {session.steps[step].op}, not a derive")
                    if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
                        raise _Bad("sha256 must be 64 lowercase hex digits")
                    session.derived[step] = digest

    def _plan(self, rec: dict[str, Any], offset: int) -> None:
        if self.undoing:
            raise _Bad("a plan while an undo is unfinished")
        number, count = rec["session"], rec["steps"]
        expected = self.sessions[-1].number + 1 if self.sessions else 1
        if number != expected:
            raise _Bad(f"session {number} where session {expected} was expected")
        if isinstance(count, list):
            raise _Bad("a plan record with inline steps (an older ckpt-tool wrote it); finish or undo it with that version")
        if type(count) is not int or count < 1:
            raise _Bad("steps must be a positive number")
        if self._total_steps + count > MAX_MIGRATE_STEPS:
            raise _Bad(f"{count} steps: more than the {MAX_MIGRATE_STEPS} a migrate journal may hold")
        t = rec.get("time")
        if t is not None and (type(t) not in (int, float) or not math.isfinite(t)):
            raise _Bad("time must be a number")
        if self.sessions and not (self.sessions[-1].complete or self.sessions[-1].closed):
            raise _Bad(f"a new plan while session {self.sessions[-1].number} is unfinished")
        session = Session(number, [])
        self.sessions.append(session)
        self._building = (session, count, offset)
        self._total_steps += count

    def _step(self, rec: dict[str, Any], validated: Step | None = None) -> None:
        building = self._building
        if building is None or rec["session"] != building[0].number:
            raise _Bad("a step outside a plan")
        session, count, _ = building
        if len(session.steps) >= count:
            raise _Bad(f"more steps than the {count} the plan announced")
        try:
            step = validated if validated is not None else Step.from_json(rec["step"])
        except StepError as exc:
            raise _Bad(f"step {len(session.steps)}: {exc}") from None
        if step.i != len(session.steps):
            raise _Bad(f"step {step.i} where step {len(session.steps)} was expected")
        session.steps.append(step)

    def _current(self, rec: dict[str, Any], kind: str) -> Session:
        if not self.sessions or rec["session"] != self.sessions[-1].number:
            raise _Bad(f"a {kind!r} record for a session that is not the last one")
        session = self.sessions[-1]
        if session.closed:
            raise _Bad(f"a {kind!r} record after an undo")
        if session.complete and kind != "complete":
            raise _Bad(f"a {kind!r} record after the session completed")
        return session

    @property
    def pending(self) -> Session | None:
        """The interrupted session, if the last ``--apply`` did not finish (and no undo ran since)."""
        if self.sessions and not self.sessions[-1].complete and not self.sessions[-1].closed:
            return self.sessions[-1]
        return None

    # writing -----------------------------------------------------------------
    def _write(self, lines: list[dict[str, Any]], steps: dict[int, Step] | None = None) -> None:
        """Append records in one write and fsync them; on failure, cut the file back to what it was.

        A journal written by us always re-reads: each line is parsed back as a
        reader would and checked against the grammar. A step record whose
        validated ``Step`` is given (``steps``, by position) is checked to parse
        back to exactly that step's JSON form instead of being validated again.
        """
        encoded = [json.dumps(rec, separators=(",", ":"), sort_keys=True).encode() + b"\n" for rec in lines]
        for n, line in enumerate(encoded):
            try:
                if len(line) > MAX_JOURNAL_LINE:
                    raise _Bad(f"a record longer than {_size(MAX_JOURNAL_LINE)}")
                rec = json.loads(line)
                known = steps.get(n) if steps is not None else None
                if known is not None and rec == lines[n] and rec["step"] == known.to_json():
                    self._step(rec, known)
                else:
                    self._apply(rec, -1)
            except _Bad as exc:  # pragma: no cover - a bug in the writer
                raise RuntimeError(f"refusing to journal an invalid record: {exc}") from None
        data = b"".join(encoded)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _O_NOFOLLOW | _O_CLOEXEC, 0o644)
        try:
            if self._torn_at is not None:
                os.ftruncate(fd, self._torn_at)  # a crash's torn tail: cut it off before appending
                self._torn_at = None
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):  # a half-written record must not sit before the next one
                    os.ftruncate(fd, size)
                    os.fsync(fd)
                raise
            new = size == 0
        finally:
            os.close(fd)
        if new:
            dfd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
            try:
                _fsync_dir(dfd)
            finally:
                os.close(dfd)
        mutated()

    def append(self, rec: dict[str, Any]) -> None:
        """Append one record and fsync it (and, for a new file, its directory)."""
        self._write([rec])

    def start(self, steps: list[Step]) -> Session:
        """Journal a whole plan (one write, one fsync) before its first change."""
        number = (self.sessions[-1].number + 1) if self.sessions else 1
        records: list[dict[str, Any]] = [{"type": "plan", "session": number, "steps": len(steps), "time": time.time()}]
        records.extend({"type": "step", "session": number, "step": s.to_json()} for s in steps)
        records.append({"type": "planned", "session": number})
        self._write(records, steps={n + 1: s for n, s in enumerate(steps)})  # Steps are valid by construction
        return self.sessions[-1]

    def remove(self) -> None:
        """Forget everything (after a finished undo)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        dfd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
        try:
            _fsync_dir(dfd)
        finally:
            os.close(dfd)
        self.sessions = []
        self.undoing = False
        mutated()


# type -> (required fields, optional fields)
_RECORDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "plan": (frozenset({"type", "session", "steps"}), frozenset({"time"})),
    "step": (frozenset({"type", "session", "step"}), frozenset()),
    "planned": (frozenset({"type", "session"}), frozenset()),
    "done": (frozenset({"type", "session", "groups"}), frozenset()),
    "skip": (frozenset({"type", "session", "step", "reason"}), frozenset()),
    "derived": (frozenset({"type", "session", "step", "sha256"}), frozenset()),
    "complete": (frozenset({"type", "session"}), frozenset()),
    "undo": (frozenset({"type"}), frozenset()),
    "undo-end": (frozenset({"type"}), frozenset()),
}
