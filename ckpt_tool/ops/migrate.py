"""``migrate``: bring a tree of training runs into today's layout, safely enough for a user's only copy.

The core knows nothing about LitGPT: it walks ROOT (never following symlinks),
asks every plugin's ``ckpt_migrate_run`` hook what to do with each directory,
turns the answers into one plan of typed ``Step``s (``migrate_steps``), and
refuses the whole plan if any two steps collide (two sources for one
destination, an existing destination, names that differ only in case, a
rename across filesystems, a path through a symlink). Only then does it change
anything, and each change is announced in the journal (``journal.py``) first.

The whole plan (every step, each source's size/mtime/inode and sampled
sha256) is written to the journal and fsynced before the first change. Every
step is checkable against the tree, which is what makes ``kill -9`` at any
moment harmless: a rename keeps size, mtime and inode, so "was this file
moved?" is answered by looking; new files are published with ``link()`` from a
complete temp file, so they exist complete or not at all, and their content is
checked against the plan (sha256) when a run resumes. Weights are only ever
renamed (same bytes, same inode), never copied; only small companion files
(configs, tokenizers) are copied. A session ends with one ``syncfs`` before it
is marked complete.

Every filesystem operation goes through ``RootFS``: from a descriptor of ROOT,
one directory component at a time with ``O_NOFOLLOW``, repeated right before
each step, so a symlink swapped in after planning is never followed.

Outcomes of ``--apply`` (README "migrate"):

* every step done (or its checkpoint folder skipped because a *source changed*
  since the plan: decided before the folder's first step) → exit 0;
* the machine refused (ENOSPC, EROFS, EACCES, EIO, ...) → the session stops at
  once, stays pending, exit 9; a rerun resumes it;
* a step cannot run because the tree changed otherwise (a destination
  appeared, a directory became a symlink) → its folder is left pending (decided
  before the folder's first step when possible), the other folders go ahead,
  the session is *not* marked complete, exit 7 listing every missing step.

``--undo`` reverses checkpoint folder by checkpoint folder, all or nothing:
it first decides whether every step of the folder can be reversed — by
content, not inode, so a copied tree undoes too — and only then reverses it;
a folder that cannot be is left exactly as it is, with the reason, exit 7.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import stat
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_tool.errors import CkptError, Conflict, EnvironmentFailure, NotFound, Refused, from_os_error
from ckpt_tool.io.atomic import TEMP_PREFIX
from ckpt_tool.io.container import Probe
from ckpt_tool.io.rootfs import RootFS, UnsafePath, fd_path
from ckpt_tool.limits import MAX_MIGRATE_COPY_BYTES, MAX_MIGRATE_WRITE_BYTES
from ckpt_tool.ops.journal import JOURNAL_NAME, LOCK_NAME, Journal, Session, migrate_lock, mutated
from ckpt_tool.ops.migrate_steps import (
    COPY,
    DERIVE,
    MKDIR,
    MOVE,
    RMDIR,
    SAMPLE_FULL,
    WRITE,
    FileId,
    Step,
    StepError,
    check_converter,
    check_rel,
    full_sha256,
    load_converter,
    sampled_sha256,
    sha256_text,
)
from ckpt_tool.plugins import get_plugin_manager

__all__ = [
    "MOVE", "COPY", "WRITE", "MKDIR", "RMDIR", "DERIVE", "REPORT", "Action", "MigrateOptions", "Plan", "Outcome",
    "MigrateConflict", "MigrateIncomplete", "Step", "Wording", "MIGRATE", "plan", "plan_actions", "apply", "undo",
    "step_states", "walk_dirs",
]

REPORT = "report"  # a plugin action only: listed in the plan, never a step
_OWN_FILES = (JOURNAL_NAME, LOCK_NAME)
PARALLEL_MIN_DIRS = 64  # below this, starting processes costs more than it saves
DONE_BATCH = 256  # checkpoint folders per "done" journal record
MAX_LISTED = 20  # missing steps named in an error message (all of them are in --json)

# step states
DONE, PENDING, CHANGED, BLOCKED, SKIPPED = "done", "pending", "changed", "blocked", "skipped"
# errnos that mean "the tree is not as the plan saw it" (everything else: the machine refused)
_TREE_ERRNOS = frozenset(
    {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.EXDEV,
     errno.EINVAL, errno.EBUSY}
)


@dataclass
class Action:
    """One thing a plugin wants done to a run directory (paths are absolute, inside ROOT).

    ``op``: ``move`` (rename ``src`` → ``dst``), ``copy`` (a small companion file
    ``src`` → ``dst``), ``write`` (create ``dst`` holding ``data``), ``rmdir``
    (remove the emptied directory ``src``), ``derive`` (``converter`` writes
    ``dst`` from ``src``, which stays) or ``report`` (``src`` stays where it
    is; ``reason`` says why it is listed). ``group`` is the checkpoint folder
    the step builds: its steps are applied together, and skipped together when
    one of its sources changed after planning.
    """

    op: str
    src: Path | None = None
    dst: Path | None = None
    reason: str = ""
    group: Path | None = None
    data: str | None = None
    converter: str | None = None  # derive: "module:function" a loaded plugin declares (MIGRATE_CONVERTERS)
    params: dict[str, Any] | None = None  # derive: JSON-able arguments for the converter


@dataclass(frozen=True)
class Wording:
    """How messages name the command that journals a session, so a rerun hint is the command to type.

    The journal, steps and undo are the same whoever planned them: ``migrate ROOT``
    (plugins' ``ckpt_migrate_run`` over a tree) or ``rename DIR --repair`` (one
    folder's file repair, ``ckpt_repair_files``); only the words differ.
    """

    command: str = "migrate"  # as in "migrate --apply, step 3"
    apply: str = "ckpt-tool migrate {root} --apply"
    undo: str = "ckpt-tool migrate {root} --undo"
    noun: str = "migration"


MIGRATE = Wording()
Planner = Callable[[Path], "Plan"]


@dataclass(frozen=True)
class MigrateOptions:
    """Opt-in behaviour, handed to every plugin's ``ckpt_migrate_run`` hook."""

    upgrade_attn: bool = False  # rewrite legacy fused-attention keys into new files (originals kept)


@dataclass
class Plan:
    """The checked, ordered steps for a whole ROOT (paths relative to ROOT)."""

    root: Path
    steps: list[Step] = field(default_factory=list)
    left: list[dict[str, str]] = field(default_factory=list)  # reported, not touched
    conflicts: list[str] = field(default_factory=list)
    resuming: bool = False  # steps come from an interrupted --apply
    derived: dict[int, str] = field(default_factory=dict)  # resuming: digests of converted files


@dataclass
class Outcome:
    """What ``apply``/``undo`` did, and what it could not do."""

    plan: Plan
    done: list[int] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # a source changed: the folder was not touched
    missing: list[dict[str, Any]] = field(default_factory=list)  # steps left pending (apply) / in effect (undo)
    kept: list[dict[str, Any]] = field(default_factory=list)  # undo: checkpoint folders left whole, and why
    resumed_steps: int = 0
    message: str = ""


class MigrateConflict(Conflict):
    """The plan is refused as a whole; ``conflicts`` lists every problem found."""

    def __init__(self, conflicts: list[str], plan: Plan) -> None:
        super().__init__(
            f"the migration plan has {len(conflicts)} conflict(s); nothing was changed",
            "resolve them (they are listed above) and run migrate again",
        )
        self.conflicts = conflicts
        self.plan = plan


class MigrateIncomplete(CkptError):
    """``--apply`` or ``--undo`` ended with steps not done; ``outcome`` says which and why.

    The exit code is the cause's: 9 when the machine refused (the session is
    pending, rerun to resume), 7 when the tree changed or a folder could not be
    undone, 6 when a converter refused a file.
    """

    def __init__(self, message: str, hint: str, outcome: Outcome, exit_code: int) -> None:
        super().__init__(message, hint)
        self.outcome = outcome
        self.exit_code = exit_code


# --------------------------------------------------------------------------- walking and planning


def _check_root(root: Path) -> Path:
    if not root.exists():
        raise NotFound(f"{root}: no such directory", "check the path")
    if not root.is_dir():
        raise NotFound(f"{root}: not a directory", "migrate takes the directory that holds your runs")
    return Path(os.path.abspath(root))


def walk_dirs(root: Path) -> list[Path]:
    """Every directory under ``root`` (itself included), sorted.

    Symlinked directories are never entered (they may lead out of ROOT), and
    hidden ones (``.git``, caches) are not runs.
    """
    out = [root]
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False) and not e.name.startswith("."):
                p = Path(e.path)
                out.append(p)
                stack.append(p)
    return sorted(out)


