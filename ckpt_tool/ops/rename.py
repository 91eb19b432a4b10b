"""``rename``: new tensor names with the same bytes, PEFT adapter renames, repairs of damaged PEFT keys.

Three operations share the command:

* **keys** (``--map``, ``--map-file``, ``--regex``, ``--strip-prefix``,
  ``--add-prefix``): every tensor keeps its bytes, dtype and shape; only names
  change. The plan is one ``compute=None`` step per tensor with the stored
  dtype, so the engine copies each tensor file to file (``copy_file_range``)
  and the bytes never pass through Python. The output mirrors the input's files
  (layout ``same-files``): the same file names, container, tensor order, shard
  assignment, safetensors ``__metadata__`` and torch wrapper (bare or
  ``{"model": ...}``); a sharded index keeps its shards and ``total_size`` and
  gets the renamed ``weight_map``. ``--in-place`` writes temp files beside the
  inputs and renames them over the inputs, the index last.
* **adapter** (``--adapter OLD --to NEW``): renames one adapter of a
  multi-adapter directory. The adapter name lives only in the folder layout, so
  this is a sequence of directory-entry operations planned by the plugin that
  owns the format (``ckpt_rename_adapter``) and run here one atomic step at a
  time (``io/dirops.py``).
* **repair** (``--repair``): the plugin (``ckpt_repair_keys``) says which keys
  an older release of its library damaged and checks the repaired names
  against the checkpoint's config; the renames then run like **keys**. A
  misnamed *file* (``ckpt_repair_files``: LitGPT's March 2024 LoRA-only
  ``lit_model.pth``) is repaired as a one-folder migration: the plugin proposes
  the actions ``migrate`` would, and ``ops/migrate.py`` plans, journals (in the
  folder), applies, resumes and — with ``--undo`` — reverses them, all or nothing.

The rules and their order (and the one place where regular expressions run)
are in ``rename_rules.py``. A rule that matches no name, two tensors ending with
one name, or a rule set that changes nothing is refused before anything is
written; so is every other problem: a refusal leaves no file, no temp file and
no new folder behind, and an in-place refusal leaves the input byte-identical.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_tool.errors import Conflict, NotFound, Refused, Unsupported, UsageError
from ckpt_tool.model import CheckpointInfo, TensorInfo
from ckpt_tool.ops.layouts import FilePlan, LayoutFiles
from ckpt_tool.ops.rename_rules import (
    SHOWN,
    apply_rules,
    check_names,
    compile_regex,
    parse_rules,
    regex_rename,
)
from ckpt_tool.ops.transform import Out, SideFile, Sink, TransformPlan, copy_step

SRC = "in"
SINK = "out"
LAYOUT = "same-files"

#: Suffixes of files that are weights: never copied along as side files by ``--out`` (they would keep old names).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
#: Torch wrappers the writer reproduces: ``{key: state_dict}`` or a bare state dict.
TORCH_WRAPPERS = ("bare", "model", "state_dict", "module")


# --- the mirrored output layout ---------------------------------------------------------------------------


@dataclass
class SameFilesLayout:
    """The input's own files with renamed tensors: same file names, container, order, shards, metadata, wrapper.

    ``Sink.options["files"]``: ``[{"name": path relative to the sink dir, "container",
    "tensors": [new names in file order], "metadata", "wrapper"}]``; ``options["index"]``:
    ``{"name", "data"}`` (the rewritten shard index, published after every shard).
    Registered by the ``safetensors`` plugin (it owns plain containers and shard indexes).
    """

    name: str = LAYOUT
    description: str = (
        "the input's own files (rename): same file names, containers, tensor order, shards, metadata and wrapper"
    )
    target: str = "dir"

    def files(self, sink: Sink, outs: Sequence[Out]) -> LayoutFiles:
        spec = sink.options.get("files") or []
        listed = [n for f in spec for n in f["tensors"]]
        if sorted(listed) != sorted(o.name for o in outs):
            raise Unsupported("layout 'same-files': the files do not list exactly the plan's tensors (bug)")
        weights = [
            FilePlan(sink.path / f["name"], f["container"], list(f["tensors"]), f.get("metadata"), f.get("wrapper"))
            for f in spec
        ]
        index = sink.options.get("index")
        return LayoutFiles(weights, [SideFile(index["name"], data=index["data"])] if index else [])


# --- what is being renamed ----------------------------------------------------------------------------------


@dataclass
class _File:
    path: Path  # absolute
    container: str
    tensors: list[TensorInfo]  # file order
    metadata: dict[str, str] | None = None
    wrapper: str | None = None
    shared: int = 0  # torch: tensors sharing a storage with another one


@dataclass
class Source:
    """The files of one checkpoint whose tensors are renamed."""

    info: CheckpointInfo
    directory: Path  # where the files live (relative names are taken from here)
    is_dir: bool  # a directory checkpoint (--out names a directory) or one file
    files: list[_File]
    index_file: Path | None = None
    index: dict[str, Any] | None = None

    @property
    def tensors(self) -> list[TensorInfo]:
        return [t for f in self.files for t in f.tensors]

    @property
    def container(self) -> str:
        kinds = {f.container for f in self.files}
        return kinds.pop() if len(kinds) == 1 else "mixed"


def gather(info: CheckpointInfo, path: Path) -> Source:
    """Read every weights file of ``info`` (headers only) in file order; refuse what cannot be rewritten."""
    from ckpt_tool.io.container import read_container

    order: list[str] = []
    for t in info.tensors:
        if t.file not in order:
            order.append(t.file)
    if not order:
        raise Refused(f"{info.path}: holds no tensors, so there is nothing to rename")
    files: list[_File] = []
    wanted = {t.name for t in info.tensors}
    for name in order:
        c = read_container(name)
        tensors = list(c.tensors.values())
        if c.kind == "torch":
            tz = c.torch
            assert tz is not None
            if tz.wrapper not in TORCH_WRAPPERS or tz.extras or tz.other_tensors > 0:
                what = ", ".join(tz.extras[:4]) if tz.extras else "values other than a state dict"
                raise Unsupported(
                    f"{name}: holds {what} besides the weights; rename rewrites plain state dicts only "
                    "(bare or under 'model' / 'state_dict' / 'module')",
                    "save the weights alone (torch.save(ckpt['model'], PATH)) and rename that file",
                )
            storages: dict[str, int] = {}
            for t in tensors:
                if t.storage_key is not None:
                    storages[t.storage_key] = storages.get(t.storage_key, 0) + 1
            shared = sum(n for n in storages.values() if n > 1)
            f = _File(Path(os.path.abspath(name)), "torch", tensors, None, None if tz.wrapper == "bare" else tz.wrapper)
            f.shared = shared
        else:
            f = _File(Path(os.path.abspath(name)), "safetensors", tensors, dict(c.metadata) or None)
        missing = [t.name for t in tensors if t.name not in wanted]
        if missing:
            raise Unsupported(f"{name}: holds tensor {missing[0]!r} that the checkpoint does not list (bug)")
        files.append(f)
    details = info.details or {}
    index_file = details.get("index_file")
    index = details.get("index") if index_file else None
    directory = Path(os.path.abspath(details.get("dir") or (path if path.is_dir() else files[0].path.parent)))
    is_dir = path.is_dir() or len(files) > 1 or index_file is not None
    return Source(info, directory, is_dir, files, Path(os.path.abspath(index_file)) if index_file else None, index)


def _rel(src: Source, file: Path) -> str:
    rel = os.path.relpath(file, src.directory)
    if rel.startswith(".."):
        raise Unsupported(f"{file} lies outside {src.directory}; rename its directory's checkpoint instead")
    return rel


def _index_data(src: Source, renames: dict[str, str]) -> bytes | None:
    """The shard index with the renamed ``weight_map`` (same shards, every other field as it was)."""
    if src.index is None or src.index_file is None:
        return None
    doc = dict(src.index)
    old_map: dict[str, str] = doc["weight_map"]
    new_map = {renames.get(k, k): v for k, v in old_map.items()}
    if list(old_map) == sorted(old_map):
        new_map = dict(sorted(new_map.items()))  # save_pretrained writes it sorted: keep it so
    doc["weight_map"] = new_map
    return (json.dumps(doc, indent=2) + "\n").encode()


def _weights_like(path: Path) -> bool:
    """A weights file or shard index by name (``lit_model.pth.lora`` too) or by its leading bytes."""
    from ckpt_tool.errors import CkptError
    from ckpt_tool.io import sniff

    name = path.name
    if name.endswith((".index.json", *WEIGHT_SUFFIXES)) or any(f"{s}." in name for s in WEIGHT_SUFFIXES):
        return True
    try:
        return sniff.sniff(path) != sniff.UNKNOWN
    except CkptError:
        return False


def _side_files(src: Source, out_dir: Path) -> tuple[list[SideFile], list[str]]:
    """Top-level regular files of the input directory that travel to ``--out`` (configs, tokenizer, model card).

    Not copied (and named in the notes): the weights files themselves and their
    index (rewritten), other weights-like files (they would keep the old names),
    hidden files, symlinks (a downloaded checkpoint's link could point at any
    file of the machine) and folders.
    """
    own = {f.path.name for f in src.files} | ({src.index_file.name} if src.index_file else set())
    side: list[SideFile] = []
    skipped: list[str] = []
    try:
        entries = sorted(os.scandir(src.directory), key=lambda e: e.name)
    except OSError:
        return side, skipped
    for e in entries[:10_000]:
        if e.name in own or e.name.startswith("."):
            continue
        if e.is_symlink():
            skipped.append(f"{e.name} (symlink)")
        elif e.is_dir(follow_symlinks=False):
            skipped.append(f"{e.name}/ (folder)")
        elif not e.is_file(follow_symlinks=False):
            continue
        elif _weights_like(Path(e.path)):
            skipped.append(f"{e.name} (weights not renamed)")
        else:
            side.append(SideFile(e.name, src=Path(e.path)))
    return side, skipped


def key_plan(
    src: Source, renames: dict[str, str], out: Path | None, in_place: bool
) -> tuple[TransformPlan, list[Path], list[str]]:
    """(plan, files replaced in place, notes): one byte-copy step per tensor into the mirrored files."""
    notes: list[str] = []
    steps = [
        copy_step(SRC, t.name, SINK, renames.get(t.name, t.name), t.dtype, t.shape, "renamed" if t.name in renames else "same name")
        for t in src.tensors
    ]
    side: list[SideFile] = []
    replace: list[Path] = []
    if in_place:
        sink_dir = src.directory
        names = {f.path: _rel(src, f.path) for f in src.files}
        replace = [f.path for f in src.files] + ([src.index_file] if src.index_file else [])
    elif src.is_dir:
        assert out is not None
        sink_dir = Path(os.path.abspath(out))
        names = {f.path: _rel(src, f.path) for f in src.files}
        side, skipped = _side_files(src, sink_dir)
        if skipped:
            notes.append(
                "not copied to --out: " + ", ".join(skipped[:SHOWN]) + (f" and {len(skipped) - SHOWN} more" if len(skipped) > SHOWN else "")
            )
    else:
        assert out is not None
        target = out / src.files[0].path.name if (out.is_dir() or str(out).endswith(os.sep)) else out
        target = Path(os.path.abspath(target))
        sink_dir = target.parent
        names = {src.files[0].path: target.name}
    files = [
        {
            "name": names[f.path],
            "container": f.container,
            "tensors": [renames.get(t.name, t.name) for t in f.tensors],
            "metadata": f.metadata,
            "wrapper": f.wrapper,
        }
        for f in src.files
    ]
    options: dict[str, Any] = {"files": files}
    data = _index_data(src, renames)
    if data is not None:
        assert src.index_file is not None
        options["index"] = {"name": os.path.relpath(src.index_file, src.directory), "data": data}
    shared = sum(f.shared for f in src.files)
    if shared:
        notes.append(
            f"{shared} tensors shared a storage with another tensor in the torch file; each is written with its own "
            "storage (same values; the file grows by the shared tensors' size)"
        )
    plan = TransformPlan({SRC: src.info}, steps, {SINK: Sink(LAYOUT, sink_dir, options, side)})
    plan.provenance = {"operation": "rename"}
    return plan, replace, notes


# --- file operations (adapter renames) -------------------------------------------------------------------------


@dataclass(frozen=True)
class FileOp:
    """One directory-entry step of an adapter rename, atomic on its own.

    ``op``: ``mkdir`` (``path``), ``link`` (``path`` → new name ``to``; a copy where hard
    links are not available), ``rename`` (``path`` → ``to``, never replacing),
    ``unlink`` (``path``), ``rmdir`` (``path``, empty).
    """

    op: str
    path: Path
    to: Path | None = None
    why: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"op": self.op, "path": str(self.path)}
        if self.to is not None:
            data["to"] = str(self.to)
        if self.why:
            data["why"] = self.why
        return data


OPS = ("mkdir", "link", "rename", "unlink", "rmdir")


@dataclass
class AdapterRenamePlan:
    """What ``ckpt_rename_adapter`` returns: the steps in order, each leaving a loadable directory behind.

    ``resumed``: the directory is in the half-done state of an interrupted earlier run
    of the same rename; ``ops`` are the remaining steps.
    """

    old: str
    new: str
    source_dir: Path
    target_dir: Path
    ops: list[FileOp]
    resumed: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class KeyRepair:
    """What ``ckpt_repair_keys`` returns: renames (empty: nothing damaged) and the checks they passed.

    ``path`` is the adapter's own directory (detected again and rewritten); ``checks``
    are sentences saying what was verified against the config before anything is written.
    """

    adapter: str
    path: Path
    renames: dict[str, str]
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class FileRepair:
    """What ``ckpt_repair_files`` returns: the folder (the journal's ROOT) and ``migrate.Action`` s inside it.

    No actions: the files already have today's names (``notes`` says so).
    """

    root: Path
    actions: list[Any]
    notes: list[str] = field(default_factory=list)


#: The words migrate's machinery uses in hints when ``rename --repair`` journaled the session.
REPAIR_WORDS = {
    "command": "rename --repair",
    "apply": "ckpt-tool rename {root} --repair",
    "undo": "ckpt-tool rename {root} --undo",
    "noun": "repair",
}


def _ask_files(path: Path) -> FileRepair | None:
    from ckpt_tool.io.container import Probe

    return _plugin_manager().hook.ckpt_repair_files(path=path, probe=Probe())  # a fresh probe: no stale headers


def _step_rows(steps: Sequence[Any], status: dict[int, str]) -> list[dict[str, Any]]:
    """migrate's action records (``action``/``from``/``to``/``reason``/``status``): one vocabulary for journaled steps."""
    return [
        {"action": s.op, "from": s.src, "to": s.dst, "reason": s.reason, "status": status.get(s.i) or "pending"}
        for s in steps
    ]


def _no_conflicts(exc: Any, path: Path) -> Conflict:
    lines = "\n".join(f"  - {c}" for c in exc.conflicts)
    return Conflict(
        f"{path}: the repair plan has {len(exc.conflicts)} conflict(s); nothing was changed:\n{lines}",
        "resolve them and run the command again",
    )


def repair_files(path: Path, first: FileRepair, *, dry_run: bool = False) -> dict[str, Any]:
    """Run a plugin's file repair through migrate's journal in its folder (resuming an interrupted one first)."""
    from ckpt_tool.ops import migrate as mig

    started = time.perf_counter()
    root = Path(os.path.abspath(first.root))
    notes = list(first.notes)

    def planner(at: Path) -> Any:
        # asked again with the lock held, after any resume: the plan is made from the folder as it is now
        again = _ask_files(path)
        if again is None or Path(os.path.abspath(again.root)) != at:
            raise Conflict(f"{path}: the folder changed while the repair was being planned", "run the command again")
        notes[:] = again.notes
        return mig.plan_actions(at, at, again.actions)

    summary: dict[str, Any] = {"operation": "repair-files", "source": str(path), "root": str(root), "dry_run": dry_run}
    try:
        if dry_run:
            plan = mig.plan(root, planner=planner)
            if plan.conflicts:
                raise mig.MigrateConflict(plan.conflicts, plan)
            status = mig.step_states(plan) if plan.resuming else {}
            steps, left, resumed, message = plan.steps, plan.left, plan.resuming, ""
        else:
            outcome = mig.apply(root, planner=planner, words=mig.Wording(**REPAIR_WORDS))
            done = set(outcome.done)
            status = {s.i: "done" for s in outcome.plan.steps if s.i in done}
            steps, left, resumed, message = outcome.plan.steps, outcome.plan.left, outcome.plan.resuming, outcome.message
    except mig.MigrateConflict as exc:
        raise _no_conflicts(exc, path) from None
    if resumed:
        notes = []  # the plugin looked at the half-repaired folder ("already has today's name"): not news
    elif not steps and not notes:
        notes.append("nothing to repair: the files already have today's names; nothing was changed")
    summary.update(
        {
            "resumed": resumed,
            "steps": _step_rows(steps, status),
            "left": [{"path": x["path"], "reason": x["reason"]} for x in left],
            "message": message,
            "notes": notes,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    return summary


def undo_files(path: Path) -> dict[str, Any]:
    """``rename PATH --undo``: reverse the repairs journaled in PATH's folder, all or nothing (migrate's undo)."""
    from ckpt_tool.ops import migrate as mig

    started = time.perf_counter()
    if not os.path.lexists(path):
        raise NotFound(f"{path}: no such file or directory", "check the path")
    root = Path(os.path.abspath(path if path.is_dir() else path.parent))
    outcome = mig.undo(root, words=mig.Wording(**REPAIR_WORDS))
    done = set(outcome.done)
    undone = []
    for s in reversed([s for s in outcome.plan.steps if s.i in done]):
        if s.op == mig.MOVE:
            undone.append({"action": s.op, "from": s.dst, "to": s.src, "reason": "renamed back", "status": "undone"})
        else:
            undone.append({"action": s.op, "from": s.dst or s.src, "to": None, "reason": "removed", "status": "undone"})
    return {
        "operation": "undo",
        "source": str(path),
        "root": str(root),
        "dry_run": False,
        "steps": undone,
        "message": outcome.message,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _do(op: FileOp) -> str:
    """Run one step (module-level so crash tests can stop the sequence between steps)."""
    from ckpt_tool.io import dirops

    if op.op == "mkdir":
        dirops.mkdir_durably(op.path)
        return "created"
    if op.op == "link":
        assert op.to is not None
        return dirops.link_or_copy(op.path, op.to)
    if op.op == "rename":
        assert op.to is not None
        dirops.rename_noreplace(op.path, op.to)
        return "renamed"
    if op.op == "unlink":
        dirops.unlink_durably(op.path)
        return "removed"
    if op.op == "rmdir":
        dirops.rmdir_durably(op.path)
        return "removed"
    raise Unsupported(f"unknown file operation {op.op!r} (plugin bug)")


def run_file_ops(ops: Sequence[FileOp]) -> list[str]:
    """Run ``ops`` in order, each durable (fsynced) before the next starts; returns what each did."""
    for op in ops:
        if op.op not in OPS:
            raise Unsupported(f"unknown file operation {op.op!r} (plugin bug)")
    done: list[str] = []
    try:
        for op in ops:
            try:
                done.append(_do(op))
            except FileExistsError as exc:
                raise Refused(
                    f"{exc.filename}: appeared while renaming (another process is writing here?)",
                    "nothing was replaced; run the command again to finish the rename",
                ) from None
    except BaseException:
        _undo_temp_dirs(ops[: len(done)])
        raise
    return done


def _undo_temp_dirs(done: Sequence[FileOp]) -> None:
    """After a failure (or Ctrl-C): remove temp-named folders this run created and has not renamed yet.

    Everything else already done stays: each step left a loadable state, and a
    rerun finishes from there. A ``kill -9`` skips this; the plugin's next plan
    removes such folders (their names say which dead process made them).
    """
    import contextlib

    from ckpt_tool.io.atomic import TEMP_PREFIX

    renamed = {op.path for op in done if op.op == "rename"}
    for op in done:
        if op.op == "mkdir" and op.path.name.startswith(TEMP_PREFIX) and op.path not in renamed:
            with contextlib.suppress(OSError):
                for entry in os.scandir(op.path):
                    if entry.is_file(follow_symlinks=False):
                        os.unlink(entry.path)
                os.rmdir(op.path)


# --- the command -------------------------------------------------------------------------------------------------


def _plugin_manager() -> Any:
    from ckpt_tool.plugins import get_plugin_manager

    return get_plugin_manager()


def _select_adapter(info: CheckpointInfo, adapter: str | None) -> CheckpointInfo:
    """The adapter ``adapter`` of a multi-adapter checkpoint, detected on its own (``--adapter`` for key renames)."""
    from ckpt_tool.ops.inspect import detect

    if adapter is None:
        return info
    found = (info.details or {}).get("adapters") or {}
    if not found:
        raise UsageError(f"{info.path}: --adapter applies to directories of named adapters; this is a {info.format} {info.kind}")
    if adapter not in found:
        raise NotFound(f"{info.path}: no adapter named {adapter!r}", "choose one of: " + ", ".join(sorted(found)))
    if adapter == (info.details or {}).get("adapter_name"):
        return info
    return detect(Path(found[adapter]["dir"]))


def _check_out(path: Path, src: Source, out: Path | None) -> None:
    if out is None:
        return
    if os.path.abspath(out) == os.path.abspath(path) or (src.is_dir and os.path.abspath(out) == str(src.directory)):
        raise Refused(f"--out {out} is the input itself", "use --in-place to rewrite it, or choose another --out")
    if src.is_dir and out.exists() and not out.is_dir():
        raise Refused(f"--out {out} is a file", "the input is a directory checkpoint: --out names a directory")


def _changes(renames: dict[str, str], order: Sequence[str]) -> list[dict[str, str]]:
    return [{"old": n, "new": renames[n]} for n in order if n in renames]


def _run_keys(
    path: Path,
    info: CheckpointInfo,
    renames: dict[str, str],
    out: Path | None,
    in_place: bool,
    force: bool,
    dry_run: bool,
    progress: bool,
) -> dict[str, Any]:
    from ckpt_tool.ops import engine

    src = gather(info, path)
    _check_out(path, src, out)
    names = [t.name for t in src.tensors]
    check_names(names, renames, src.container)
    plan, replace, notes = key_plan(src, renames, out, in_place)
    target = engine.resolve(plan)
    if not in_place:
        inputs = {str(f.path) for f in src.files}
        same = [str(p) for p in target.weights() if os.path.abspath(p) in inputs]
        if same:
            raise Refused(f"--out {out} would write over the input {same[0]}", "use --in-place, or choose another --out")
    made: set[Path] = set()  # folders the writers will create (every missing ancestor of an output)
    for out_path in target.all_paths(plan):
        d = out_path.parent
        while not d.exists() and d != d.parent:
            made.add(d)
            d = d.parent
    try:
        report = engine.execute(
            plan, force=force, dry_run=dry_run, progress=progress, label="renaming", target=target, replace=replace
        )
    except BaseException:
        for d in sorted(made, key=lambda p: len(p.parts), reverse=True):  # folders this run created: remove if empty
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    counts = report.counts
    summary: dict[str, Any] = {
        "source": str(path),
        "source_format": info.format,
        "kind": info.kind,
        "container": src.container,
        "in_place": in_place,
        "dry_run": dry_run,
        "outputs": [str(p) for p in target.all_paths(plan)],
        "changes": _changes(renames, names),
        "tensors": {
            **engine.tensor_counts(report),
            "renamed": len(renames),
            "unchanged": counts["tensors"] - len(renames),
        },
    }
    if notes:
        summary["notes"] = notes
    if report.removed_temps:
        summary["removed_temp_files"] = report.removed_temps
    return summary


def rename_keys(
    path: Path,
    *,
    maps: Sequence[str] = (),
    regexes: Sequence[str] = (),
    strip_prefix: str | None = None,
    add_prefix: str | None = None,
    map_file: Path | None = None,
    adapter: str | None = None,
    out: Path | None = None,
    in_place: bool = False,
    force: bool = False,
    dry_run: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Rename tensors of the checkpoint at ``path``; returns the JSON summary. Writes nothing on any error."""
    from ckpt_tool.ops.inspect import detect

    started = time.perf_counter()
    rules = parse_rules(maps, regexes, strip_prefix, add_prefix, map_file)
    if not rules:
        raise UsageError("nothing to rename", "give --map, --map-file, --regex, --strip-prefix or --add-prefix")
    if out is None and not in_place and not dry_run:
        raise UsageError("say where to write", "--out OUT writes a new checkpoint, --in-place rewrites the input")
    info = _select_adapter(detect(path), adapter)
    names = [t.name for t in info.tensors]
    renames = apply_rules(names, rules)
    if not renames:
        raise Refused("the rules change no tensor name", "nothing was written; check them with --dry-run")
    if out is None:
        in_place = True  # a --dry-run without --out previews the in-place rewrite
    summary = {"operation": "keys"}
    summary.update(_run_keys(path, info, renames, out, in_place, force, dry_run, progress))
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def repair(
    path: Path,
    *,
    adapter: str | None = None,
    out: Path | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Restore keys damaged on disk, or misnamed files (asks the format's plugins); in place unless ``out``."""
    from ckpt_tool.ops.inspect import detect

    files = _ask_files(path)
    if files is not None:
        given = [f for f, on in (("--out", out is not None), ("--force", force), ("--adapter", adapter is not None)) if on]
        if given:
            raise UsageError(
                f"{', '.join(given)} do(es) not apply to a file repair",
                "the misnamed file is renamed where it is (journaled; --undo reverses it)",
            )
        return repair_files(path, files, dry_run=dry_run)
    started = time.perf_counter()
    info = detect(path)
    result = _plugin_manager().hook.ckpt_repair_keys(source=info, adapter=adapter)
    if result is None:
        raise Unsupported(
            f"{path}: no plugin repairs keys of a {info.format} {info.kind}",
            "--repair restores PEFT adapters saved by PEFT <= 0.17 under a name like 'lora'",
        )
    summary: dict[str, Any] = {"operation": "repair", "adapter": result.adapter}
    if not result.renames:
        summary.update(
            {
                "source": str(path),
                "source_format": info.format,
                "kind": info.kind,
                "in_place": out is None,
                "dry_run": dry_run,
                "outputs": [],
                "changes": [],
                "checks": list(result.checks),
                "notes": ["nothing to repair: no damaged key was found; nothing was written", *result.notes],
                "tensors": {"written": 0, "copied": 0, "cast": 0, "computed": 0, "bytes": 0, "renamed": 0, "unchanged": len(info.tensors)},
            }
        )
    else:
        target = detect(result.path)
        summary.update(_run_keys(result.path, target, result.renames, out, out is None, force, dry_run, progress))
        summary["checks"] = list(result.checks)
        if result.notes:
            summary["notes"] = [*summary.get("notes", []), *result.notes]
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def rename_adapter(path: Path, old: str, new: str, *, dry_run: bool = False) -> dict[str, Any]:
    """Rename adapter ``old`` to ``new`` (a directory operation planned by the format's plugin)."""
    from ckpt_tool.ops.inspect import detect

    started = time.perf_counter()
    if old == new:
        raise UsageError(f"--adapter {old!r} --to {new!r}: the names are the same")
    info = detect(path)
    plan = _plugin_manager().hook.ckpt_rename_adapter(source=info, old=old, new=new)
    if plan is None:
        raise Unsupported(
            f"{path}: a {info.format} {info.kind} has no named adapters to rename",
            "--adapter/--to renames an adapter of a PEFT directory; rename tensors with --map / --regex",
        )
    summary: dict[str, Any] = {
        "operation": "adapter",
        "source": str(path),
        "source_format": info.format,
        "kind": info.kind,
        "adapter": old,
        "to": new,
        "root": str(plan.source_dir if old == "default" else plan.source_dir.parent),
        "from_dir": str(plan.source_dir),
        "to_dir": str(plan.target_dir),
        "dry_run": dry_run,
        "resumed": plan.resumed,
        "steps": [op.to_json() for op in plan.ops],
    }
    if not dry_run:
        for step, how in zip(summary["steps"], run_file_ops(plan.ops)):
            step["done"] = how
    if plan.notes:
        summary["notes"] = list(plan.notes)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def rename(
    path: Path,
    *,
    maps: Sequence[str] = (),
    regexes: Sequence[str] = (),
    strip_prefix: str | None = None,
    add_prefix: str | None = None,
    map_file: Path | None = None,
    adapter: str | None = None,
    to: str | None = None,
    do_repair: bool = False,
    do_undo: bool = False,
    out: Path | None = None,
    in_place: bool = False,
    force: bool = False,
    dry_run: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """The ``rename`` command: check the option combination, then run one of the operations."""
    path = Path(path)
    out = None if out is None else Path(out)
    map_file = None if map_file is None else Path(map_file)
    keys = bool(maps or regexes or map_file is not None or strip_prefix is not None or add_prefix is not None)
    chosen = [
        name
        for name, on in (("key rules", keys), ("--to", to is not None), ("--repair", do_repair), ("--undo", do_undo))
        if on
    ]
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join(chosen)} cannot be combined", "rename keys, rename an adapter or repair: one per run")
    if not chosen:
        raise UsageError(
            "nothing to do",
            "give key rules (--map, --map-file, --regex, --strip-prefix, --add-prefix), --adapter OLD --to NEW, or --repair",
        )
    if do_undo:
        extra = [f for f, on in (("--out", out is not None), ("--in-place", in_place), ("--force", force),
                                 ("--dry-run", dry_run), ("--adapter", adapter is not None)) if on]
        if extra:
            raise UsageError(f"--undo cannot be combined with {', '.join(extra)}", "--undo takes only the path")
        return undo_files(path)
    if out is not None and in_place:
        raise UsageError("--out and --in-place cannot be combined", "write a new checkpoint with --out, or rewrite the input with --in-place")
    if to is not None:
        if adapter is None:
            raise UsageError("--to NEW needs --adapter OLD", "e.g. --adapter default --to chat")
        if out is not None:
            raise UsageError("--out does not apply to an adapter rename", "the adapter's folder is renamed where it is")
        if force:
            raise UsageError("--force does not apply to an adapter rename", "an existing adapter or folder is never replaced")
        return rename_adapter(path, adapter, to, dry_run=dry_run)
    if do_repair:
        return repair(path, adapter=adapter, out=out, force=force, dry_run=dry_run, progress=progress)
    return rename_keys(
        path,
        maps=maps,
        regexes=regexes,
        strip_prefix=strip_prefix,
        add_prefix=add_prefix,
        map_file=map_file,
        adapter=adapter,
        out=out,
        in_place=in_place,
        force=force,
        dry_run=dry_run,
        progress=progress,
    )


__all__ = [
    "rename",
    "AdapterRenamePlan",
    "FileOp",
    "FileRepair",
    "KeyRepair",
    "SameFilesLayout",
    "apply_rules",
    "compile_regex",
    "parse_rules",
    "regex_rename",
    "rename_adapter",
    "rename_keys",
    "repair",
    "repair_files",
    "undo_files",
    "run_file_ops",
]
