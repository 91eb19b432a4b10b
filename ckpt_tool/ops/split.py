"""``split``: one checkpoint into several, by byte copies — another client of the streaming engine.

Two copying operations, both plans of ``compute=None`` steps, so every tensor is copied
file to file (``copy_file_range``) and comes out bit-identical:

* **adapter** (``--base-out B --adapter-out A``): a *combined* checkpoint — a full
  model whose state dict still carries LoRA tensors (a LitGPT LoRA model's whole
  ``state_dict()``, a PEFT model saved whole) — into a clean base with the base
  convention's key names and an adapter in its own convention. Which keys are
  which is the plugins' knowledge (``ckpt_split_adapter``): LitGPT's plugin
  writes ``lit_model.pth`` + ``lit_model.pth.lora`` + ``hyperparameters.yaml``,
  PEFT's an HF model directory + an adapter directory.
* **shard** (``--max-shard-size SIZE --out DIR``): any model into
  ``model-0000i-of-0000K.safetensors`` + ``model.safetensors.index.json`` with
  the shard boundaries ``save_pretrained`` draws (``--max-shard-size 0``: one
  ``model.safetensors``), the model's config and tokenizer files copied along.
* **extract-lora** (``--extract-lora --base BASE --rank R --out DIR``): the one
  mode that computes: a PEFT LoRA adapter from a full fine-tune and its base,
  by truncated SVD of the weight deltas (``ops/extract_lora.py``).

Tensors that share one storage in a ``.bin`` / ``.pth`` (tied embeddings) cannot
be stored twice in safetensors: the plugin of the convention says which copy
its loader re-ties (``ckpt_tied_duplicates``), anything else is refused.
Nothing is written when anything is refused, and a failure while writing
leaves no file, no temp file and no directory that the command created.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_tool.errors import Refused, Unsupported, UsageError
from ckpt_tool.io.sidefiles import travelling_files
from ckpt_tool.model import CheckpointInfo, TensorInfo
from ckpt_tool.ops import engine
from ckpt_tool.ops.layouts import get_layout
from ckpt_tool.ops.transform import SideFile, Sink, Step, TransformPlan, copy_step

IN = "in"
BASE = "base"
ADAPTER = "adapter"
OUT = "out"
DEFAULT_SHARD = 5 * 10**9
#: ``--max-shard-size 0``: every tensor in one ``model.safetensors``.
CONSOLIDATE = sys.maxsize
_ZERO = re.compile(r"0+(\.0*)?\s*([kmgt]i?)?b?", re.IGNORECASE)


@dataclass
class SplitOptions:
    """What the user asked for; handed to ``ckpt_split_adapter``.

    Attributes:
        base_out: where the clean base goes (a directory).
        adapter_out: where the adapter goes (a directory).
        lora_alpha: ``--lora-alpha`` (None: take it from the side files, or as the convention decides).
        max_shard_size: bytes per safetensors shard of a Hugging Face base (``CONSOLIDATE``: one file).
        shard_size_given: whether ``--max-shard-size`` was given (LitGPT bases are one file and refuse it).
    """

    base_out: Path | None = None
    adapter_out: Path | None = None
    lora_alpha: float | int | None = None
    max_shard_size: int = DEFAULT_SHARD
    shard_size_given: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SplitPlan:
    """What a plugin's ``ckpt_split_adapter`` returns.

    ``steps`` read input ``"in"`` and write sinks ``"base"`` and ``"adapter"``;
    ``summary`` carries the facts the user must see (``lora``: r / alpha /
    targets; ``assumed``: the settings that were not recorded anywhere and were
    assumed, also written machine-readably into the adapter's config).
    """

    convention: str
    steps: list[Step]
    sinks: dict[str, Sink]
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# --- option values ---------------------------------------------------------------------------------


def parse_shard_size(text: str | None) -> int | None:
    """``--max-shard-size``: None (not given), ``CONSOLIDATE`` for 0, else bytes (HF units: 5GB, 500MB, 2GiB)."""
    from ckpt_tool.io.writers import parse_size

    if text is None:
        return None
    s = str(text).strip()
    if _ZERO.fullmatch(s):
        return CONSOLIDATE
    try:
        n = parse_size(s)
    except (ValueError, OverflowError):
        n = 0
    if not isinstance(n, int) or n < 1:
        raise UsageError(f"invalid --max-shard-size {text!r}", "use a size such as 5GB, 500MB or 2GiB, or 0 for one file")
    return n


def parse_alpha(text: str | None) -> float | int | None:
    """``--lora-alpha``: a finite number (kept an int when it is one: ``16``, not ``16.0``, in configs)."""
    if text is None:
        return None
    try:
        value = float(str(text).strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value == 0:
        raise UsageError(f"invalid --lora-alpha {text!r}", "give the lora_alpha the adapter was trained with, e.g. 16")
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


# --- the plans -------------------------------------------------------------------------------------


def _plugin_manager() -> Any:
    from ckpt_tool.plugins import get_plugin_manager

    return get_plugin_manager()


def _lora_like(info: CheckpointInfo) -> bool:
    return any(".lora_" in t.name for t in info.tensors)


def adapter_plan(info: CheckpointInfo, options: SplitOptions) -> SplitPlan:
    """Ask the plugins to separate ``info`` into base and adapter."""
    if info.kind == "adapter":
        raise Refused(
            f"{info.path} is already an adapter ({info.description or info.format}): there is no base in it to split off",
            "split takes a full model whose state dict still carries the LoRA tensors",
        )
    if info.training_state:
        raise Refused(
            f"{info.path} is a training state (model + optimizer): the optimizer state would be lost",
            "split the model weights saved without the optimizer state",
        )
    plan = _plugin_manager().hook.ckpt_split_adapter(source=info, options=options)
    if plan is None:
        if not _lora_like(info):
            raise Refused(
                f"{info.path}: no LoRA tensors in this {info.format} model, so there is nothing to split off",
                "pass a model that still carries its lora_A / lora_B tensors, or use --max-shard-size to shard it",
            )
        raise Unsupported(
            f"{info.path}: no plugin knows the key grammar of the LoRA tensors in this {info.format} model",
            "split understands LitGPT LoRA models and PEFT models saved whole; run 'ckpt-tool plugins'",
        )
    return plan


def input_dir(info: CheckpointInfo) -> Path:
    """The directory whose side files (config, tokenizer) belong to the input."""
    d = (info.details or {}).get("dir")
    if isinstance(d, str) and d:
        return Path(d)
    p = Path(info.path)
    return p if p.is_dir() else p.parent


def common_metadata(info: CheckpointInfo) -> dict[str, str] | None:
    """The safetensors ``__metadata__`` every input file agrees on (kept when re-sharding), else None."""
    from ckpt_tool.io.container import Probe

    probe = Probe()
    metas: list[dict[str, str]] = []
    for f in dict.fromkeys(t.file for t in info.tensors):
        try:
            c = probe.container(f)
        except Exception:  # noqa: BLE001 - detection read it already; any surprise means "no common metadata"
            return None
        if c.kind != "safetensors":
            return None
        metas.append(dict(c.metadata))
    if not metas or any(m != metas[0] for m in metas):
        return None
    return metas[0] or None


def shard_plan(info: CheckpointInfo, out: Path, limit: int) -> TransformPlan:
    """Every tensor under its own name, in the input's order, into the ``hf`` layout."""
    if info.kind != "model":
        raise Refused(
            f"{info.path} is an adapter, not a model: adapters are written as one file by their convention",
            "shard a model (a file or directory of model weights)",
        )
    if info.training_state:
        raise Refused(
            f"{info.path} is a training state (model + optimizer): the optimizer state would be lost",
            "shard the model weights saved without the optimizer state",
        )
    if not info.tensors:
        raise Refused(f"{info.path} holds no tensors to shard")
    steps = [copy_step(IN, t.name, OUT, t.name, t.dtype, t.shape, "same name") for t in info.tensors]
    opts: dict[str, Any] = {"max_shard_size": limit}
    meta = common_metadata(info)
    if meta:
        opts["metadata"] = meta
    plan = TransformPlan({IN: info}, steps, {OUT: Sink("hf", out, opts, hf_side_files(input_dir(info)))})
    plan.provenance = {"operation": "split", "split": {"mode": "shards", "max_shard_size": limit}}
    return plan


def hf_side_files(directory: Path) -> list[SideFile]:
    """``config.json`` and the tokenizer / generation files beside the input, copied as they are."""
    files = {"config.json": directory / "config.json"} if (directory / "config.json").is_file() else {}
    files.update(travelling_files(directory))
    return [SideFile(name, src=src) for name, src in files.items()]


# --- tied weights ----------------------------------------------------------------------------------


def _storage(t: TensorInfo) -> tuple[Any, ...] | None:
    """Identity of a tensor's bytes: two names with the same identity are one tensor stored once."""
    if t.storage_key is None:
        return None  # safetensors: offsets never overlap (the reader checks)
    return (os.path.realpath(t.file), t.data_offset, t.storage_offset, tuple(t.shape), t.stride, t.dtype)


def drop_tied(plan: TransformPlan, source: CheckpointInfo) -> list[str]:
    """Resolve outputs that are one storage in the input: drop what the convention re-ties, refuse the rest.

    Returns the dropped output names. Only ``compute=None`` steps are looked at
    (split plans are nothing else); a group spanning sinks is not a problem
    (each file holds its own copy).
    """
    index = {(role, t.name): t for role, info in plan.inputs.items() for t in info.tensors}
    groups: dict[tuple[str, tuple[Any, ...]], list[str]] = {}
    for step in plan.steps:
        if step.compute is not None or len(step.reads) != 1 or len(step.outs) != 1:
            continue
        r, o = step.reads[0], step.outs[0]
        key = _storage(index[(r.input, r.name)]) if (r.input, r.name) in index else None
        if key is not None:
            groups.setdefault((o.sink, key), []).append(o.name)
    shared = [(sink, names) for (sink, _), names in groups.items() if len(names) > 1]
    if not shared:
        return []
    answer = _plugin_manager().hook.ckpt_tied_duplicates(source=source, groups=[g for _, g in shared]) or []
    drop = {(sink, n) for sink, g in shared for n in g if n in set(answer)}
    unresolved = [g for sink, g in shared if sum((sink, n) not in drop for n in g) != 1]
    if unresolved:
        g = unresolved[0]
        raise Refused(
            f"{source.path}: {len(unresolved)} group(s) of tensors share one storage (e.g. {', '.join(g)}) and "
            "nothing says the loader ties them back: writing them twice would untie them, writing one would "
            "leave the other missing",
            "for a Hugging Face model record \"tie_word_embeddings\": true in config.json if the model ties its "
            "embeddings (transformers' save_pretrained then keeps one copy, as split does); otherwise re-save the "
            "model without shared tensors",
        )
    plan.steps = [s for s in plan.steps if not (s.compute is None and s.outs and (s.outs[0].sink, s.outs[0].name) in drop)]
    return sorted(n for _, n in drop)


# --- outputs ---------------------------------------------------------------------------------------


def _sink_dir(sink: Sink) -> Path:
    return sink.path if get_layout(sink.layout).target == "dir" else sink.path.parent


def refuse_outputs_in_inputs(plan: TransformPlan, source: CheckpointInfo, labels: dict[str, str]) -> None:
    """An output directory may not be the input directory, lie inside it, or be a folder holding input weights.

    Writing there would mix the outputs with the input's own files (a LitGPT
    ``lit_model.pth`` next to the adapter means "already merged"; shards next to
    the file they came from make two models in one directory).
    """
    src = Path(source.path)
    inside = {os.path.realpath(src)} if src.is_dir() else set()
    holders = {os.path.dirname(os.path.realpath(f)) for f in [*source.files, *(t.file for t in source.tensors)] if f}
    for name, sink in plan.sinks.items():
        d = os.path.realpath(_sink_dir(sink))
        bad = d in holders or any(d == root or d.startswith(root.rstrip(os.sep) + os.sep) for root in inside)
        if bad:
            raise Refused(
                f"{labels.get(name, name)} {_sink_dir(sink)} is inside the input {source.path}",
                "write the outputs to another directory",
            )


def _missing_dirs(dirs: Sequence[Path]) -> list[Path]:
    """Directories that do not exist yet (deepest first), so a failed write can remove what it created."""
    out: list[Path] = []
    for d in dirs:
        p = Path(os.path.abspath(d))
        chain = []
        while not p.exists() and p != p.parent:
            chain.append(p)
            p = p.parent
        out.extend(chain)
    return sorted(set(out), key=lambda p: -len(p.parts))


def _remove_empty(dirs: Sequence[Path]) -> None:
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            pass


def in_write_order(plan: TransformPlan, target: engine.Target) -> None:
    """Run the copies in the order their bytes land in the output files, file after file.

    The plan's order decided the shard boundaries (``resolve`` is done); what is
    left is I/O. Written in plan order, a consolidation lands its tensors all
    over one big file (the input's order is shard by shard, the output's is
    ``save_file``'s dtype-then-name order), and scattered writes into a
    multi-GB file cost 2-3x a sequential copy once writeback starts (4 GB model:
    23 s vs 6 s for a plain copy). Page-cache reads jump between inputs
    instead, which costs nothing when they are cached and little otherwise:
    every tensor is one contiguous range.
    """
    position: dict[tuple[str, str], tuple[int, int]] = {}
    for i, (fp, sink) in enumerate(zip(target.files, target.file_sinks)):
        for j, name in enumerate(fp.names):
            position[(sink, name)] = (i, j)
    last = (len(target.files), 0)
    plan.steps.sort(key=lambda st: min((position.get((o.sink, o.name), last) for o in st.outs), default=last))


def _execute(plan: TransformPlan, target: engine.Target, force: bool, dry_run: bool, progress: bool) -> engine.Report:
    created = [] if dry_run else _missing_dirs([_sink_dir(s) for s in plan.sinks.values()])
    try:
        return engine.execute(plan, force=force, dry_run=dry_run, progress=progress, label="splitting", target=target)
    except BaseException:
        _remove_empty(created)
        raise


def _sink_summary(plan: TransformPlan, target: engine.Target, name: str) -> dict[str, Any]:
    sink = plan.sinks[name]
    outs = plan.outs(name)
    files = [str(fp.path) for fp, sk in zip(target.files, target.file_sinks) if sk == name]
    return {
        "path": str(sink.path),
        "layout": sink.layout,
        "outputs": files,
        "tensors": len(outs),
        "bytes": sum(o.nbytes for o in outs),
    }


# --- the operation ---------------------------------------------------------------------------------


def split(
    src: Path,
    *,
    base_out: Path | None = None,
    adapter_out: Path | None = None,
    out: Path | None = None,
    max_shard_size: str | None = None,
    lora_alpha: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress: bool = False,
    extract_lora: bool = False,
    base: Path | None = None,
    rank: Any = None,
    targets: Sequence[str] = (),
) -> dict[str, Any]:
    """Split ``src`` (see the module docstring); returns the JSON summary. Writes nothing on any error."""
    from ckpt_tool.ops.inspect import detect

    extract_opts = base is not None or rank is not None or bool(targets)
    if extract_lora or extract_opts:
        if not extract_lora:
            raise UsageError("--base, --rank and --targets belong to --extract-lora")
        if base_out is not None or adapter_out is not None or max_shard_size is not None or lora_alpha is not None:
            raise UsageError("--extract-lora takes --base, --rank, --out and --targets only")
        if base is None or rank is None or out is None:
            raise UsageError("--extract-lora needs --base BASE, --rank R and --out DIR")
        from ckpt_tool.ops.extract_lora import extract

        return extract(src, base, out, rank, targets, force=force, dry_run=dry_run, progress=progress)

    started = time.perf_counter()
    src = Path(src)
    base_out, adapter_out, out = (None if p is None else Path(p) for p in (base_out, adapter_out, out))
    adapter_mode = base_out is not None or adapter_out is not None
    if adapter_mode and out is not None:
        raise UsageError("--out shards a model; --base-out/--adapter-out separate base and adapter", "use one or the other")
    if adapter_mode and (base_out is None or adapter_out is None):
        raise UsageError("separating an adapter needs both --base-out DIR and --adapter-out DIR")
    if not adapter_mode and out is None:
        raise UsageError(
            "say what to write: --base-out DIR --adapter-out DIR (separate LoRA tensors from the base), "
            "or --max-shard-size SIZE --out DIR (shard / consolidate)"
        )
    shard = parse_shard_size(max_shard_size)
    alpha = parse_alpha(lora_alpha)
    if not adapter_mode and alpha is not None:
        raise UsageError("--lora-alpha only applies to --base-out/--adapter-out")
    if adapter_mode and os.path.abspath(base_out) == os.path.abspath(adapter_out):  # type: ignore[arg-type]
        raise Refused(
            f"--base-out and --adapter-out are the same directory ({base_out})",
            "LitGPT reads a lit_model.pth next to lit_model.pth.lora as an already merged model, and transformers "
            "loads a directory with adapter_config.json as the adapter; give two directories",
        )

    info = detect(src)
    summary: dict[str, Any] = {"source": str(src), "source_format": info.format, "kind": info.kind}
    warnings: list[str] = []
    notes: list[str] = []
    if adapter_mode:
        options = SplitOptions(
            base_out=base_out, adapter_out=adapter_out, lora_alpha=alpha,
            max_shard_size=shard or DEFAULT_SHARD, shard_size_given=shard is not None,
        )
        sp = adapter_plan(info, options)
        plan = TransformPlan({IN: info}, sp.steps, sp.sinks, dict(sp.summary))
        plan.provenance = {"operation": "split", "split": {"mode": "adapter", "convention": sp.convention}}
        labels = {BASE: "--base-out", ADAPTER: "--adapter-out"}
        summary.update({"mode": "adapter", "convention": sp.convention, "to": sp.sinks[ADAPTER].layout})
        warnings += sp.warnings
        notes += sp.notes
    else:
        assert out is not None
        plan = shard_plan(info, out, shard or DEFAULT_SHARD)
        labels = {OUT: "--out"}
        summary.update({"mode": "shard", "to": "hf", "max_shard_bytes": 0 if shard == CONSOLIDATE else (shard or DEFAULT_SHARD)})
    dropped = drop_tied(plan, info)
    refuse_outputs_in_inputs(plan, info, labels)
    target = engine.resolve(plan)
    in_write_order(plan, target)
    report = _execute(plan, target, force, dry_run, progress)

    c = report.counts
    summary.update({
        "outputs": [str(p) for p in target.all_paths(plan)],
        "output_dtypes": engine.dtype_summary(plan.outs()),
        "dry_run": dry_run,
        "tensors": engine.tensor_counts(report),
    })
    if adapter_mode:
        summary["base_out"] = _sink_summary(plan, target, BASE)
        summary["adapter_out"] = _sink_summary(plan, target, ADAPTER)
        summary.update(plan.summary)
    else:
        summary["shards"] = sum(1 for sk in target.file_sinks if sk == OUT)
    if dropped:
        summary["dropped_tied"] = dropped
        notes.append(
            f"{len(dropped)} tied duplicate(s) not written ({', '.join(dropped)}): the loader ties them back "
            "from the tensor kept, as save_pretrained does"
        )
    if c.get("removed_stale"):
        summary["removed"] = [f.removeprefix("removed ") for f in report.files if f.startswith("removed ")]
    if notes:
        summary["notes"] = notes
    if warnings:
        summary["warnings"] = warnings
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary
