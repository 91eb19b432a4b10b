"""``merge``: fold an adapter into its base — one client of the streaming transform engine.

``build_plan`` detects the adapter and its base and asks the adapter's plugin
for a ``MergePlan`` (the plugin validates the pair and owns the math, op for op
like its peer). ``merge`` turns that plan into transform steps — one step per
base tensor: a byte copy when nothing changes, the plugin's change function
otherwise — chooses the output layout (``--to lit|hf``; default: the
adapter's own convention) and hands everything to ``ops.engine.execute``,
which streams one tensor at a time and publishes atomically (weights, then
the index, then side files; stale temp files of killed earlier runs in the
output directory are removed first).

The adapter is never merged twice: a base that lies in the adapter's own
folder, that holds a copy of the adapter's files, or whose safetensors header
records this adapter's fingerprint (every safetensors merge output does, under
``MERGE_MARK``) is refused, and so is an output directory the plugin protects
(the adapter's own folders).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import CkptError, NotFound, Refused, Unsupported, UsageError
from ckpt_tool.io import provenance
from ckpt_tool.io.container import Probe
from ckpt_tool.io.fingerprint import fingerprint, same_content
from ckpt_tool.io.sidefiles import TOKENIZER_FILES
from ckpt_tool.io.writers import parse_size
from ckpt_tool.model import CheckpointInfo
from ckpt_tool.ops import engine
from ckpt_tool.ops.merge_plan import Change, MergeOptions, MergePlan, parse_lora_alpha, parse_lora_targets
from ckpt_tool.ops.transform import Out, Read, SideFile, Sink, Step, TransformPlan, copy_step

if TYPE_CHECKING:
    import torch

DEFAULT_SHARD = "5GB"
#: safetensors ``__metadata__`` key of a merge output: the fingerprint of the adapter merged into it.
MERGE_MARK = "ckpt_tool.merged_adapter"
LAYOUTS = ("lit", "hf")
SINK = "out"


def merge_steps(plan: MergePlan, sink: str = SINK) -> list[Step]:
    """One step per written base tensor, in base file order: a copy/cast, or the plugin's change."""
    steps: list[Step] = []
    for t in plan.base.tensors:
        if t.name in plan.drop:
            continue
        if t.name not in plan.out_dtype:
            raise Unsupported(f"merge plan gives no output dtype for {t.name!r} (plugin bug)")
        name, dtype = plan.rename.get(t.name, t.name), plan.out_dtype[t.name]
        change = plan.changes.get(t.name)
        if change is None:
            steps.append(copy_step("base", t.name, sink, name, dtype, t.shape, "unchanged"))
        else:
            out = Out(sink, name, dtype, tuple(t.shape))
            steps.append(Step((out,), (Read("base", t.name),), _apply(change, dtype), "merged"))
    return steps


def _apply(change: Change, dtype: str) -> Any:
    """Run a plugin change function on the base tensor, then the plain ``.to`` cast to the plan's output dtype."""

    def compute(tensors: Any, load: Any) -> list[torch.Tensor]:
        from ckpt_tool.io.tensors import torch_dtype

        result = change(tensors[0], lambda name: load("adapter", name))
        want = torch_dtype(dtype)
        return [result if result.dtype == want else result.to(want)]

    return compute


def transform_plan(plan: MergePlan, sink: Sink) -> TransformPlan:
    """The engine's plan for a merge: inputs ``base`` and ``adapter`` (the tensors the change functions load)."""
    adapter = dataclasses.replace(plan.adapter, tensors=list(plan.adapter_tensors.values()))
    return TransformPlan({"base": plan.base, "adapter": adapter}, merge_steps(plan), {SINK: sink}, dict(plan.summary))


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
    _check_overrides_taken(plan, options)
    _refuse_own_output(plan, base_path, probe)
    return plan