def _ask_plugins(dirs: list[Path], root: Path, options: MigrateOptions) -> list[tuple[Path, list[Action] | None, str | None]]:
    """Call the hook for each dir; returns (dir, actions or None when unclaimed, error text)."""
    pm = get_plugin_manager()
    probe = Probe()
    out: list[tuple[Path, list[Action] | None, str | None]] = []
    for d in dirs:
        try:
            answers = pm.hook.ckpt_migrate_run(run_dir=d, root=root, probe=probe, options=options)
        except CkptError as exc:
            out.append((d, [], exc.render().removeprefix("error: ")))
            continue
        claimed = [a for a in answers if a is not None]
        out.append((d, [x for lst in claimed for x in lst] if claimed else None, None))
    return out


def _ask_chunk(args: tuple[list[Path], Path, MigrateOptions]) -> list[tuple[Path, list[Action] | None, str | None]]:
    return _ask_plugins(*args)


def collect(root: Path, dirs: list[Path], jobs: int, options: MigrateOptions) -> list[tuple[Path, list[Action] | None, str | None]]:
    """Ask the plugins about every dir, in ``jobs`` processes (header parsing is CPU-bound Python)."""
    if jobs <= 1 or len(dirs) < PARALLEL_MIN_DIRS:
        return _ask_plugins(dirs, root, options)
    n = max(1, min(jobs * 4, len(dirs) // 16))
    chunks = [dirs[i::n] for i in range(n)]
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        results = [r for part in pool.map(_ask_chunk, [(c, root, options) for c in chunks]) for r in part]
    return sorted(results, key=lambda r: r[0])


def _rel(path: Path, root: Path) -> str | None:
    """``path`` relative to ROOT, or None if it is not inside (no ``..``, not ROOT itself)."""
    text, base = os.fspath(path), os.fspath(root) + os.sep
    if (
        text.startswith(base)
        and f"{os.sep}..{os.sep}" not in text + os.sep
        and f"{os.sep}.{os.sep}" not in text + os.sep
    ):
        return text[len(base) :] or None  # the fast path: plugins join onto ROOT
    rel = os.path.relpath(os.path.abspath(path), root)
    if rel == "." or rel.startswith(".." + os.sep) or rel == ".." or os.path.isabs(rel):
        return None
    return rel


def plan(root: Path, jobs: int = 1, options: MigrateOptions | None = None, planner: Planner | None = None) -> Plan:
    """Build and check the plan for ``root``. Changes nothing.

    If an earlier ``--apply`` was interrupted, the plan is the rest of that
    one (``resuming``): a fresh look at a half-moved tree would not know what
    the interrupted run still owed it. ``planner`` replaces the walk over the
    tree (``rename --repair`` plans one folder: ``plan_actions``).
    """
    root = _check_root(root)
    journal = Journal(root)
    pending = journal.pending
    if pending is not None:
        return Plan(root, steps=pending.steps, resuming=True, derived=dict(pending.derived))
    return planner(root) if planner is not None else _fresh_plan(root, jobs, options or MigrateOptions())


def plan_actions(root: Path, run_dir: Path, actions: list[Action]) -> Plan:
    """The checked plan for actions a caller already has (paths inside ``root``; ``run_dir`` names them).

    The same checks as a tree's plan: typed steps, every path reached without a
    symlink, no existing destination, no rename across filesystems.
    """
    result = Plan(root)
    _build_steps(root, [(run_dir, a) for a in actions], result)
    return result


def _fresh_plan(root: Path, jobs: int, options: MigrateOptions) -> Plan:
    dirs = walk_dirs(root)
    answers = collect(root, dirs, jobs, options)
    result = Plan(root)
    actions: list[tuple[Path, Action]] = []
    for d, acts, error in answers:
        run = _rel(d, root) or "."
        if error:
            result.left.append({"run": run, "path": run, "reason": f"not planned: {error}"})
            continue
        if acts is None:
            files = _plain_files(d, root)
            if files:
                result.left.append(
                    {
                        "run": run,
                        "path": run + "/",
                        "reason": f"no plugin recognises the {len(files)} file(s) here; left as is",
                    }
                )
            continue
        for a in acts:
            actions.append((d, a))
    _build_steps(root, actions, result)
    return result


def _plain_files(d: Path, root: Path) -> list[str]:
    try:
        return [
            e.name
            for e in os.scandir(d)
            if not e.is_dir(follow_symlinks=False) and not (d == root and e.name in _OWN_FILES)
        ]
    except OSError:
        return []


class _Look:
    """Plan-time view of the tree through ``RootFS``: ``lstat`` of each path once."""

    def __init__(self, fs: RootFS) -> None:
        self.fs = fs
        self._kind: dict[str, tuple[str, os.stat_result | None]] = {"": ("dir", os.fstat(fs.fd))}

    def kind(self, rel: str) -> tuple[str, os.stat_result | None]:
        """``("dir" | "file" | "link" | "other" | "absent" | "blocked", lstat)``; "blocked": a parent is not a dir."""
        got = self._kind.get(rel)
        if got is None:
            parent = rel.rpartition("/")[0]
            if self.kind(parent)[0] != "dir":
                got = ("blocked" if self.kind(parent)[0] != "absent" else "absent", None)
            else:
                try:
                    st = self.fs.lstat(rel)
                except UnsafePath:
                    st, got = None, ("blocked", None)
                except OSError:
                    st, got = None, ("other", None)
                if got is None:
                    if st is None:
                        got = ("absent", None)
                    elif stat.S_ISDIR(st.st_mode):
                        got = ("dir", st)
                    elif stat.S_ISLNK(st.st_mode):
                        got = ("link", st)
                    elif stat.S_ISREG(st.st_mode):
                        got = ("file", st)
                    else:
                        got = ("other", st)
            self._kind[rel] = got
        return got

    def through(self, rel: str, created: set[str]) -> str | None:
        """Why ``rel`` cannot be reached with real directories only (or None): a symlink or file on the way."""
        parts = rel.split("/")
        for n in range(1, len(parts)):
            prefix = "/".join(parts[:n])
            kind = self.kind(prefix)[0]
            if kind == "dir" or (kind == "absent" and prefix in created):
                continue
            if kind == "link":
                target = ""
                try:
                    with self.fs.parent(prefix) as (fd, name):
                        target = f" (to {os.readlink(name, dir_fd=fd)})"
                except OSError:
                    pass
                return f"{prefix} is a symlink{target}; migrate never moves or writes through a symlink"
            if kind == "absent":
                return f"{prefix}/ does not exist"
            return f"{prefix} is not a directory"
        return None

    def dev(self, rel_dir: str) -> int | None:
        """The device of ``rel_dir`` or of its nearest existing parent."""
        while True:
            kind, st = self.kind(rel_dir)
            if st is not None and kind == "dir":
                return st.st_dev
            if not rel_dir:
                return None
            rel_dir = rel_dir.rpartition("/")[0]

    def listing(self, rel_dir: str) -> dict[str, str]:
        key = "\0list:" + rel_dir
        got = self._kind.get(key)
        if got is None:
            try:
                names = {n.casefold(): n for n in self.fs.listdir(rel_dir)} if self.kind(rel_dir)[0] == "dir" else {}
            except OSError:
                names = {}
            got = ("list", names)  # type: ignore[assignment]
            self._kind[key] = got
        return got[1]  # type: ignore[return-value]


def _identify(fs: RootFS, rel: str, want_sha: bool) -> tuple[FileId, str | None]:
    """A source's ``FileId`` (lstat + sampled sha256) and, for a copy, the sha256 of its whole content."""
    with fs.open_file(rel) as fd:
        st = os.fstat(fd)
        if want_sha and st.st_size > MAX_MIGRATE_COPY_BYTES:
            raise StepError(
                f"{st.st_size >> 20} MiB: migrate copies only small companion files "
                f"(at most {MAX_MIGRATE_COPY_BYTES >> 20} MiB)"
            )
        sample = sampled_sha256(fd, st.st_size)
        digest = None
        if want_sha:
            if st.st_size <= SAMPLE_FULL:
                digest = hashlib.sha256(os.pread(fd, st.st_size, 0) if st.st_size else b"").hexdigest()
            else:
                digest = full_sha256(fd)
        return FileId(st.st_size, st.st_mtime_ns, st.st_ino, sample), digest


def _build_steps(root: Path, actions: list[tuple[Path, Action]], result: Plan) -> None:
    """Turn plugin actions into ordered, typed steps, adding mkdirs, and check the plan as a whole."""
    conflicts = result.conflicts
    groups: dict[str, int] = {}
    drafts: list[dict[str, Any]] = []
    created: set[str] = set()
    with RootFS(root) as fs:
        look = _Look(fs)
        for run_dir, a in actions:
            run = _rel(run_dir, root) or "."
            if a.op == REPORT:
                path = _rel(a.src, root) if a.src is not None else run
                result.left.append({"run": run, "path": path or run, "reason": a.reason})
                continue
            src = _rel(a.src, root) if a.src is not None else None
            dst = _rel(a.dst, root) if a.dst is not None else None
            if a.op not in (MOVE, COPY, WRITE, RMDIR, DERIVE):
                conflicts.append(f"{run}: unknown action {a.op!r} from a plugin")
                continue
            if (a.op in (MOVE, COPY, RMDIR, DERIVE) and src is None) or (
                a.op in (MOVE, COPY, WRITE, DERIVE) and dst is None
            ):
                conflicts.append(f"{run}: {a.op} {a.src} -> {a.dst}: path outside ROOT")
                continue
            try:
                for p, what in ((src, "source"), (dst, "destination")):
                    if p is not None:
                        check_rel(p, what)
                if a.op == DERIVE:
                    check_converter(a.converter)
                if a.op == WRITE and len((a.data or "").encode("utf-8", "surrogateescape")) > MAX_MIGRATE_WRITE_BYTES:
                    raise StepError(f"the file to write is larger than {MAX_MIGRATE_WRITE_BYTES >> 20} MiB")
            except StepError as exc:
                conflicts.append(f"{run}: {a.op} {src or ''} -> {dst or ''}: {exc}")
                continue
            gkey = _rel(a.group, root) if a.group is not None else (os.path.dirname(dst) if dst else src) or run
            gid = groups.setdefault(gkey or run, len(groups))
            if dst is not None:
                parents = []  # to create, outermost first
                parent = os.path.dirname(dst)
                while parent and parent not in created and look.kind(parent)[0] == "absent":
                    parents.append(parent)
                    parent = os.path.dirname(parent)
                for p in reversed(parents):
                    created.add(p)
                    drafts.append({"op": MKDIR, "dst": p, "group": gid, "run": run, "reason": "new checkpoint folder"})
            draft: dict[str, Any] = {"op": a.op, "src": src, "dst": dst, "group": gid, "run": run, "reason": a.reason}
            if a.op == WRITE:
                draft["data"] = a.data or ""
                draft["sha256"] = sha256_text(a.data or "")
            if a.op == DERIVE:
                draft["converter"] = a.converter
                draft["params"] = dict(a.params or {})
            drafts.append(draft)
        _validate(fs, look, drafts, created, conflicts)
    steps: list[Step] = []
    for i, d in enumerate(drafts):
        d.pop("nlink", None)
        try:
            step = Step(i=i, **{k: v for k, v in d.items() if v is not None})
        except (StepError, TypeError) as exc:
            if d.get("op") in (MOVE, COPY, DERIVE) and "fp" not in d:
                continue  # its source was already reported
            conflicts.append(f"{d.get('dst') or d.get('src')}: cannot be planned ({exc})")
            continue
        steps.append(step)
    # de-duplicate while keeping order
    seen: set[str] = set()
    conflicts[:] = [c for c in conflicts if not (c in seen or seen.add(c))]
    result.steps = steps


def _validate(fs: RootFS, look: _Look, drafts: list[dict[str, Any]], created: set[str], conflicts: list[str]) -> None:
    """Check the plan as a whole against the tree; fill in fingerprints. Appends to ``conflicts``."""
    dst_of: dict[str, list[str]] = {}
    folded: dict[str, str] = {}
    moved_src: set[str] = set()
    inodes: dict[tuple[int, int], list[str]] = {}
    for d in drafts:
        op, src, dst = d["op"], d.get("src"), d.get("dst")
        for p in (src, dst):
            why = look.through(p, created) if p is not None else None
            if why is not None:
                conflicts.append(f"{p}: {why}")
                break
        else:
            why = None
        if why is not None:
            continue
        if src is not None and op in (MOVE, COPY, DERIVE):
            kind, st = look.kind(src)
            if kind == "absent":
                conflicts.append(f"{src}: source does not exist")
                continue
            if kind != "file" or st is None:
                conflicts.append(f"{src}: source is not a regular file (symlinks are never moved)")
                continue
            try:
                d["fp"], digest = _identify(fs, src, want_sha=op == COPY)
            except StepError as exc:
                conflicts.append(f"{src}: {exc}")
                continue
            except OSError as exc:
                conflicts.append(f"{src}: cannot be read ({exc.strerror or exc})")
                continue
            if digest is not None:
                d["sha256"] = digest
            if op == MOVE:
                if src in moved_src:
                    conflicts.append(f"{src}: moved twice by the plan")
                moved_src.add(src)
                d["nlink"] = st.st_nlink
                if st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), []).append(src)
                parent_dev = look.dev(os.path.dirname(dst))
                if parent_dev is not None and parent_dev != st.st_dev:
                    conflicts.append(
                        f"{src} -> {dst}: crosses filesystems (a rename is impossible; migrate never copies weights)"
                    )
        if op == RMDIR and src is not None and look.kind(src)[0] != "dir":
            conflicts.append(f"{src}: directory to remove does not exist (or is not a real directory)")
        if dst is None:
            continue
        dst_of.setdefault(dst, []).append(src or f"({op})")
        if look.kind(dst)[0] != "absent":
            conflicts.append(f"{dst}: destination already exists" + (f" (would receive {src})" if src else ""))
        key = dst.casefold()
        if key in folded and folded[key] != dst:
            conflicts.append(f"{dst}: differs only in case from {folded[key]}, also planned")
        folded.setdefault(key, dst)
        parent, name = os.path.split(dst)
        existing = look.listing(parent).get(name.casefold())
        if existing is not None and existing != name:
            conflicts.append(f"{dst}: differs only in case from the existing {os.path.join(parent, existing)}")
    for dst, srcs in dst_of.items():
        if len(srcs) > 1:
            conflicts.append(f"{dst}: {len(srcs)} sources for one destination ({', '.join(srcs)})")
    linked = {src: names for names in inodes.values() for src in names}
    for d in drafts:
        if d["op"] == MOVE and d.get("nlink", 1) > 1:
            others = [n for n in linked.get(d["src"], []) if n != d["src"]]
            extra = f"; also planned: {', '.join(others)}" if others else ""
            d["reason"] += f" [hard link: {d['nlink']} names share this data; renamed, other names untouched{extra}]"


