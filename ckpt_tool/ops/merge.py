"""The streaming merge engine, and the ``merge`` operation around it.

``merge()`` detects the adapter and its base, asks the adapter's plugin for a
``MergePlan`` (the plugin validates the pair and owns the math), decides the
output files, refuses unsafe writes, and hands the plan to ``execute()``.

``execute()`` owns all I/O. It walks the base tensors in file order, reads each
through a private memory map, applies ``plan.changes[name]`` (or a plain cast),
and streams the result to a writer. A tensor that is neither changed nor
converted is copied file-to-file (``copy_file_range``), so its bytes are
identical to the base's and never pass through Python. Only the tensor at hand
is ever materialised: peak anonymous memory is the interpreter plus a few
times the largest *changed* tensor, whatever the model size.

Publishing order (a failure at any point leaves no output that looks usable):
side files (``config.json``...) are first *staged* as fsynced temp files, then
the weight files are written and renamed into place (a sharded index last),
and only then are the side files renamed. Stale temp files of killed earlier
runs in the output directory are removed first (``io.atomic.clean_stale_temps``).

The adapter is never merged twice: a base that lies in the adapter's own
folder, that holds a copy of the adapter's files, or whose safetensors header
records this adapter's fingerprint (every safetensors merge output does, under
``MERGE_MARK``) is refused, and so is an output directory the plugin protects
(the adapter's own folders).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import CkptError, NotFound, Refused, Unsupported
from ckpt_tool.io.atomic import Staged, clean_stale_temps, stage_copy
from ckpt_tool.io.container import Probe
from ckpt_tool.io.malloc import release_large_blocks
from ckpt_tool.io.tensors import TensorReader, torch_dtype
from ckpt_tool.io.writers import (
    SAFETENSORS_INDEX,
    TensorSpec,
    open_sharded_safetensors,
    open_torch,
    output_files,
    parse_size,
)
from ckpt_tool.model import DTYPE_NAMES, DTYPE_SIZES, CheckpointInfo, TensorInfo
from ckpt_tool.ops.merge_plan import MergeOptions, MergePlan

if TYPE_CHECKING:
    import torch

LIT_WEIGHTS = "lit_model.pth"
DEFAULT_SHARD = "5GB"
#: Computed tensors waiting for the writer thread, at most (bytes); at least one tensor always fits.
WRITE_BEHIND_BYTES = 64 * 2**20
FORMATS = ("lit", "safetensors")
#: safetensors ``__metadata__`` key of a merge output: the fingerprint of the adapter merged into it.
MERGE_MARK = "ckpt_tool.merged_adapter"
#: Files up to this size are fingerprinted whole; larger ones by ``_SAMPLES`` evenly spaced blocks.
_FULL_HASH_BYTES = 4 << 20
_SAMPLES, _SAMPLE_BYTES = 16, 64 << 10


@dataclass
class Output:
    """Where ``execute`` writes: a torch zip file (``fmt="lit"``) or a safetensors dir (``fmt="safetensors"``)."""

    fmt: str
    weights: Path  # the lit_model.pth file, or the directory for safetensors
    max_shard_size: int = 5 * 10**9
    copy_files: list[Path] = field(default_factory=list)
    copy_dir: Path | None = None
    metadata: dict[str, str] | None = None  # safetensors __metadata__ (None: {"format": "pt"})

    def specs_files(self, specs: list[TensorSpec]) -> list[Path]:
        if self.fmt == "lit":
            return [self.weights]
        return output_files(self.weights, specs, self.max_shard_size)

    def copies(self) -> list[tuple[Path, Path]]:
        if self.copy_dir is None:
            return []
        pairs = []
        for src in self.copy_files:
            dst = self.copy_dir / src.name
            if not _same_file(src, dst):
                pairs.append((src, dst))
        return pairs


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def output_specs(plan: MergePlan, fmt: str) -> list[tuple[TensorInfo, TensorSpec]]:
    """The written tensors in write order (base file order; for safetensors, widest dtypes first
    so every tensor stays aligned to its item size, as ``safetensors`` itself arranges them)."""
    pairs = []
    for t in plan.base.tensors:
        if t.name in plan.drop:
            continue
        if t.name not in plan.out_dtype:
            raise Unsupported(f"merge plan gives no output dtype for {t.name!r} (plugin bug)")
        pairs.append((t, TensorSpec(plan.rename.get(t.name, t.name), plan.out_dtype[t.name], tuple(t.shape))))
    names = [s.name for _, s in pairs]
    if len(set(names)) != len(names):
        raise Refused("the merged model would hold two tensors of the same name", "the plan's renames collide")
    if fmt == "safetensors":
        pairs.sort(key=lambda p: -DTYPE_SIZES[p[1].dtype])
    return pairs


class _Progress:
    """A rich progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("merging"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=True,
            )
            self.task = self.bar.add_task("merge", total=total)
            self.bar.start()

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class _WriteBehind:
    """Performs the writes, in order, on one background thread while the next tensor is computed.

    Writing (page-cache copies, CRC-32) and computing (matmuls, casts) then
    overlap; torch and zlib release the GIL for both. Bytes of computed
    tensors waiting to be written are bounded by ``limit``, so memory stays at
    about two tensors, not a queue of them. An error on the writer thread is
    re-raised in the caller at the next ``submit`` or at ``finish``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queue: collections.deque[tuple[int, Callable[[], None]]] = collections.deque()
        self.cv = threading.Condition()
        self.inflight = 0
        self.error: BaseException | None = None
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="ckpt-tool-writer", daemon=True)
        self.thread.start()

    def submit(self, nbytes: int, fn: Callable[[], None]) -> None:
        with self.cv:
            while self.error is None and self.inflight and self.inflight + nbytes > self.limit:
                self.cv.wait()
            if self.error is not None:
                raise self.error
            self.queue.append((nbytes, fn))
            self.inflight += nbytes
            self.cv.notify_all()

    def _run(self) -> None:
        while True:
            with self.cv:
                while not self.queue and not self.closed:
                    self.cv.wait()
                if not self.queue:
                    return
                nbytes, fn = self.queue[0]
                skip = self.error is not None
            try:
                if not skip:
                    fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                with self.cv:
                    self.error = exc
            with self.cv:
                self.queue.popleft()
                self.inflight -= nbytes
                self.cv.notify_all()

    def finish(self) -> None:
        """Wait until everything is written; re-raise a writer error."""
        with self.cv:
            self.closed = True
            self.cv.notify_all()
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Stop after the write in progress (the caller is unwinding an exception)."""
        with self.cv:
            self.error = self.error or RuntimeError("aborted")
            self.closed = True
            self.cv.notify_all()
        self.thread.join()


def execute(plan: MergePlan, out: Output, progress: bool = False) -> dict[str, Any]:
    """Stream the merge described by ``plan`` into ``out``. Returns counts for the summary.

    Nothing is visible at the output paths until every tensor was written and
    fsynced; any exception (or Ctrl-C) removes the temp files.
    """

    pairs = output_specs(plan, out.fmt)
    specs = [s for _, s in pairs]
    release_large_blocks()
    counts = {"changed": 0, "copied": 0, "converted": 0, "dropped": len(plan.drop & {t.name for t in plan.base.tensors})}
    reader = TensorReader()
    fds: dict[str, int] = {}

    def load(name: str) -> torch.Tensor:
        info = plan.adapter_tensors.get(name)
        if info is None:
            raise Refused(f"the merge needs adapter tensor {name!r}, which is not in the adapter")
        return reader.tensor(info)

    def fd_for(path: str) -> int:
        if path not in fds:
            fds[path] = os.open(path, os.O_RDONLY)
        return fds[path]

    largest = max((s.nbytes for s in specs), default=0)
    bar = _Progress(sum(s.nbytes for s in specs), progress)
    staged: list[Staged] = []
    try:
        # side files first as temps: a full disk shows up here, before any weight is written
        for src, dst in out.copies():
            staged.append(stage_copy(src, dst))
        if out.fmt == "lit":
            ctx = open_torch(out.weights, specs, wrapper=plan.wrapper)
        else:
            ctx = open_sharded_safetensors(out.weights, specs, out.max_shard_size, out.metadata)
        with ctx as writer:
            behind = _WriteBehind(limit=min(largest, WRITE_BEHIND_BYTES))
            try:
                for info, spec in pairs:
                    change = plan.changes.get(info.name)
                    if change is None and spec.dtype == info.dtype and info.is_contiguous:
                        begin, end = info.byte_range
                        view = memoryview(reader.data(info).numpy()) if info.nbytes else memoryview(b"")
                        fd = fd_for(info.file)
                        # file-to-file: no anonymous memory, so it does not count against the limit
                        behind.submit(0, functools.partial(writer.copy, spec.name, fd, begin, end - begin, view))
                        counts["copied"] += 1
                    else:
                        base = reader.tensor(info)
                        want = torch_dtype(spec.dtype)
                        if change is not None:
                            result = change(base, load)
                            counts["changed"] += 1
                        else:
                            result = base
                            counts["converted" if spec.dtype != info.dtype else "copied"] += 1
                        if result.dtype != want:
                            result = result.to(want)
                        if tuple(result.shape) != spec.shape:
                            raise Unsupported(
                                f"merge of {info.name!r} produced shape {tuple(result.shape)}, "
                                f"expected {spec.shape} (plugin bug)"
                            )
                        behind.submit(spec.nbytes, functools.partial(writer.write, spec.name, result))
                        del result, base
                    bar.advance(spec.nbytes)
                behind.finish()
            except BaseException:
                behind.abort()
                raise
        # the weights are in place (a sharded index last): now the side files that describe them
        for st in staged:
            st.publish()
    finally:
        for st in staged:
            st.discard()  # no-op for the published ones
        bar.close()
        for fd in fds.values():
            os.close(fd)
        reader.close()
    counts["written"] = len(specs)
    counts["bytes"] = sum(s.nbytes for s in specs)
    return counts


# --- the operation ---------------------------------------------------------------------------------


def _adapter_of(info: CheckpointInfo) -> CheckpointInfo:
    """The adapter at a path; a merged ``final/`` reports its adapter as a companion."""
    if info.kind == "adapter":
        return info
    for comp in info.companions:
        if comp.kind == "adapter":
            return comp
    raise Refused(
        f"{info.path} is a {info.format} model, not an adapter",
        "pass the adapter (LoRA) checkpoint as the first argument and the model as --base",
    )


def _plugin_manager() -> Any:
    from ckpt_tool.plugins import get_plugin_manager

    return get_plugin_manager()


def build_plan(adapter_path: Path, options: MergeOptions, probe: Probe | None = None) -> MergePlan:
    """Detect the adapter and its base and ask the adapter's plugin for the plan."""
    from ckpt_tool.ops.inspect import detect

    probe = probe or Probe()
    adapter = _adapter_of(detect(adapter_path, probe))
    pm = _plugin_manager()
    base_path = options.base
    if base_path is None:
        base_path = pm.hook.ckpt_merge_base(adapter=adapter)
        if base_path is None:
            raise NotFound(
                f"{adapter_path}: the adapter does not record a base model that exists here",
                "pass the base model with --base PATH",
            )
    base = detect(base_path, probe)
    if base.kind != "model":
        raise Refused(f"{base_path} is an adapter, not a base model", "pass the base model with --base PATH")
    mine = {os.path.realpath(f) for f in adapter.files}
    if any(mine & {os.path.realpath(f) for f in c.files} for c in base.companions):
        raise _twice(base_path, "it is the merged model beside this adapter")
    plan = pm.hook.ckpt_merge_plan(adapter=adapter, base=base, options=options)
    if plan is None:
        raise Unsupported(
            f"no plugin can merge a {adapter.format} {adapter.adapter_type or ''} adapter".replace("  ", " "),
            "run 'ckpt-tool plugins' to see the formats understood here",
        )
    if not plan.identity:
        plan.identity = sorted({Path(t.file) for t in plan.adapter_tensors.values()} | {Path(f) for f in adapter.files})
    _refuse_own_output(plan, base_path, probe)
    return plan


def _twice(base_path: Path, why: str) -> Refused:
    return Refused(
        f"{base_path} is this adapter's own merge output ({why}): merging into it would add the delta twice",
        "pass the original base model with --base (the adapter's config records it: hyperparameters.yaml "
        "checkpoint_dir, adapter_config.json base_model_name_or_path)",
    )


def _digest_file(path: Path, h: Any) -> None:
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        h.update(f"{size}\0".encode())
        if size <= _FULL_HASH_BYTES:
            h.update(fh.read(size))
            return
        for i in range(_SAMPLES):
            fh.seek((size - _SAMPLE_BYTES) * i // (_SAMPLES - 1))
            h.update(fh.read(_SAMPLE_BYTES))


def fingerprint(paths: list[Path]) -> str:
    """A cheap identity of an adapter's files (at most ~1 MB read per file past 4 MB): sha256 over each
    file's size and content, or evenly spaced samples of it. Trained weights differ everywhere, so two
    different adapters (or one adapter with another scale in its config) never share a fingerprint."""
    h = hashlib.sha256(b"ckpt-tool adapter fingerprint v1\0")
    for p in paths:
        _digest_file(p, h)
    return h.hexdigest()


def _same_content(copy: Path, original: Path) -> bool:
    """Whether ``copy`` (another file) holds the same bytes as ``original``, by size then fingerprint."""
    try:
        if os.path.samefile(copy, original) or copy.stat().st_size != original.stat().st_size:
            return False
        return fingerprint([copy]) == fingerprint([original])
    except OSError:
        return False


def _refuse_own_output(plan: MergePlan, base_path: Path, probe: Probe) -> None:
    """Refuse a base that is this adapter's merge output, by path and by (cheap) content.

    * a base file in one of the adapter's folders: LitGPT writes ``final/lit_model.pth`` beside the
      adapter, and a PEFT folder holding model weights loads as base + adapter;
    * a base folder holding a copy of one of the adapter's files (``cp -r final/ merged/``);
    * a safetensors base whose header records this adapter's fingerprint (ckpt-tool's merge output).
    """
    own_dirs = {os.path.realpath(p.parent) for p in plan.identity}
    own_dirs |= {os.path.realpath(os.path.dirname(f)) for f in plan.adapter.files}
    own_dirs |= {os.path.realpath(d) for d in plan.protected_dirs}
    base_files = sorted({os.path.realpath(f) for f in plan.base.files} | {os.path.realpath(t.file) for t in plan.base.tensors})
    for f in base_files:
        if os.path.dirname(f) in own_dirs:
            raise _twice(base_path, f"{f} lies in the adapter's own folder")
    for d in sorted({os.path.dirname(f) for f in base_files}):
        for mine in plan.identity:
            twin = Path(d) / mine.name
            if twin.is_file() and _same_content(twin, mine):
                raise _twice(base_path, f"its folder holds a copy of the adapter's {mine.name}")
    fp = fingerprint(plan.identity)
    plan.summary.setdefault("adapter_fingerprint", fp)
    for f in base_files:
        try:
            meta = probe.container(f).metadata
        except CkptError:
            continue
        if meta.get(MERGE_MARK) == fp:
            raise _twice(base_path, f"the header of {f} records this adapter's fingerprint")


def decide_output(plan: MergePlan, out: Path | None, fmt: str | None, max_shard_size: str) -> Output:
    """Map the plan's layout and the user's --out/--format onto concrete files."""
    layout = plan.layout
    fmt = fmt or ("lit" if layout == "lit" else "safetensors")
    if fmt not in FORMATS:
        raise Refused(f"unknown --format {fmt!r}", "use lit or safetensors")
    try:
        shard = parse_size(max_shard_size)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    if out is not None and plan.default_out is not None and _same_path(out, Path(plan.default_out).parent):
        out = None  # --out names the folder the format's own convention merges into: exactly the default
    if out is not None:
        if out.exists() and not out.is_dir():
            raise Refused(f"--out {out} is a file", "--out names a directory that receives the merged checkpoint")
        for d in plan.protected_dirs:
            if _same_path(out, d):
                raise Refused(
                    f"--out {out} is the adapter's own folder: the merged model would sit next to the adapter "
                    "and be loaded with it (or mistaken for it), applying the delta twice",
                    "write the merged model to a new directory with --out",
                )
        weights = out / LIT_WEIGHTS if fmt == "lit" else out
        return Output(fmt, weights, shard, list(plan.copy_files), out)
    if plan.default_out is None:
        raise Refused("this adapter has no default output location", "pass --out DIR")
    default = Path(plan.default_out)
    if fmt == "lit":
        weights = default if default.suffix else default / LIT_WEIGHTS
        return Output(fmt, weights, shard)
    target = default.parent if default.suffix else default
    copy_dir = target if layout == "hf" else None
    return Output(fmt, target, shard, list(plan.copy_files), copy_dir)


def _same_path(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def merge(
    adapter_path: Path,
    base: Path | None = None,
    out: Path | None = None,
    dtype: str = "auto",
    fmt: str | None = None,
    max_shard_size: str = DEFAULT_SHARD,
    force: bool = False,
    dry_run: bool = False,
    adapter_name: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Merge the adapter at ``adapter_path`` into its base; returns the JSON summary.

    Raises ``Refused`` (nothing written) for incompatible inputs, outputs that
    exist without ``force``, or outputs that would replace an input file.
    """
    started = time.perf_counter()
    options = MergeOptions(
        dtype=dtype,
        adapter_name=adapter_name,
        base=base,
        extra={"out": out, "force": force, "format": fmt},
    )
    plan = build_plan(adapter_path, options)
    target = decide_output(plan, out, fmt, max_shard_size)
    specs = [s for _, s in output_specs(plan, target.fmt)]
    files = target.specs_files(specs) + [dst for _, dst in target.copies()]

    inputs = {os.path.realpath(f) for f in plan.base.files + plan.adapter.files}
    inputs |= {os.path.realpath(t.file) for t in plan.base.tensors}
    inputs |= {os.path.realpath(t.file) for t in plan.adapter_tensors.values()}
    stale = _stale_weights(target, files)
    clash = [str(f) for f in files + stale if os.path.realpath(f) in inputs]
    if clash:
        raise Refused(
            f"the output would replace an input file ({', '.join(clash)})",
            "write the merged model somewhere else with --out DIR",
        )
    not_files = [str(f) for f in files if _not_a_file(f)]
    if not_files:
        raise Refused(
            f"output path {not_files[0]} exists and is not a regular file (a directory?)",
            "remove it or choose another --out; --force only replaces files",
        )
    existing = [str(f) for f in files if os.path.lexists(f)] + [str(f) for f in stale]
    if existing and not force:
        raise Refused(
            f"output already exists: {', '.join(existing)}",
            "pass --force to overwrite, or choose another --out",
        )

    summary: dict[str, Any] = {
        "adapter": str(plan.adapter.path),
        "base": str(plan.base.path),
        "adapter_type": plan.adapter.adapter_type,
        "format": target.fmt,
        "outputs": [str(f) for f in files],
        "dtype": _dtype_summary(specs),
        "dry_run": dry_run,
    }
    summary.update(plan.summary)
    if plan.warnings:
        summary["warnings"] = list(plan.warnings)
    if target.fmt == "safetensors":
        target.metadata = {"format": "pt", MERGE_MARK: plan.summary["adapter_fingerprint"]}
    if dry_run:
        summary["tensors"] = {
            "written": len(specs),
            "changed": sum(1 for t in plan.base.tensors if t.name in plan.changes and t.name not in plan.drop),
            "dropped": len(plan.drop),
            "bytes": sum(s.nbytes for s in specs),
        }
    else:
        cleaned = [p for d in sorted({f.parent for f in files}) for p in clean_stale_temps(d)]
        if cleaned:
            summary["removed_temp_files"] = [str(p) for p in cleaned]
        summary["tensors"] = execute(plan, target, progress=progress)
        for f in stale:  # only reached with --force: weights of an earlier merge a loader could pick instead
            f.unlink(missing_ok=True)
        if stale:
            summary["removed"] = [str(f) for f in stale]
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def _stale_weights(target: Output, files: list[Path]) -> list[Path]:
    """Safetensors weights in the output dir that the new output would not replace.

    A leftover ``model.safetensors`` next to a new sharded index (or old
    shards next to a new single file) would be loaded instead of, or mixed
    with, the new merge; they count as existing output and go with --force.
    """
    if target.fmt != "safetensors" or not target.weights.is_dir():
        return []
    d = target.weights
    new = {os.path.realpath(f) for f in files}
    candidates = [d / "model.safetensors", d / SAFETENSORS_INDEX, *sorted(d.glob("model-?????-of-?????.safetensors"))]
    return [c for c in candidates if c.exists() and os.path.realpath(c) not in new]


def _not_a_file(path: Path) -> bool:
    """An existing output path that a rename cannot replace (a directory, a socket...)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return not stat.S_ISREG(st.st_mode)


def _dtype_summary(specs: list[TensorSpec]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in specs:
        key = DTYPE_NAMES.get(s.dtype, s.dtype)
        out[key] = out.get(key, 0) + 1
    return out


__all__ = ["MergeOptions", "MergePlan", "Output", "build_plan", "decide_output", "execute", "merge"]