def _check_overrides_taken(plan: MergePlan, options: MergeOptions) -> None:
    """A plugin that ignored ``--lora-alpha`` / ``--lora-targets`` would merge with other values than the
    user asked for: refuse unless the plan says it used them."""
    hp = plan.summary.get("hyperparameters")
    given = set(hp.get("given") or []) if isinstance(hp, dict) else set()
    missing = [o for o in options.overrides if (o == "--lora-alpha" and "alpha" not in given)
               or (o == "--lora-targets" and not given - {"alpha", "r"})]
    if missing:
        raise UsageError(
            f"{' and '.join(missing)} cannot be applied to this {plan.adapter.format} adapter (its plugin does not "
            "take hyperparameters from the command line)",
            "leave the option out; the adapter's own config decides",
        )


def _twice(base_path: Path, why: str) -> Refused:
    return Refused(
        f"{base_path} is this adapter's own merge output ({why}): merging into it would add the delta twice",
        "pass the original base model with --base (the adapter's config records it: hyperparameters.yaml "
        "checkpoint_dir, adapter_config.json base_model_name_or_path)",
    )


def _refuse_own_output(plan: MergePlan, base_path: Path, probe: Probe) -> None:
    """Refuse a base that is this adapter's merge output, by path and by (cheap) content.

    * a base file in one of the adapter's folders: LitGPT writes ``final/lit_model.pth`` beside the
      adapter, and a PEFT folder holding model weights loads as base + adapter;
    * a base folder holding a copy of one of the adapter's files (``cp -r final/ merged/``);
    * a safetensors base whose header records this adapter's fingerprint (ckpt-tool's merge output);
    * a base whose provenance record (safetensors header, or the provenance file beside torch-zip
      weights) names a merge of this adapter anywhere in its history (a conversion of the merge too).
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
            if twin.is_file() and same_content(twin, mine):
                raise _twice(base_path, f"its folder holds a copy of the adapter's {mine.name}")
    fp = fingerprint(plan.identity)
    plan.summary.setdefault("adapter_fingerprint", fp)
    if fp in provenance.merged_adapters(plan.base.provenance):
        where = "the record in its safetensors header" if plan.base.container == "safetensors" else provenance.FILE
        raise _twice(base_path, f"its provenance ({where}) records a merge of this adapter")
    for f in base_files:
        try:
            meta = probe.container(f).metadata
        except CkptError:
            continue
        if meta.get(MERGE_MARK) == fp:
            raise _twice(base_path, f"the header of {f} records this adapter's fingerprint")


def _same_path(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def run_plan(
    plan: MergePlan,
    sink: Sink,
    *,
    force: bool = False,
    dry_run: bool = False,
    progress: bool = False,
    tplan: TransformPlan | None = None,
    target: engine.Target | None = None,
) -> tuple[dict[str, int], engine.Report]:
    """Execute a merge plan into ``sink``; returns the tensor counts of the merge summary and the engine report."""
    tplan = tplan or transform_plan(plan, sink)
    report = engine.execute(tplan, force=force, dry_run=dry_run, progress=progress, label="merging", target=target)
    c = report.counts
    counts = {
        "written": c["tensors"],
        "changed": sum(1 for s in tplan.steps if s.compute is not None),
        "copied": c["copied"],
        "cast": c["cast"],
        "dropped": len(plan.drop & {t.name for t in plan.base.tensors}),
        "bytes": c["bytes"],
    }
    return counts, report


def decide_sink(plan: MergePlan, out: Path | None, to: str | None, max_shard_size: str) -> Sink:
    """Map the plan's convention and the user's ``--out`` / ``--to`` onto a sink of a registered layout.

    Output in the adapter's own convention goes beside the adapter by default
    (LitGPT: ``final/lit_model.pth``); another convention needs ``--out``.
    """
    layout = to or plan.layout
    if layout not in LAYOUTS:
        raise UsageError(f"unknown --to {layout!r}", "use lit or hf")
    try:
        shard = parse_size(max_shard_size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    options: dict[str, Any] = {"max_shard_size": shard}
    if layout == "lit":
        options["wrapper"] = plan.wrapper
    if layout == "hf" and plan.summary.get("adapter_fingerprint"):
        options["metadata"] = {MERGE_MARK: plan.summary["adapter_fingerprint"]}
    if (
        out is not None
        and layout == plan.layout
        and plan.default_out is not None
        and _same_path(out, Path(plan.default_out).parent)
    ):
        out = None  # --out names the folder the format's own convention merges into: exactly the default
    if out is not None:
        for d in plan.protected_dirs:
            if _same_path(out, d):
                raise Refused(
                    f"--out {out} is the adapter's own folder: the merged model would sit next to the adapter "
                    "and be loaded with it (or mistaken for it), applying the delta twice",
                    "write the merged model to a new directory with --out",
                )
        if out.exists() and not out.is_dir():
            raise Refused(f"--out {out} is a file", "--out names a directory that receives the merged checkpoint")
        side = [SideFile(f.name, src=f) for f in plan.copy_files] if layout == plan.layout else []
        return Sink(layout, out, options, side)
    if layout != plan.layout:
        raise UsageError(f"--to {layout} writes a new checkpoint directory", "pass --out DIR")
    if plan.default_out is None:
        raise Refused("this adapter has no default output location", "pass --out DIR")
    default = Path(plan.default_out)
    if layout == "lit":
        if default.suffix:
            options["weights_name"] = default.name
            default = default.parent
        return Sink(layout, default, options)
    target = default.parent if default.suffix else default
    return Sink(layout, target, options, [SideFile(f.name, src=f) for f in plan.copy_files])


def converted_plan(plan: MergePlan, sink: Sink, dtype: str | None) -> tuple[TransformPlan, dict[str, Any]]:
    """Merge, then convert the merged model into ``sink.layout``, as one streaming pass.

    The merged tensors never exist as a file: the merge steps (in the base's
    convention) are composed with the base plugin's ``ckpt_to_hub`` steps and
    the target plugin's ``ckpt_from_hub`` steps, so ``merge final --to hf``
    writes a directory transformers loads directly.
    """
    from ckpt_tool.model import TensorInfo
    from ckpt_tool.ops.convert import ConvertOptions
    from ckpt_tool.ops.transform import HUB, compose

    merged = merge_steps(plan, sink="in")  # the hub steps read the merged tensors as their input "in"
    tensors = [
        TensorInfo(o.name, o.dtype, o.shape, file="", data_offset=0, storage_numel=o.nbytes // max(1, _itemsize(o.dtype)))
        for st in merged
        for o in st.outs
    ]
    info = dataclasses.replace(plan.base, tensors=tensors, companions=[], training_state=False, wrapper="bare")
    options = ConvertOptions(to=sink.layout, dtype=dtype, max_shard_size=sink.options.get("max_shard_size", 5 * 10**9))
    pm = _plugin_manager()
    view = pm.hook.ckpt_to_hub(source=info, options=options)
    if view is None:
        raise Unsupported(f"no plugin converts a merged {plan.base.format} model to {sink.layout}")
    tokenizer = {f.name: f for f in plan.copy_files if f.name in TOKENIZER_FILES}
    if tokenizer:  # the merge's choice (the adapter's tokenizer first) replaces the base's, as a whole
        view.files = {**{k: v for k, v in view.files.items() if k not in TOKENIZER_FILES}, **tokenizer}
    result = pm.hook.ckpt_from_hub(view=view, layout=sink.layout, options=options)
    if result is None:
        raise Unsupported(f"no plugin writes a model in the {sink.layout!r} layout")
    steps = compose(compose(merged, view.steps, via="in"), result.steps, via=HUB)
    adapter = dataclasses.replace(plan.adapter, tensors=list(plan.adapter_tensors.values()))
    out_sink = Sink(sink.layout, sink.path, {**sink.options, **result.options}, result.side_files)
    tplan = TransformPlan({"base": plan.base, "adapter": adapter}, steps, {SINK: out_sink}, dict(plan.summary))
    return tplan, {**result.summary, "converted_to": sink.layout}


#: Summary keys of a merge plan that go into the provenance record's ``merge`` section (when present).
_RECORDED = (
    "adapter_fingerprint", "adapter_name", "peft_type", "lora", "hyperparameters", "assumed", "load_dtype", "dtype_source", "compute_dtype", "out_dtype",
    "recorded_base", "reference",
)


def _merge_record(plan: MergePlan, sink: Sink) -> dict[str, Any]:
    """What a merge adds to the provenance record: the adapter's identity, its scale(s) and where r/alpha
    came from (recorded, assumed, given on the command line), the dtype rule."""
    out: dict[str, Any] = {"convention": plan.adapter.format, "adapter_type": plan.adapter.adapter_type, "to": sink.layout}
    out.update({k: plan.summary[k] for k in _RECORDED if k in plan.summary})
    return out


def _itemsize(dtype: str) -> int:
    from ckpt_tool.model import DTYPE_SIZES

    return DTYPE_SIZES[dtype]


def merge(
    adapter_path: Path,
    base: Path | None = None,
    out: Path | None = None,
    dtype: str = "auto",
    to: str | None = None,
    max_shard_size: str = DEFAULT_SHARD,
    force: bool = False,
    dry_run: bool = False,
    adapter_name: str | None = None,
    progress: bool = False,
    lora_alpha: str | None = None,
    lora_targets: str | None = None,
) -> dict[str, Any]:
    """Merge the adapter at ``adapter_path`` into its base; returns the JSON summary.

    ``lora_alpha`` / ``lora_targets`` (``--lora-alpha 16``, ``--lora-targets query,value``) replace the
    adapter's recorded hyperparameters where the format allows it (LitGPT adapters whose
    hyperparameters.yaml is lost or wrong); PEFT adapters refuse them.

    Raises ``Refused`` (nothing written) for incompatible inputs, outputs that
    exist without ``force``, or outputs that would replace an input file.
    """
    started = time.perf_counter()
    options = MergeOptions(
        dtype=dtype,
        adapter_name=adapter_name,
        base=base,
        extra={"out": out, "force": force, "to": to},
        lora_alpha=parse_lora_alpha(lora_alpha),
        lora_targets=parse_lora_targets(lora_targets),
    )
    plan = build_plan(adapter_path, options)
    sink = decide_sink(plan, out, to, max_shard_size)
    extra: dict[str, Any] = {}
    if sink.layout == plan.layout:
        tplan = transform_plan(plan, sink)
    else:
        tplan, extra = converted_plan(plan, sink, options.out_dtype)
    tplan.provenance = {"operation": "merge", "merge": _merge_record(plan, sink)}
    target = engine.resolve(tplan)
    outs = tplan.outs()
    summary: dict[str, Any] = {
        "adapter": str(plan.adapter.path),
        "base": str(plan.base.path),
        "adapter_type": plan.adapter.adapter_type,
        "to": sink.layout,
        "outputs": [str(p) for p in target.all_paths(tplan)],
        "output_dtypes": engine.dtype_summary(outs),
        "dry_run": dry_run,
    }
    summary.update(plan.summary)
    summary.update(extra)
    if plan.warnings:
        summary["warnings"] = list(plan.warnings)
    summary["tensors"], report = run_plan(plan, sink, force=force, dry_run=dry_run, progress=progress, tplan=tplan, target=target)
    if report.removed_temps:
        summary["removed_temp_files"] = report.removed_temps
    if report.counts.get("removed_stale"):
        summary["removed"] = [f.removeprefix("removed ") for f in report.files if f.startswith("removed ")]
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


__all__ = ["MergeOptions", "MergePlan", "build_plan", "decide_sink", "merge", "merge_steps", "run_plan", "transform_plan"]