# --------------------------------------------------------------------------- the state of a step


def _same_content(fs: RootFS, rel: str, st: os.stat_result, fp: FileId) -> bool:
    """``rel`` holds the file the plan fingerprinted: same inode and mtime, or (a copied tree) same sample."""
    if not stat.S_ISREG(st.st_mode) or st.st_size != fp.size:
        return False
    if st.st_ino == fp.ino and st.st_mtime_ns == fp.mtime_ns:
        return True
    with fs.open_file(rel) as fd:
        return sampled_sha256(fd, fp.size) == fp.sample


def _digest_is(fs: RootFS, rel: str, st: os.stat_result, digest: str | None, size: int | None) -> bool:
    """``rel`` is a regular file whose whole content has the sha256 ``digest``."""
    if digest is None or not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
        return False
    with fs.open_file(rel) as fd:
        return full_sha256(fd) == digest


def _expected_size(s: Step) -> int | None:
    if s.op == WRITE and s.data is not None:
        return len(s.data.encode("utf-8", "surrogateescape"))
    if s.op == COPY and s.fp is not None:
        return s.fp.size
    return None


def _state(fs: RootFS, s: Step, derived: dict[int, str]) -> tuple[str, str]:
    """``(done | pending | changed | blocked, why)`` of one step against the tree, looked at right now.

    ``changed``: a source is not the file the plan saw (the folder is skipped);
    ``blocked``: the tree changed otherwise (a destination appeared, a
    directory on the way is a symlink). Environment errors propagate.
    """
    try:
        return _state_of(fs, s, derived)
    except UnsafePath as exc:
        return BLOCKED, exc.strerror or str(exc)
    except OSError as exc:
        if _is_environment(exc):
            raise
        return BLOCKED, _describe(exc)


