"""``convert``: rewrite a checkpoint into another convention or container, exactly, one tensor group at a time.

Two kinds of conversion, both plans for the streaming engine:

* **container** (``--to safetensors|torch``): the same tensor names in another
  file format (``.pth``/``.bin`` ↔ ``.safetensors``), optionally cast with
  ``--dtype``; safetensors ``__metadata__`` is kept.
* **convention** (``--to lit|hf|peft``): the source's plugin expresses it in
  Hugging Face naming (``ckpt_to_hub`` → a ``HubView``), the target layout's
  plugin turns that into its own names and side files (``ckpt_from_hub``), and
  the core composes the two step lists, so LitGPT LoRA → PEFT is ``lit`` then
  ``peft`` without either plugin importing the other.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import Refused, Unsupported, UsageError
from ckpt_tool.io.tensors import DTYPE_ALIASES, is_float
from ckpt_tool.model import CheckpointInfo
from ckpt_tool.ops import engine
from ckpt_tool.ops.layouts import get_layout, layouts
from ckpt_tool.ops.transform import HUB, Out, Read, Sink, Step, TransformPlan, compose

if TYPE_CHECKING:
    import torch

CONTAINERS = ("safetensors", "torch")
SRC = "in"
SINK = "out"


@dataclass
class ConvertOptions:
    """What the user asked for; handed to ``ckpt_to_hub`` / ``ckpt_from_hub``.

    Attributes:
        to: the target layout name.
        dtype: ``None`` (keep each tensor's dtype) or a safetensors float dtype name for every float tensor.
        max_shard_size: bytes per safetensors shard for sharded layouts.
        tie: ``None`` (as the source / the model type does), or force tied / untied input-output embeddings.
        base: for adapters: the base model to record (``base_model_name_or_path``), as given by the user.
        extra: plugin-specific options (``--set KEY=VALUE`` is not offered; plugins read what they document).
    """

    to: str
    dtype: str | None = None
    max_shard_size: int = 5 * 10**9
    tie: bool | None = None
    base: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parse_dtype(text: str | None) -> str | None:
    """``auto`` (or None) → keep dtypes; bf16 / fp16 / fp32 spellings → the safetensors name."""
    if text is None or text == "auto":
        return None
    name = DTYPE_ALIASES.get(str(text).lower())
    if name is None:
        raise UsageError(f"unknown --dtype {text!r}", "use auto, bf16, fp16 or fp32")
    return name


def cast_steps(steps: Sequence[Step], dtype: str | None) -> list[Step]:
    """Every floating output cast to ``dtype`` (after the conversion's own math; non-float tensors untouched)."""
    if dtype is None:
        return list(steps)
    out: list[Step] = []
    for s in steps:
        outs = tuple(dataclasses.replace(o, dtype=dtype) if is_float(o.dtype) else o for o in s.outs)
        if outs == s.outs:
            out.append(s)
        elif s.compute is None:  # a copy or a segment step: the engine casts
            out.append(dataclasses.replace(s, outs=outs))
        else:
            out.append(Step(outs, s.reads, _then_cast(s.compute, outs), s.why))
    return out


def _then_cast(compute: Any, outs: tuple[Out, ...]) -> Any:
    def run(tensors: Any, load: Any) -> list[torch.Tensor]:
        from ckpt_tool.io.tensors import torch_dtype

        results = list(compute(tensors, load))
        return [t if t.dtype == torch_dtype(o.dtype) else t.to(torch_dtype(o.dtype)) for t, o in zip(results, outs)]

    return run


# --- plans ---------------------------------------------------------------------------------------------


def container_plan(info: CheckpointInfo, options: ConvertOptions, out: Path) -> TransformPlan:
    """Same names, another container. Tensors that share storage cannot be written once in safetensors."""
    if options.to == "safetensors":
        shared: dict[tuple[str, int], list[str]] = {}
        for t in info.tensors:
            if t.storage_key is not None:
                shared.setdefault((t.file, t.data_offset), []).append(t.name)
        aliased = [names for names in shared.values() if len(names) > 1]
        if aliased:
            raise Refused(
                f"{info.path}: {len(aliased)} group(s) of tensors share one storage (e.g. {', '.join(aliased[0])}); "
                "safetensors cannot store a tensor twice under two names",
                "for a tied Hugging Face model convert the model directory with --to hf (it keeps one copy, as "
                "save_pretrained does), or keep the torch container",
            )
    steps = [
        Step((Out(SINK, t.name, t.dtype, tuple(t.shape)),), (Read(SRC, t.name),), None, "same name")
        for t in info.tensors
    ]
    meta = {k: v for k, v in info.metadata.items() if isinstance(k, str) and isinstance(v, str)}
    sink_opts: dict[str, Any] = {"max_shard_size": options.max_shard_size}
    if options.to == "safetensors" and info.container == "safetensors" and meta:
        sink_opts["metadata"] = meta
    if options.to == "torch" and info.wrapper == "model":
        sink_opts["wrapper"] = "model"
    target = _file_target(out, info, options.to)
    return TransformPlan({SRC: info}, cast_steps(steps, options.dtype), {SINK: Sink(options.to, target, sink_opts)})


def _file_target(out: Path, info: CheckpointInfo, to: str) -> Path:
    """``--out`` for a one-file layout: the file itself, or a file named after the source inside a directory."""
    ext = ".safetensors" if to == "safetensors" else ".pth"
    if out.is_dir() or str(out).endswith(os.sep):
        src = Path(info.files[0]) if len(info.files) == 1 else Path(info.path)
        stem = src.name.split(".")[0] or "model"
        return out / (stem + ext)
    return out


def convention_plan(info: CheckpointInfo, options: ConvertOptions, out: Path) -> tuple[TransformPlan, dict[str, Any]]:
    """Source plugin → hub → target plugin, composed into one step list."""
    from ckpt_tool.plugins import get_plugin_manager

    pm = get_plugin_manager()
    view = pm.hook.ckpt_to_hub(source=info, options=options)
    if view is None:
        raise Unsupported(
            f"{info.path}: no plugin converts a {info.format} {info.adapter_type or info.kind} to other conventions",
            "run 'ckpt-tool plugins' to see which plugins implement ckpt_to_hub",
        )
    result = pm.hook.ckpt_from_hub(view=view, layout=options.to, options=options)
    if result is None:
        raise Unsupported(
            f"no plugin writes a {view.kind} in the {options.to!r} layout",
            "choose another --to (see 'ckpt-tool convert --help')",
        )
    steps = compose(view.steps, result.steps, via=HUB)
    sink_opts = {"max_shard_size": options.max_shard_size, **result.options}
    plan = TransformPlan(
        {SRC: info}, cast_steps(steps, options.dtype), {SINK: Sink(options.to, out, sink_opts, result.side_files)}
    )
    notes = list(view.notes) + list(result.notes)
    return plan, {**result.summary, **({"notes": notes} if notes else {})}


def convert(
    src: Path,
    to: str,
    out: Path,
    *,
    dtype: str | None = None,
    max_shard_size: str = "5GB",
    tie: bool | None = None,
    base: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Convert ``src`` into layout ``to`` at ``out``; returns the JSON summary. Writes nothing on any error."""
    from ckpt_tool.io.writers import parse_size
    from ckpt_tool.ops.inspect import detect

    started = time.perf_counter()
    if to not in layouts():
        get_layout(to)  # raises UsageError listing the layouts
    try:
        shard = parse_size(max_shard_size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    options = ConvertOptions(to=to, dtype=parse_dtype(dtype), max_shard_size=shard, tie=tie, base=base)
    info = detect(src)
    if info.kind == "model" and any(c.kind == "adapter" for c in info.companions) and to == "peft":
        info = next(c for c in info.companions if c.kind == "adapter")  # a merged final/: its adapter
    extra: dict[str, Any] = {}
    if to in CONTAINERS:
        plan = container_plan(info, options, out)
    else:
        plan, extra = convention_plan(info, options, out)
    plan.provenance = {"operation": "convert", "convert": {"to": to, **({"dtype": options.dtype} if options.dtype else {})}}
    target = engine.resolve(plan)
    report = engine.execute(plan, force=force, dry_run=dry_run, progress=progress, label="converting", target=target)
    summary: dict[str, Any] = {
        "source": str(src),
        "source_format": info.format,
        "kind": info.kind,
        "to": to,
        "outputs": [str(p) for p in target.all_paths(plan)],
        "output_dtypes": engine.dtype_summary(plan.outs()),
        "dry_run": dry_run,
        "tensors": engine.tensor_counts(report),
        **extra,
    }
    if report.removed_temps:
        summary["removed_temp_files"] = report.removed_temps
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary
