"""``migrate``: bring a tree of training runs into today's layout, safely enough for a user's only copy.

The core knows nothing about LitGPT: it walks ROOT (never following symlinks),
asks every plugin's ``ckpt_migrate_run`` hook what to do with each directory,
turns the answers into one plan, and refuses the whole plan if any two steps
collide (two sources for one destination, an existing destination, names that
differ only in case, a rename across filesystems). Only then does it change
anything, and each change is announced in the journal (``journal.py``) first.

The whole plan (every step, with each source's size/mtime_ns/inode) is
written to the journal and fsynced before the first change. Every step is
checkable against the tree, which is what makes ``kill -9`` at any moment
harmless: a rename keeps size, mtime and inode, so "was this file moved?" is
answered by looking; new files are published with ``link()`` from a complete
temp file, so they exist complete or not at all, and their content is checked
against the plan (sha256) when a run resumes. A rerun of ``--apply`` resumes
the journal's plan step by step, ``--undo`` walks it backwards. Weights are
only ever renamed (same bytes, same inode), never copied; only small companion
files (configs, tokenizers) are copied. A session ends with one ``syncfs``
before it is marked complete.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import stat
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_tool.errors import CkptError, Conflict, NotFound
from ckpt_tool.io.atomic import TEMP_PREFIX, set_publish_mode
from ckpt_tool.io.container import Probe
from ckpt_tool.ops.journal import JOURNAL_NAME, LOCK_NAME, Journal, Session, migrate_lock, mutated
from ckpt_tool.plugins import get_plugin_manager

MOVE, COPY, WRITE, MKDIR, RMDIR, REPORT = "move", "copy", "write", "mkdir", "rmdir", "report"
DERIVE = "derive"  # opt-in: a new file computed from a source that stays where it is
_OWN_FILES = (JOURNAL_NAME, LOCK_NAME)
PARALLEL_MIN_DIRS = 64  # below this, starting processes costs more than it saves
DONE_BATCH = 256  # checkpoint folders per "done" journal record


@dataclass
class Action:
    """One thing a plugin wants done to a run directory (paths are absolute, inside ROOT).

    ``op``: ``move`` (rename ``src`` → ``dst``), ``copy`` (a small companion file
    ``src`` → ``dst``), ``write`` (create ``dst`` holding ``data``), ``rmdir``
    (remove the emptied directory ``src``) or ``report`` (``src`` stays where it
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
    converter: str | None = None  # derive: "module:function" inside a registered plugin
    params: dict[str, Any] | None = None  # derive: JSON-able arguments for the converter


@dataclass(frozen=True)
class MigrateOptions:
    """Opt-in behaviour, handed to every plugin's ``ckpt_migrate_run`` hook."""

    upgrade_attn: bool = False  # rewrite legacy fused-attention keys into new files (originals kept)


@dataclass
class Plan:
    """The checked, ordered steps for a whole ROOT (JSON-able dicts with paths relative to ROOT)."""

    root: Path
    steps: list[dict[str, Any]] = field(default_factory=list)
    left: list[dict[str, str]] = field(default_factory=list)  # reported, not touched
    conflicts: list[str] = field(default_factory=list)
    resuming: bool = False  # steps come from an interrupted --apply


@dataclass
class Outcome:
    """What ``apply``/``undo`` did."""

    plan: Plan
    done: list[int] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
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


def fingerprint(path: str | os.PathLike[str]) -> list[int] | None:
    """``[size, mtime_ns, inode]`` of a regular file; ``None`` if absent; ``[-1, 0, 0]`` if not regular.

    A rename on one filesystem keeps all three, so the fingerprint recorded at
    plan time identifies the same file after it moved.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return [-1, 0, 0]
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def plan(root: Path, jobs: int = 1, options: MigrateOptions | None = None) -> Plan:
    """Build and check the plan for ``root``. Changes nothing.

    If an earlier ``--apply`` was interrupted, the plan is the rest of that
    one (``resuming``): a fresh look at a half-moved tree would not know what
    the interrupted run still owed it.
    """
    root = _check_root(root)
    journal = Journal(root)
    pending = journal.pending
    if pending is not None:
        return Plan(root, steps=pending.steps, resuming=True)
    return _fresh_plan(root, jobs, options or MigrateOptions())


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


def _build_steps(root: Path, actions: list[tuple[Path, Action]], result: Plan) -> None:
    """Turn plugin actions into ordered steps, adding mkdirs, and check the plan as a whole."""
    conflicts = result.conflicts
    groups: dict[str, int] = {}
    steps: list[dict[str, Any]] = []
    created_dirs: set[str] = set()
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
        gkey = _rel(a.group, root) if a.group is not None else (os.path.dirname(dst) if dst else src) or run
        gid = groups.setdefault(gkey, len(groups))
        if dst is not None:
            # parents to create, outermost first
            parents = []
            parent = os.path.dirname(dst)
            while parent and parent not in created_dirs and not os.path.isdir(root / parent):
                parents.append(parent)
                parent = os.path.dirname(parent)
            for p in reversed(parents):
                created_dirs.add(p)
                steps.append(
                    {
                        "op": MKDIR,
                        "src": None,
                        "dst": p,
                        "group": gid,
                        "run": run,
                        "reason": "new checkpoint folder",
                    }
                )
        step: dict[str, Any] = {
            "op": a.op,
            "src": src,
            "dst": dst,
            "group": gid,
            "run": run,
            "reason": a.reason,
        }
        if a.op == WRITE:
            data = (a.data or "").encode()
            step["data"] = a.data or ""
            step["sha256"] = _sha256(data)
        if a.op == DERIVE:
            if not _trusted_converter(a.converter):
                conflicts.append(f"{run}: converter {a.converter!r} is not a function of a loaded plugin")
                continue
            step["converter"] = a.converter
            step["params"] = dict(a.params or {})
        steps.append(step)
    for i, s in enumerate(steps):
        s["i"] = i
    _validate(root, steps, conflicts)
    result.steps = steps


def _validate(root: Path, steps: list[dict[str, Any]], conflicts: list[str]) -> None:
    """Check the plan as a whole; fill in fingerprints. Appends to ``conflicts``."""
    dst_of: dict[str, list[str]] = {}
    folded: dict[str, str] = {}
    moved_src: dict[str, int] = {}
    listing: dict[str, dict[str, str]] = {}
    inodes: dict[tuple[int, int], list[str]] = {}

    def siblings(parent: str) -> dict[str, str]:
        if parent not in listing:
            try:
                listing[parent] = {n.casefold(): n for n in os.listdir(root / parent if parent else root)}
            except OSError:
                listing[parent] = {}
        return listing[parent]

    for s in steps:
        op, src, dst = s["op"], s["src"], s["dst"]
        if src is not None and op in (MOVE, COPY, DERIVE):
            try:
                st = os.lstat(root / src)
            except FileNotFoundError:
                conflicts.append(f"{src}: source does not exist")
                continue
            if not stat.S_ISREG(st.st_mode):
                conflicts.append(f"{src}: source is not a regular file (symlinks are never moved)")
                continue
            s["fp"] = [st.st_size, st.st_mtime_ns, st.st_ino]
            if op == MOVE:
                if src in moved_src:
                    conflicts.append(f"{src}: moved twice by the plan")
                moved_src[src] = s["i"]
                s["nlink"] = st.st_nlink
                if st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), []).append(src)
                parent_dev = _dev_of(root / os.path.dirname(dst))
                if parent_dev is not None and parent_dev != st.st_dev:
                    conflicts.append(
                        f"{src} -> {dst}: crosses filesystems (a rename is impossible; migrate never copies weights)"
                    )
        if op == RMDIR and src is not None and not os.path.isdir(root / src):
            conflicts.append(f"{src}: directory to remove does not exist")
        if dst is None:
            continue
        dst_of.setdefault(dst, []).append(src or f"({op})")
        if os.path.lexists(root / dst):
            conflicts.append(
                f"{dst}: destination already exists" + (f" (would receive {src})" if src else "")
            )
        key = dst.casefold()
        if key in folded and folded[key] != dst:
            conflicts.append(f"{dst}: differs only in case from {folded[key]}, also planned")
        folded.setdefault(key, dst)
        parent, name = os.path.split(dst)
        existing = siblings(parent).get(name.casefold())
        if existing is not None and existing != name:
            conflicts.append(
                f"{dst}: differs only in case from the existing {os.path.join(parent, existing)}"
            )
    for dst, srcs in dst_of.items():
        if len(srcs) > 1:
            conflicts.append(f"{dst}: {len(srcs)} sources for one destination ({', '.join(srcs)})")
    for names in inodes.values():
        for s in steps:
            if s["op"] == MOVE and s["src"] in names:
                others = [n for n in names if n != s["src"]]
                extra = f"; also planned: {', '.join(others)}" if others else ""
                s["reason"] += (
                    f" [hard link: {s['nlink']} names share this data; renamed, other names untouched{extra}]"
                )
    for s in steps:
        if s["op"] == MOVE and s.get("nlink", 1) > 1 and "[hard link" not in s["reason"]:
            s["reason"] += f" [hard link: {s['nlink']} names share this data; renamed, other names untouched]"
    # de-duplicate while keeping order
    seen: set[str] = set()
    conflicts[:] = [c for c in conflicts if not (c in seen or seen.add(c))]


def _trusted_converter(name: str | None) -> bool:
    """Only functions of registered plugin modules may run (the journal is a file anyone could edit)."""
    if not name or ":" not in name:
        return False
    module = name.split(":", 1)[0]
    roots = {getattr(p, "__name__", "") for _, p in get_plugin_manager().list_name_plugin() if p is not None}
    return any(module == r or module.startswith(r + ".") for r in roots if r)


def _converter(name: str) -> Any:
    import importlib

    if not _trusted_converter(name):
        raise Conflict(
            f"journal names the converter {name!r}, which no loaded plugin provides",
            "check CKPT_TOOL_PLUGINS",
        )
    module, func = name.split(":", 1)
    return getattr(importlib.import_module(module), func)


def _dev_of(path: Path) -> int | None:
    p = path
    while True:
        try:
            return os.lstat(p).st_dev
        except FileNotFoundError:
            if p.parent == p:
                return None
            p = p.parent


# --------------------------------------------------------------------------- applying


_libc: Any = None


def _rename_noreplace_probe() -> None:
    global _libc
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.renameat2  # noqa: B018  (probe)
    except (OSError, AttributeError):
        _libc = False


def _rename_noreplace(src: str, dst: str) -> None:
    """rename(2) that fails with EEXIST instead of replacing ``dst`` (renameat2 RENAME_NOREPLACE)."""
    if _libc is None:
        _rename_noreplace_probe()
    if _libc:
        AT_FDCWD, RENAME_NOREPLACE = -100, 1
        rc = _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):  # filesystems without the flag: fall through
            raise OSError(err, os.strerror(err), dst)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "destination exists", dst)
    os.rename(src, dst)


def _publish(dst: Path, data: bytes) -> None:
    """Create ``dst`` with ``data`` atomically and without ever replacing an existing file.

    The temp file is not fsynced one by one (thousands of small configs would
    cost minutes on a busy disk): the session ends with one ``syncfs`` before
    its "complete" record, and a resumed run checks every published file's
    content against the plan (sha256 / the source), so a file torn by a power
    cut is reported instead of being taken as done.
    """
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        set_publish_mode(tmp)
        mutated()  # crash point: temp file complete, destination not yet there
        try:
            os.link(tmp, dst)  # fails with EEXIST: never overwrites
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):  # no hard links here
                _rename_noreplace(tmp, str(dst))
                tmp = ""
            else:
                raise
    finally:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _paths(root: Path, s: dict[str, Any]) -> tuple[Path | None, Path | None]:
    """A step's source and destination as absolute paths (None where the step has none)."""
    return (root / s["src"] if s.get("src") else None), (root / s["dst"] if s.get("dst") else None)


def step_state(root: Path, s: dict[str, Any]) -> str:
    """``done``, ``pending`` or ``changed`` (neither: the tree moved on without us)."""
    op = s["op"]
    src, dst = _paths(root, s)
    if op == MKDIR:
        assert dst is not None
        if dst.is_dir() and not dst.is_symlink():
            return "done"
        return "pending" if not os.path.lexists(dst) else "changed"
    if op == RMDIR:
        assert src is not None
        if not os.path.lexists(src):
            return "done"
        # still holding files is normal until the group's moves ran; rmdir itself refuses a non-empty dir
        return "pending" if src.is_dir() and not src.is_symlink() else "changed"
    if op == MOVE:
        assert src is not None and dst is not None
        fp = s.get("fp")
        if not os.path.lexists(src) and fingerprint(dst) == fp:
            return "done"
        if fingerprint(src) == fp and not os.path.lexists(dst):
            return "pending"
        return "changed"
    if op == COPY:
        assert src is not None and dst is not None
        if os.path.lexists(dst):
            # published atomically and only by us (the plan saw it absent); check the bytes anyway
            return "done" if _same_bytes(dst, src) else "changed"
        return "pending" if fingerprint(src) == s.get("fp") else "changed"
    if op == WRITE:
        assert dst is not None
        if os.path.lexists(dst):
            return "done" if _file_sha(dst) == s.get("sha256") else "changed"
        return "pending"
    if op == DERIVE:
        assert src is not None and dst is not None
        if os.path.lexists(dst):
            return (
                "done" if s.get("derived_sha256") and _file_sha(dst) == s.get("derived_sha256") else "changed"
            )
        return "pending" if fingerprint(src) == s.get("fp") else "changed"
    return "changed"


def _file_sha(path: Path) -> str | None:
    try:
        return _sha256(path.read_bytes()) if path.is_file() and not path.is_symlink() else None
    except OSError:
        return None


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return a.is_file() and not a.is_symlink() and b.is_file() and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def sync_filesystem(root: Path) -> None:
    """Flush everything written under ROOT (one ``syncfs`` instead of an fsync per file)."""
    if _libc is None:
        _rename_noreplace_probe()
    fd = os.open(root, os.O_RDONLY)
    try:
        if _libc and hasattr(_libc, "syncfs") and _libc.syncfs(fd) == 0:
            return
        os.sync()
    finally:
        os.close(fd)


def _derive(root: Path, s: dict[str, Any], journal: Journal, session: Session) -> None:
    """Run the plugin's converter into a temp file, journal its sha256, then publish it with ``link()``."""
    import tempfile

    src, dst = root / s["src"], root / s["dst"]
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=dst.parent)
    os.close(fd)
    try:
        _converter(s["converter"])(src, Path(tmp), dict(s.get("params") or {}))
        if fingerprint(src) != s.get("fp"):
            raise FileExistsError(errno.EEXIST, "source changed while converting")
        with open(tmp, "rb") as fh:
            digest = (
                hashlib.file_digest(fh, "sha256").hexdigest()
                if hasattr(hashlib, "file_digest")
                else _sha256(fh.read())
            )
            os.fsync(fh.fileno())
        set_publish_mode(tmp)
        journal.append({"type": "derived", "session": session.number, "step": s["i"], "sha256": digest})
        os.link(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _do(
    root: Path, s: dict[str, Any], journal: Journal | None = None, session: Session | None = None
) -> str | None:
    """Perform one pending step; return a reason if it had to be skipped."""
    op = s["op"]
    src, dst = _paths(root, s)
    try:
        if op == DERIVE:
            assert journal is not None and session is not None
            try:
                _derive(root, s, journal, session)
            except CkptError as exc:
                return f"not converted: {exc.message}"
        elif op == MKDIR:
            os.mkdir(dst)  # type: ignore[arg-type]
        elif op == MOVE:
            _rename_noreplace(str(src), str(dst))
        elif op == COPY:
            data = src.read_bytes()  # type: ignore[union-attr]
            if fingerprint(src) != s.get("fp"):  # type: ignore[arg-type]
                return "source changed while copying"
            _publish(dst, data)  # type: ignore[arg-type]
        elif op == WRITE:
            _publish(dst, str(s.get("data", "")).encode())  # type: ignore[arg-type]
        elif op == RMDIR:
            os.rmdir(src)  # type: ignore[arg-type]
    except FileExistsError:
        return "destination appeared since the plan; left alone"
    except OSError as exc:
        if exc.errno == errno.ENOTEMPTY:
            return "directory not empty; left in place"
        if exc.errno == errno.EXDEV:
            return "crosses filesystems; not moved (migrate never copies weights)"
        return f"{exc.strerror or exc}"
    mutated()
    return None


def _cleanup_temps(root: Path, steps: list[dict[str, Any]]) -> None:
    """Remove temp files a crash may have left beside files being published."""
    for parent in {
        os.path.dirname(s["dst"]) for s in steps if s["op"] in (COPY, WRITE, DERIVE) and s.get("dst")
    }:
        d = root / parent
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            if e.name.startswith(TEMP_PREFIX) and e.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(e.path)


def _run_session(root: Path, journal: Journal, session: Session, outcome: Outcome) -> None:
    steps = session.steps
    _cleanup_temps(root, steps)
    by_group: dict[int, list[dict[str, Any]]] = {}
    for s in steps:
        by_group.setdefault(s["group"], []).append(s)
    finished: list[int] = []

    def flush_done() -> None:
        # "done" markers only speed up a resume (the tree is the authority), so they are batched
        if finished:
            journal.append({"type": "done", "session": session.number, "groups": list(finished)})
            finished.clear()

    for gid, group in by_group.items():
        if len(finished) >= DONE_BATCH:
            flush_done()
        if gid in session.done_groups:
            outcome.done.extend(s["i"] for s in group if s["i"] not in session.skipped)
            continue
        states = {s["i"]: (session.skipped.get(s["i"]) and "skipped") or step_state(root, s) for s in group}
        changed = [s for s in group if states[s["i"]] == "changed" and s["op"] in (MOVE, COPY, DERIVE)]
        if changed and not any(
            states[s["i"]] == "done" for s in group if s["op"] in (MOVE, COPY, WRITE, DERIVE)
        ):
            # a source changed between plan and apply: leave the whole folder alone
            for s in group:
                reason = "source changed since the plan (size/mtime/inode differ); not touched"
                if s in changed:
                    journal.append(
                        {"type": "skip", "session": session.number, "step": s["i"], "reason": reason}
                    )
                outcome.skipped.append(
                    {**_public(s), "why": reason if s in changed else "part of a skipped folder"}
                )
            finished.append(gid)
            continue
        for s in group:
            # look again right before acting: earlier steps of the group change the picture (rmdir)
            state = "skipped" if s["i"] in session.skipped else step_state(root, s)
            if state == "skipped":
                outcome.skipped.append({**_public(s), "why": session.skipped[s["i"]]})
                continue
            if state == "done":
                outcome.done.append(s["i"])
                outcome.resumed_steps += 1
                continue
            why = (
                _do(root, s, journal, session)
                if state == "pending"
                else "the tree changed since the plan; not touched"
            )
            if why:
                journal.append({"type": "skip", "session": session.number, "step": s["i"], "reason": why})
                outcome.skipped.append({**_public(s), "why": why})
                continue
            outcome.done.append(s["i"])
        finished.append(gid)
    flush_done()
    sync_filesystem(root)  # every rename and new file is on disk before the session is called complete
    journal.append({"type": "complete", "session": session.number})


def _public(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s.get(k) for k in ("i", "run", "op", "src", "dst", "reason")}


def apply(root: Path, jobs: int = 1, options: MigrateOptions | None = None) -> Outcome:
    """Apply the plan for ``root`` (resuming an interrupted one first). Raises ``MigrateConflict``."""
    root = _check_root(root)
    with migrate_lock(root):
        journal = Journal(root)
        if journal.undoing:
            raise Conflict(
                f"an undo of {root} was interrupted", "run 'ckpt-tool migrate --undo' again to finish it"
            )
        resumed: Outcome | None = None
        pending = journal.pending
        if pending is not None:
            resumed = Outcome(Plan(root, steps=pending.steps, resuming=True))
            _run_session(root, journal, pending, resumed)
        fresh = _fresh_plan(root, jobs, options or MigrateOptions())
        if fresh.conflicts:
            raise MigrateConflict(fresh.conflicts, fresh)
        outcome = Outcome(fresh)
        if fresh.steps:
            session = journal.start(fresh.steps)
            _run_session(root, journal, session, outcome)
        if resumed is not None:
            # report the finished interrupted plan together with anything new
            offset = len(resumed.plan.steps)
            merged = Plan(
                root,
                steps=resumed.plan.steps + [{**s, "i": s["i"] + offset} for s in fresh.steps],
                left=fresh.left,
                resuming=True,
            )
            return Outcome(
                merged,
                done=resumed.done + [i + offset for i in outcome.done],
                skipped=resumed.skipped + outcome.skipped,
                resumed_steps=resumed.resumed_steps,
                message=f"resumed an interrupted migration ({resumed.resumed_steps} of {offset} steps were already done)",
            )
        if not fresh.steps:
            outcome.message = "nothing to do: the tree is already in today's layout"
        return outcome


# --------------------------------------------------------------------------- undo


def _undo_step(root: Path, s: dict[str, Any]) -> str | None:
    """Reverse one step if it is in effect; return a reason when it cannot be."""
    op = s["op"]
    src, dst = _paths(root, s)
    try:
        if op == MOVE:
            assert src is not None and dst is not None
            fp = s.get("fp")
            if not os.path.lexists(dst) and fingerprint(src) == fp:
                return None  # never moved, or already restored
            if fingerprint(dst) != fp:
                return f"{s['dst']} changed since the migration; left in place"
            if os.path.lexists(src):
                return f"{s['src']} exists again; {s['dst']} left in place"
            _rename_noreplace(str(dst), str(src))
        elif op in (COPY, WRITE, DERIVE):
            assert dst is not None
            if not os.path.lexists(dst):
                return None
            if not dst.is_file() or dst.is_symlink():
                return f"{s['dst']} is no longer a regular file; left in place"
            current = dst.read_bytes()
            if op == WRITE:
                expected_ok = _sha256(current) == s.get("sha256")
            elif op == DERIVE:
                expected_ok = _sha256(current) == s.get("derived_sha256")
            else:
                expected_ok = src is not None and src.is_file() and src.read_bytes() == current
            if not expected_ok:
                return f"{s['dst']} was edited since the migration; kept"
            os.unlink(dst)
        elif op == MKDIR:
            assert dst is not None
            if not os.path.lexists(dst):
                return None
            if any(os.scandir(dst)):
                return f"{s['dst']}/ is not empty; kept"
            os.rmdir(dst)
        elif op == RMDIR:
            assert src is not None
            if os.path.lexists(src):
                return None
            os.mkdir(src)
        else:
            return None
    except OSError as exc:
        return f"{exc.strerror or exc}"
    mutated()
    return None


def undo(root: Path) -> Outcome:
    """Restore the pre-migration tree from the journal, newest session first, then drop the journal."""
    root = _check_root(root)
    with migrate_lock(root):
        journal = Journal(root)
        if not journal.sessions:
            raise NotFound(f"{root}: no migration journal ({JOURNAL_NAME})", "there is nothing to undo here")
        if not journal.undoing:
            journal.append({"type": "undo"})
        all_steps = [s for sess in journal.sessions for s in sess.steps]
        outcome = Outcome(Plan(root, steps=[]))
        _cleanup_temps(root, all_steps)
        for sess in reversed(journal.sessions):
            for s in reversed(sess.steps):
                why = _undo_step(root, s)
                if why:
                    outcome.skipped.append({**_public(s), "why": why})
                else:
                    outcome.done.append(s["i"])
            outcome.plan.steps = sess.steps + outcome.plan.steps
        sync_filesystem(root)
        if outcome.skipped:
            outcome.message = f"undo finished with {len(outcome.skipped)} item(s) left in place; the journal is kept so you can rerun --undo"
        else:
            journal.remove()
            outcome.message = "restored the tree as it was before the migration"
        return outcome