def _state_of(fs: RootFS, s: Step, derived: dict[int, str]) -> tuple[str, str]:
    op = s.op
    if op == MKDIR:
        st = fs.lstat(s.dst)  # type: ignore[arg-type]
        if st is None:
            return PENDING, ""
        if stat.S_ISDIR(st.st_mode):
            return DONE, ""
        return BLOCKED, f"{s.dst} exists and is not a directory"
    if op == RMDIR:
        st = fs.lstat(s.src)  # type: ignore[arg-type]
        if st is None:
            return DONE, ""
        # still holding files is normal until the group's moves ran; rmdir itself refuses a non-empty dir
        return (PENDING, "") if stat.S_ISDIR(st.st_mode) else (BLOCKED, f"{s.src} is no longer a directory")
    assert s.dst is not None
    dst_st = fs.lstat(s.dst)
    if op == MOVE:
        assert s.src is not None and s.fp is not None
        src_st = fs.lstat(s.src)
        if src_st is None and dst_st is not None and _same_content(fs, s.dst, dst_st, s.fp):
            return DONE, ""
        if dst_st is None:
            if src_st is not None and stat.S_ISREG(src_st.st_mode) and s.fp.same_stat(src_st):
                return PENDING, ""
            if src_st is None:
                return CHANGED, f"{s.src} is gone since the plan"
            return CHANGED, f"{s.src} changed since the plan (size/mtime/inode differ)"
        return BLOCKED, f"{s.dst} appeared since the plan" + ("" if src_st is not None else f" and {s.src} is gone")
    if op in (COPY, WRITE, DERIVE):
        if dst_st is not None:
            expected = derived.get(s.i) if op == DERIVE else s.sha256
            if _digest_is(fs, s.dst, dst_st, expected, _expected_size(s)):
                return DONE, ""
            return BLOCKED, f"{s.dst} appeared since the plan (not the file migrate writes)"
        if op == WRITE:
            return PENDING, ""
        assert s.src is not None and s.fp is not None
        src_st = fs.lstat(s.src)
        if src_st is not None and stat.S_ISREG(src_st.st_mode) and s.fp.same_stat(src_st):
            return PENDING, ""
        return CHANGED, f"{s.src} changed since the plan" if src_st is not None else f"{s.src} is gone since the plan"
    return BLOCKED, f"unknown operation {op!r}"  # pragma: no cover - Step.validate refuses it


def step_states(p: Plan) -> dict[int, str]:
    """The state of every step of a (resuming) plan, for display."""
    with RootFS(p.root) as fs:
        return {s.i: _state(fs, s, p.derived)[0] for s in p.steps}


def _is_environment(exc: OSError) -> bool:
    """The machine refused (full disk, read-only, permissions, I/O error), as opposed to a changed tree."""
    return not isinstance(exc, UnsafePath) and exc.errno not in _TREE_ERRNOS


def _describe(exc: OSError) -> str:
    where = f"{os.fsdecode(exc.filename)}: " if exc.filename else ""
    if exc.errno == errno.EEXIST:
        return f"{where}appeared since the plan; never overwritten"
    if exc.errno == errno.ENOTEMPTY:
        return f"{where}not empty (files appeared since the plan)"
    if exc.errno == errno.EXDEV:
        return f"{where}crosses filesystems; not moved (migrate never copies weights)"
    return f"{where}{exc.strerror or exc}"


# --------------------------------------------------------------------------- applying


class _SourceChanged(Exception):
    """A source read during a step is not the file the plan fingerprinted."""


def _derive(fs: RootFS, s: Step, journal: Journal, session: Session) -> None:
    """Run the plugin's converter into a temp file, journal its sha256, then publish it with ``link()``.

    The converter gets paths, but they name descriptors opened here without
    following any symlink (``/proc/self/fd/N``): it reads the very source the
    plan saw and writes only our temp file.
    """
    assert s.src is not None and s.dst is not None and s.fp is not None and s.converter is not None
    convert = load_converter(s.converter)
    use_fd_paths = os.path.isdir("/proc/self/fd")
    with fs.open_file(s.src) as sfd:
        if not s.fp.same_stat(os.fstat(sfd)):
            raise _SourceChanged(f"{s.src} changed since the plan")
        tfd, tmp = fs.create_temp(s.dst.rpartition("/")[0])
        try:
            src_path = fd_path(sfd) if use_fd_paths else fs.root / s.src
            out_path = fd_path(tfd) if use_fd_paths else fs.root / tmp
            try:
                convert(src_path, out_path, dict(s.params or {}))
            except CkptError as exc:  # its messages name the descriptor links: say which file was meant
                exc.message = exc.message.replace(str(src_path), s.src).replace(str(out_path), s.dst)
                exc.args = (exc.message,)
                raise
            except OSError:
                raise
            except MemoryError:
                raise OSError(errno.ENOMEM, "out of memory while converting", s.src) from None
            except Exception as exc:  # noqa: BLE001  (a converter's own failure, e.g. torch's writer)
                vfs = os.fstatvfs(tfd)
                if vfs.f_bavail * vfs.f_frsize < (1 << 20):  # torch reports a full disk as RuntimeError
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), s.dst) from None
                raise Refused(f"{s.src}: the converter failed ({type(exc).__name__}: {exc})") from None
            if not s.fp.same_stat(os.fstat(sfd)):
                raise _SourceChanged(f"{s.src} changed while converting")
            digest = full_sha256(tfd)
            os.fsync(tfd)
            fs.finish_temp(tfd)
            os.close(tfd)
            tfd = -1
            journal.append({"type": "derived", "session": session.number, "step": s.i, "sha256": digest})
            fs.link_noreplace(tmp, s.dst)
        finally:
            if tfd >= 0:
                os.close(tfd)
            try:
                fs.unlink(tmp)
            except FileNotFoundError:
                pass


def _do(fs: RootFS, s: Step, journal: Journal, session: Session) -> None:
    """Perform one pending step (raises ``OSError``, ``_SourceChanged`` or the converter's ``CkptError``)."""
    op = s.op
    if op == DERIVE:
        _derive(fs, s, journal, session)
    elif op == MKDIR:
        fs.mkdir(s.dst)  # type: ignore[arg-type]
    elif op == MOVE:
        fs.rename_noreplace(s.src, s.dst)  # type: ignore[arg-type]
    elif op == COPY:
        data = fs.read_bytes(s.src, MAX_MIGRATE_COPY_BYTES)  # type: ignore[arg-type]
        if hashlib.sha256(data).hexdigest() != s.sha256:
            raise _SourceChanged(f"{s.src} changed since the plan")
        fs.publish(s.dst, data, crash_point=mutated)  # type: ignore[arg-type]
    elif op == WRITE:
        fs.publish(s.dst, (s.data or "").encode("utf-8", "surrogateescape"), crash_point=mutated)  # type: ignore[arg-type]
    elif op == RMDIR:
        fs.rmdir(s.src)  # type: ignore[arg-type]
    mutated()


def _cleanup_temps(fs: RootFS, steps: list[Step]) -> None:
    """Remove temp files a crash may have left beside files being published.

    Only in the directories the plan publishes into, reached without following
    a symlink; only regular files with our prefix (a symlink or a directory of
    that name is left alone, and ``unlink`` never follows a link).
    """
    parents = sorted({s.dst.rpartition("/")[0] for s in steps if s.op in (COPY, WRITE, DERIVE) and s.dst})
    for parent in parents:
        try:
            entries = list(fs.scan(parent))
        except OSError:
            continue  # absent, not a real directory, unreadable: nothing of ours can be in it
        for name, st in entries:
            if name.startswith(TEMP_PREFIX) and stat.S_ISREG(st.st_mode):
                try:
                    fs.unlink(f"{parent}/{name}" if parent else name)
                except OSError:
                    pass


def _missing(s: Step, why: str, kind: str = "conflict") -> dict[str, Any]:
    return {**_public(s), "why": why, "kind": kind}


def _public(s: Step) -> dict[str, Any]:
    return s.public()


class _Stop(Exception):
    """The machine refused: stop the session here (carries the OSError and the step)."""

    def __init__(self, exc: OSError, step: Step | None) -> None:
        super().__init__(str(exc))
        self.exc = exc
        self.step = step


def _run_session(fs: RootFS, journal: Journal, session: Session, outcome: Outcome) -> None:
    """Apply a journaled plan, checkpoint folder by folder; mark it complete only when nothing is missing."""
    steps = session.steps
    _cleanup_temps(fs, steps)
    by_group: dict[int, list[Step]] = {}
    for s in steps:
        by_group.setdefault(s.group, []).append(s)
    finished: list[int] = []

    def flush_done() -> None:
        # "done" markers only speed up a resume (the tree is the authority), so they are batched
        if finished:
            journal.append({"type": "done", "session": session.number, "groups": list(finished)})
            finished.clear()

    try:
        for gid, group in by_group.items():
            if len(finished) >= DONE_BATCH:
                flush_done()
            if gid in session.done_groups:
                outcome.done.extend(s.i for s in group if s.i not in session.skipped)
                continue
            if any(s.i in session.skipped for s in group):
                # skipped as a whole by an earlier run (a source had changed): stays skipped
                for s in group:
                    outcome.skipped.append(
                        {**_public(s), "why": session.skipped.get(s.i, "part of a skipped folder")}
                    )
                finished.append(gid)
                continue
            if _run_group(fs, journal, session, group, outcome):
                finished.append(gid)
    except _Stop:
        try:
            flush_done()
        except OSError:
            pass
        raise
    flush_done()
    fs.syncfs()  # every rename and new file is on disk before the session is called complete
    if not outcome.missing:
        journal.append({"type": "complete", "session": session.number})


def _run_group(fs: RootFS, journal: Journal, session: Session, group: list[Step], outcome: Outcome) -> bool:
    """Apply one checkpoint folder; True when all of it is done (or skipped as a whole)."""
    try:
        with fs.pinned():
            states = {s.i: _state(fs, s, session.derived) for s in group}
    except OSError as exc:
        raise _Stop(exc, group[0]) from None
    started = any(states[s.i][0] == DONE for s in group if s.op != MKDIR)
    changed = [s for s in group if states[s.i][0] == CHANGED]
    if changed and not started:
        # a source changed between plan and apply: leave the whole folder alone
        for s in group:
            why = states[s.i][1] + "; the folder was not touched" if s in changed else "part of a skipped folder"
            if s in changed:
                journal.append({"type": "skip", "session": session.number, "step": s.i, "reason": why})
            outcome.skipped.append({**_public(s), "why": why})
        return True
    blocked = [s for s in group if states[s.i][0] in (BLOCKED, CHANGED)]
    if blocked:
        # decided before the folder's first step: nothing of it is done now; it stays pending
        first = blocked[0]
        for s in group:
            if states[s.i][0] == DONE:
                outcome.done.append(s.i)
            elif s in blocked:
                outcome.missing.append(_missing(s, states[s.i][1]))
            else:
                outcome.missing.append(_missing(s, f"waits for step {first.i} ({first.dst or first.src})"))
        return False
    for n, s in enumerate(group):
        try:
            # look again right before acting (one walk for the check and the operation): earlier steps of
            # the group change the picture, and the tree may have changed since the folder was decided
            with fs.pinned():
                state, why = _state(fs, s, session.derived)
                if state == PENDING:
                    _do(fs, s, journal, session)
            if state == DONE:
                outcome.done.append(s.i)
                outcome.resumed_steps += 1
                continue
            if state == PENDING:
                outcome.done.append(s.i)
                continue
        except _SourceChanged as exc:
            state, why = BLOCKED, f"{exc}; the rest of its folder is pending"
        except CkptError as exc:
            outcome.missing.append(_missing(s, f"refused by its converter: {exc.message}", kind="refused"))
            _rest_missing(group[n + 1 :], s, outcome)
            return False
        except UnsafePath as exc:
            state, why = BLOCKED, exc.strerror or str(exc)
        except OSError as exc:
            if _is_environment(exc):
                raise _Stop(exc, s) from None
            state, why = BLOCKED, _describe(exc)
        outcome.missing.append(_missing(s, why))
        _rest_missing(group[n + 1 :], s, outcome)
        return False
    return True


def _rest_missing(rest: list[Step], first: Step, outcome: Outcome) -> None:
    for s in rest:
        outcome.missing.append(_missing(s, f"waits for step {first.i} ({first.dst or first.src})"))


def _merged(resumed: Outcome | None, fresh: Outcome | None, root: Path, words: Wording = MIGRATE) -> Outcome:
    """One report for a resumed session and the fresh plan run after it."""
    if resumed is None:
        assert fresh is not None
        return fresh
    if fresh is None:
        return resumed
    offset = len(resumed.plan.steps)

    def shift(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**x, "i": x["i"] + offset} for x in items]

    merged = Plan(
        root,
        steps=resumed.plan.steps + [dataclasses.replace(s, i=s.i + offset) for s in fresh.plan.steps],
        left=fresh.plan.left,
        resuming=True,
    )
    return Outcome(
        merged,
        done=resumed.done + [i + offset for i in fresh.done],
        skipped=resumed.skipped + shift(fresh.skipped),
        missing=resumed.missing + shift(fresh.missing),
        resumed_steps=resumed.resumed_steps,
        message=f"resumed an interrupted {words.noun} ({resumed.resumed_steps} of {offset} steps were already done)",
    )


_WHAT_TO_DO = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space (the disk quota is exhausted)",
    errno.EROFS: "make the filesystem writable",
    errno.EACCES: "fix the permissions",
    errno.EPERM: "fix the permissions",
    errno.EIO: "check the disk (it reported an I/O error)",
}


def _stopped(stop: _Stop, outcome: Outcome, root: Path, mode: str, words: Wording = MIGRATE) -> MigrateIncomplete:
    """The error for a session the machine stopped: what was done, and that a rerun resumes."""
    s = stop.step
    doing = f"{words.command} --{mode}"
    if s is not None:
        doing += f", step {s.i} ({s.op} {s.dst or s.src})"
    err = from_os_error(stop.exc, doing)
    total = len(outcome.plan.steps)
    done = len(set(outcome.done))
    what = _WHAT_TO_DO.get(stop.exc.errno or 0, "fix the cause")
    if mode == "apply":
        message = f"{err.message}; stopped after {done} of {total} steps, the rest is pending in the journal"
        hint = (
            f"{what}, then rerun '{words.apply.format(root=root)}' to resume the plan (nothing partial was "
            "published; '--undo' restores the tree instead)"
        )
    else:
        message = f"{err.message}; the undo stopped after restoring {done} step(s)"
        hint = f"{what}, then rerun '{words.undo.format(root=root)}' to finish it"
    outcome.message = message
    return MigrateIncomplete(message, hint, outcome, EnvironmentFailure.exit_code)


def _left_pending(outcome: Outcome, root: Path, words: Wording = MIGRATE) -> MigrateIncomplete:
    missing = outcome.missing
    refused = any(m.get("kind") == "refused" for m in missing)
    causes = [m for m in missing if not str(m["why"]).startswith("waits for step")]
    lines = [f"  - {m['dst'] or m['src']}: {m['why']}" for m in causes[:MAX_LISTED]]
    if len(causes) > MAX_LISTED:
        lines.append(f"  - ... and {len(causes) - MAX_LISTED} more (--json lists them all)")
    message = (
        f"{len(missing)} step(s) of the plan could not run and are pending in the journal; "
        f"{len(set(outcome.done))} of {len(outcome.plan.steps)} steps are done:\n" + "\n".join(lines)
    )
    if refused:
        hint = "'ckpt-tool migrate ROOT --undo' restores the tree; then migrate it without --upgrade-attn"
    else:
        hint = f"fix what is listed, then rerun '{words.apply.format(root=root)}' to finish ('--undo' restores the tree)"
    outcome.message = message.split("\n", 1)[0]
    only_refused = causes and all(m.get("kind") == "refused" for m in causes)
    return MigrateIncomplete(message, hint, outcome, Refused.exit_code if only_refused else Conflict.exit_code)


def apply(
    root: Path,
    jobs: int = 1,
    options: MigrateOptions | None = None,
    planner: Planner | None = None,
    words: Wording = MIGRATE,
) -> Outcome:
    """Apply the plan for ``root`` (resuming an interrupted one first).

    ``planner`` (see ``plan``) is called with the lock held, after the resume:
    it sees the tree the interrupted session left. Raises ``MigrateConflict``
    (the plan is refused, nothing changed) or ``MigrateIncomplete`` (steps are
    left pending: the machine refused, exit 9, or the tree changed, exit 7).
    """
    root = _check_root(root)
    with migrate_lock(root), RootFS(root) as fs:
        journal = Journal(root)
        if journal.undoing:
            raise Conflict(
                f"an undo of {root} was interrupted", f"run '{words.undo.format(root=root)}' again to finish it"
            )
        resumed: Outcome | None = None
        pending = journal.pending
        if pending is not None:
            resumed = Outcome(Plan(root, steps=pending.steps, resuming=True))
            try:
                _run_session(fs, journal, pending, resumed)
            except _Stop as stop:
                raise _stopped(stop, resumed, root, "apply", words) from None
            if resumed.missing:
                resumed.message = ""
                raise _left_pending(resumed, root, words)
        fresh = planner(root) if planner is not None else _fresh_plan(root, jobs, options or MigrateOptions())
        if fresh.conflicts:
            raise MigrateConflict(fresh.conflicts, fresh)
        outcome = Outcome(fresh)
        if fresh.steps:
            session = journal.start(fresh.steps)
            try:
                _run_session(fs, journal, session, outcome)
            except _Stop as stop:
                merged = _merged(resumed, outcome, root, words)
                raise _stopped(stop, merged, root, "apply", words) from None
        result = _merged(resumed, outcome, root, words)
        if result.missing:
            raise _left_pending(result, root, words)
        if resumed is None and not fresh.steps:
            result.message = "nothing to do: the tree is already in today's layout"
        return result


# --------------------------------------------------------------------------- undo

REVERSE, NOTHING = "reverse", "nothing"


def _undo_state(fs: RootFS, s: Step, derived: dict[int, str]) -> tuple[str, str]:
    """``(reverse | nothing | blocked, why)``: whether step ``s`` is in effect and can be reversed, by content."""
    try:
        return _undo_state_of(fs, s, derived)
    except UnsafePath as exc:
        return BLOCKED, exc.strerror or str(exc)
    except OSError as exc:
        if _is_environment(exc):
            raise
        return BLOCKED, _describe(exc)


def _undo_state_of(fs: RootFS, s: Step, derived: dict[int, str]) -> tuple[str, str]:
    op = s.op
    if op == MKDIR:
        st = fs.lstat(s.dst)  # type: ignore[arg-type]
        if st is None:
            return NOTHING, ""
        return (REVERSE, "") if stat.S_ISDIR(st.st_mode) else (BLOCKED, f"{s.dst} is no longer a directory")
    if op == RMDIR:
        st = fs.lstat(s.src)  # type: ignore[arg-type]
        if st is None:
            return REVERSE, ""
        return (NOTHING, "") if stat.S_ISDIR(st.st_mode) else (BLOCKED, f"{s.src} exists and is not a directory")
    assert s.dst is not None
    dst_st = fs.lstat(s.dst)
    if op == MOVE:
        assert s.src is not None and s.fp is not None
        src_st = fs.lstat(s.src)
        if dst_st is None:
            if src_st is not None:
                return NOTHING, ""  # never moved, or already restored
            return BLOCKED, f"neither {s.dst} nor {s.src} exists: the weights were removed after the migration"
        if not _same_content(fs, s.dst, dst_st, s.fp):
            return BLOCKED, f"{s.dst} changed since the migration (size or sampled content differ)"
        if src_st is not None:
            return BLOCKED, f"{s.src} exists again; {s.dst} cannot be renamed back"
        return REVERSE, ""
    if dst_st is None:
        return NOTHING, ""
    if not stat.S_ISREG(dst_st.st_mode):
        return BLOCKED, f"{s.dst} is no longer a regular file"
    expected = derived.get(s.i) if op == DERIVE else s.sha256
    if expected is None:
        return BLOCKED, f"{s.dst} cannot be verified (its digest was never journaled)"
    if not _digest_is(fs, s.dst, dst_st, expected, _expected_size(s)):
        return BLOCKED, f"{s.dst} was edited since the migration"
    return REVERSE, ""


def _undo_group(fs: RootFS, group: list[Step], derived: dict[int, str]) -> tuple[dict[int, str], list[str]]:
    """Decide a whole checkpoint folder: ``({step: reverse|nothing}, [])`` or ``({}, reasons it is kept)``."""
    verdicts: dict[int, str] = {}
    reasons: list[str] = []
    for s in group:
        state, why = _undo_state(fs, s, derived)
        if state == BLOCKED:
            reasons.append(why)
        verdicts[s.i] = state
    if reasons:
        return {}, reasons
    # a folder the migration created must hold only what this group's reversal takes out of it
    for s in group:
        if s.op != MKDIR or verdicts[s.i] != REVERSE:
            continue
        ours = {
            x.dst.rpartition("/")[2]
            for x in group
            if x.dst and x.dst.rpartition("/")[0] == s.dst and verdicts[x.i] == REVERSE and x is not s
        }
        try:
            extra = sorted(set(fs.listdir(s.dst)) - ours)  # type: ignore[arg-type]
        except UnsafePath as exc:
            return {}, [exc.strerror or str(exc)]
        except OSError as exc:
            if _is_environment(exc):
                raise
            return {}, [_describe(exc)]
        if extra:
            shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
            reasons.append(f"{s.dst}/ holds {shown}, which the migration did not put there")
    # where a file goes back, its directory must be there (or be recreated by this group)
    recreated = {s.src for s in group if s.op == RMDIR and verdicts[s.i] == REVERSE}
    for s in group:
        if s.op == MOVE and verdicts[s.i] == REVERSE:
            parent = s.src.rpartition("/")[0]  # type: ignore[union-attr]
            if parent and parent not in recreated and not fs.is_dir(parent):
                reasons.append(f"{parent}/ no longer exists; {s.dst} has nowhere to go back to")
    return ({}, reasons) if reasons else (verdicts, [])


def _reverse(fs: RootFS, s: Step) -> None:
    if s.op == MOVE:
        fs.rename_noreplace(s.dst, s.src)  # type: ignore[arg-type]
    elif s.op in (COPY, WRITE, DERIVE):
        fs.unlink(s.dst)  # type: ignore[arg-type]
    elif s.op == MKDIR:
        fs.rmdir(s.dst)  # type: ignore[arg-type]
    elif s.op == RMDIR:
        fs.mkdir(s.src)  # type: ignore[arg-type]
    mutated()


def undo(root: Path, words: Wording = MIGRATE) -> Outcome:
    """Restore the pre-migration tree from the journal, newest session first, then drop the journal.

    Checkpoint folder by folder, all or nothing (see the module docstring).
    Raises ``MigrateIncomplete`` (exit 7) when folders were left migrated —
    the journal is kept so ``--undo`` can be rerun, and ``--apply`` works
    again — or (exit 9) when the machine refused.
    """
    root = _check_root(root)
    with migrate_lock(root), RootFS(root) as fs:
        journal = Journal(root)
        if not journal.sessions:
            raise NotFound(f"{root}: no {words.noun} journal ({JOURNAL_NAME})", "there is nothing to undo here")
        if not journal.undoing:
            journal.append({"type": "undo"})
        outcome = Outcome(Plan(root, steps=[s for sess in journal.sessions for s in sess.steps]))
        _cleanup_temps(fs, outcome.plan.steps)
        try:
            for sess in reversed(journal.sessions):
                by_group: dict[int, list[Step]] = {}
                for s in sess.steps:
                    by_group.setdefault(s.group, []).append(s)
                for group in reversed(list(by_group.values())):
                    _undo_one(fs, group, sess.derived, outcome)
        except _Stop as stop:
            raise _stopped(stop, outcome, root, "undo", words) from None
        fs.syncfs()
        if outcome.kept:
            journal.append({"type": "undo-end"})
            lines = [f"  - {k['folder']}/: {'; '.join(k['why'])}" for k in outcome.kept[:MAX_LISTED]]
            if len(outcome.kept) > MAX_LISTED:
                lines.append(f"  - ... and {len(outcome.kept) - MAX_LISTED} more (--json lists them all)")
            message = (
                f"undo kept {len(outcome.kept)} checkpoint folder(s) as they are (each is undone whole or not at "
                f"all); everything else was restored:\n" + "\n".join(lines)
            )
            outcome.message = message.split("\n", 1)[0]
            raise MigrateIncomplete(
                message,
                f"put back what is listed and rerun '{words.undo.format(root=root)}', or keep the folders as they "
                f"are ('{words.apply.format(root=root)}' works again); the journal is kept",
                outcome,
                Conflict.exit_code,
            )
        journal.remove()
        outcome.message = f"restored the tree as it was before the {words.noun}"
        return outcome


def _folder(group: list[Step]) -> str:
    """The checkpoint folder a group builds (for messages)."""
    for s in group:
        if s.op == MKDIR and s.dst:
            return s.dst
    for s in group:
        if s.dst:
            return s.dst.rpartition("/")[0] or "."
    return group[0].src or "."


def _keep(group: list[Step], reasons: list[str], outcome: Outcome) -> None:
    outcome.kept.append({"folder": _folder(group), "why": reasons})
    for s in group:
        why = "; ".join(r for r in reasons if (s.dst and s.dst in r) or (s.src and s.src in r))
        outcome.missing.append(_missing(s, why or "part of a folder that is kept"))


def _undo_one(fs: RootFS, group: list[Step], derived: dict[int, str], outcome: Outcome) -> bool:
    """Undo one checkpoint folder whole, or leave it; True when nothing of it is left in effect."""
    try:
        with fs.pinned():
            verdicts, reasons = _undo_group(fs, group, derived)
    except OSError as exc:
        raise _Stop(exc, group[0]) from None
    if reasons:
        _keep(group, reasons, outcome)
        return False
    for s in reversed(group):
        if verdicts[s.i] != REVERSE:
            continue
        try:
            with fs.pinned():
                state, why = _undo_state(fs, s, derived)  # look again right before acting
                if state == REVERSE:
                    _reverse(fs, s)
            if state == REVERSE:
                outcome.done.append(s.i)
                continue
            if state == NOTHING:
                continue
        except UnsafePath as exc:
            why = exc.strerror or str(exc)
        except OSError as exc:
            if _is_environment(exc):
                raise _Stop(exc, s) from None
            why = _describe(exc)
        _keep(group, [why + "; rerun --undo to finish this folder"], outcome)
        return False
    return True
